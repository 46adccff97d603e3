# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
# ---

# %% [markdown]
# # IMDb: the reward–KL frontier (DPO paper, arXiv:2305.18290, Fig. 2 left, at CPU scale)
#
# Each point is one evaluation of one run: mean gold (VADER) reward on held-out prompts against
# the sequence-level KL(π‖π_ref), the sum over response tokens of the exact per-token KL of the
# full next-token distributions. Results are read from `RUN_DIR` when it holds a `results.csv`;
# otherwise the experiment runs at `VARIANT` (stages are cached under `$ALIGNLAB_CACHE`).

# %% tags=["parameters"]
VARIANT = 'tiny'
RUN_DIR = None  # default: runs/imdb_frontier-<VARIANT> ($ALIGNLAB_RUNS)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from alignlab import pipeline

run_dir = Path(RUN_DIR) if RUN_DIR else pipeline.default_out_dir('imdb_frontier', VARIANT)
if not (run_dir / 'results.csv').exists():
  pipeline.run_experiment('imdb_frontier', VARIANT, out_dir=run_dir, progress=False)
df = pipeline.load_results(run_dir)
df.head()

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for method, group in df.groupby('method', sort=False):
  ax.errorbar(group['kl'], group['gold_reward'], yerr=group['gold_reward_stderr'], fmt='o', ms=4,
              alpha=0.75, label=method)
ax.set_xlabel('KL(π ‖ π_ref) (nats / sequence)')
ax.set_ylabel('gold reward (VADER)')
ax.set_title(f'IMDb reward–KL frontier ({VARIANT})')
ax.grid(alpha=0.3)
ax.legend(fontsize=8, ncol=2)
plt.show()

# %% [markdown]
# The frontier itself: for each method, the best reward reached within a KL budget (the upper
# envelope of its points). A method dominates when its envelope lies above the others'.

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for method, group in df.groupby('method', sort=False):
  group = group.sort_values('kl')
  ax.step(group['kl'], np.maximum.accumulate(group['gold_reward'].to_numpy()), where='post', label=method)
ax.set_xlabel('KL budget (nats / sequence)')
ax.set_ylabel('best gold reward within budget')
ax.grid(alpha=0.3)
ax.legend(fontsize=8, ncol=2)
plt.show()

# %% [markdown]
# Best point per method, ranked by the task's `BEST_BY` (IMDb: the largest objective), means over seeds.

# %%
cfg = pipeline.make_config(pipeline.load_experiment('imdb_frontier'), VARIANT)
print(pipeline.summary(cfg, df))
