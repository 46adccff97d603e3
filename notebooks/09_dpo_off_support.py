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
# # DPO off the data's support
#
# Xu et al. 2024 ("Is DPO Superior to PPO for LLM Alignment?", arXiv 2404.10719, §4) argue that
# DPO's solutions include policies that put mass on responses the preference data never shows,
# while PPO's KL penalty, paid on every sampled response, keeps it near π_ref there. On the exact
# task with 8 prompts × 8 one-token responses and pairs that mention only 4 responses per prompt
# (`experiments/exact_off_support.py`), every quantity is exact: the mass π puts off the
# support, the mass π*_β puts there (the target: π* follows the gold reward everywhere), and
# the gap fraction (J(π*) − J(π)) / (J(π*) − J(π_ref)).
#
# This notebook reads the results of `alignlab run exact_off_support --variant VARIANT`
# (running it when no results exist) and draws each run's off-support mass against its KL,
# with π*_β's as stars, and each method's last point.

# %% tags=["parameters"]
VARIANT = 'tiny'
OUT_DIR = None  # default: $ALIGNLAB_RUNS/exact_off_support-<VARIANT> ($ALIGNLAB_RUNS: ./runs)
FIGURE = None  # a path: the figure is also saved there (the README's is made this way)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from alignlab import pipeline, plots

name = 'exact_off_support'
out_dir = Path(OUT_DIR) if OUT_DIR else pipeline.default_out_dir(name, VARIANT)
if not (out_dir / 'results.csv').exists():
  pipeline.run_experiment(name, VARIANT, out_dir=out_dir, progress=False, verbose=False)
df = pd.read_csv(out_dir / 'results.csv')
df = df[df['status'] == 'done']
frontier = pd.read_csv(out_dir / 'frontier.csv')
cfg = pipeline.make_config(pipeline.load_experiment(name), VARIANT)
problem = cfg.task.problem
print(f'{problem.n_prompts} prompts × {problem.n_responses} responses; the pairs mention '
      f'{cfg.task.pairs.support_size} per prompt; {df["run"].nunique()} runs')


def label(method, value):
  return method if method == 'sft' else f'{method} {"KL target" if method == "ppo" else "β"} {value:g}'


# %%
runs = df[df['method'] != 'sft']
ref = df[df['method'] == 'sft'].iloc[0]
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
for (method, value), g in runs.groupby(['method', 'hparam_value']):
  path = g.groupby('step')[['kl', 'off_support_mass']].mean()
  color = plots.method_color(method)
  values = sorted(runs[runs['method'] == method]['hparam_value'].unique())
  ls = ('-', '--', ':')[values.index(value) % 3]
  ax.plot(path['kl'], path['off_support_mass'], marker='o', ms=3, ls=ls, color=color,
          label=label(method, value))
  beta = float(g['beta'].iloc[0])
  kl_star = np.interp(np.log(beta), np.log(frontier['beta']), frontier['kl'])
  ax.plot([kl_star], [g['optimal_off_support_mass'].iloc[0]], marker='*', ms=12, ls='none',
          color=color, markeredgecolor='k')
ax.axhline(ref['off_support_mass'], color='grey', lw=0.8, ls='--', label='π_ref')
ax.set_xlabel('KL(π‖π_ref) (nats)')
ax.set_ylabel('probability off the data\'s support')
ax.set_title('off-support mass along training; ★ π*_β at its KL')
ax.legend(fontsize=7)

last = runs.sort_values('step').groupby('run').tail(1)
final = last.groupby(['method', 'hparam_value']).agg(
    off_support_mass=('off_support_mass', 'mean'), off_sd=('off_support_mass', 'std'),
    optimal_off_support_mass=('optimal_off_support_mass', 'mean'),
    gap_fraction=('gap_fraction', 'mean'), gap_sd=('gap_fraction', 'std'), kl=('kl', 'mean'),
    support_split_gap_fraction=('support_split_gap_fraction', 'mean'),
    beta=('beta', 'first'), seeds=('seed', 'nunique')).reset_index()
x = np.arange(len(final))
colors = [plots.method_color(m) for m in final['method']]
bx.bar(x - 0.2, final['off_support_mass'], 0.4, yerr=final['off_sd'].fillna(0), color=colors,
       label='π off the support')
bx.bar(x + 0.2, final['optimal_off_support_mass'], 0.4, color='none', edgecolor=colors,
       hatch='//', label='π*_β off the support')
for i, row in final.iterrows():
  bx.text(x[i], max(row['off_support_mass'], row['optimal_off_support_mass']) + 0.02,
          f'gap {row["gap_fraction"]:.2f}', ha='center', va='bottom', rotation=90, fontsize=7)
bx.axhline(ref['off_support_mass'], color='grey', lw=0.8, ls='--')
bx.set_ylim(0, final[['off_support_mass', 'optimal_off_support_mass']].to_numpy().max() + 0.22)
bx.set_xticks(x, [label(m, v) for m, v in zip(final['method'], final['hparam_value'])],
              rotation=30, ha='right', fontsize=8)
bx.set_ylabel('probability off the support (last point)')
bx.set_title('last point: off-support mass, and the gap fraction at β')
bx.legend(fontsize=7, loc='upper left', ncol=2)  # above the bars' labels
fig.tight_layout()
if FIGURE:
  fig.savefig(FIGURE, dpi=120)

# %% [markdown]
# The last point of each method (means over seeds; `gap_fraction` at the method's β, PPO with
# the reward model at `eval_beta`; `support_split_gap_fraction` is the part of the gap fraction
# due to the split of mass between the support and the rest alone, per prompt):

# %%
final['off − π*'] = final['off_support_mass'] - final['optimal_off_support_mass']
print(f'π_ref off the support: {ref["off_support_mass"]:.3f}')
print(final[['method', 'hparam_value', 'beta', 'seeds', 'kl', 'off_support_mass',
             'optimal_off_support_mass', 'off − π*', 'gap_fraction', 'gap_sd',
             'support_split_gap_fraction']].to_string(index=False,
                                                      float_format=lambda v: f'{v:.3f}'))
beta = cfg.task.eval_beta
at_beta = final[np.isclose(final['beta'], beta) & final['method'].isin(['dpo', 'ppo'])]
for _, row in at_beta.iterrows():
  print(f'{label(row["method"], row["hparam_value"])}: off the support {row["off_support_mass"]:.3f} '
        f'(π_ref {ref["off_support_mass"]:.3f}, π*_β {row["optimal_off_support_mass"]:.3f}); '
        f'gap fraction {row["gap_fraction"]:.3f}, of it {row["support_split_gap_fraction"]:.3f} '
        'from the support split')
