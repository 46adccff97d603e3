# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Best-of-N's true KL
#
# Reward–KL frontiers put Best-of-N at KL = log N − (N − 1)/N (Stiennon et al. 2020, arXiv
# 2009.01325 App. G; this repository's IMDb frontier does too, `alignlab/tasks/imdb.py`).
# Beirami et al. 2024 (arXiv 2401.01879, §3) show it is only an upper bound. On the exact
# task the law of Best-of-N is computed exactly, so is its KL: left, both against N; right,
# the shortfall to the frontier of π* that a plot shows at the bound's KL against the true one.
#
# This notebook reads the results of `alignlab run exact_best_of_n_kl --variant VARIANT`
# (running it when no results exist).

# %% tags=["parameters"]
VARIANT = 'quick'
OUT_DIR = None  # default: $ALIGNLAB_RUNS/exact_best_of_n_kl-<VARIANT> ($ALIGNLAB_RUNS: ./runs)
FIGURE = None  # a path: the figure is also saved there (the README's is made this way)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from alignlab import pipeline

out_dir = Path(OUT_DIR) if OUT_DIR else pipeline.default_out_dir('exact_best_of_n_kl', VARIANT)
if not (out_dir / 'results.csv').exists():
  pipeline.run_experiment('exact_best_of_n_kl', VARIANT, out_dir=out_dir, progress=False,
                          verbose=False)
df = pd.read_csv(out_dir / 'results.csv').sort_values('hparam_value')
df = df.assign(n=df['hparam_value'].astype(int),
               shortfall_at_bound=df['frontier_reward_at_bound'] - df['gold_reward'])

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
panels = (('kl_bound', 'kl', 'KL (nats)',
           ('log N − (N − 1)/N (the bound)', 'exact KL(π_BoN ‖ π_ref)')),
          ('shortfall_at_bound', 'reward_shortfall', 'frontier reward − Best-of-N reward',
           ('at the bound (what the plot shows)', 'at the exact KL')))
for ax, (bound_col, exact_col, ylabel, labels) in zip(axes, panels):
  ax.plot(df['n'], df[bound_col], 'k--', label=labels[0])
  ax.plot(df['n'], df[exact_col], 'o-', ms=4, label=labels[1])
  ax.set_xscale('log', base=2)
  ax.set_xlabel('N')
  ax.set_ylabel(ylabel)
  ax.legend()
  ax.grid(alpha=0.3)
fig.tight_layout()
if FIGURE:
  fig.savefig(FIGURE, dpi=120)

# %% [markdown]
# The numbers, and the finding computed from them: where the bound stops being tight, and by
# how much it moves Best-of-N's point on a frontier plot.

# %%
df['overstatement'] = df['kl_bound'] / df['kl'].where(df['kl'] > 0) - 1.0
print(df[['n', 'kl', 'kl_bound', 'overstatement', 'gold_reward', 'reward_shortfall',
          'shortfall_at_bound']].to_string(index=False, float_format=lambda v: f'{v:.4g}'))
tight = df[(df['n'] > 1) & (df['overstatement'] < 0.01)]
last = df.iloc[-1]
# Where the bound misplaces the point most on a frontier plot (at the largest N both
# shortfalls can be ~0: the frontier itself is flat there).
worst = df.loc[(df['shortfall_at_bound'] - df['reward_shortfall']).idxmax()]
up_to = tight['n'].max() if len(tight) else '-'
print(f'the bound is within 1 % of the exact KL up to N = {up_to}; '
      f'at N = {last["n"]} it reads {last["kl_bound"]:.2f} nats for a true {last["kl"]:.2f} '
      f'(+{100 * last["overstatement"]:.0f} %); a bound-based frontier misreads the shortfall '
      f'most at N = {worst["n"]}: {worst["shortfall_at_bound"]:.3f} instead of '
      f'{worst["reward_shortfall"]:.3f}')
