"""PPO-side functions against slow NumPy loop references."""

from __future__ import annotations

import functools
import math

import chex
import jax
import numpy as np
from absl.testing import parameterized

from alignlab.losses import ppo

P, R = 4, 9  # canonical layout: left-padded prompt of P, right-padded response of R


def response_mask(lengths: list[int] | np.ndarray, *, p: int = P, r: int = R) -> np.ndarray:
  mask = np.zeros((len(lengths), p + r), np.float32)
  for i, n in enumerate(lengths):
    mask[i, p:p + n] = 1.0
  return mask


# ---- NumPy references -----------------------------------------------------------------------

def np_gae(rewards, values, mask, gamma, lam):
  advantages = np.zeros(rewards.shape)
  for b in range(rewards.shape[0]):
    steps = [t for t in range(rewards.shape[1]) if mask[b, t]]
    next_value, running = 0.0, 0.0
    for t in reversed(steps):
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      running = delta + gamma * lam * running
      advantages[b, t] = running
      next_value = values[b, t]
  returns = np.where(mask > 0, advantages + values, 0.0)
  return advantages, returns


def np_masked_stats(x, mask):
  vals = [float(v) for v, m in zip(x.ravel(), mask.ravel()) if m]
  n = len(vals)
  mean = sum(vals) / n
  var = sum((v - mean) ** 2 for v in vals) / (n - 1)
  return mean, var


class KLEstimatorTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_estimators_match_numpy(self):
    rng = np.random.default_rng(0)
    logp = -rng.uniform(0.01, 4.0, (3, 7)).astype(np.float32)
    ref = -rng.uniform(0.01, 4.0, (3, 7)).astype(np.float32)
    mask = (rng.uniform(size=(3, 7)) > 0.3).astype(np.float32)
    expected = {name: np.zeros((3, 7)) for name in ('k1', 'k2', 'k3')}
    for i in range(3):
      for t in range(7):
        if not mask[i, t]:
          continue
        log_rho = float(ref[i, t]) - float(logp[i, t])
        expected['k1'][i, t] = -log_rho
        expected['k2'][i, t] = 0.5 * log_rho ** 2
        expected['k3'][i, t] = (math.exp(log_rho) - 1.0) - log_rho
    for name, fn in ppo.KL_ESTIMATORS.items():
      got = self.variant(fn)(policy_logps=logp, ref_logps=ref, mask=mask)
      np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)

  def test_k1_and_k3_converge_to_the_exact_kl(self):
    p = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    q = np.array([0.3, 0.1, 0.2, 0.25, 0.15])
    exact = float(np.sum(p * np.log(p / q)))
    n = 200_000
    samples = np.random.default_rng(1).choice(len(p), size=n, p=p)
    logp = np.log(p)[samples].astype(np.float32)
    ref = np.log(q)[samples].astype(np.float32)
    log_rho = np.log(q / p)
    per_value = {'k1': -log_rho, 'k3': (q / p - 1.0) - log_rho}
    for name in ('k1', 'k3'):
      estimates = np.asarray(ppo.KL_ESTIMATORS[name](policy_logps=logp, ref_logps=ref))
      # 5 standard errors of the sample mean, from the estimator's exact variance under p.
      std = math.sqrt(float(np.sum(p * (per_value[name] - exact) ** 2)))
      self.assertLess(abs(estimates.mean() - exact), 5 * std / math.sqrt(n), name)
    k3 = np.asarray(ppo.kl_k3(policy_logps=logp, ref_logps=ref))
    self.assertTrue(np.all(k3 >= 0))


class GAETest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0))
  def test_matches_numpy_loop(self, gamma, lam):
    rng = np.random.default_rng(int(gamma * 100 + lam * 10))
    lengths = [R, 0, 3, 1, 7, 5]
    mask = response_mask(lengths)
    # Rewards and values are garbage off the response: they must not be read.
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    adv, ret = self.variant(functools.partial(ppo.gae, gamma=gamma, lam=lam))(
        rewards_BxT=rewards, values_BxT=values, mask_BxT=mask)
    adv_np, ret_np = np_gae(rewards.astype(np.float64), values.astype(np.float64), mask, gamma,
                            lam)
    np.testing.assert_allclose(adv, adv_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_np, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_random_masks_with_holes(self):
    rng = np.random.default_rng(3)
    mask = (rng.uniform(size=(5, 12)) > 0.4).astype(np.float32)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    adv, ret = self.variant(ppo.gae)(rewards_BxT=rewards, values_BxT=values, mask_BxT=mask,
                                     gamma=0.97, lam=0.9)
    adv_np, ret_np = np_gae(rewards.astype(np.float64), values.astype(np.float64), mask, 0.97,
                            0.9)
    np.testing.assert_allclose(adv, adv_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_np, rtol=1e-5, atol=1e-5)

  def test_monte_carlo_return_at_gamma_lambda_one(self):
    # γ = λ = 1: the return at the first response token is the sum of the response's rewards,
    # whatever the values are.
    mask = response_mask([4, 2])
    rewards = np.where(mask > 0, 1.0, 100.0).astype(np.float32)
    values = np.full(mask.shape, 7.0, np.float32)
    _, ret = ppo.gae(rewards_BxT=rewards, values_BxT=values, mask_BxT=mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(ret[:, P], [4.0, 2.0], rtol=1e-6)


class WhiteningTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_masked_stats_and_whitening(self):
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, (4, 10)).astype(np.float32)
    mask = (rng.uniform(size=(4, 10)) > 0.35).astype(np.float32)
    x_garbage = np.where(mask > 0, x, 1e6).astype(np.float32)
    mean, var = np_masked_stats(x, mask)
    np.testing.assert_allclose(self.variant(ppo.masked_mean)(x_garbage, mask), mean, rtol=1e-5)
    np.testing.assert_allclose(self.variant(ppo.masked_var)(x_garbage, mask), var, rtol=1e-4)
    for shift_mean in (True, False):
      got = self.variant(functools.partial(ppo.masked_whiten, shift_mean=shift_mean))(
          x_garbage, mask)
      expected = np.zeros(x.shape)
      for i in range(4):
        for j in range(10):
          if mask[i, j]:
            expected[i, j] = (x[i, j] - mean) / math.sqrt(var + 1e-8)
            if not shift_mean:
              expected[i, j] += mean
      np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
      got_mean, got_var = np_masked_stats(np.asarray(got), mask)
      np.testing.assert_allclose(got_mean, 0.0 if shift_mean else mean, atol=1e-5)
      np.testing.assert_allclose(got_var, 1.0, rtol=1e-4)

  def test_masked_mean_over_axis(self):
    x = np.array([[1.0, 2.0, 9.0], [4.0, 5.0, 6.0]], np.float32)
    mask = np.array([[1, 1, 0], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(ppo.masked_mean(x, mask, axis=-1), [1.5, 0.0])


class RewardsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_score_at_last_valid_token(self):
    rng = np.random.default_rng(5)
    lengths = [R, 2, 5, 1, 0]
    mask = response_mask(lengths)
    # Off the response the log-probs are garbage: reading them would show.
    logp = rng.normal(-2.0, 1.0, mask.shape).astype(np.float32)
    ref = rng.normal(-2.0, 1.0, mask.shape).astype(np.float32)
    score = np.array([10.0, 20.0, 30.0, 40.0, 50.0], np.float32)
    kl_coef = 0.2
    got = np.asarray(self.variant(ppo.per_token_rewards)(
        score_B=score, policy_logps_BxT=logp, ref_logps_BxT=ref, response_mask_BxT=mask,
        kl_coef=kl_coef))
    expected = np.zeros(mask.shape)
    for b, n in enumerate(lengths):
      for t in range(P, P + n):
        expected[b, t] = -kl_coef * (float(logp[b, t]) - float(ref[b, t]))
      if n:
        expected[b, P + n - 1] += score[b]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for b, n in enumerate(lengths):
      self.assertTrue(np.all(got[b, P + n:] == 0.0))  # nothing at padding
      self.assertTrue(np.all(got[b, :P] == 0.0))  # nothing on the prompt
    self.assertTrue(np.all(got[4] == 0.0))  # an empty response gets no score

  @chex.variants(with_jit=True, without_jit=True)
  def test_adaptive_kl_controller(self):
    update = self.variant(ppo.adaptive_kl_update)
    beta, target, n, horizon = 0.15, 6.0, 256, 10_000

    def new(kl):
      return float(update(kl_coef=beta, measured_kl=kl, target=target, n_steps=n,
                          horizon=horizon))

    self.assertGreater(new(7.0), beta)
    self.assertLess(new(5.0), beta)
    np.testing.assert_allclose(new(6.0), beta, rtol=1e-7)
    np.testing.assert_allclose(new(6.6), beta * (1 + 0.1 * n / horizon), rtol=1e-6)
    np.testing.assert_allclose(new(60.0), beta * (1 + 0.2 * n / horizon), rtol=1e-6)  # clipped
    np.testing.assert_allclose(new(0.0), beta * (1 - 0.2 * n / horizon), rtol=1e-6)  # clipped


class ClippedLossesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_policy_loss_matches_numpy(self):
    rng = np.random.default_rng(6)
    shape = (4, 9)
    old = -rng.uniform(0.1, 3.0, shape).astype(np.float32)
    new = (old + rng.normal(0.0, 0.3, shape)).astype(np.float32)
    adv = rng.normal(size=shape).astype(np.float32)
    mask = (rng.uniform(size=shape) > 0.3).astype(np.float32)
    eps = 0.2
    loss, metrics = self.variant(ppo.ppo_policy_loss)(logps=new, old_logps=old, advantages=adv,
                                                      mask=mask, clip_eps=eps)
    total, clipped, kl, count = 0.0, 0, 0.0, 0
    for i in range(shape[0]):
      for t in range(shape[1]):
        if not mask[i, t]:
          continue
        ratio = math.exp(float(new[i, t]) - float(old[i, t]))
        a = float(adv[i, t])
        l1, l2 = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
        total += max(l1, l2)
        clipped += l2 > l1
        kl += 0.5 * (float(new[i, t]) - float(old[i, t])) ** 2
        count += 1
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
    np.testing.assert_allclose(metrics['policy/clipfrac'], clipped / count, rtol=1e-6)
    np.testing.assert_allclose(metrics['policy/approxkl'], kl / count, rtol=1e-5)
    np.testing.assert_allclose(metrics['policy/loss_sum'], total, rtol=1e-5)
    self.assertEqual(float(metrics['policy/count']), count)
    self.assertTrue(0 < clipped < count)  # the fixture exercises both branches

  @chex.variants(with_jit=True, without_jit=True)
  def test_value_loss_matches_numpy(self):
    rng = np.random.default_rng(7)
    shape = (3, 11)
    old = rng.normal(size=shape).astype(np.float32)
    values = (old + rng.normal(0.0, 0.4, shape)).astype(np.float32)
    returns = rng.normal(size=shape).astype(np.float32)
    mask = (rng.uniform(size=shape) > 0.3).astype(np.float32)
    eps = 0.2
    loss, metrics = self.variant(ppo.ppo_value_loss)(values=values, old_values=old,
                                                     returns=returns, mask=mask, clip_eps=eps)
    total, clipped, count = 0.0, 0, 0
    for i in range(shape[0]):
      for t in range(shape[1]):
        if not mask[i, t]:
          continue
        v, v_old, g = float(values[i, t]), float(old[i, t]), float(returns[i, t])
        v_clip = v_old + min(max(v - v_old, -eps), eps)
        l1, l2 = (v - g) ** 2, (v_clip - g) ** 2
        total += 0.5 * max(l1, l2)
        clipped += l2 > l1
        count += 1
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
    np.testing.assert_allclose(metrics['val/loss'], total / count, rtol=1e-5)
    np.testing.assert_allclose(metrics['val/clipfrac'], clipped / count, rtol=1e-6)
    self.assertTrue(0 < clipped < count)

  def test_policy_gradient_is_zero_where_clipped(self):
    # A > 0 and ratio above 1 + ε: the clipped term is active and carries no gradient.
    logps = np.array([[np.log(1.5), np.log(1.1)]], np.float32)
    grad = jax.grad(lambda lp: ppo.ppo_policy_loss(
        logps=lp, old_logps=np.zeros((1, 2), np.float32), advantages=np.ones((1, 2), np.float32),
        mask=np.ones((1, 2), np.float32), clip_eps=0.2)[0])(logps)
    self.assertEqual(float(grad[0, 0]), 0.0)
    np.testing.assert_allclose(grad[0, 1], -1.1 / 2, rtol=1e-5)


class AdvantagesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_rloo_and_grpo_match_numpy(self):
    rewards = np.random.default_rng(8).normal(size=(3, 5)).astype(np.float32)
    rloo = np.zeros(rewards.shape)
    grpo = np.zeros(rewards.shape)
    for b in range(3):
      row = [float(v) for v in rewards[b]]
      mean = sum(row) / 5
      std = math.sqrt(sum((v - mean) ** 2 for v in row) / 4)
      for i in range(5):
        rloo[b, i] = row[i] - sum(row[j] for j in range(5) if j != i) / 4
        grpo[b, i] = (row[i] - mean) / (std + 1e-4)
    np.testing.assert_allclose(self.variant(ppo.rloo_advantages)(rewards_BxN=rewards), rloo,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(self.variant(ppo.grpo_advantages)(rewards_BxN=rewards), grpo,
                               rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_entropy_matches_numpy(self):
    logits = np.random.default_rng(9).normal(0.0, 2.0, (2, 3, 7)).astype(np.float32)
    logits[0, 0, :3] = -np.inf  # filtered tokens
    expected = np.zeros((2, 3))
    for i in range(2):
      for t in range(3):
        z = logits[i, t].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        expected[i, t] = -sum(pk * math.log(pk) for pk in p if pk > 0)
    np.testing.assert_allclose(self.variant(ppo.entropy_from_logits)(logits), expected,
                               rtol=1e-5, atol=1e-6)
