"""Preference data on part of the response space (Xu et al. 2024, arXiv 2404.10719, §4): the
restriction really restricts, and `off_support_mass` is the probability off the support,
checked against NumPy computed from the network's own logits."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from alignlab import sharding
from alignlab.config import ConfigError, ModelConfig
from alignlab.tasks import exact
from alignlab.tasks import exact_math as em

PROBLEM = em.ExactTaskConfig(n_prompts=5, vocab=6, length=1, reward_seed=2, ref_seed=3)


def _task(support_size: int) -> exact.Config:
  return exact.Config(
      problem=PROBLEM, model=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32),
      sft=exact.SFTConfig(samples_per_prompt=64, steps=5, batch_size=32, learning_rate=1e-2),
      pairs=exact.PairsConfig(pairs_per_prompt=200, heldout_per_prompt=8, support_size=support_size),
      win_rate_temperatures=(1.0,), eval_beta=0.5)


def _np_logp(logits_PxV):
  z = logits_PxV - logits_PxV.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_support_mask():
  support = em.support_mask(PROBLEM, 4, seed=7)
  assert support.shape == (5, 6) and support.dtype == bool
  np.testing.assert_array_equal(support.sum(-1), 4)
  np.testing.assert_array_equal(support, em.support_mask(PROBLEM, 4, seed=7))
  assert len({tuple(row) for row in support}) > 1  # one subset per prompt, not one for all
  assert not np.array_equal(support, em.support_mask(PROBLEM, 4, seed=8))
  for bad in (0, 7):
    with pytest.raises(ConfigError, match='support_size'):
      em.support_mask(PROBLEM, bad, seed=0)


def test_off_support_mass_matches_a_loop():
  rng = np.random.default_rng(0)
  logp = _np_logp(rng.standard_normal((5, 6)) * 2)
  support = em.support_mask(PROBLEM, 2, seed=1)
  expected = np.mean([sum(np.exp(logp[x, y]) for y in range(6) if not support[x, y])
                      for x in range(5)])
  np.testing.assert_allclose(float(em.off_support_mass(logp, support)), expected, rtol=1e-6)
  assert float(em.off_support_mass(logp, np.ones_like(support))) == 0.0


def test_default_pairs_key_is_unchanged():
  # The field left at 0 must not enter the cache key, or every cached pairs stage, reward
  # model and run dir made before it existed would be built again (or refused).
  assert exact.pairs_record(exact.PairsConfig()) == {
      'pairs_per_prompt': 2048, 'heldout_per_prompt': 256, 'seed': 1}
  assert exact.pairs_record(exact.PairsConfig(support_size=3))['support_size'] == 3


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """One alignlab cache for the module: π_ref is trained once and shared by both setups."""
  return tmp_path_factory.mktemp('off_support_cache')


def _setup(task, cache, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_CACHE', str(cache))
  return exact.setup(task, mesh=sharding.make_mesh(), progress=False, log=lambda *a: None)


def test_restricted_pairs_and_off_support_mass(cache, monkeypatch):
  env = _setup(_task(3), cache, monkeypatch)
  support = em.support_mask(PROBLEM, 3, seed=exact.PairsConfig().seed)
  pairs = env['pairs']
  prompt_N = pairs['chosen_tokens'][:, 0] - em.prompt_tokens(PROBLEM)[0]
  for side in ('chosen', 'rejected'):
    index_N = pairs[f'{side}_tokens'][:, 1] - em.RESPONSE_OFFSET
    assert support[prompt_N, index_N].all(), f'a {side} response lies off the support'
  # ... and the pairs span the whole support (200 draws per prompt from 3 responses).
  seen = np.zeros_like(support)
  seen[prompt_N, pairs['chosen_tokens'][:, 1] - 1] = True
  seen[prompt_N, pairs['rejected_tokens'][:, 1] - 1] = True
  np.testing.assert_array_equal(seen, support)

  # The policy from the network's logits at the prompt position, softmaxed over the response
  # symbols in NumPy: independent of `policy_logprobs_all`.
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape, p.dtype),
                        env['ref_params'])
  model = nnx.merge(env['graphdef'], params)
  tokens_Px1 = em.prompt_tokens(PROBLEM)[:, None]
  logits_PxM = np.asarray(model(tokens_Px1, np.ones_like(tokens_Px1)), np.float64)[:, 0]
  logp_PxY = _np_logp(logits_PxM[:, 1:1 + PROBLEM.vocab])
  off = np.exp(logp_PxY)[~support].sum() / PROBLEM.n_prompts
  row = env['evaluate'](params, 0.5)
  np.testing.assert_allclose(row['off_support_mass'], off, rtol=1e-4)
  assert 0.0 < off < 1.0
  ref_logp = np.asarray(env['ref_logp'], np.float64)
  r = em.gold_reward(PROBLEM).astype(np.float64)
  star_PxY = _np_logp(ref_logp + r / 0.5)
  np.testing.assert_allclose(row['optimal_off_support_mass'],
                             np.exp(star_PxY)[~support].sum() / PROBLEM.n_prompts, rtol=1e-4)
  # The support/off-support split's share of the gap: β·KL of the two-point marginals, over
  # π_ref's gap β·KL(π_ref‖π*), by a loop; never more than the whole gap (chain rule of KL).
  split, ref_gap = 0.0, 0.0
  for x in range(PROBLEM.n_prompts):
    m, m_star = np.exp(logp_PxY[x])[~support[x]].sum(), np.exp(star_PxY[x])[~support[x]].sum()
    split += m * np.log(m / m_star) + (1 - m) * np.log((1 - m) / (1 - m_star))
    ref_gap += np.sum(np.exp(ref_logp[x]) * (ref_logp[x] - star_PxY[x]))
  np.testing.assert_allclose(row['support_split_gap_fraction'], split / ref_gap, rtol=1e-3)
  assert 0.0 < row['support_split_gap_fraction'] <= row['gap_fraction']


def test_unrestricted_pairs_report_no_off_support_mass(cache, monkeypatch):
  env = _setup(dataclasses.replace(_task(0), pairs=exact.PairsConfig(
      pairs_per_prompt=64, heldout_per_prompt=8)), cache, monkeypatch)
  assert 'off_support_mass' not in env['evaluate'](env['ref_params'])
  assert 'support_size' not in env['run_key']['pairs']
