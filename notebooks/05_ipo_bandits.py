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
# # IPO's bandits: DPO goes deterministic, IPO keeps its regularized optimum
#
# Azar et al. 2023 (arXiv 2310.12036, §5.1): three actions, a uniform π_ref, and a preference
# dataset with a total order y1 ≻ y2 ≻ y3 (every pair observed). DPO's population optimum puts
# probability 0 on every dominated action whatever β, while IPO's loss
# Σ (h_ij − 1/(2τ))², h_ij = log π_i − log π_j (uniform π_ref), has a regularized minimum:
# h_12 = h_23 = 1/(3τ) for the total order, 1/(2τ) when the pair y1 vs y3 is never observed.
#
# This notebook reads the results of `alignlab run bandit --variant VARIANT` (running it when
# no results exist) and draws each action's probability over training, per method and τ,
# with IPO's closed form as dashed lines.

# %% tags=["parameters"]
VARIANT = 'quick'
OUT_DIR = None  # default: $ALIGNLAB_RUNS/bandit-<VARIANT> ($ALIGNLAB_RUNS: ./runs)
FIGURE = None  # a path: the figure is also saved there (the README's is made this way)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from alignlab import pipeline, plots

out_dir = Path(OUT_DIR) if OUT_DIR else pipeline.default_out_dir('bandit', VARIANT)
if not (out_dir / 'results.csv').exists():
  pipeline.run_experiment('bandit', VARIANT, out_dir=out_dir, progress=False, verbose=False)
df = pd.read_csv(out_dir / 'results.csv')
cfg = pipeline.make_config(pipeline.load_experiment('bandit'), VARIANT)
gap_of = {'total_order': lambda tau: 1 / (3 * tau), 'unobserved_pair': lambda tau: 1 / (2 * tau)}
gap = gap_of[cfg.task.dataset]


def ipo_optimum(tau: float) -> np.ndarray:
  p = np.exp([2 * gap(tau), gap(tau), 0.0])
  return p / p.sum()


# %%
taus = sorted(df['hparam_value'].unique())
fig, axes = plt.subplots(2, len(taus), figsize=(4 * len(taus), 6), squeeze=False, sharey=True)
for row, method in enumerate(('dpo', 'ipo')):
  for col, tau in enumerate(taus):
    ax = axes[row][col]
    runs = df[(df['method'] == method) & (df['hparam_value'] == tau)]
    mean = runs.groupby('step')[['p_y1', 'p_y2', 'p_y3']].mean()
    for k, name in enumerate(('p_y1', 'p_y2', 'p_y3')):
      line, = ax.plot(mean.index, mean[name], marker='o', ms=3, label=f'π(y{k + 1})')
      if method == 'ipo':
        ax.axhline(ipo_optimum(tau)[k], ls='--', lw=0.8, color=line.get_color())
    ax.set_title(f'{method}, τ = β = {tau:g} ({runs["seed"].nunique()} seeds)',
                 color=plots.method_color(method))
    ax.set_xlabel('step')
    ax.locator_params(axis='x', nbins=4)  # 18,000-step labels would run into each other
    ax.set_ylim(-0.02, 1.02)
axes[0][0].set_ylabel('probability')
axes[1][0].set_ylabel('probability')
axes[0][0].legend(fontsize=8)
fig.suptitle(f'{cfg.task.dataset}: DPO vs IPO; dashed: IPO\'s closed-form optimum')
fig.tight_layout()
if FIGURE:
  fig.savefig(FIGURE, dpi=120)

# %% [markdown]
# The last evaluation of each run against IPO's closed form (max |Δπ| over the actions):

# %%
last = df.sort_values('step').groupby(['method', 'hparam_value', 'seed']).tail(1)
rows = []
for _, r in last.iterrows():
  p = r[['p_y1', 'p_y2', 'p_y3']].to_numpy(float)
  rows.append({'method': r['method'], 'tau': r['hparam_value'], 'seed': r['seed'],
               'step': r['step'], 'p_y1': p[0],
               'max |π − IPO optimum|': float(np.abs(p - ipo_optimum(r['hparam_value'])).max())})
table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda v: f'{v:.4f}'))
