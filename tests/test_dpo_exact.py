"""On the exact task, DPO trained from π_ref with ample Bradley–Terry preference data ends near
the optimum π* of J_β (the optimum of DPO's population loss; arXiv 2305.18290 §4–5):
gap β·KL(π‖π*) ≤ 5 % of π_ref's gap, for β ∈ {0.1, 1}. Slow: run with `pytest -m slow`.

Where the pairs come from: DPO's population loss is minimized by π* for any distribution of
the compared responses that covers every response (the Bradley–Terry likelihood is maximal
exactly when β·log π/π_ref = r + c(x) on its support). At β = 1 pairs of π_ref samples do it.
At β = 0.1, π* sits where π_ref rarely samples (the trained π ends ≈ 6.5 nats of KL from
π_ref), and pairs of π_ref samples label those responses too rarely: measured 8.6 % of π_ref's
gap after 830 of 1,000 steps (session 1). With responses drawn uniformly — every response as
often as any other, still no knowledge of r in the sampling — and 2,000 steps it ends below 5 %."""

import json

import jax.numpy as jnp
import pytest

from alignlab.config import OptimizerConfig
from alignlab.tasks import exact_math as exact
from alignlab.train import preference
from exact_reference import fit_reference, fresh_pair_batches, make_scorer, policy_model_config
from alignlab.train.fit import fit

# Final gaps are printed. Measured on 2 idle cores: β=0.1 → 0.0921 = 3.76 % of π_ref's 2.4526
# (1,016 s; 5.14 % after 1,000 steps); β=1 → 0.0134 = 2.91 % of π_ref's 0.4616 (1,000 steps).
STEPS = {0.1: 2000, 1.0: 1000}
PAIRS_FROM = {0.1: 'uniform', 1.0: 'reference'}


@pytest.mark.slow
@pytest.mark.parametrize('beta', [1.0, 0.1])
def test_dpo_reaches_optimum(beta, tmp_path):
  cfg = exact.ExactTaskConfig()
  r_PxY = jnp.asarray(exact.gold_reward(cfg))
  model_cfg = policy_model_config(cfg)
  graphdef, ref_params, ref_logp = fit_reference(cfg, model_cfg, tmp_path / 'sft')
  score = make_scorer(graphdef, cfg)
  gap_ref = float(exact.gap(ref_logp, ref_logp, r_PxY, beta).mean())
  n_steps = STEPS[beta]

  def evaluate(state, step):
    logp = score(state['params'])
    return {'gap': float(exact.gap(logp, ref_logp, r_PxY, beta).mean()),
            'kl': float(exact.kl(logp, ref_logp).mean())}

  uniform = jnp.zeros_like(ref_logp) if PAIRS_FROM[beta] == 'uniform' else None
  batch_at = fresh_pair_batches(cfg, ref_logp, r_PxY, pairs_per_prompt=512,
                                                sample_logp_PxY=uniform)
  state = fit(preference.make_loss_fn(graphdef, 'dpo', prompt_len=1), ref_params, batch_at,
              optimizer=OptimizerConfig(learning_rate=3e-3, schedule='linear',
                                        total_steps=n_steps, warmup_steps=50),
              n_steps=n_steps, run_dir=tmp_path / 'dpo', config={'beta': beta},
              hparams={'beta': beta}, eval_fn=evaluate, eval_every=n_steps // 6, progress=False)
  final = evaluate(state, n_steps)
  print(json.dumps({'beta': beta, 'gap_ref': gap_ref, **final, 'fraction': final['gap'] / gap_ref}))
  assert final['gap'] <= 0.05 * gap_ref, (final, gap_ref)
