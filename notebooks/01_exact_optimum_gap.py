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
# # How close does each method get to the optimum? (exact task)
#
# On the exact task every response can be enumerated, so for any policy π we know exactly
# E[r], KL(π‖π_ref) and the gap to the optimum of J_β(π) = E[r] − β·KL(π‖π_ref):
# J_β(π*) − J_β(π) = β·KL(π‖π*) (DPO paper, arXiv 2305.18290, App. A.1). Sweeping β over
# π*_β traces the exact reward–KL frontier; no policy can lie above it.
#
# This notebook reads the results of `alignlab run exact_frontier --variant VARIANT` (and runs
# that experiment when no results exist), then draws each method's evaluation points against
# the frontier and the gap per method and β.

# %% tags=["parameters"]
VARIANT = 'tiny'
OUT_DIR = None  # default: $ALIGNLAB_RUNS/exact_frontier-<VARIANT> ($ALIGNLAB_RUNS: ./runs)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from alignlab import pipeline, plots

out_dir = Path(OUT_DIR) if OUT_DIR else pipeline.default_out_dir('exact_frontier', VARIANT)
if not (out_dir / 'results.csv').exists():
  pipeline.run_experiment('exact_frontier', VARIANT, out_dir=out_dir, progress=False)
df = pd.read_csv(out_dir / 'results.csv')
frontier = pd.read_csv(out_dir / 'frontier.csv')
print(f'{out_dir}: {df["run"].nunique()} runs, {len(df)} evaluation points, '
      f'methods: {", ".join(sorted(df["method"].unique()))}')

# %% [markdown]
# ## Every evaluation point against the exact frontier
# Each dot is one evaluation (every `train.eval_every` steps) of one run; ringed dots are the
# final policies. Best-of-N points are exact distributions, not trained policies.

# %%
fig, ax = plt.subplots(figsize=(8, 5.5))
plots.draw_frontier(ax, df, frontier, title=f'exact task ({VARIANT}): reward–KL against π*_β')
plt.show()

# %% [markdown]
# ## The gap to the optimum, per method and β
# `gap_fraction` = (J_β(π*) − J_β(π)) / (J_β(π*) − J_β(π_ref)): 0 at the optimum, 1 at π_ref.
# Methods with their own β (DPO, IPO, cDPO, KTO) are measured at it; the others at
# `task.eval_beta` (`--set task.eval_beta=…`). `reward_shortfall` (the frontier's reward at the policy's KL minus its
# reward) needs no β at all.

# %%
final = plots.final_points(df)
table = (final.groupby(['method', 'hparam', 'hparam_value'], dropna=False)
         [['gold_reward', 'kl', 'beta', 'gap', 'gap_fraction', 'reward_shortfall']].mean()
         .reset_index().sort_values(['method', 'hparam_value']))
print(table.to_string(index=False, float_format=lambda v: f'{v:.4g}', na_rep='-'))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
plots.draw_gap(axes[0], df)
own_beta = final[final['hparam'] == 'beta']
for method, rows in own_beta.groupby('method'):
  curve = rows.groupby('hparam_value')['gap_fraction'].mean()
  axes[1].plot(curve.index, curve.to_numpy(), marker='o', label=method)
axes[1].set_xscale('log')
axes[1].set_xlabel('β')
axes[1].set_ylabel('final gap_fraction')
axes[1].set_title('gap to the optimum vs β')
axes[1].grid(alpha=0.3)
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The gap during training
# How fast does each run close the gap? One line per run of the methods with their own β.

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
trained = df[(df['hparam'] == 'beta') & (df['method'] != 'best_of_n')]
for run_name, rows in trained.groupby('run'):
  ax.plot(rows['step'], rows['gap_fraction'], marker='.', label=run_name)
ax.axhline(1.0, color='gray', lw=0.8, ls='--')
ax.set_xlabel('step')
ax.set_ylabel('gap_fraction')
ax.grid(alpha=0.3)
ax.legend(fontsize=6, ncol=2)
plt.show()

# %% [markdown]
# ## Best point per method
# Ranked by the task's `BEST_BY` (the exact task: the smallest `gap_fraction`), means over seeds.

# %%
cfg = pipeline.make_config(pipeline.load_experiment('exact_frontier'), VARIANT)
print(pipeline.summary(cfg, df))
