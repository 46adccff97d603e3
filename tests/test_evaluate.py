"""Evaluation: exact quantities against data/exact.py and brute force, sampled estimates
against the exact enumeration of the same policy, win rates, implicit-reward accuracy."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignlab import evaluate, sharding
from alignlab.config import MeshConfig, ModelConfig, SamplingConfig
from alignlab.tasks import exact as exact_task
from alignlab.tasks import exact_math as exact
from alignlab.heads import CausalLM

TASK = exact.ExactTaskConfig(n_prompts=3, vocab=3, length=3, reward_seed=4, ref_seed=6)
BETA = 0.7


def _model(seed, init_std=0.6):
  cfg = ModelConfig(vocab_size=exact.model_vocab_size(TASK), max_seq_len=TASK.length + 1,
                    d_model=20, n_layers=1, n_heads=2, d_ff=28, init_std=init_std,
                    masked_output_ids=exact.masked_output_ids(TASK))
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  return sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(seed))


@pytest.fixture(scope='module')
def models():
  graphdef, ref = _model(2)
  _, noise = _model(1)
  # A policy near the reference (KL ≈ 0.3): far enough to test, near enough that the
  # heavy-tailed k1 / k3 estimates are well behaved at a thousand samples.
  policy = jax.tree.map(lambda a, b: a + 0.25 * b, ref, noise)
  r = jnp.asarray(exact.gold_reward(TASK))
  return graphdef, policy, ref, r


def _random_logp(rng, shape, scale=1.5):
  logits = scale * rng.standard_normal(shape)
  return jnp.asarray(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), jnp.float32)


# ---------------------------------------------------------------------------------------------
# Exact


def test_exact_metrics_agree_with_exact_module_and_identities():
  rng = np.random.default_rng(0)
  r = jnp.asarray(exact.gold_reward(TASK))
  ref = _random_logp(rng, (TASK.n_prompts, TASK.n_responses))
  pi = _random_logp(rng, (TASK.n_prompts, TASK.n_responses))
  m = jax.jit(exact.exact_metrics)(pi, ref, r, BETA)
  assert float(m['reward']) == pytest.approx(float(exact.expected_reward(pi, r).mean()), abs=1e-6)
  assert float(m['kl']) == pytest.approx(float(exact.kl(pi, ref).mean()), abs=1e-6)
  assert float(m['objective']) == pytest.approx(float(m['reward']) - BETA * float(m['kl']), abs=1e-6)
  # J(π*) − J(π) = β·KL(π‖π*) (arXiv 2305.18290 App. A.1), computed two ways.
  assert float(m['optimal_objective']) - float(m['objective']) == pytest.approx(float(m['gap']), abs=1e-5)
  ref_gap = float(BETA * exact.kl(ref, exact.optimal_policy(ref, r, BETA)).mean())
  assert float(m['gap_fraction']) == pytest.approx(float(m['gap']) / ref_gap, rel=1e-5)
  at_ref = exact.exact_metrics(ref, ref, r, BETA)
  assert float(at_ref['gap_fraction']) == pytest.approx(1.0, abs=1e-6)
  assert float(at_ref['kl']) == pytest.approx(0.0, abs=1e-6)
  at_opt = exact.exact_metrics(exact.optimal_policy(ref, r, BETA), ref, r, BETA)
  assert float(at_opt['gap']) == pytest.approx(0.0, abs=1e-6)
  assert float(at_opt['objective']) == pytest.approx(float(at_opt['optimal_objective']), abs=1e-5)


def test_exact_win_rate_brute_force_and_self():
  rng = np.random.default_rng(1)
  # Integer rewards: many ties, which must count half.
  r = jnp.asarray(rng.integers(0, 3, (TASK.n_prompts, TASK.n_responses)), jnp.float32)
  ref = _random_logp(rng, r.shape)
  pi = _random_logp(rng, r.shape)
  p, q, rr = np.exp(np.asarray(pi, np.float64)), np.exp(np.asarray(ref, np.float64)), np.asarray(r)
  want = np.mean([sum(p[x, i] * q[x, j] * (1.0 if rr[x, i] > rr[x, j] else 0.5 if rr[x, i] == rr[x, j] else 0.0)
                      for i in range(r.shape[1]) for j in range(r.shape[1])) for x in range(r.shape[0])])
  assert float(jax.jit(exact.exact_win_rate)(pi, ref, r)) == pytest.approx(want, abs=1e-5)
  assert float(exact.exact_win_rate(ref, ref, r)) == pytest.approx(0.5, abs=1e-6)
  # The optimum of a higher reward beats the reference more often.
  r_cont = jnp.asarray(exact.gold_reward(TASK))
  w1 = float(exact.exact_win_rate(exact.optimal_policy(ref, r_cont, 1.0), ref, r_cont))
  w2 = float(exact.exact_win_rate(exact.optimal_policy(ref, r_cont, 0.2), ref, r_cont))
  assert 0.5 < w1 < w2 < 1.0


def test_exact_implicit_accuracy_of_the_optimum_is_one():
  rng = np.random.default_rng(2)
  r = jnp.asarray(exact.gold_reward(TASK))
  ref = _random_logp(rng, r.shape)
  pairs = exact.sample_pairs_bt(jax.random.key(0), TASK, ref, r, 64)
  args = (pairs.prompt_index, pairs.chosen_index, pairs.rejected_index, pairs.chosen_score,
          pairs.rejected_score)
  # β·log π*/π_ref = r − β·log Z: it orders every pair within a prompt as the gold reward does,
  # whatever the (noisy) BT labels say.
  star = exact.optimal_policy(ref, r, BETA)
  out = exact.exact_implicit_accuracy(star, ref, *args, beta=BETA)
  assert float(out['implicit_accuracy']) == 1.0
  assert int(out['n']) == int(np.sum(np.asarray(pairs.chosen_score) != np.asarray(pairs.rejected_score)))
  assert float(exact.exact_implicit_accuracy(exact.optimal_policy(ref, -r, BETA), ref, *args)
               ['implicit_accuracy']) == 0.0
  assert float(exact.exact_implicit_accuracy(ref, ref, *args)['implicit_accuracy']) == 0.5
  assert float(out['implicit_margin']) > 0


def test_frontier_reward_at_kl_matches_optimum_and_bounds_policies():
  rng = np.random.default_rng(3)
  r = jnp.asarray(exact.gold_reward(TASK))
  ref = _random_logp(rng, r.shape)
  fn = jax.jit(exact.frontier_reward_at_kl)
  for beta in (0.1, 0.5, 2.0):
    star = exact.optimal_policy(ref, r, beta)
    kl = exact.kl(star, ref).mean()
    assert float(fn(ref, r, kl)) == pytest.approx(float(exact.expected_reward(star, r).mean()), abs=1e-4)
  for seed in range(5):
    pi = _random_logp(np.random.default_rng(10 + seed), r.shape, scale=0.5)
    reward = float(exact.expected_reward(pi, r).mean())
    assert float(fn(ref, r, exact.kl(pi, ref).mean())) >= reward - 1e-5


def test_exact_policy_logp_temperature(models):
  graphdef, policy, _, _ = models
  logp = exact_task.exact_policy_logp(graphdef, policy, TASK, 1.0)
  np.testing.assert_allclose(np.exp(np.asarray(logp)).sum(-1), 1.0, atol=1e-5)
  cold = np.exp(np.asarray(exact_task.exact_policy_logp(graphdef, policy, TASK,
                                                      evaluate.GREEDY_TEMPERATURE)))
  np.testing.assert_allclose(cold.max(-1), 1.0, atol=1e-5)  # greedy: one response per prompt
  warm = exact_task.exact_policy_logp(graphdef, policy, TASK, 0.5)
  assert float(exact.kl(warm, logp).mean()) > 1e-3


# ---------------------------------------------------------------------------------------------
# Sampled, checked against the exact enumeration of the same models


def _prompts(n_per_prompt):
  return [[int(t)] for t in np.repeat(exact.prompt_tokens(TASK), n_per_prompt)]


SAMPLING = SamplingConfig(max_new_tokens=TASK.length, temperature=1.0)


def test_sequence_kl_terms_weighted_by_policy_are_the_exact_kl(models):
  graphdef, policy, ref, _ = models
  tokens_PxYxT = exact.full_sequences(TASK)
  tokens_NxT = tokens_PxYxT.reshape(-1, TASK.length + 1)
  attn_T, resp_T = exact.sequence_masks(TASK)
  n = tokens_NxT.shape[0]
  terms = evaluate.sequence_kl_terms(graphdef, policy, ref, jnp.asarray(tokens_NxT),
                                     jnp.asarray(np.tile(attn_T, (n, 1))),
                                     jnp.asarray(np.tile(resp_T, (n, 1))))
  logp = exact_task.exact_policy_logp(graphdef, policy, TASK)
  ref_logp = exact_task.exact_policy_logp(graphdef, ref, TASK)
  weights_PxY = np.exp(np.asarray(logp, np.float64))
  want = float(exact.kl(logp, ref_logp).mean())
  for name in ('kl', 'k1', 'k3'):
    got = (weights_PxY * np.asarray(terms[name], np.float64).reshape(weights_PxY.shape)).sum(-1).mean()
    assert got == pytest.approx(want, rel=1e-4), name
  assert want > 0.05


def test_evaluate_sampled_agrees_with_exact(models):
  graphdef, policy, ref, r = models
  logp = exact_task.exact_policy_logp(graphdef, policy, TASK)
  ref_logp = exact_task.exact_policy_logp(graphdef, ref, TASK)
  want = exact.exact_metrics(logp, ref_logp, r, BETA)
  calls = []

  def proxy(tokens_BxT, attention_mask_BxT):
    calls.append(tokens_BxT.shape)
    return jnp.sum(tokens_BxT, -1).astype(jnp.float32)

  out = evaluate.evaluate_sampled(graphdef, policy, ref, _prompts(400), exact.exact_gold_reward_fn(TASK),
                                  jax.random.key(0), SAMPLING, BETA, proxy_reward=proxy, batch_size=256)
  assert out['n'] == 1200 and out['response_length'] == TASK.length
  assert len(set(calls)) == 1  # static shapes: the last batch is padded
  for got, exact_name in (('gold_reward', 'reward'), ('kl', 'kl'), ('kl_k1', 'kl'), ('kl_k3', 'kl'),
                          ('objective', 'objective')):
    assert abs(out[got] - float(want[exact_name])) < 4 * out[f'{got}_stderr'], got
  # The exact per-token KL has far less variance than the k1 estimate.
  assert out['kl_stderr'] < out['kl_k1_stderr']
  assert np.isfinite(out['proxy_reward']) and out['proxy_reward_stderr'] > 0


def test_win_rate_of_reference_against_itself_and_against_exact(models):
  graphdef, policy, ref, r = models
  gold = exact.exact_gold_reward_fn(TASK)
  rows = evaluate.win_rate_vs_reference(graphdef, ref, ref, _prompts(300), gold, jax.random.key(1),
                                        SAMPLING, temperatures=(1.0,), batch_size=300)
  assert abs(rows[0]['win_rate'] - 0.5) < 4 * rows[0]['win_rate_stderr']
  ref_logp = exact_task.exact_policy_logp(graphdef, ref, TASK)
  temperatures = (0.0, 0.5, 1.0)
  rows = evaluate.win_rate_vs_reference(graphdef, policy, ref, _prompts(300), gold, jax.random.key(2),
                                        SAMPLING, temperatures=temperatures, batch_size=300)
  assert [row['temperature'] for row in rows] == list(temperatures)
  for row in rows:
    t = max(row['temperature'], evaluate.GREEDY_TEMPERATURE)
    want = float(exact.exact_win_rate(exact_task.exact_policy_logp(graphdef, policy, TASK, t), ref_logp, r))
    assert abs(row['win_rate'] - want) < 4 * max(row['win_rate_stderr'], 0.01), row


def test_implicit_reward_accuracy_from_models_matches_table(models):
  graphdef, policy, ref, r = models
  ref_logp = exact_task.exact_policy_logp(graphdef, ref, TASK)
  logp = exact_task.exact_policy_logp(graphdef, policy, TASK)
  pairs = exact.sample_pairs_bt(jax.random.key(3), TASK, ref_logp, r, 20)
  batch = exact.preference_batch(TASK, pairs)
  got = evaluate.implicit_reward_accuracy(graphdef, policy, ref, batch, beta=BETA, prompt_len=1,
                                          batch_size=16)
  want = exact.exact_implicit_accuracy(logp, ref_logp, pairs.prompt_index, pairs.chosen_index,
                                          pairs.rejected_index, pairs.chosen_score,
                                          pairs.rejected_score, beta=BETA)
  assert got['implicit_accuracy'] == pytest.approx(float(want['implicit_accuracy']), abs=1e-6)
  assert got['implicit_margin'] == pytest.approx(float(want['implicit_margin']), rel=1e-4)
  assert got['n'] == int(want['n']) > 30
  # Relabelling every pair the other way round cannot change a gold-scored accuracy.
  swapped = {k.replace('chosen', 'TMP').replace('rejected', 'chosen').replace('TMP', 'rejected'): v
             for k, v in batch.items()}
  again = evaluate.implicit_reward_accuracy(graphdef, policy, ref, swapped, beta=BETA, prompt_len=1,
                                            batch_size=16)
  assert again['implicit_accuracy'] == pytest.approx(got['implicit_accuracy'], abs=1e-6)
