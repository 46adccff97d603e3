# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
# ---

# %% [markdown]
# # Reward over-optimization (Gao, Schulman, Hilton 2022, arXiv 2210.10760)
#
# Policies optimize the learned (proxy) reward model; the gold reward (VADER) is measured as the
# KL grows. With d = √KL(π‖π_ref), Gao et al. fit Best-of-N by R(d) = d(α − β·d) and RL by
# R(d) = d(α − β·log d). The proxy is the normalized reward model (π_ref samples: mean 0, std 1),
# so gold and proxy are on different scales; both are shown as gains over π_ref.

# %% tags=["parameters"]
VARIANT = 'tiny'
RUN_DIR = None  # default: runs/imdb_frontier-<VARIANT> ($ALIGNLAB_RUNS)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from alignlab import pipeline

run_dir = Path(RUN_DIR) if RUN_DIR else pipeline.default_out_dir('imdb_frontier', VARIANT)
if not (run_dir / 'results.csv').exists():
  pipeline.run_experiment('imdb_frontier', VARIANT, out_dir=run_dir, progress=False)
df = pipeline.load_results(run_dir)
ref = df[df['method'] == 'sft'].iloc[0]


def bon_form(d, alpha, beta):
  return d * (alpha - beta * d)


def rl_form(d, alpha, beta):
  return d * (alpha - beta * np.log(np.maximum(d, 1e-6)))


def fit(form, d, r):
  """Least-squares (α, β) of a Gao et al. form (both are linear in α and β: R = α·f1(d) − β·f2(d));
  None when there are too few points."""
  keep = np.isfinite(d) & np.isfinite(r) & (d > 0)
  if keep.sum() < 3:
    return None
  d, r = d[keep], r[keep]
  # R(d) = α·form(d, 1, 0) + β·form(d, 0, 1): ordinary least squares in (α, β).
  basis = np.stack([form(d, 1.0, 0.0), form(d, 0.0, 1.0)], axis=1)
  alpha_beta, *_ = np.linalg.lstsq(basis, r, rcond=None)
  return alpha_beta


# %%
fits = []
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
for ax, (method, form) in zip(axes, (('best_of_n', bon_form), ('ppo', rl_form))):
  group = df[df['method'] == method]
  d = np.sqrt(np.maximum(group['kl'].to_numpy(float), 0.0))
  for column, label in (('gold_reward', 'gold'), ('proxy_reward', 'proxy')):
    gain = group[column].to_numpy(float) - float(ref[column])
    ax.scatter(d, gain, s=18, alpha=0.7, label=f'{label} (points)')
    params = fit(form, d, gain)
    if params is not None:
      grid = np.linspace(1e-3, max(d.max(), 1e-2) * 1.1, 100)
      ax.plot(grid, form(grid, *params), label=f'{label}: α={params[0]:.3f}, β={params[1]:.3f}')
      fits.append({'method': method, 'reward': label, 'alpha': params[0], 'beta': params[1]})
  ax.set_xlabel('d = √KL(π ‖ π_ref)')
  ax.set_ylabel('reward gain over π_ref')
  ax.set_title({'best_of_n': 'Best-of-N: R(d) = d(α − β d)', 'ppo': 'PPO: R(d) = d(α − β log d)'}[method])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %%
pd.DataFrame(fits)
