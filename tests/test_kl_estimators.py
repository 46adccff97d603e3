"""The KL term in the loss (k1, k2, k3, ratio-corrected k3) against NumPy loop references, its
plumbing through the PPO trainer, and the exact-task gradient study: the exact ∇KL(π‖π_ref)
against finite differences, and the estimators' expected gradients against what theory says
they are (`alignlab/tasks/exact_kl_grads.py`)."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from alignlab import methods, sharding
from alignlab.config import ConfigError, MeshConfig, ModelConfig
from alignlab.heads import CausalLM
from alignlab.losses import ppo as ppo_losses
from alignlab.tasks import exact_kl_grads as kg
from alignlab.tasks import exact_math as em
from alignlab.train import ppo

# ---- the loss against NumPy loops ------------------------------------------------------------


def np_kl_penalty(logps, ref, old, weights, estimator, ratio):
  """(loss, ∂loss/∂logps) by loops: ℓ = Σ w·c·k / Σ w with c = π/π_old (ratio) or 1."""
  total, norm = 0.0, 0.0
  grad = np.zeros(logps.shape)
  terms = []
  for b in range(logps.shape[0]):
    for t in range(logps.shape[1]):
      w = float(weights[b, t])
      if w <= 0:
        continue
      u = float(ref[b, t]) - float(logps[b, t])  # log ρ, ρ = π_ref/π
      k, dk = {'k1': (-u, 1.0), 'k2': (0.5 * u * u, -u),
               'k3': (math.exp(u) - 1.0 - u, 1.0 - math.exp(u))}[estimator]
      if ratio:
        c = math.exp(float(logps[b, t]) - float(old[b, t]))
        value, dvalue = c * k, c * k + c * dk
      else:
        value, dvalue = k, dk
      terms.append((b, t, w * dvalue))
      total += w * value
      norm += w
  for b, t, g in terms:
    grad[b, t] = g / norm
  return total / norm, grad


def random_batch(seed=0, b=3, t=7):
  rng = np.random.default_rng(seed)
  logps = -rng.uniform(0.05, 3.0, (b, t)).astype(np.float32)
  ref = -rng.uniform(0.05, 3.0, (b, t)).astype(np.float32)
  old = (logps + rng.normal(0.0, 0.3, (b, t))).astype(np.float32)
  mask = (rng.uniform(size=(b, t)) > 0.3).astype(np.float32)
  mask[:, 0] = 1.0
  # GRPO's weights: 1/|y| per token of each response (`train.ppo.loss_weights`).
  weights = mask / mask.sum(-1, keepdims=True)
  # Off the mask: values that would change the result if they leaked.
  logps = np.where(mask > 0, logps, 5.0).astype(np.float32)
  return logps, ref, old, weights


class KLPenaltyLossTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[(e, r) for e in ('k1', 'k2', 'k3') for r in (False, True)])
  def test_value_and_gradient_match_numpy(self, estimator, ratio):
    logps, ref, old, weights = random_batch()

    def loss(lp):
      return ppo_losses.kl_penalty_loss(logps=lp, ref_logps=ref, mask=weights,
                                        estimator=estimator, old_logps=old,
                                        ratio_correction=ratio)

    (value, metrics), grad = self.variant(jax.value_and_grad(loss, has_aux=True))(logps)
    expected, expected_grad = np_kl_penalty(logps, ref, old, weights, estimator, ratio)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(metrics['kl/loss_sum'] / metrics['kl/count'], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics['kl/count'], weights.sum(), rtol=1e-6)

  def test_on_policy_ratio_corrected_k3_has_k2s_gradient_and_k3s_value(self):
    logps, ref, _, weights = random_batch(seed=3)

    def grad_of(estimator, ratio):
      return jax.grad(lambda lp: ppo_losses.kl_penalty_loss(
          logps=lp, ref_logps=ref, mask=weights, estimator=estimator, old_logps=logps,
          ratio_correction=ratio)[0])(logps)

    np.testing.assert_allclose(grad_of('k3', True), grad_of('k2', False), rtol=1e-5, atol=1e-8)
    assert np.max(np.abs(grad_of('k3', True) - grad_of('k3', False))) > 1e-3
    corrected = ppo_losses.kl_penalty_loss(logps=logps, ref_logps=ref, mask=weights,
                                           old_logps=logps, ratio_correction=True)[0]
    plain = ppo_losses.kl_penalty_loss(logps=logps, ref_logps=ref, mask=weights)[0]
    np.testing.assert_allclose(corrected, plain, rtol=1e-6)

  def test_bad_arguments(self):
    logps, ref, _, weights = random_batch()
    with pytest.raises(ValueError, match='estimator'):
      ppo_losses.kl_penalty_loss(logps=logps, ref_logps=ref, mask=weights, estimator='k4')
    with pytest.raises(ValueError, match='old_logps'):
      ppo_losses.kl_penalty_loss(logps=logps, ref_logps=ref, mask=weights, ratio_correction=True)


# ---- a tiny exact task and its models --------------------------------------------------------

TASK = em.ExactTaskConfig(n_prompts=2, vocab=3, length=2, reward_seed=1, ref_seed=2)
MODEL = ModelConfig(vocab_size=em.model_vocab_size(TASK), max_seq_len=TASK.length + 1, d_model=8,
                    n_layers=1, n_heads=1, d_ff=16, init_std=0.5,
                    masked_output_ids=em.masked_output_ids(TASK))


@pytest.fixture(scope='module')
def models():
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, policy = sharding.init_params(lambda r: CausalLM(MODEL, rngs=r), mesh,
                                          jax.random.key(0))
  _, ref = sharding.init_params(lambda r: CausalLM(MODEL, rngs=r), mesh, jax.random.key(1))
  _, old = sharding.init_params(lambda r: CausalLM(MODEL, rngs=r), mesh, jax.random.key(2))
  return graphdef, policy, ref, old


# ---- the exact gradient and the estimators' expectations -------------------------------------


def np_mean_kl(logp_PxY, ref_PxY):
  logp, ref = np.asarray(logp_PxY, np.float64), np.asarray(ref_PxY, np.float64)
  return float(np.mean(np.sum(np.exp(logp) * (logp - ref), -1)))


def test_exact_kl_gradient_matches_finite_differences(models):
  graphdef, policy, ref, _ = models
  ref_logp = em.exact_policy_logp(graphdef, ref, TASK)
  assert np_mean_kl(em.exact_policy_logp(graphdef, policy, TASK), ref_logp) > 0.1
  grad = np.asarray(kg.exact_kl_gradient(graphdef, policy, TASK, ref_logp), np.float64)
  flat, unravel = jax.flatten_util.ravel_pytree(policy)
  rng = np.random.default_rng(0)
  h = 1e-2
  for _ in range(3):
    d = rng.standard_normal(flat.shape).astype(np.float32)
    d /= np.linalg.norm(d)
    up, down = (unravel(flat + s * h * d) for s in (1.0, -1.0))
    # The KL of the perturbed policies in float64 NumPy from their enumerated log-probs.
    fd = (np_mean_kl(em.exact_policy_logp(graphdef, up, TASK), ref_logp)
          - np_mean_kl(em.exact_policy_logp(graphdef, down, TASK), ref_logp)) / (2 * h)
    np.testing.assert_allclose(grad @ d, fd, rtol=2e-2, atol=2e-4)


def _norm(x):
  return float(np.linalg.norm(np.asarray(x, np.float64)))


def _cos(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_expected_gradients_are_what_theory_says(models):
  """REINFORCE with the KL-to-go is unbiased for the sequence KL; k1 in the loss has zero
  expected gradient; with one token per response (contexts cannot change) k2 and the
  ratio-corrected k3 are unbiased on-policy, the latter also off-policy, plain k3 is not."""
  graphdef, policy, ref, old = models
  ref_logp = em.exact_policy_logp(graphdef, ref, TASK)
  exact = kg.exact_kl_gradient(graphdef, policy, TASK, ref_logp)
  expected = dict(zip(kg.ESTIMATORS, kg.expected_gradients(graphdef, policy, policy, ref, TASK)))
  np.testing.assert_allclose(expected['reward_k1'], exact, rtol=1e-3, atol=1e-3 * _norm(exact))
  assert _norm(expected['loss_k1']) < 1e-4 * _norm(exact)
  # Two tokens: the per-token estimators miss the first token's effect on the second's KL.
  assert _cos(expected['loss_k2'], exact) < 0.999

  one = dataclasses.replace(TASK, length=1)
  ref_logp1 = em.exact_policy_logp(graphdef, ref, one)
  exact1 = kg.exact_kl_gradient(graphdef, policy, one, ref_logp1)
  on = dict(zip(kg.ESTIMATORS, kg.expected_gradients(graphdef, policy, policy, ref, one)))
  tol = dict(rtol=1e-3, atol=1e-3 * _norm(exact1))
  for name in ('reward_k1', 'loss_k2', 'loss_k3_ratio'):
    np.testing.assert_allclose(on[name], exact1, **tol, err_msg=name)
  assert _cos(on['loss_k3'], exact1) < 0.999
  off = dict(zip(kg.ESTIMATORS, kg.expected_gradients(graphdef, policy, old, ref, one)))
  np.testing.assert_allclose(off['loss_k3_ratio'], exact1, **tol)
  assert _norm(off['loss_k2'] - exact1) > 0.05 * _norm(exact1)


def test_compare_rows(models):
  graphdef, policy, ref, _ = models
  ref_logp = em.exact_policy_logp(graphdef, ref, TASK)
  rows = {r['estimator']: r for r in kg.compare(graphdef, policy, policy, ref, TASK, ref_logp,
                                                jax.random.key(0), n=64, draws=64)}
  assert set(rows) == set(kg.ESTIMATORS)
  unbiased = rows['reward_k1']
  np.testing.assert_allclose(unbiased['cos_expected'], 1.0, atol=1e-5)
  np.testing.assert_allclose(unbiased['norm_expected'], 1.0, rtol=1e-3)
  # Unbiased: the error is all variance.
  np.testing.assert_allclose(unbiased['mse_rel'], unbiased['var_rel'], rtol=1e-2, atol=1e-4)
  assert unbiased['cos_of_mean'] > unbiased['cos_mean'] > 0.5  # averaging draws helps
  assert math.isnan(rows['loss_k1']['cos_expected'])  # its expectation is 0: no direction
  # Its per-draw variance falls like 1/n: four times the samples, a quarter of the variance.
  more = {r['estimator']: r for r in kg.compare(graphdef, policy, policy, ref, TASK, ref_logp,
                                                jax.random.key(1), n=256, draws=64)}
  assert 0.12 < more['reward_k1']['var_rel'] / unbiased["var_rel"] < 0.45


def test_jitted_estimator_gradients_match_each_surrogates_own_gradient():
  """The study's jitted gradients against jax.grad of each surrogate, one at a time and
  eagerly, on a batch of 1024 sequences (where a vmapped pullback once went wrong)."""
  task = em.ExactTaskConfig(n_prompts=4, vocab=4, length=4, reward_seed=1, ref_seed=2)
  model = dataclasses.replace(MODEL, vocab_size=em.model_vocab_size(task),
                              max_seq_len=task.length + 1,
                              masked_output_ids=em.masked_output_ids(task))
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, policy = sharding.init_params(lambda r: CausalLM(model, rngs=r), mesh,
                                          jax.random.key(3))
  _, ref = sharding.init_params(lambda r: CausalLM(model, rngs=r), mesh, jax.random.key(4))
  got = kg.expected_gradients(graphdef, policy, policy, ref, task)
  logp_PxY = em.exact_policy_logp(graphdef, policy, task)
  tokens_BxT = em.full_sequences(task).reshape(-1, task.length + 1)
  weights_BxT = np.array(jnp.exp(logp_PxY).reshape(-1, 1) * np.ones(tokens_BxT.shape))
  weights_BxT[:, 0] = 0.0
  old_logps = kg.token_logps(graphdef, policy, tokens_BxT)
  ref_logps = kg.token_logps(graphdef, ref, tokens_BxT)

  @jax.jit
  def own_gradients(params):  # a whole jax.grad per surrogate, nothing shared
    return [task.length * jax.flatten_util.ravel_pytree(jax.grad(lambda p: kg.surrogate_loss(
        name, logps_BxT=kg.token_logps(graphdef, p, tokens_BxT), old_logps_BxT=old_logps,
        ref_logps_BxT=ref_logps, weights_BxT=weights_BxT))(params))[0]
            for name in kg.ESTIMATORS]

  for e, (name, want) in enumerate(zip(kg.ESTIMATORS, own_gradients(policy))):
    np.testing.assert_allclose(got[e], want, rtol=1e-3, atol=1e-4 * max(_norm(want), 1.0),
                               err_msg=name)
  assert _norm(got[1]) < 1e-4 * _norm(got[0])  # k1 in the loss: 0 in expectation


# ---- the options in the PPO trainer and the methods table --------------------------------------


def test_config_options():
  grpo = dict(algorithm='grpo', samples_per_prompt=2)
  assert ppo.PPOConfig(**grpo).resolved_kl_estimator == 'k3'
  assert ppo.PPOConfig().resolved_kl_estimator == 'k1'  # in the reward
  ppo.PPOConfig(**grpo, kl_estimator='k2', kl_ratio_correction=True).validate()
  with pytest.raises(ConfigError, match='kl_estimator'):
    ppo.PPOConfig(**grpo, kl_estimator='k4').validate()
  with pytest.raises(ConfigError, match='in the reward is k1'):
    ppo.PPOConfig(kl_estimator='k3').validate()
  with pytest.raises(ConfigError, match='in the reward is k1'):
    ppo.PPOConfig(**grpo, kl_penalty='reward', kl_ratio_correction=True).validate()


def test_methods_table_sets_the_options():
  env = {'rl_sampling': ppo.PPOConfig().sampling}
  rl = methods.RLConfig(iterations=2)
  expected = {'grpo': ('loss', 'k3', False), 'grpo_k1': ('loss', 'k1', False),
              'grpo_k2': ('loss', 'k2', False), 'grpo_k3_ratio': ('loss', 'k3', True),
              'grpo_kl_reward': ('reward', 'k1', False), 'ppo_gt': ('reward', 'k1', False)}
  for name, (penalty, estimator, ratio) in expected.items():
    cfg = methods._ppo_config(env, rl, methods.METHODS[name], 0.3, 0)
    cfg.validate()
    assert (cfg.resolved_kl_penalty, cfg.resolved_kl_estimator, cfg.kl_ratio_correction) == (
        penalty, estimator, ratio), name


@pytest.mark.parametrize('estimator,ratio', [('k1', False), ('k2', False), ('k3', False),
                                             ('k3', True)])
def test_trainer_loss_uses_the_chosen_estimator(models, estimator, ratio):
  graphdef, policy, ref, old = models
  tokens_BxT = em.full_sequences(TASK).reshape(-1, TASK.length + 1)
  resp_BxT = np.ones(tokens_BxT.shape, np.float32)
  resp_BxT[:, 0] = 0
  logps = {name: np.asarray(kg.token_logps(graphdef, p, jnp.asarray(tokens_BxT)))
           for name, p in (('policy', policy), ('ref', ref), ('old', old))}
  cfg = ppo.PPOConfig(algorithm='grpo', samples_per_prompt=2, kl_estimator=estimator,
                      kl_ratio_correction=ratio, sampling=ppo.PPOConfig().sampling)
  weights = np.asarray(ppo.loss_weights(cfg, resp_BxT))
  batch = {'tokens': tokens_BxT, 'attention_mask': np.ones_like(tokens_BxT),
           'response_mask': resp_BxT, 'old_logps': logps['old'], 'ref_logps': logps['ref'],
           # Zero advantages: the clipped policy term is 0, the loss is β × the KL term.
           'advantages': np.zeros_like(resp_BxT), 'weights': weights}
  beta = 0.7
  loss, metrics = ppo.ppo_loss({'policy': policy}, batch, jnp.float32(beta), cfg=cfg,
                               policy_graphdef=graphdef, value_graphdef=None, prompt_len=1)
  expected, _ = np_kl_penalty(logps['policy'], logps['ref'], logps['old'], weights, estimator,
                              ratio)
  np.testing.assert_allclose(loss, beta * expected, rtol=2e-5)
  np.testing.assert_allclose(metrics['policy/kl_loss'], expected, rtol=2e-5)
