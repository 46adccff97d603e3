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
# # Win rate against π_ref vs sampling temperature (the DPO paper's Fig. 2, right)
#
# The DPO paper (arXiv 2305.18290, Fig. 2 right) plots each method's win rate against the
# reference completions as the sampling temperature grows, judged by GPT-4. Here the judge is
# the gold reward: a policy's sample at temperature T wins when its gold reward beats that of
# a π_ref sample (T = 1); ties count half. On the exact task the win rate is computed exactly
# by enumeration (`exact_win_rate`, `alignlab/tasks/exact_math.py`); on IMDb it is sampled
# (`evaluate.win_rate_vs_reference`). Best-of-N draws from π_ref at T = 1, so it is a point at 1.
#
# The notebook uses the IMDb results when they exist, else the exact task's (running the
# exact task's experiment if needed).

# %% tags=["parameters"]
VARIANT = 'tiny'
SOURCE = 'auto'  # 'auto' | 'imdb_frontier' | 'exact_frontier'

# %%
import matplotlib.pyplot as plt
import pandas as pd

from alignlab import pipeline, plots

candidates = ['imdb_frontier', 'exact_frontier'] if SOURCE == 'auto' else [SOURCE]
found = [name for name in candidates
         if (pipeline.default_out_dir(name, VARIANT) / 'win_rates.csv').exists()]
name = found[0] if found else candidates[-1]
out_dir = pipeline.default_out_dir(name, VARIANT)
if not found:
  pipeline.run_experiment(name, VARIANT, out_dir=out_dir, progress=False)
wr = pd.read_csv(out_dir / 'win_rates.csv')
print(f'{name} ({VARIANT}): {wr["run"].nunique()} runs from {out_dir}')

# %%
fig, ax = plt.subplots(figsize=(8, 5))
plots.draw_win_rates(ax, wr, title=f'{name} ({VARIANT}): win rate vs temperature, gold judge')
plt.show()

# %% [markdown]
# ## Win rate per method at each temperature (mean over seeds and runs of the same value)

# %%
table = wr.pivot_table(index=['method', 'hparam', 'hparam_value'], columns='temperature',
                       values='win_rate', aggfunc='mean', dropna=False)
print(table.dropna(how='all').to_string(float_format=lambda v: f'{v:.3f}', na_rep='-'))
