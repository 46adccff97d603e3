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
# # Same data, which gets closer to π*?
#
# The gap fraction (J_β(π*) − J_β(π)) / (J_β(π*) − J_β(π_ref)) on the exact task (0 at the
# optimum, 1 at π_ref) of DPO, IPO and cDPO against RLHF with a Bradley–Terry reward model
# trained on exactly the same pairs (PPO and RLOO at the same fixed β, Best-of-N ranked by that
# reward model), as the number of preference pairs per prompt grows. PPO on the gold reward
# reads no pairs: its band is the ceiling of the RL optimizer. Every method has the same
# budget at every size (`experiments/exact_data_size.py` states it); each point is the mean
# over data seeds (a fresh draw of the pairs, hence of the reward model) with its 95 % t
# interval; Best-of-N shows its best N at each size.
#
# This notebook reads the results of `alignlab run exact_data_size --variant VARIANT`
# (running it when no results exist).

# %% tags=["parameters"]
VARIANT = 'quick'
OUT_DIR = None  # default: $ALIGNLAB_RUNS/exact_data_size-<VARIANT> ($ALIGNLAB_RUNS: ./runs)
FIGURE = None  # a path: the figure is also saved there (the README's is made this way)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from alignlab import pipeline, plots

out_dir = Path(OUT_DIR) if OUT_DIR else pipeline.default_out_dir('exact_data_size', VARIANT)
if not (out_dir / 'results.csv').exists():
  pipeline.run_experiment('exact_data_size', VARIANT, out_dir=out_dir, progress=False,
                          verbose=False)
df = pd.read_csv(out_dir / 'results.csv')
cfg = pipeline.make_config(pipeline.load_experiment('exact_data_size'), VARIANT)
X = 'task.pairs.pairs_per_prompt'

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.8))
plots.draw_grid(ax, df, X, 'gap_fraction', 'min',
                title=f'exact task ({cfg.task.problem.n_prompts} prompts × '
                      f'{cfg.task.problem.n_responses} responses), β = {cfg.task.eval_beta:g}')
ax.set_xlabel('preference pairs per prompt')
fig.tight_layout()
if FIGURE:
  fig.savefig(FIGURE, dpi=120)

# %% [markdown]
# The numbers behind the figure, and the two-line finding computed from them:

# %%
finals = plots.grid_finals(df, X, 'gap_fraction', 'min')
print(finals.to_string(index=False, float_format=lambda v: f'{v:.3f}'))
sized = finals[finals[X].notna()]
smallest, largest = sized[X].min(), sized[X].max()
for at in (smallest, largest):
  rows = sized[sized[X] == at].sort_values('mean')
  print(f'{int(at)} pairs/prompt: ' + ', '.join(
      f'{m} {v:.3f}±{h:.3f}' for m, v, h in zip(rows['method'], rows['mean'],
                                                  rows['half_width'].fillna(0.0))))
ceiling = finals[finals[X].isna()]
if len(ceiling):
  print(f'ceiling (PPO on the gold reward): {ceiling["mean"].iloc[0]:.3f}')
