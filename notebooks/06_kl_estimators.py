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
# # Where the KL term goes, and what it costs
#
# PPO and GRPO keep the policy near π_ref with a sampled estimate of KL(π_θ‖π_ref): k1 per
# token in the reward (Ziegler et al. 2019, arXiv 1909.08593), or k1, k2, k3 (Schulman 2020,
# "Approximating KL divergence") in the loss — k3 is GRPO's (arXiv 2402.03300, Eq. 4) — and k3
# weighted by π_θ/π_old (DeepSeek-V3.2 §3.1, Eq. 7). On the exact task every response can be
# enumerated, so the gradient all of them try to follow, ∇_θ KL(π_θ‖π_ref), is computable.
#
# 1. For policies along the exact ascent of J_β from π_ref, each estimator's gradient from one
#    rollout batch against the exact one: its cosine, the cosine of its expectation (computed
#    by enumeration: 1 means unbiased) and its variance (`alignlab/tasks/exact_kl_grads.py`),
#    with samples from π_θ itself (on-policy) and from the policy one ascent step earlier
#    (off-policy, as after a PPO minibatch update).
# 2. The final gap fraction (J_β(π*) − J_β(π)) / (J_β(π*) − J_β(π_ref)) of GRPO trained with each
#    option, and of PPO-GT (k1 in the reward, a value function), from
#    `alignlab run exact_kl_estimators --variant VARIANT` (run here when no results exist).

# %% tags=["parameters"]
VARIANT = 'quick'
OUT_DIR = None  # default: $ALIGNLAB_RUNS/exact_kl_estimators-<VARIANT> ($ALIGNLAB_RUNS: ./runs)
FIGURE = None  # a path: the figure is also saved there (the README's is made this way)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from alignlab import pipeline, plots
from alignlab.tasks import exact_kl_grads
from alignlab.tasks import exact_math as em

module = pipeline.load_experiment('exact_kl_estimators')
cfg = pipeline.make_config(module, VARIANT)
out_dir = Path(OUT_DIR) if OUT_DIR else pipeline.default_out_dir('exact_kl_estimators', VARIANT)
if not (out_dir / 'results.csv').exists():
  pipeline.run_experiment('exact_kl_estimators', VARIANT, out_dir=out_dir, progress=False,
                          verbose=False)
df = pd.read_csv(out_dir / 'results.csv')

# The gradient study on the experiment's own π_ref (the cached stage).
_, env = pipeline.setup(cfg, progress=False)
study = module.STUDY[VARIANT]
grads = pd.DataFrame(exact_kl_grads.kl_gradient_study(
    env['graphdef'], env['ref_params'], cfg.task.problem, env['ref_logp'], env['r'], study))
beta = study.path_beta
kl_opt = float(em.kl(em.optimal_policy(env['ref_logp'], env['r'], beta), env['ref_logp']).mean())

# %%
colors = dict(zip(exact_kl_grads.ESTIMATORS, plt.rcParams['axes.prop_cycle'].by_key()['color']))
fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
for sampling, ls in (('on_policy', '-'), ('off_policy', '--')):
  for estimator in exact_kl_grads.ESTIMATORS:
    g = grads[(grads['sampling'] == sampling) & (grads['estimator'] == estimator)]
    if g.empty:
      continue
    kw = dict(color=colors[estimator], ls=ls, marker='o', ms=4,
              label=f'{estimator} ({sampling.replace("_", "-")})')
    axes[0].errorbar(g['kl'], g['cos_mean'], yerr=g['cos_std'], capsize=2, **kw)
    axes[1].plot(g['kl'], g['cos_expected'], **kw)
    axes[2].plot(g['kl'], g['var_rel'], **kw)
axes[0].set_ylabel(f'cos(ĝ, ∇KL), one batch of {study.samples_per_prompt}/prompt')
axes[1].set_ylabel('cos(E ĝ, ∇KL)  (1: unbiased)')
axes[2].set_ylabel('E‖ĝ − E ĝ‖² / ‖∇KL‖²')
axes[2].set_yscale('log')
for ax in axes[:3]:
  ax.set_xlabel('KL(π_θ‖π_ref) of the policy (nats)')
axes[0].legend(fontsize=7)

# The runs at the study's β (the paper variant sweeps more; their gaps are of other J_β).
at_beta = (df['hparam'] == 'beta') & np.isclose(df['hparam_value'], beta)
last = plots.final_points(df[(df['method'] != 'sft') & at_beta])
gaps = (last.groupby('method')[['gap_fraction', 'kl']].agg(['mean', 'std', 'count'])
        .reindex([m for m in cfg.methods if m in set(last['method'])]))
x = np.arange(len(gaps))
axes[3].bar(x, gaps[('gap_fraction', 'mean')], yerr=gaps[('gap_fraction', 'std')].fillna(0.0),
            color=[plots.method_color(m) for m in gaps.index], capsize=3)
for i, (m, row) in enumerate(gaps.iterrows()):
  axes[3].annotate(f'KL {row[("kl", "mean")]:.2f}', (i, row[('gap_fraction', 'mean')]),
                   ha='center', va='bottom', fontsize=7)
axes[3].set_xticks(x, gaps.index, rotation=30, ha='right', fontsize=8)
axes[3].set_ylabel(f'final gap fraction at β = {beta:g} (mean ± std over seeds)')
axes[3].set_title(f'KL(π*‖π_ref) = {kl_opt:.2f}', fontsize=9)
fig.suptitle(f'exact_kl_estimators, {VARIANT}: {study.draws} draws per policy')
fig.tight_layout()
if FIGURE:
  fig.savefig(FIGURE, dpi=120)

# %% [markdown]
# The numbers behind the figure: the gradient study (one row per policy, sampling and
# estimator) and each method's final point.

# %%
columns = ['step', 'sampling', 'kl', 'kl_old_to_policy', 'estimator', 'cos_mean', 'cos_std',
           'cos_expected', 'norm_expected', 'var_rel', 'mse_rel']
print(grads[columns].to_string(index=False, float_format=lambda v: f'{v:.3g}'))
print()
print(gaps.to_string(float_format=lambda v: f'{v:.3f}'))

# %% [markdown]
# The finding, computed from the tables above (the most off-policy, largest-KL policy of the
# study, and the final gaps):

# %%
far = grads[(grads['step'] == grads['step'].max()) & (grads['sampling'] == 'on_policy')]
far = far.set_index('estimator')
best = gaps[('gap_fraction', 'mean')].idxmin()
print(f'At KL(π‖π_ref) = {far["kl"].iloc[0]:.2f}: one batch\'s cosine with the exact gradient '
      + ', '.join(f'{e} {far.loc[e, "cos_mean"]:.2f}' for e in far.index)
      + '; of the expectation ' + ', '.join(f'{e} {far.loc[e, "cos_expected"]:.2f}'
                                            for e in far.index) + '.')
print('Final gap fraction: ' + ', '.join(f'{m} {v:.3f}' for m, v in
                                          gaps[('gap_fraction', 'mean')].items())
      + f'; closest to π*: {best}. KL(π*‖π_ref) = {kl_opt:.2f}, final KL: '
      + ', '.join(f'{m} {v:.2f}' for m, v in gaps[('kl', 'mean')].items()) + '.')
