"""The exact task: every closed-form quantity against a brute-force NumPy loop on tiny instances."""

from __future__ import annotations

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from alignlab.config import ConfigError
from alignlab.tasks import exact_math as exact

TINY = exact.ExactTaskConfig(n_prompts=2, vocab=3, length=2, reward_seed=3, ref_seed=5)
SMALL = exact.ExactTaskConfig(n_prompts=3, vocab=3, length=3, reward_seed=1, ref_seed=2)
best_of_n_logp = jax.jit(exact.best_of_n_logp)  # n traced: one compile per shape


def _random_logp(rng, shape, scale=1.5):
  logits = scale * rng.standard_normal(shape)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------------
# NumPy references: explicit loops over prompts and responses, float64.


def np_expected_reward(logp, r):
  out = np.zeros(logp.shape[0])
  for x in range(logp.shape[0]):
    for y in range(logp.shape[1]):
      out[x] += math.exp(logp[x, y]) * r[x, y]
  return out


def np_kl(logp, ref_logp):
  out = np.zeros(logp.shape[0])
  for x in range(logp.shape[0]):
    for y in range(logp.shape[1]):
      p = math.exp(logp[x, y])
      if p > 0:
        out[x] += p * (logp[x, y] - ref_logp[x, y])
  return out


def np_optimal_policy(ref_logp, r, beta):
  out = np.zeros_like(ref_logp, dtype=np.float64)
  for x in range(ref_logp.shape[0]):
    shift = max(r[x]) / beta  # keeps exp() in range at small β
    z = sum(math.exp(ref_logp[x, y]) * math.exp(r[x, y] / beta - shift)
            for y in range(ref_logp.shape[1]))
    for y in range(ref_logp.shape[1]):
      out[x, y] = ref_logp[x, y] + r[x, y] / beta - shift - math.log(z)
  return out


def np_optimal_value(ref_logp, r, beta):
  return np.array([
      beta * math.log(sum(math.exp(ref_logp[x, y] + r[x, y] / beta) for y in range(ref_logp.shape[1])))
      for x in range(ref_logp.shape[0])])


def np_best_of_n_enumerated(ref_logp, r, n):
  """The law of the best of n i.i.d. draws, by enumerating every n-tuple of draws; ties among
  the draws' rewards are broken uniformly at random."""
  n_prompts, n_responses = ref_logp.shape
  out = np.zeros((n_prompts, n_responses))
  for x in range(n_prompts):
    p = np.exp(ref_logp[x] - np.log(np.exp(ref_logp[x]).sum()))
    for draws in itertools.product(range(n_responses), repeat=n):
      prob = np.prod([p[y] for y in draws])
      best = max(r[x, y] for y in draws)
      winners = [y for y in draws if r[x, y] == best]
      for y in winners:
        out[x, y] += prob / len(winners)
  return out


def np_best_of_n_order_statistic(ref_logp, r, n):
  """P(y) = F(y)^n − F(y−)^n over responses sorted by reward (distinct rewards), float64."""
  out = np.zeros(ref_logp.shape)
  for x in range(ref_logp.shape[0]):
    p = np.exp(ref_logp[x].astype(np.float64))
    p /= p.sum()
    order = np.argsort(r[x])
    below = 0.0
    for y in order:
      out[x, y] = (below + p[y]) ** n - below ** n
      below += p[y]
  return out


def np_policy_logprobs(logits_fn_np, cfg, restrict):
  out = np.zeros((cfg.n_prompts, cfg.n_responses))
  for x, prompt in enumerate(exact.prompt_tokens(cfg)):
    for y, response in enumerate(itertools.product(range(1, cfg.vocab + 1), repeat=cfg.length)):
      seq = [int(prompt)] + list(response)
      logits = logits_fn_np(np.array([seq]))[0]  # T x M
      total = 0.0
      for t in range(1, len(seq)):
        row = logits[t - 1].astype(np.float64)
        if restrict:
          row = row[1:cfg.vocab + 1]
          token = seq[t] - 1
        else:
          token = seq[t]
        total += row[token] - np.log(np.exp(row - row.max()).sum()) - row.max()
      out[x, y] = total
  return out


# ---------------------------------------------------------------------------------------------
# Layout, reward, reference


def test_layout():
  cfg = TINY
  assert exact.model_vocab_size(cfg) == 3 + 2 + 1
  assert exact.model_vocab_size(exact.ExactTaskConfig()) == 17
  assert exact.ExactTaskConfig().n_responses == 4096
  np.testing.assert_array_equal(exact.prompt_tokens(cfg), [4, 5])
  responses = exact.all_responses(cfg)
  assert responses.dtype == np.int32
  np.testing.assert_array_equal(responses, list(itertools.product([1, 2, 3], repeat=2)))
  tokens = exact.full_sequences(cfg)
  assert tokens.shape == (2, 9, 3) and tokens.dtype == np.int32
  for x in range(2):
    for y in range(9):
      np.testing.assert_array_equal(tokens[x, y], [4 + x, *responses[y]])
  attention_mask, response_mask = exact.sequence_masks(cfg)
  np.testing.assert_array_equal(attention_mask, [1, 1, 1])
  np.testing.assert_array_equal(response_mask, [0, 1, 1])
  np.testing.assert_array_equal(exact.make_sequences(cfg, np.array([1, 0]), responses[[4, 8]]),
                                [[5, 2, 2], [4, 3, 3]])


def test_response_index_inverts_all_responses():
  for cfg in (TINY, SMALL, exact.ExactTaskConfig(n_prompts=1, vocab=5, length=3)):
    responses = exact.all_responses(cfg)
    index = exact.response_index(cfg, responses)
    np.testing.assert_array_equal(index, np.arange(cfg.n_responses))
    np.testing.assert_array_equal(exact.response_from_index(cfg, index), responses)
  jitted = jax.jit(exact.response_index, static_argnums=0)
  np.testing.assert_array_equal(jitted(SMALL, exact.all_responses(SMALL)[::-1]),
                                np.arange(SMALL.n_responses)[::-1])
  # Pad or prompt tokens are not responses.
  np.testing.assert_array_equal(
      exact.response_index(TINY, np.array([[0, 1], [1, 4], [3, 1]])), [-1, -1, 6])


def test_gold_reward():
  cfg = exact.ExactTaskConfig(n_prompts=3, vocab=4, length=3, reward_scale=2.5, reward_seed=7)
  r = exact.gold_reward(cfg)
  assert r.shape == (3, 64) and r.dtype == np.float32
  np.testing.assert_array_equal(r, exact.gold_reward(cfg))
  assert not np.allclose(r, exact.gold_reward(exact.ExactTaskConfig(
      n_prompts=3, vocab=4, length=3, reward_scale=2.5, reward_seed=8)))
  np.testing.assert_allclose(r.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(r.std(-1), 2.5, rtol=1e-5)
  # Prompts differ beyond an affine map (a prompt-dependent term).
  assert abs(np.corrcoef(r[0], r[1])[0, 1]) < 0.99
  assert len(np.unique(r[0])) == 64  # continuous: no ties

  def interaction(cfg):
    # Second differences over positions 0 and 1 vanish iff the reward is additive there.
    r_PxVxVxV = exact.gold_reward(cfg).reshape(cfg.n_prompts, cfg.vocab, cfg.vocab, cfg.vocab)
    d = r_PxVxVxV - r_PxVxVxV[:, :1] - r_PxVxVxV[:, :, :1] + r_PxVxVxV[:, :1, :1]
    return np.abs(d).max()

  assert interaction(cfg) > 0.1
  additive = exact.ExactTaskConfig(n_prompts=3, vocab=4, length=3, reward_kind='additive')
  assert interaction(additive) < 1e-5
  with pytest.raises(ConfigError):
    exact.gold_reward(exact.ExactTaskConfig(reward_kind='nope'))


def test_random_reference():
  cfg = SMALL
  logp = np.asarray(exact.random_reference(cfg))
  assert logp.shape == (3, 27) and logp.dtype == np.float32
  np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(logp, exact.random_reference(cfg))
  assert not np.allclose(logp, exact.random_reference(cfg, jax.random.PRNGKey(99)))
  # Independent positions: π(y) = Π_i π_i(y_i) with π_i the marginals.
  p = np.exp(logp.astype(np.float64)).reshape(3, 3, 3, 3)
  m0, m1, m2 = p.sum((2, 3)), p.sum((1, 3)), p.sum((1, 2))
  np.testing.assert_allclose(p, m0[:, :, None, None] * m1[:, None, :, None] * m2[:, None, None, :],
                             rtol=1e-4)

  def entropy(t):
    lp = np.asarray(exact.random_reference(exact.ExactTaskConfig(
        n_prompts=3, vocab=3, length=3, ref_temperature=t))).astype(np.float64)
    return -(np.exp(lp) * lp).sum(-1).mean()

  assert entropy(0.3) < entropy(1.0) < entropy(5.0) < 3 * math.log(3) + 1e-5


# ---------------------------------------------------------------------------------------------
# Exact quantities


class ExactQuantitiesTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.r = exact.gold_reward(TINY)
    self.ref = _random_logp(rng, (2, 9)).astype(np.float32)
    self.pi = _random_logp(rng, (2, 9)).astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.07, 0.5, 3.0)
  def test_against_numpy(self, beta):
    r, ref, pi = self.r, self.ref, self.pi
    np.testing.assert_allclose(self.variant(exact.expected_reward)(pi, r), np_expected_reward(pi, r),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(self.variant(exact.kl)(pi, ref), np_kl(pi, ref), rtol=1e-5, atol=1e-6)
    star = np_optimal_policy(ref, r, beta)
    np.testing.assert_allclose(self.variant(exact.optimal_policy)(ref, r, beta), star, rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(self.variant(exact.optimal_value)(ref, r, beta),
                               np_optimal_value(ref, r, beta), rtol=1e-5, atol=1e-6)
    np_j = np_expected_reward(pi, r) - beta * np_kl(pi, ref)
    np.testing.assert_allclose(self.variant(exact.objective)(pi, ref, r, beta), np_j, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(self.variant(exact.gap)(pi, ref, r, beta), beta * np_kl(pi, star),
                               rtol=1e-4, atol=1e-6)

  def test_kl_zero_probability_responses(self):
    pi = self.pi.copy()
    pi[:, :4] = -np.inf
    pi = pi - np.log(np.exp(pi).sum(-1, keepdims=True))
    np.testing.assert_allclose(exact.kl(pi, self.ref), np_kl(pi, self.ref), rtol=1e-5)
    grad = jax.grad(lambda lp: exact.kl(lp, self.ref).sum())(jnp.asarray(pi))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, :4], 0.0)
    ref = self.ref.copy()
    ref[0, 5] = -np.inf
    assert np.isinf(exact.kl(self.pi, ref)[0]) and np.isfinite(exact.kl(self.pi, ref)[1])


@pytest.mark.parametrize('beta', [0.05, 0.2, 1.0, 4.0])
def test_gap_is_difference_of_objectives(beta):
  rng = np.random.default_rng(1)
  r = exact.gold_reward(SMALL)
  ref = np.asarray(exact.random_reference(SMALL))
  optimum = exact.optimal_value(ref, r, beta)
  np.testing.assert_allclose(exact.objective(exact.optimal_policy(ref, r, beta), ref, r, beta),
                             optimum, rtol=1e-5, atol=1e-5)
  for _ in range(5):
    pi = _random_logp(rng, ref.shape, scale=2.0).astype(np.float32)
    difference = optimum - exact.objective(pi, ref, r, beta)
    np.testing.assert_allclose(exact.gap(pi, ref, r, beta), difference, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(exact.gap(pi, ref, r, beta)) > 0)


def test_optimal_policy_maximizes_objective():
  rng = np.random.default_rng(2)
  r = exact.gold_reward(SMALL)
  ref = np.asarray(exact.random_reference(SMALL))
  beta = 0.5
  star = exact.optimal_policy(ref, r, beta)
  best = np.asarray(exact.objective(star, ref, r, beta))
  np.testing.assert_allclose(exact.gap(star, ref, r, beta), 0.0, atol=1e-6)
  candidates = [_random_logp(rng, ref.shape, scale=s) for s in (0.5, 1.0, 3.0) for _ in range(100)]
  candidates += [ref, np.log(np.full(ref.shape, 1 / ref.shape[1]))]
  for pi in candidates:
    assert np.all(np.asarray(exact.objective(pi.astype(np.float32), ref, r, beta)) < best)
  for _ in range(50):
    noisy = np.asarray(star) + 0.1 * rng.standard_normal(ref.shape)
    noisy = (noisy - np.log(np.exp(noisy).sum(-1, keepdims=True))).astype(np.float32)
    loss = best - np.asarray(exact.objective(noisy, ref, r, beta))
    assert np.all(loss > 0)
    # Second order: the loss is β·KL(π‖π*), as the identity says.
    np.testing.assert_allclose(loss, exact.gap(noisy, ref, r, beta), rtol=0.05, atol=2e-6)


def test_frontier():
  r = exact.gold_reward(SMALL)
  ref = np.asarray(exact.random_reference(SMALL))
  betas = np.logspace(2, -2.5, 16).astype(np.float32)  # decreasing
  kl_K, reward_K = jax.jit(exact.frontier)(ref, r, betas)
  assert kl_K.shape == reward_K.shape == (16,)
  assert np.all(np.diff(kl_K) > 0) and np.all(np.diff(reward_K) > 0)
  for k, beta in enumerate(betas):
    star = np_optimal_policy(ref, r, float(beta))
    np.testing.assert_allclose(kl_K[k], np_kl(star, ref).mean(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(reward_K[k], np_expected_reward(star, r).mean(), rtol=1e-4, atol=1e-5)
  # The ends: π_ref at large β, the per-prompt argmax at small β.
  np.testing.assert_allclose(reward_K[0], np_expected_reward(ref, r).mean(), atol=0.02)
  assert kl_K[0] < 1e-3
  np.testing.assert_allclose(reward_K[-1], r.max(-1).mean(), atol=0.02)
  np.testing.assert_allclose(kl_K[-1], -ref[np.arange(3), r.argmax(-1)].mean(), atol=0.05)


# ---------------------------------------------------------------------------------------------
# Best-of-N


class BestOfNTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 2, 3)
  def test_against_enumeration(self, n):
    ref = np.asarray(exact.random_reference(TINY))
    r = exact.gold_reward(TINY)
    got = np.exp(self.variant(exact.best_of_n_logp)(ref, r, n))
    np.testing.assert_allclose(got, np_best_of_n_enumerated(ref, r, n), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(got, np_best_of_n_order_statistic(ref, r, n), atol=1e-6, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(2, 3)
  def test_ties(self, n):
    ref = np.asarray(exact.random_reference(TINY))
    # Three levels with several responses each, one zero-probability response.
    r = np.array([[0., 1., 0., 2., 1., 1., 2., 0., 1.], [1., 1., 1., 1., 0., 3., 0., 3., 1.]],
                 np.float32)
    ref = ref.copy()
    ref[1, 2] = -np.inf
    ref[1] -= np.log(np.exp(ref[1]).sum())
    got = np.exp(self.variant(exact.best_of_n_logp)(ref, r, n))
    np.testing.assert_allclose(got, np_best_of_n_enumerated(ref, r, n), atol=1e-6, rtol=1e-5)
    assert got[1, 2] == 0.0

  def test_n_equal_one_is_reference(self):
    ref = np.asarray(exact.random_reference(SMALL))
    np.testing.assert_allclose(best_of_n_logp(ref, exact.gold_reward(SMALL), 1), ref,
                               atol=2e-5)


def test_best_of_n_large_n_and_kl_bound():
  cfg = exact.ExactTaskConfig(n_prompts=3, vocab=4, length=3, ref_temperature=0.7)
  ref = np.asarray(exact.random_reference(cfg))
  r = exact.gold_reward(cfg)
  previous_kl = np.zeros(3)
  for n in (1, 2, 4, 16, 100, 1000, 10_000):
    logp = np.asarray(best_of_n_logp(ref, r, n))
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-5)
    expected = np_best_of_n_order_statistic(ref, r, n)
    np.testing.assert_allclose(np.exp(logp), expected, atol=1e-6)
    big = expected > 1e-9
    np.testing.assert_allclose(logp[big], np.log(expected[big]), rtol=2e-3, atol=2e-4)
    kl = np.asarray(exact.kl(logp, ref))
    assert np.all(kl <= float(exact.best_of_n_kl_bound(n)) + 1e-5)
    assert np.all(kl >= previous_kl - 1e-6)
    previous_kl = kl
  np.testing.assert_allclose(exact.best_of_n_kl_bound(1), 0.0, atol=1e-7)
  np.testing.assert_allclose(exact.best_of_n_kl_bound(2), math.log(2) - 0.5, rtol=1e-6)
  np.testing.assert_allclose(exact.best_of_n_kl_bound(64), math.log(64) - 63 / 64, rtol=1e-6)


def test_best_of_n_monte_carlo():
  rng = np.random.default_rng(4)
  ref = np.asarray(exact.random_reference(SMALL)).astype(np.float64)
  r = exact.gold_reward(SMALL)
  n, trials = 4, 100_000
  exact_p = np.exp(np.asarray(best_of_n_logp(ref, r, n)))
  for x in range(SMALL.n_prompts):
    p = np.exp(ref[x])
    draws = rng.choice(SMALL.n_responses, size=(trials, n), p=p / p.sum())
    best = draws[np.arange(trials), np.argmax(r[x][draws], axis=1)]
    freq = np.bincount(best, minlength=SMALL.n_responses) / trials
    tol = 5 * np.sqrt(exact_p[x] * (1 - exact_p[x]) / trials) + 1e-4
    assert np.all(np.abs(freq - exact_p[x]) <= tol)
    # And it is not π_ref.
    assert np.abs(freq - p).max() > 0.05


# ---------------------------------------------------------------------------------------------
# Scoring a policy on every response


def _make_logits_fn(cfg, seed=0):
  """A causal policy with a dependence on the whole history: a table of the current token, the
  prompt token, the position and the running token sum mod 3."""
  m = exact.model_vocab_size(cfg)
  rng = np.random.default_rng(seed)
  table, prompt_table = rng.standard_normal((m, m)), rng.standard_normal((m, m))
  pos_table, sum_table = rng.standard_normal((8, m)), rng.standard_normal((3, m))

  def logits_np(tokens):
    t = tokens.shape[1]
    return (table[tokens] + prompt_table[tokens[:, :1]] + pos_table[None, :t]
            + sum_table[np.cumsum(tokens, 1) % 3])

  def logits_fn(tokens, attention_mask, params=(table, prompt_table, pos_table, sum_table)):
    assert attention_mask.shape == tokens.shape
    table, prompt_table, pos_table, sum_table = (jnp.asarray(a, jnp.float32) for a in params)
    t = tokens.shape[1]
    logits = (table[tokens] + prompt_table[tokens[:, :1]] + pos_table[None, :t]
              + sum_table[jnp.cumsum(tokens, 1) % 3])
    return logits * attention_mask[..., None]

  return logits_np, logits_fn, (table, prompt_table, pos_table, sum_table)


@pytest.mark.parametrize('cfg', [TINY, SMALL, exact.ExactTaskConfig(n_prompts=2, vocab=4, length=1)])
def test_policy_logprobs_all(cfg):
  logits_np, logits_fn, params = _make_logits_fn(cfg)
  for restrict in (True, False):
    expected = np_policy_logprobs(logits_np, cfg, restrict)
    for share, batch_size in ((True, 4), (False, 4), (restrict, 1000)):
      got = exact.policy_logprobs_all(logits_fn, cfg, batch_size,
                                      restrict_to_response_symbols=restrict, share_prefixes=share)
      assert got.shape == (cfg.n_prompts, cfg.n_responses)
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    total = np.exp(expected).sum(-1)
    if restrict:
      np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    else:
      assert np.all(total < 0.99)
  # Jitted with the parameters as arguments.
  scored = jax.jit(lambda params: exact.policy_logprobs_all(
      lambda t, m: logits_fn(t, m, params), cfg, 5))(params)
  np.testing.assert_allclose(scored, np_policy_logprobs(logits_np, cfg, True), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bradley–Terry pairs


def test_sample_pairs_bt():
  cfg = TINY
  r = exact.gold_reward(cfg)
  ref = np.asarray(exact.random_reference(cfg))
  n_pairs = 60_000
  sample = jax.jit(exact.sample_pairs_bt, static_argnums=(1, 4))
  pairs = sample(jax.random.PRNGKey(0), cfg, ref, r, n_pairs)
  n = cfg.n_prompts * n_pairs
  prompt = np.asarray(pairs.prompt_index)
  chosen, rejected = np.asarray(pairs.chosen_index), np.asarray(pairs.rejected_index)
  assert pairs.chosen.shape == (n, cfg.length) and prompt.shape == (n,)
  np.testing.assert_array_equal(prompt, np.repeat([0, 1], n_pairs))
  np.testing.assert_array_equal(exact.response_index(cfg, pairs.chosen), chosen)
  np.testing.assert_array_equal(exact.response_index(cfg, pairs.rejected), rejected)
  np.testing.assert_array_equal(pairs.chosen_score, r[prompt, chosen])
  np.testing.assert_array_equal(pairs.rejected_score, r[prompt, rejected])
  np.testing.assert_allclose(pairs.p, _sigmoid(r[prompt, chosen] - r[prompt, rejected]), rtol=1e-5)

  checked = 0
  for x in range(cfg.n_prompts):
    p_ref = np.exp(ref[x].astype(np.float64))
    for a in range(cfg.n_responses):
      for b in range(a + 1, cfg.n_responses):
        a_wins = np.sum((prompt == x) & (chosen == a) & (rejected == b))
        b_wins = np.sum((prompt == x) & (chosen == b) & (rejected == a))
        count = a_wins + b_wins
        # The unordered pair is drawn i.i.d. from π_ref: probability 2 π(a) π(b).
        expected_count = n_pairs * 2 * p_ref[a] * p_ref[b]
        assert abs(count - expected_count) <= 5 * math.sqrt(expected_count) + 5
        if count >= 300:
          bt = _sigmoid(float(r[x, a]) - float(r[x, b]))
          assert abs(a_wins / count - bt) <= 5 * math.sqrt(bt * (1 - bt) / count)
          checked += 1
  assert checked >= 20

  # Labels are noisy, so the gold reward orders only a Bayes-accuracy share of the pairs.
  distinct = chosen != rejected
  agree = np.mean(pairs.chosen_score[distinct] > pairs.rejected_score[distinct])
  bayes = float(exact.bayes_accuracy(pairs.p[distinct]))
  assert 0.5 < bayes < 0.95
  assert abs(agree - bayes) < 0.01


def test_bayes_accuracy():
  p = np.array([0.1, 0.5, 0.8, 0.97], np.float32)
  np.testing.assert_allclose(exact.bayes_accuracy(p), np.mean([0.9, 0.5, 0.8, 0.97]), rtol=1e-6)


def test_preference_batch():
  cfg = TINY
  pairs = exact.sample_pairs_bt(jax.random.PRNGKey(1), cfg, exact.random_reference(cfg),
                                exact.gold_reward(cfg), 3)
  batch = exact.preference_batch(cfg, pairs)
  assert set(batch) == {f'{side}_{key}' for side in ('chosen', 'rejected')
                        for key in ('tokens', 'attention_mask', 'response_mask', 'score')}
  np.testing.assert_array_equal(batch['chosen_tokens'][:, 0], np.repeat([4, 5], 3))
  np.testing.assert_array_equal(batch['chosen_tokens'][:, 1:], pairs.chosen)
  np.testing.assert_array_equal(batch['rejected_tokens'][:, 1:], pairs.rejected)
  np.testing.assert_array_equal(batch['chosen_response_mask'], np.tile([0, 1, 1], (6, 1)))
  np.testing.assert_array_equal(batch['rejected_attention_mask'], np.ones((6, 3)))
  assert batch['chosen_score'].dtype == np.float32


def test_sample_pairs_bt_from_another_distribution():
  # `sample_logp` replaces π_ref as the distribution of the compared responses (uniform here);
  # the labels still follow the Bradley–Terry model of r.
  cfg = TINY
  r = exact.gold_reward(cfg)
  ref = exact.random_reference(cfg)
  n_pairs = 40_000
  pairs = exact.sample_pairs_bt(jax.random.key(5), cfg, ref, r, n_pairs, sample_logp=jnp.zeros_like(ref))
  both = np.concatenate([np.asarray(pairs.chosen_index), np.asarray(pairs.rejected_index)])
  freq = np.bincount(both, minlength=cfg.n_responses) / len(both)
  expected = 1.0 / cfg.n_responses
  assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected / len(both)))
  np.testing.assert_allclose(pairs.p, _sigmoid(np.asarray(pairs.chosen_score) - np.asarray(pairs.rejected_score)),
                             rtol=1e-5)
