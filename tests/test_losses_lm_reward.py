"""Token NLL, unlikelihood terms, log1mexp and the Bradley–Terry loss against NumPy."""

from __future__ import annotations

import functools
import math

import chex
import jax
import numpy as np

from alignlab.losses import lm, reward


def np_log_sigmoid(x: float) -> float:
  return -float(np.log1p(np.exp(-x)))


class LMTest(chex.TestCase):

  def _batch(self, seed, b=5, t=9):
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, t), np.float32)
    for i, n in enumerate(rng.integers(0, t - 2, b)):
      mask[i, 2:2 + n] = 1.0  # 2 prompt positions, then a right-padded response
    mask[0, 2:] = 1.0
    logps = (-rng.uniform(0.01, 5.0, (b, t)) * mask).astype(np.float32)
    return logps, mask

  @chex.variants(with_jit=True, without_jit=True)
  def test_nll_matches_numpy(self):
    logps, mask = self._batch(0)
    total, count = 0.0, 0
    for i in range(logps.shape[0]):
      for t in range(logps.shape[1]):
        if mask[i, t]:
          total -= float(logps[i, t])
          count += 1
    loss, metrics = self.variant(lm.nll)(token_logps_BxT=logps, mask_BxT=mask)
    np.testing.assert_allclose(loss, total / count, rtol=1e-6)
    np.testing.assert_allclose(metrics['loss_sum'], total, rtol=1e-6)
    self.assertEqual(float(metrics['count']), count)

  def test_nll_padding_and_accumulation(self):
    logps, mask = self._batch(1, b=8)
    loss, _ = lm.nll(token_logps_BxT=logps, mask_BxT=mask)
    # Extra padding columns and rows holding garbage change nothing.
    padded_logps = np.pad(logps, ((0, 2), (0, 3)), constant_values=-50.0)
    padded_mask = np.pad(mask, ((0, 2), (0, 3)))
    np.testing.assert_allclose(lm.nll(token_logps_BxT=padded_logps, mask_BxT=padded_mask)[0],
                               loss, rtol=1e-6)

    def full(x):
      return lm.nll(token_logps_BxT=x, mask_BxT=mask)[0]

    def accumulated(x):
      parts = [lm.nll(token_logps_BxT=x[2 * c:2 * c + 2], mask_BxT=mask[2 * c:2 * c + 2])[1]
               for c in range(4)]
      return sum(p['loss_sum'] for p in parts) / sum(p['count'] for p in parts)

    loss_acc, grad_acc, grad_full = jax.jit(
        lambda x: (accumulated(x), jax.grad(accumulated)(x), jax.grad(full)(x)))(logps)
    np.testing.assert_allclose(loss_acc, loss, rtol=1e-6)
    np.testing.assert_allclose(grad_acc, grad_full, rtol=1e-6)
    # The mean of per-chunk means is not the token mean: the test can tell them apart.
    chunk_means = [lm.nll(token_logps_BxT=logps[2 * c:2 * c + 2],
                          mask_BxT=mask[2 * c:2 * c + 2])[0] for c in range(4)]
    self.assertGreater(abs(float(np.mean(chunk_means)) - float(loss)), 1e-3)

  @chex.variants(with_jit=True, without_jit=True)
  def test_unlikelihood_terms_match_numpy(self):
    logps, mask = self._batch(2)
    expected = np.zeros(logps.shape)
    for i in range(logps.shape[0]):
      for t in range(logps.shape[1]):
        if mask[i, t]:
          expected[i, t] = -math.log(1.0 - math.exp(float(logps[i, t])))
    got = self.variant(lm.unlikelihood_token_terms)(token_logps_BxT=logps, mask_BxT=mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_masked_sum_count(self):
    values = np.array([1.0, np.inf, np.nan, 3.0], np.float32)  # non-finite only in padding
    mean, total, count = self.variant(lm.masked_sum_count)(values, np.array([1, 0, 0, 1.0]))
    np.testing.assert_allclose([mean, total, count], [2.0, 4.0, 2.0])
    mean, total, count = self.variant(lm.masked_sum_count)(values, np.zeros(4))
    np.testing.assert_array_equal([mean, total, count], [0.0, 0.0, 0.0])  # empty: 0, not NaN

  @chex.variants(with_jit=True, without_jit=True)
  def test_log1mexp(self):
    x = np.array([-1e-4, -1e-3, -0.1, -0.6, -0.7, -2.0, -20.0, -80.0], np.float64)
    # float64 and whichever form is accurate at that x (expm1(−80) rounds to −1 in float64).
    expected = np.array([math.log(-math.expm1(v)) if v > -1 else math.log1p(-math.exp(v))
                         for v in x])
    got = self.variant(lm.log1mexp)(x.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # Clamped at p = 1 − 1e-5, finite value and gradient at 0.
    grad = self.variant(jax.grad(lambda v: lm.log1mexp(v).sum()))(
        np.array([0.0, -1e-8, -0.3, -5.0], np.float32))
    self.assertTrue(np.all(np.isfinite(grad)))
    np.testing.assert_allclose(grad[2:], [-math.exp(-0.3) / -math.expm1(-0.3),
                                          -math.exp(-5.0) / -math.expm1(-5.0)], rtol=1e-4)
    np.testing.assert_allclose(lm.log1mexp(np.float32(0.0)), math.log(1e-5), rtol=1e-3)


class BradleyTerryTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    rng = np.random.default_rng(3)
    chosen = rng.normal(size=7).astype(np.float32)
    rejected = rng.normal(size=7).astype(np.float32)
    rejected[2] = chosen[2]  # a tie is not a correct ranking
    mask = np.array([1, 1, 1, 0, 1, 1, 0], np.float32)
    per_example_margin = rng.uniform(0.0, 1.0, 7).astype(np.float32)
    for margin in (None, 0.5, per_example_margin):
      for example_mask in (None, mask):
        m = np.ones(7) if example_mask is None else example_mask
        offsets = np.zeros(7) if margin is None else np.broadcast_to(margin, (7,))
        total, acc, diff = 0.0, 0.0, 0.0
        for i in range(7):
          if m[i]:
            d = float(chosen[i]) - float(rejected[i])
            total -= np_log_sigmoid(d - float(offsets[i]))
            acc += float(d > 0)
            diff += d
        fn = functools.partial(reward.bradley_terry, margin=margin)
        loss, metrics = self.variant(fn)(chosen_rewards=chosen, rejected_rewards=rejected,
                                         example_mask=example_mask)
        np.testing.assert_allclose(loss, total / m.sum(), rtol=1e-5)
        np.testing.assert_allclose(metrics['accuracy'], acc / m.sum(), rtol=1e-6)
        np.testing.assert_allclose(metrics['margin'], diff / m.sum(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics['loss_sum'], total, rtol=1e-5)

  def test_gradient(self):
    chosen = np.array([0.3, -1.0], np.float32)
    rejected = np.array([0.1, 0.5], np.float32)
    grad = jax.grad(lambda c: reward.bradley_terry(chosen_rewards=c,
                                                   rejected_rewards=rejected)[0])(chosen)
    sig = 1.0 / (1.0 + np.exp(chosen - rejected))  # σ(r_l − r_w)
    np.testing.assert_allclose(grad, -sig / 2, rtol=1e-5)
