"""Preference losses against slow NumPy references, plus the invariances the trainer relies on
(padding examples, micro-batch accumulation, the common calling convention)."""

from __future__ import annotations

import functools
import math

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized

from alignlab.losses import preference
from alignlab.losses.preference import COMMON_KWARGS, PREFERENCE_LOSSES, kto_reference_point

BUILT_IN = ('dpo', 'cdpo', 'robust', 'ipo', 'hinge', 'simpo', 'orpo', 'kto', 'unlikelihood')
P, R = 3, 8  # prompt and response lengths of the canonical layout; T = P + R
BOOL_HPARAMS = ('reference_free', 'length_normalized')


def make_batch(seed: int, b: int) -> dict[str, np.ndarray]:
  """Every common keyword argument, consistent with each other: summed log-probs are the sums
  of the per-token ones, lengths are the mask sums."""
  rng = np.random.default_rng(seed)
  batch = {}
  for side in ('chosen', 'rejected'):
    lengths = rng.integers(1, R + 1, b)
    mask = np.zeros((b, P + R), np.float32)
    for i, n in enumerate(lengths):
      mask[i, P:P + n] = 1.0
    token_logps = (-rng.uniform(0.01, 3.0, (b, P + R)) * mask).astype(np.float32)
    policy = token_logps.sum(-1)
    batch[f'policy_{side}_logps'] = policy.astype(np.float32)
    batch[f'ref_{side}_logps'] = (policy + rng.normal(0.0, 2.0, b)).astype(np.float32)
    batch[f'{side}_lengths'] = lengths.astype(np.int32)
    batch[f'policy_{side}_token_logps_BxT'] = token_logps
    batch[f'{side}_response_mask_BxT'] = mask
  batch['kl_policy_logps'] = (-rng.uniform(5.0, 20.0, b)).astype(np.float32)
  batch['kl_ref_logps'] = (batch['kl_policy_logps'] + rng.normal(-1.0, 1.5, b)).astype(np.float32)
  return batch


# ---- slow NumPy references, written from the papers' formulas -------------------------------

def np_log_sigmoid(x: float) -> float:
  return -float(np.log1p(np.exp(-x)))


def np_sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x))


def np_reference(name: str, batch: dict[str, np.ndarray], beta: float, hp: dict,
                 example_mask: np.ndarray | None) -> dict[str, float]:
  """Per-example loop; returns the loss and the metrics the function must report."""
  b = len(batch['policy_chosen_logps'])
  m = np.ones(b) if example_mask is None else np.asarray(example_mask, np.float64)
  pc = batch['policy_chosen_logps'].astype(np.float64)
  pr = batch['policy_rejected_logps'].astype(np.float64)
  rc = batch['ref_chosen_logps'].astype(np.float64)
  rr = batch['ref_rejected_logps'].astype(np.float64)
  lc = batch['chosen_lengths'].astype(np.float64)
  lr = batch['rejected_lengths'].astype(np.float64)
  if hp.get('reference_free'):
    rc, rr = np.zeros(b), np.zeros(b)

  losses, rew_c, rew_r = [], [], []
  for i in range(b):
    if name in ('dpo', 'cdpo', 'robust', 'ipo', 'hinge', 'kto', 'unlikelihood'):
      rew_c.append(beta * (pc[i] - rc[i]))
      rew_r.append(beta * (pr[i] - rr[i]))
    h = (pc[i] - rc[i]) - (pr[i] - rr[i])
    if name == 'dpo':
      losses.append(-np_log_sigmoid(beta * h))
    elif name == 'cdpo':
      e = hp['label_smoothing']
      losses.append(-(1 - e) * np_log_sigmoid(beta * h) - e * np_log_sigmoid(-beta * h))
    elif name == 'robust':
      e = hp['label_smoothing']
      losses.append(((1 - e) * -np_log_sigmoid(beta * h) - e * -np_log_sigmoid(-beta * h))
                    / (1 - 2 * e))
    elif name == 'ipo':
      if hp.get('length_normalized'):
        h = (pc[i] - rc[i]) / lc[i] - (pr[i] - rr[i]) / lr[i]
      losses.append((h - 1 / (2 * beta)) ** 2)
    elif name == 'hinge':
      losses.append(max(0.0, 1 - beta * h))
    elif name == 'simpo':
      rew_c.append(beta * pc[i] / lc[i])
      rew_r.append(beta * pr[i] / lr[i])
      losses.append(-np_log_sigmoid(rew_c[-1] - rew_r[-1] - hp['gamma']))
    elif name == 'orpo':
      mc, mr = pc[i] / lc[i], pr[i] / lr[i]
      odds_c = math.exp(mc) / (1 - math.exp(mc))
      odds_r = math.exp(mr) / (1 - math.exp(mr))
      rew_c.append(math.log(odds_c))
      rew_r.append(math.log(odds_r))
      losses.append(-mc - hp['lambda_'] * np_log_sigmoid(math.log(odds_c / odds_r)))
    elif name == 'unlikelihood':
      tc = batch['policy_chosen_token_logps_BxT'][i].astype(np.float64)
      tr = batch['policy_rejected_token_logps_BxT'][i].astype(np.float64)
      mc_t = batch['chosen_response_mask_BxT'][i]
      mr_t = batch['rejected_response_mask_BxT'][i]
      nll = sum(-tc[t] for t in range(len(tc)) if mc_t[t])
      ul = sum(-math.log(1 - math.exp(tr[t])) for t in range(len(tr)) if mr_t[t])
      if hp.get('length_normalized', True):
        nll, ul = nll / mc_t.sum(), ul / mr_t.sum()
      losses.append(nll + hp['alpha'] * ul)

  out = {}
  if name == 'kto':
    kl = batch['kl_policy_logps'].astype(np.float64) - batch['kl_ref_logps']
    z0 = max(0.0, sum(kl[i] * m[i] for i in range(b)) / m.sum())
    total, count = 0.0, 0.0
    for i in range(b):
      if m[i]:
        total += hp['desirable_weight'] * (1 - np_sigmoid(beta * ((pc[i] - rc[i]) - z0)))
        total += hp['undesirable_weight'] * (1 - np_sigmoid(beta * (z0 - (pr[i] - rr[i]))))
        count += 2
    out['loss'], out['loss_sum'], out['count'], out['kl'] = total / count, total, count, z0
  else:
    total = sum(losses[i] for i in range(b) if m[i])
    out['loss'], out['loss_sum'], out['count'] = total / m.sum(), total, m.sum()

  def mean(xs):
    return sum(xs[i] for i in range(b) if m[i]) / m.sum()

  out['rewards/chosen'] = mean(rew_c)
  out['rewards/rejected'] = mean(rew_r)
  out['rewards/margin'] = mean([rew_c[i] - rew_r[i] for i in range(b)])
  out['rewards/accuracy'] = mean([float(rew_c[i] > rew_r[i]) for i in range(b)])
  out['logps/chosen'] = mean(pc)
  out['logps/rejected'] = mean(pr)
  return out


CASES = [
    ('dpo', 'dpo', {}),
    ('dpo_reference_free', 'dpo', {'reference_free': True}),
    ('cdpo', 'cdpo', {'label_smoothing': 0.2}),
    ('robust', 'robust', {'label_smoothing': 0.2}),
    ('ipo', 'ipo', {}),
    ('ipo_length_normalized', 'ipo', {'length_normalized': True}),
    ('hinge', 'hinge', {}),
    ('hinge_reference_free', 'hinge', {'reference_free': True}),
    ('simpo', 'simpo', {'gamma': 0.7}),
    ('orpo', 'orpo', {'lambda_': 0.3}),
    ('kto', 'kto', {'desirable_weight': 1.3, 'undesirable_weight': 0.8}),
    ('unlikelihood', 'unlikelihood', {'alpha': 0.4}),
    ('unlikelihood_summed', 'unlikelihood', {'alpha': 0.4, 'length_normalized': False}),
]
NAMED_CASES = [(case, name, hp) for case, name, hp in CASES]
# The invariance tests exercise the reduction, which every variant of a loss shares: one case
# per loss keeps them fast.
ONE_PER_LOSS = [case for case in NAMED_CASES if case[0] in BUILT_IN]


def grad_keys(name: str) -> tuple[str, str]:
  """The policy inputs a loss is differentiated through: per-token log-probs for
  unlikelihood, summed log-probs for the others."""
  if name == 'unlikelihood':
    return 'policy_chosen_token_logps_BxT', 'policy_rejected_token_logps_BxT'
  return 'policy_chosen_logps', 'policy_rejected_logps'


def bind(name: str, hp: dict):
  """The loss with its boolean hyperparameters bound (static under jit); the float ones are
  returned separately so that they are traced, as in a vmapped sweep."""
  static = {k: v for k, v in hp.items() if k in BOOL_HPARAMS}
  traced = {k: v for k, v in hp.items() if k not in BOOL_HPARAMS}
  return functools.partial(PREFERENCE_LOSSES[name], **static), traced


class PreferenceLossesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*NAMED_CASES)
  def test_matches_numpy_reference(self, name, hp):
    beta = 0.3
    batch = make_batch(0, 7)
    fn, traced = bind(name, hp)
    for example_mask in (None, np.array([1, 0, 1, 1, 0, 1, 1], np.float32)):
      loss, metrics = self.variant(fn)(**batch, beta=beta, example_mask=example_mask, **traced)
      ref = np_reference(name, batch, beta, hp, example_mask)
      np.testing.assert_allclose(loss, ref['loss'], rtol=2e-5, atol=1e-6)
      for key, value in ref.items():
        if key != 'loss':
          np.testing.assert_allclose(metrics[key], value, rtol=2e-5, atol=1e-5, err_msg=key)

  def test_reference_fixture_is_not_degenerate(self):
    # Both outcomes of the accuracy and of the hinge occur, so the references above test them.
    batch = make_batch(0, 7)
    ref = np_reference('dpo', batch, 0.3, {}, None)
    self.assertTrue(0.0 < ref['rewards/accuracy'] < 1.0)
    h = ((batch['policy_chosen_logps'] - batch['ref_chosen_logps'])
         - (batch['policy_rejected_logps'] - batch['ref_rejected_logps']))
    self.assertTrue(np.any(0.3 * h > 1.0) and np.any(0.3 * h < 1.0))

  @chex.variants(with_jit=True, without_jit=True)
  def test_dpo_gradient_is_the_papers_form(self):
    beta = 0.3
    batch = make_batch(1, 6)
    mask = np.array([1, 1, 0, 1, 1, 1], np.float32)

    def loss_of(chosen, rejected):
      args = dict(batch, policy_chosen_logps=chosen, policy_rejected_logps=rejected)
      return PREFERENCE_LOSSES['dpo'](**args, beta=beta, example_mask=mask)[0]

    grad_c, grad_r = self.variant(jax.grad(loss_of, argnums=(0, 1)))(
        batch['policy_chosen_logps'], batch['policy_rejected_logps'])
    r_w = beta * (batch['policy_chosen_logps'].astype(np.float64) - batch['ref_chosen_logps'])
    r_l = beta * (batch['policy_rejected_logps'].astype(np.float64) - batch['ref_rejected_logps'])
    weight = np.array([np_sigmoid(x) for x in r_l - r_w]) * mask / mask.sum()
    np.testing.assert_allclose(grad_c, -beta * weight, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_r, beta * weight, rtol=1e-5, atol=1e-7)
    self.assertEqual(float(grad_c[2]), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_dpo_at_reference_and_strict_accuracy(self):
    batch = make_batch(2, 7)
    at_ref = dict(batch, ref_chosen_logps=batch['policy_chosen_logps'],
                  ref_rejected_logps=batch['policy_rejected_logps'])
    loss, metrics = self.variant(PREFERENCE_LOSSES['dpo'])(**at_ref, beta=0.1)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
    self.assertEqual(float(metrics['rewards/accuracy']), 0.0)  # every pair is a tie
    self.assertEqual(float(metrics['rewards/margin']), 0.0)

    # Chosen implicit reward shifted by d: d > 0 wins, d < 0 loses, d = 0 is a tie (not a win),
    # and the masked pair (index 6, a win) must not be counted.
    d = np.array([1.0, -1.0, 0.0, 2.0, 0.0, -0.5, 3.0], np.float32)
    mask = np.array([1, 1, 1, 1, 1, 1, 0], np.float32)
    shifted = dict(at_ref, ref_chosen_logps=batch['policy_chosen_logps'] - d)
    _, metrics = self.variant(PREFERENCE_LOSSES['dpo'])(**shifted, beta=0.1, example_mask=mask)
    self.assertAlmostEqual(float(metrics['rewards/accuracy']), 2.0 / 6.0, places=6)
    np.testing.assert_allclose(metrics['rewards/margin'], 0.1 * d[:6].mean(), rtol=1e-5)

  @parameterized.named_parameters(*ONE_PER_LOSS)
  def test_padding_examples_change_nothing(self, name, hp):
    beta = 0.3
    base = make_batch(3, 5)
    garbage = make_batch(4, 4)
    for key in ('policy_chosen_logps', 'policy_rejected_logps', 'kl_policy_logps'):
      garbage[key] = garbage[key] + 60.0  # positive log-probs: nonsense a loss could trip on
    garbage['policy_rejected_token_logps_BxT'] = np.full((4, P + R), 5.0, np.float32)
    for key in ('chosen_response_mask_BxT', 'rejected_response_mask_BxT'):
      garbage[key] = np.zeros_like(garbage[key])
    zeros = {k: np.zeros_like(v[:2]) for k, v in base.items()}  # all-padding examples
    order = np.array([0, 5, 1, 9, 2, 3, 6, 10, 4, 7, 8])  # pads interleaved with real pairs
    padded = {k: np.concatenate([base[k], garbage[k], zeros[k]])[order] for k in base}
    mask = np.concatenate([np.ones(5), np.zeros(6)]).astype(np.float32)[order]

    fn, traced = bind(name, hp)
    key_c, key_r = grad_keys(name)

    def run(batch, example_mask):
      def loss_of(chosen, rejected):
        args = dict(batch, **{key_c: chosen, key_r: rejected})
        return fn(**args, beta=beta, example_mask=example_mask, **traced)
      (loss, metrics), grads = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(
          batch[key_c], batch[key_r])
      return loss, metrics, grads

    (loss, metrics, grads), (loss_p, metrics_p, grads_p) = jax.jit(
        lambda: (run(base, None), run(padded, mask)))()
    np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
    for key in metrics:
      np.testing.assert_allclose(metrics_p[key], metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)
    inverse = np.argsort(order)
    for g, g_p in zip(grads, grads_p):
      self.assertTrue(np.all(np.isfinite(g_p)))
      self.assertTrue(np.any(np.abs(g) > 0))
      np.testing.assert_allclose(g_p[inverse][:5], g, rtol=1e-5, atol=1e-7)
      np.testing.assert_array_equal(g_p[inverse][5:], 0.0)

  @parameterized.named_parameters(*ONE_PER_LOSS)
  def test_micro_batches_accumulate_exactly(self, name, hp):
    beta = 0.3
    batch = make_batch(5, 8)
    mask = np.array([1, 0, 0, 0, 1, 1, 0, 1], np.float32)  # chunk 1 holds no real pair
    fn, traced = bind(name, hp)
    extra = dict(traced)
    if name == 'kto':  # z0 is a batch statistic: computed once on the whole batch
      extra['kl_reference_point'] = kto_reference_point(
          kl_policy_logps=batch['kl_policy_logps'], kl_ref_logps=batch['kl_ref_logps'],
          example_mask=mask)

    key_c, key_r = grad_keys(name)

    def full_loss(chosen, rejected):
      args = dict(batch, **{key_c: chosen, key_r: rejected})
      return fn(**args, beta=beta, example_mask=mask, **extra)[0]

    def accumulated(chosen, rejected):
      sums, counts = [], []
      for c in range(4):
        s = slice(2 * c, 2 * c + 2)
        args = {k: v[s] for k, v in batch.items()}
        args.update({key_c: chosen[s], key_r: rejected[s]})
        _, metrics = fn(**args, beta=beta, example_mask=mask[s], **extra)
        sums.append(metrics['loss_sum'])
        counts.append(metrics['count'])
      return sum(sums) / sum(counts)

    @jax.jit
    def both(chosen, rejected):
      return (full_loss(chosen, rejected), accumulated(chosen, rejected),
              jax.grad(full_loss, argnums=(0, 1))(chosen, rejected),
              jax.grad(accumulated, argnums=(0, 1))(chosen, rejected))

    loss_full, loss_acc, grads_full, grads_acc = both(batch[key_c], batch[key_r])
    np.testing.assert_allclose(loss_acc, loss_full, rtol=1e-6)
    for g_acc, g_full in zip(grads_acc, grads_full):
      np.testing.assert_allclose(g_acc, g_full, rtol=1e-5, atol=1e-8)
      self.assertTrue(np.any(np.abs(g_full) > 0))

  def test_common_convention(self):
    batch = make_batch(6, 4)
    self.assertTrue(set(batch) | {'beta', 'example_mask', 'kl_example_mask',
                                  'kl_reference_point'} == COMMON_KWARGS)
    required = {'rewards/chosen', 'rewards/rejected', 'rewards/margin', 'rewards/accuracy',
                'logps/chosen', 'logps/rejected', 'loss_sum', 'count'}
    for name in BUILT_IN:  # not the whole dict: other tests register losses of their own
      loss, metrics = jax.jit(PREFERENCE_LOSSES[name])(**batch, beta=0.1, example_mask=np.ones(4, np.float32))
      self.assertEqual(loss.shape, ())
      self.assertTrue(np.isfinite(loss), name)
      self.assertTrue(required <= set(metrics), name)

  def test_unknown_or_missing_arguments_raise(self):
    batch = make_batch(7, 3)
    with pytest.raises(TypeError, match='label_smoothing'):
      PREFERENCE_LOSSES['dpo'](**batch, beta=0.1, label_smoothing=0.1)  # dpo has no ε
    with pytest.raises(TypeError, match='gama'):
      PREFERENCE_LOSSES['simpo'](**batch, beta=0.1, gama=0.5)
    no_ref = {k: v for k, v in batch.items() if not k.startswith('ref_')}
    with pytest.raises(ValueError, match='ref_chosen_logps'):
      PREFERENCE_LOSSES['ipo'](**no_ref, beta=0.1)
    no_len = {k: v for k, v in batch.items() if not k.endswith('_lengths')}
    with pytest.raises(ValueError, match='lengths'):
      PREFERENCE_LOSSES['simpo'](**no_len, beta=0.1)
    no_kl = {k: v for k, v in batch.items() if not k.startswith('kl_')}
    with pytest.raises(ValueError, match='kl_policy_logps'):
      PREFERENCE_LOSSES['kto'](**no_kl, beta=0.1)
    with pytest.raises(ValueError, match='label_smoothing'):
      PREFERENCE_LOSSES['robust'](**batch, beta=0.1, label_smoothing=0.5)
    # reference_free needs no reference at all.
    loss, _ = PREFERENCE_LOSSES['dpo'](**no_ref, beta=0.1, reference_free=True)
    self.assertTrue(np.isfinite(loss))

  def test_kto_reference_point_is_clamped_and_detached(self):
    batch = make_batch(8, 6)
    below = dict(batch, kl_ref_logps=batch['kl_policy_logps'] + 3.0)  # mean log-ratio −3
    _, metrics = PREFERENCE_LOSSES['kto'](**below, beta=0.1)
    self.assertEqual(float(metrics['kl']), 0.0)
    above = dict(batch, kl_ref_logps=batch['kl_policy_logps'] - 2.0)
    _, metrics = PREFERENCE_LOSSES['kto'](**above, beta=0.1)
    np.testing.assert_allclose(metrics['kl'], 2.0, rtol=1e-6)

    def loss_of(kl_policy_logps):
      return PREFERENCE_LOSSES['kto'](**dict(above, kl_policy_logps=kl_policy_logps),
                                      beta=0.1)[0]
    np.testing.assert_array_equal(jax.grad(loss_of)(above['kl_policy_logps']), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_kto_unpaired(self):
    beta, z0 = 0.5, 0.7
    batch = make_batch(9, 6)
    chosen_mask = np.array([1, 1, 0, 1, 0, 0], np.float32)
    rejected_mask = np.array([1, 0, 1, 1, 1, 1], np.float32)
    loss, metrics = self.variant(PREFERENCE_LOSSES['kto'])(
        **batch, beta=beta, kl_reference_point=z0, desirable_weight=1.5,
        chosen_example_mask=chosen_mask, rejected_example_mask=rejected_mask)
    total = 0.0
    for i in range(6):
      rc = float(batch['policy_chosen_logps'][i]) - float(batch['ref_chosen_logps'][i])
      rr = float(batch['policy_rejected_logps'][i]) - float(batch['ref_rejected_logps'][i])
      total += chosen_mask[i] * 1.5 * (1 - np_sigmoid(beta * (rc - z0)))
      total += rejected_mask[i] * (1 - np_sigmoid(beta * (z0 - rr)))
    np.testing.assert_allclose(metrics['count'], 8.0)
    np.testing.assert_allclose(loss, total / 8.0, rtol=1e-5)
    expected = (beta * (batch['policy_rejected_logps'] - batch['ref_rejected_logps'])
                * rejected_mask).sum() / rejected_mask.sum()
    np.testing.assert_allclose(metrics['rewards/rejected'], expected, rtol=1e-5)


def test_dpo_family_losses_differ():
  # cDPO and rDPO share ε but are different functions; ε = 0 makes both DPO.
  batch = make_batch(10, 5)
  dpo_loss = preference.dpo(**batch, beta=0.2)[0]
  for name in ('cdpo', 'robust'):
    np.testing.assert_allclose(PREFERENCE_LOSSES[name](**batch, beta=0.2, label_smoothing=0.0)[0],
                               dpo_loss, rtol=1e-6)
  cdpo_loss = preference.cdpo(**batch, beta=0.2, label_smoothing=0.2)[0]
  robust_loss = preference.robust(**batch, beta=0.2, label_smoothing=0.2)[0]
  assert abs(float(cdpo_loss) - float(robust_loss)) > 1e-3
