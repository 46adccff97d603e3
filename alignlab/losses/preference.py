"""Preference losses: DPO and its variants, plus the Unlikelihood baseline.

Every loss is a keyword-only pure function of log-probs returning `(loss, metrics)`, gathered
in `PREFERENCE_LOSSES`. A trainer calls any entry the same way:

    loss, metrics = PREFERENCE_LOSSES[name](**common_kwargs, **loss_hparams)

The common calling convention
-----------------------------
`common_kwargs` is any subset of `COMMON_KWARGS`; each loss reads what it needs and accepts
the rest through `**common` (a name outside `COMMON_KWARGS` and outside the loss's own
hyperparameters raises TypeError, so a misspelt hyperparameter never goes unnoticed).
B is the number of pairs; log-probs are float, any dtype (computed in float32).

  policy_chosen_logps, policy_rejected_logps   (B,) log π(y|x) summed over response tokens
  ref_chosen_logps, ref_rejected_logps         (B,) the same under π_ref (treated as constants)
  chosen_lengths, rejected_lengths             (B,) response token counts |y| (EOS included);
                                               used by length-normalized losses (0 → 1)
  beta                                         β (scalar; may be traced, e.g. under vmap)
  example_mask                                 (B,) 1 for real pairs, 0 for padding pairs;
                                               None means all real
  policy_chosen_token_logps_BxT,               (B, T) per-token log π in the canonical layout
  policy_rejected_token_logps_BxT              (0 off the response); only `unlikelihood` reads them
  chosen_response_mask_BxT,                    (B, T) response masks of the canonical layout
  rejected_response_mask_BxT
  kl_policy_logps, kl_ref_logps                (B,) summed log-probs of mismatched pairs
                                               (x_i, y_j≠i) under π and π_ref; only `kto`
  kl_example_mask                              (B,) mask for those pairs (default example_mask)
  kl_reference_point                           scalar z0 computed beforehand (see `kto`)

`loss_hparams` are the loss's own keyword arguments, all with defaults:

  dpo           reference_free=False
  cdpo          label_smoothing=0.1, reference_free=False
  robust        label_smoothing=0.1, reference_free=False
  ipo           length_normalized=False, reference_free=False
  hinge         reference_free=False
  simpo         gamma=0.5
  orpo          lambda_=0.1
  kto           desirable_weight=1.0, undesirable_weight=1.0,
                chosen_example_mask=None, rejected_example_mask=None (unpaired batches)
  unlikelihood  alpha=1.0, length_normalized=True

Boolean hyperparameters select code paths and must be static under `jax.jit`
(bind them with `functools.partial`); the float ones may be traced.

Reductions and metrics
----------------------
Each loss forms per-example losses ℓ_b and reduces them as

    loss = Σ_b m_b ℓ_b / Σ_b m_b        (m = example_mask)

Padding pairs are removed with `where`, so whatever they hold cannot reach the loss, and
all-zero padding (log-probs 0, lengths 0) keeps every loss and gradient finite. `metrics`
carries `loss_sum` = Σ m ℓ (with gradient) and `count` = Σ m, so that a trainer accumulating
micro-batches gets the full-batch loss and gradient exactly as Σ loss_sum / Σ count.
`count` counts loss terms: pairs for every loss except `kto`, which counts desirable plus
undesirable responses.

Every other metric is detached and a masked mean over examples:
  rewards/chosen, rewards/rejected  the per-response score the loss compares. For the losses
                                    with a reference (dpo, cdpo, robust, ipo, hinge, kto) it is
                                    the DPO implicit reward β·(log π − log π_ref) of the summed
                                    log-probs (ref = 0 when reference_free), so the numbers are
                                    comparable across losses; simpo: β·log π/|y|; orpo: the log
                                    odds of the mean-token probability; unlikelihood:
                                    β·(log π − log π_ref), with ref = 0 when not given.
  rewards/margin                    mean of chosen − rejected
  rewards/accuracy                  fraction of pairs with chosen > rejected (strict: ties count 0)
  logps/chosen, logps/rejected      mean summed policy log-probs
plus a few loss-specific entries (`nll`, `kl`, `unlikelihood`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from alignlab.losses.lm import log1mexp, masked_sum_count, unlikelihood_token_terms

Metrics = dict[str, jax.Array]

COMMON_KWARGS = frozenset({
    'policy_chosen_logps', 'policy_rejected_logps', 'ref_chosen_logps', 'ref_rejected_logps',
    'chosen_lengths', 'rejected_lengths', 'beta', 'example_mask',
    'policy_chosen_token_logps_BxT', 'policy_rejected_token_logps_BxT',
    'chosen_response_mask_BxT', 'rejected_response_mask_BxT',
    'kl_policy_logps', 'kl_ref_logps', 'kl_example_mask', 'kl_reference_point',
})


def _check_common(name: str, common: dict[str, Any]) -> None:
  """Arguments that reach `**common` must belong to the common convention."""
  unknown = sorted(set(common) - COMMON_KWARGS)
  if unknown:
    raise TypeError(f'{name}() got unexpected keyword arguments {unknown}: neither common '
                    f'arguments (COMMON_KWARGS) nor hyperparameters of {name}')


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _logratio(policy_logps: jax.Array, ref_logps: jax.Array | None, *, reference_free: bool,
              name: str) -> jax.Array:
  """log π − log π_ref, with π_ref a constant; reference_free treats log π_ref as 0."""
  if reference_free:
    return _f32(policy_logps)
  if ref_logps is None:
    raise ValueError(f'{name} needs ref_chosen_logps and ref_rejected_logps '
                     '(or reference_free=True)')
  return _f32(policy_logps) - jax.lax.stop_gradient(_f32(ref_logps))


def _lengths(lengths: jax.Array | None, *, name: str) -> jax.Array:
  """Token counts as float, at least 1 so that an all-padding example divides safely."""
  if lengths is None:
    raise ValueError(f'{name} needs chosen_lengths and rejected_lengths')
  return jnp.maximum(_f32(lengths), 1.0)


def _masked_mean(x_B: jax.Array, mask_B: jax.Array | None) -> jax.Array:
  return jax.lax.stop_gradient(masked_sum_count(x_B, mask_B)[0])


def _finish(losses_B: jax.Array, *, chosen_rewards_B: jax.Array, rejected_rewards_B: jax.Array,
            policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
            example_mask: jax.Array | None, extra: Metrics | None = None) -> tuple[jax.Array,
                                                                                 Metrics]:
  """Masked reduction of per-pair losses and the shared metrics."""
  loss, loss_sum, count = masked_sum_count(losses_B, example_mask)
  metrics = _pair_metrics(chosen_rewards_B=chosen_rewards_B, rejected_rewards_B=rejected_rewards_B,
                          policy_chosen_logps=policy_chosen_logps,
                          policy_rejected_logps=policy_rejected_logps,
                          chosen_mask=example_mask, rejected_mask=example_mask,
                          pair_mask=example_mask)
  metrics.update(extra or {})
  metrics['loss_sum'] = loss_sum
  metrics['count'] = count
  return loss, metrics


def _pair_metrics(*, chosen_rewards_B: jax.Array, rejected_rewards_B: jax.Array,
                  policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
                  chosen_mask: jax.Array | None, rejected_mask: jax.Array | None,
                  pair_mask: jax.Array | None) -> Metrics:
  margin_B = chosen_rewards_B - rejected_rewards_B
  return {
      'rewards/chosen': _masked_mean(chosen_rewards_B, chosen_mask),
      'rewards/rejected': _masked_mean(rejected_rewards_B, rejected_mask),
      'rewards/margin': _masked_mean(margin_B, pair_mask),
      'rewards/accuracy': _masked_mean((margin_B > 0).astype(jnp.float32), pair_mask),
      'logps/chosen': _masked_mean(_f32(policy_chosen_logps), chosen_mask),
      'logps/rejected': _masked_mean(_f32(policy_rejected_logps), rejected_mask),
  }


def _sigmoid_family(name: str, *, policy_chosen_logps: jax.Array,
                    policy_rejected_logps: jax.Array, ref_chosen_logps: jax.Array | None,
                    ref_rejected_logps: jax.Array | None, beta: jax.Array | float,
                    example_mask: jax.Array | None, reference_free: bool,
                    loss_of_logits: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array,
                                                                                Metrics]:
  """Shared body of the losses that are a function of β·h with the DPO implicit rewards."""
  chosen_logratios_B = _logratio(policy_chosen_logps, ref_chosen_logps,
                                 reference_free=reference_free, name=name)
  rejected_logratios_B = _logratio(policy_rejected_logps, ref_rejected_logps,
                                   reference_free=reference_free, name=name)
  logits_B = beta * (chosen_logratios_B - rejected_logratios_B)
  return _finish(loss_of_logits(logits_B), chosen_rewards_B=beta * chosen_logratios_B,
                 rejected_rewards_B=beta * rejected_logratios_B,
                 policy_chosen_logps=policy_chosen_logps,
                 policy_rejected_logps=policy_rejected_logps, example_mask=example_mask)


def dpo(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
        ref_chosen_logps: jax.Array | None = None, ref_rejected_logps: jax.Array | None = None,
        beta: jax.Array | float, example_mask: jax.Array | None = None,
        reference_free: bool = False, **common: Any) -> tuple[jax.Array, Metrics]:
  """DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7):

      ℓ = −log σ(β·h),  h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]

  Its gradient w.r.t. the policy log-probs is −β·σ(r̂_l − r̂_w)·(∇log π(y_w) − ∇log π(y_l))
  (§4), r̂ = β·log(π/π_ref). reference_free=True sets log π_ref = 0.
  """
  _check_common('dpo', common)
  return _sigmoid_family('dpo', policy_chosen_logps=policy_chosen_logps,
                         policy_rejected_logps=policy_rejected_logps,
                         ref_chosen_logps=ref_chosen_logps,
                         ref_rejected_logps=ref_rejected_logps, beta=beta,
                         example_mask=example_mask, reference_free=reference_free,
                         loss_of_logits=lambda z_B: -jax.nn.log_sigmoid(z_B))


def cdpo(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
         ref_chosen_logps: jax.Array | None = None, ref_rejected_logps: jax.Array | None = None,
         beta: jax.Array | float, example_mask: jax.Array | None = None,
         label_smoothing: jax.Array | float = 0.1, reference_free: bool = False,
         **common: Any) -> tuple[jax.Array, Metrics]:
  """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): the labels
  are flipped with probability ε = label_smoothing, giving the cross-entropy against a
  smoothed target

      ℓ = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h).

  Its minimum sits at a finite margin (β·h = log((1−ε)/ε)). ε = 0 is DPO.
  """
  _check_common('cdpo', common)
  eps = label_smoothing
  return _sigmoid_family(
      'cdpo', policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
      ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps, beta=beta,
      example_mask=example_mask, reference_free=reference_free,
      loss_of_logits=lambda z_B: -(1.0 - eps) * jax.nn.log_sigmoid(z_B)
      - eps * jax.nn.log_sigmoid(-z_B))


def robust(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
           ref_chosen_logps: jax.Array | None = None, ref_rejected_logps: jax.Array | None = None,
           beta: jax.Array | float, example_mask: jax.Array | None = None,
           label_smoothing: jax.Array | float = 0.1, reference_free: bool = False,
           **common: Any) -> tuple[jax.Array, Metrics]:
  """Robust DPO, rDPO (Chowdhury et al. 2024, arXiv 2403.00409): an unbiased estimate
  of the clean DPO loss when labels flip with probability ε = label_smoothing < 1/2,

      ℓ = [(1 − ε)·(−log σ(β·h)) − ε·(−log σ(−β·h))] / (1 − 2ε).

  Unlike cDPO the flipped term enters with a minus sign, so ℓ can be negative and has no
  finite minimum in h.
  """
  _check_common('robust', common)
  eps = label_smoothing
  if isinstance(eps, (int, float)) and not 0.0 <= eps < 0.5:
    raise ValueError(f'robust needs 0 <= label_smoothing < 0.5, got {eps}')
  return _sigmoid_family(
      'robust', policy_chosen_logps=policy_chosen_logps,
      policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
      ref_rejected_logps=ref_rejected_logps, beta=beta, example_mask=example_mask,
      reference_free=reference_free,
      loss_of_logits=lambda z_B: (-(1.0 - eps) * jax.nn.log_sigmoid(z_B)
                                  + eps * jax.nn.log_sigmoid(-z_B)) / (1.0 - 2.0 * eps))


def ipo(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
        ref_chosen_logps: jax.Array | None = None, ref_rejected_logps: jax.Array | None = None,
        chosen_lengths: jax.Array | None = None, rejected_lengths: jax.Array | None = None,
        beta: jax.Array | float, example_mask: jax.Array | None = None,
        length_normalized: bool = False, reference_free: bool = False,
        **common: Any) -> tuple[jax.Array, Metrics]:
  """IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17), with β playing the role of τ:

      ℓ = (h − 1/(2β))²

  length_normalized=False (default) is the authors' form: h from log-probs summed over the
  response. length_normalized=True divides each log-ratio by its token count first,
  h = (log π(y_w) − log π_ref(y_w))/|y_w| − (log π(y_l) − log π_ref(y_l))/|y_l|, as some
  libraries do (e.g. TRL's loss_type='ipo'); it needs chosen_lengths and rejected_lengths.
  The rewards/* metrics stay β·(summed log-ratio) in both cases.
  """
  _check_common('ipo', common)
  chosen_logratios_B = _logratio(policy_chosen_logps, ref_chosen_logps,
                                 reference_free=reference_free, name='ipo')
  rejected_logratios_B = _logratio(policy_rejected_logps, ref_rejected_logps,
                                   reference_free=reference_free, name='ipo')
  if length_normalized:
    h_B = (chosen_logratios_B / _lengths(chosen_lengths, name='ipo')
           - rejected_logratios_B / _lengths(rejected_lengths, name='ipo'))
  else:
    h_B = chosen_logratios_B - rejected_logratios_B
  losses_B = (h_B - 1.0 / (2.0 * beta)) ** 2
  return _finish(losses_B, chosen_rewards_B=beta * chosen_logratios_B,
                 rejected_rewards_B=beta * rejected_logratios_B,
                 policy_chosen_logps=policy_chosen_logps,
                 policy_rejected_logps=policy_rejected_logps, example_mask=example_mask)


def hinge(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
          ref_chosen_logps: jax.Array | None = None, ref_rejected_logps: jax.Array | None = None,
          beta: jax.Array | float, example_mask: jax.Array | None = None,
          reference_free: bool = False, **common: Any) -> tuple[jax.Array, Metrics]:
  """Hinge loss of SLiC (Zhao et al. 2023, arXiv 2305.10425, the rank calibration loss
  max(0, δ − log π(y_w) + log π(y_l))), with margin δ = 1/β, rescaled by β and written on
  log-ratios to π_ref as in the DPO family:

      ℓ = max(0, 1 − β·h).

  reference_free=True gives SLiC's form on policy log-probs alone (up to the factor β).
  """
  _check_common('hinge', common)
  return _sigmoid_family('hinge', policy_chosen_logps=policy_chosen_logps,
                         policy_rejected_logps=policy_rejected_logps,
                         ref_chosen_logps=ref_chosen_logps,
                         ref_rejected_logps=ref_rejected_logps, beta=beta,
                         example_mask=example_mask, reference_free=reference_free,
                         loss_of_logits=lambda z_B: jax.nn.relu(1.0 - z_B))


def simpo(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
          chosen_lengths: jax.Array | None = None, rejected_lengths: jax.Array | None = None,
          beta: jax.Array | float, example_mask: jax.Array | None = None,
          gamma: jax.Array | float = 0.5, **common: Any) -> tuple[jax.Array, Metrics]:
  """SimPO (Meng et al. 2024, arXiv 2405.14734); no reference model:

      ℓ = −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ)

  with γ the target reward margin. rewards/* are the length-normalized rewards
  β·log π(y)/|y|.
  """
  _check_common('simpo', common)
  chosen_rewards_B = beta * _f32(policy_chosen_logps) / _lengths(chosen_lengths, name='simpo')
  rejected_rewards_B = (beta * _f32(policy_rejected_logps)
                        / _lengths(rejected_lengths, name='simpo'))
  losses_B = -jax.nn.log_sigmoid(chosen_rewards_B - rejected_rewards_B - gamma)
  return _finish(losses_B, chosen_rewards_B=chosen_rewards_B,
                 rejected_rewards_B=rejected_rewards_B, policy_chosen_logps=policy_chosen_logps,
                 policy_rejected_logps=policy_rejected_logps, example_mask=example_mask)


def orpo(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
         chosen_lengths: jax.Array | None = None, rejected_lengths: jax.Array | None = None,
         example_mask: jax.Array | None = None, lambda_: jax.Array | float = 0.1,
         **common: Any) -> tuple[jax.Array, Metrics]:
  """ORPO (Hong et al. 2024, arXiv 2403.07691); no reference model, β unused:

      p(y) = exp(log π(y)/|y|)                      (mean token log-prob)
      ℓ = −log π(y_w)/|y_w| − λ·log σ(log odds(y_w) − log odds(y_l)),  odds = p/(1 − p).

  The NLL term is the per-sequence token mean of the chosen response (the paper's L_SFT), which
  is exactly the summed log-prob over the length, so no per-token arrays are needed and the
  per-pair sum/count reduction stays exact. log(1 − p) uses `lm.log1mexp` (p clamped to
  ≤ 1 − 1e-5). rewards/* are the log odds; extra metric `nll`.
  """
  _check_common('orpo', common)
  chosen_mean_B = _f32(policy_chosen_logps) / _lengths(chosen_lengths, name='orpo')
  rejected_mean_B = _f32(policy_rejected_logps) / _lengths(rejected_lengths, name='orpo')
  chosen_log_odds_B = chosen_mean_B - log1mexp(chosen_mean_B)
  rejected_log_odds_B = rejected_mean_B - log1mexp(rejected_mean_B)
  nll_B = -chosen_mean_B
  losses_B = nll_B - lambda_ * jax.nn.log_sigmoid(chosen_log_odds_B - rejected_log_odds_B)
  return _finish(losses_B, chosen_rewards_B=chosen_log_odds_B,
                 rejected_rewards_B=rejected_log_odds_B,
                 policy_chosen_logps=policy_chosen_logps,
                 policy_rejected_logps=policy_rejected_logps, example_mask=example_mask,
                 extra={'nll': _masked_mean(nll_B, example_mask)})


def kto_reference_point(*, kl_policy_logps: jax.Array, kl_ref_logps: jax.Array,
                        example_mask: jax.Array | None = None) -> jax.Array:
  """KTO's reference point z0 (arXiv 2402.01306, "Implementation" of KTO): the batch mean of
  log π(y_j|x_i) − log π_ref(y_j|x_i) over mismatched pairs (j ≠ i), clamped at ≥ 0 and
  detached (no gradient flows through z0)."""
  mean, _, _ = masked_sum_count(_f32(kl_policy_logps) - _f32(kl_ref_logps), example_mask)
  return jax.lax.stop_gradient(jnp.maximum(mean, 0.0))


def kto(*, policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
        ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, beta: jax.Array | float,
        example_mask: jax.Array | None = None, kl_policy_logps: jax.Array | None = None,
        kl_ref_logps: jax.Array | None = None, kl_example_mask: jax.Array | None = None,
        kl_reference_point: jax.Array | float | None = None,
        desirable_weight: jax.Array | float = 1.0, undesirable_weight: jax.Array | float = 1.0,
        chosen_example_mask: jax.Array | None = None,
        rejected_example_mask: jax.Array | None = None,
        **common: Any) -> tuple[jax.Array, Metrics]:
  """KTO (Ethayarajh et al. 2024, arXiv 2402.01306), unpaired form. With
  r = log π(y|x) − log π_ref(y|x) and z0 the reference point,

      desirable y:    ℓ = λ_D·(1 − σ(β·(r − z0)))
      undesirable y:  ℓ = λ_U·(1 − σ(β·(z0 − r)))

  and the loss is the mean of ℓ over all desirable and undesirable responses (λ_D =
  desirable_weight, λ_U = undesirable_weight).

  The "chosen" slots hold desirable responses and the "rejected" slots undesirable ones. On
  paired data every pair gives one of each. For unpaired data, pad both sides to B and mark
  the real ones with chosen_example_mask / rejected_example_mask (each combined with
  example_mask); `count` is the number of responses, not pairs.

  z0: kl_reference_point if given (a scalar; it is detached), otherwise
  `kto_reference_point(kl_policy_logps, kl_ref_logps, kl_example_mask or example_mask)`,
  from mismatched pairs (x_i, y_j) e.g. y_j = the chosen response of example i+1 mod B.
  z0 is a batch statistic, so to keep gradient accumulation exact compute it once on the
  whole batch with `kto_reference_point` and pass it to every micro-batch as
  kl_reference_point. Extra metric `kl` (z0).
  """
  _check_common('kto', common)
  if kl_reference_point is not None:
    z0 = jax.lax.stop_gradient(_f32(kl_reference_point))
  elif kl_policy_logps is not None and kl_ref_logps is not None:
    z0 = kto_reference_point(kl_policy_logps=kl_policy_logps, kl_ref_logps=kl_ref_logps,
                             example_mask=example_mask if kl_example_mask is None
                             else kl_example_mask)
  else:
    raise ValueError('kto needs kl_policy_logps and kl_ref_logps, or kl_reference_point')

  chosen_mask_B = _combine_masks(example_mask, chosen_example_mask, policy_chosen_logps)
  rejected_mask_B = _combine_masks(example_mask, rejected_example_mask, policy_rejected_logps)
  chosen_logratios_B = _logratio(policy_chosen_logps, ref_chosen_logps, reference_free=False,
                                 name='kto')
  rejected_logratios_B = _logratio(policy_rejected_logps, ref_rejected_logps,
                                   reference_free=False, name='kto')
  chosen_losses_B = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (chosen_logratios_B - z0)))
  rejected_losses_B = undesirable_weight * (
      1.0 - jax.nn.sigmoid(beta * (z0 - rejected_logratios_B)))

  _, chosen_sum, chosen_count = masked_sum_count(chosen_losses_B, chosen_mask_B)
  _, rejected_sum, rejected_count = masked_sum_count(rejected_losses_B, rejected_mask_B)
  loss_sum = chosen_sum + rejected_sum
  count = chosen_count + rejected_count
  loss = loss_sum / jnp.where(count > 0, count, 1.0)
  metrics = _pair_metrics(chosen_rewards_B=beta * chosen_logratios_B,
                          rejected_rewards_B=beta * rejected_logratios_B,
                          policy_chosen_logps=policy_chosen_logps,
                          policy_rejected_logps=policy_rejected_logps,
                          chosen_mask=chosen_mask_B, rejected_mask=rejected_mask_B,
                          pair_mask=chosen_mask_B * rejected_mask_B)
  metrics.update({'kl': z0, 'loss_sum': loss_sum, 'count': count})
  return loss, metrics


def _combine_masks(example_mask: jax.Array | None, side_mask: jax.Array | None,
                   like_B: jax.Array) -> jax.Array:
  mask_B = jnp.ones(jnp.shape(like_B), jnp.float32)
  for m in (example_mask, side_mask):
    if m is not None:
      mask_B = mask_B * _f32(m)
  return mask_B


def unlikelihood(*, policy_chosen_token_logps_BxT: jax.Array,
                 policy_rejected_token_logps_BxT: jax.Array, chosen_response_mask_BxT: jax.Array,
                 rejected_response_mask_BxT: jax.Array, policy_chosen_logps: jax.Array,
                 policy_rejected_logps: jax.Array, ref_chosen_logps: jax.Array | None = None,
                 ref_rejected_logps: jax.Array | None = None, beta: jax.Array | float = 1.0,
                 example_mask: jax.Array | None = None, alpha: jax.Array | float = 1.0,
                 length_normalized: bool = True, **common: Any) -> tuple[jax.Array, Metrics]:
  """Unlikelihood baseline of the DPO paper (arXiv 2305.18290 §6; Welleck et al. 2019, arXiv
  1908.04319): raise log π of every token of y_w, raise log(1 − π) of every token of y_l,
  with weight α on the unlikelihood term:

      ℓ = −Σ_t log π(y_w,t) − α·Σ_t log(1 − π(y_l,t))

  This loss reads per-token arrays, not sums: policy_{chosen,rejected}_token_logps_BxT (B, T)
  and the (B, T) response masks chosen_response_mask_BxT / rejected_response_mask_BxT in the
  canonical layout. The summed policy_*_logps only feed the metrics. length_normalized=True
  (default) divides each sum by its token count, so both terms are per-token means like the
  SFT NLL; False keeps the sums. π(y_l,t) is clamped to ≤ 1 − 1e-5 (`lm.log1mexp`).

  rewards/* are β·(log π − log π_ref) of the summed log-probs, with log π_ref = 0 when the
  reference log-probs are not given. Extra metrics `nll` and `unlikelihood` (the two terms
  before weighting).
  """
  _check_common('unlikelihood', common)
  chosen_mask_BxT = chosen_response_mask_BxT.astype(bool)
  rejected_mask_BxT = rejected_response_mask_BxT.astype(bool)
  nll_B = -jnp.sum(jnp.where(chosen_mask_BxT, _f32(policy_chosen_token_logps_BxT), 0.0), -1)
  unlikely_B = jnp.sum(unlikelihood_token_terms(token_logps_BxT=policy_rejected_token_logps_BxT,
                                                mask_BxT=rejected_mask_BxT), -1)
  if length_normalized:
    nll_B = nll_B / jnp.maximum(jnp.sum(chosen_mask_BxT, -1), 1).astype(jnp.float32)
    unlikely_B = unlikely_B / jnp.maximum(jnp.sum(rejected_mask_BxT, -1), 1).astype(jnp.float32)
  losses_B = nll_B + alpha * unlikely_B

  def reward(policy_logps, ref_logps):
    return beta * _logratio(policy_logps, ref_logps, reference_free=ref_logps is None,
                            name='unlikelihood')

  return _finish(losses_B, chosen_rewards_B=reward(policy_chosen_logps, ref_chosen_logps),
                 rejected_rewards_B=reward(policy_rejected_logps, ref_rejected_logps),
                 policy_chosen_logps=policy_chosen_logps,
                 policy_rejected_logps=policy_rejected_logps, example_mask=example_mask,
                 extra={'nll': _masked_mean(nll_B, example_mask),
                        'unlikelihood': _masked_mean(unlikely_B, example_mask)})


def margin_loss(name: str, *, loss_of_logits: Callable[[jax.Array], jax.Array],
                policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
                ref_chosen_logps: jax.Array | None = None,
                ref_rejected_logps: jax.Array | None = None, beta: jax.Array | float,
                example_mask: jax.Array | None = None, reference_free: bool = False,
                **common: Any) -> tuple[jax.Array, Metrics]:
  """The public building block for a new loss of the DPO margin z = β·h: give
  `loss_of_logits(z_B) -> ℓ_B` and get the exact masked reduction, `loss_sum`/`count` and
  every standard metric (see docs/adding_a_loss.md)."""
  _check_common(name, common)
  return _sigmoid_family(name, policy_chosen_logps=policy_chosen_logps,
                         policy_rejected_logps=policy_rejected_logps,
                         ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                         beta=beta, example_mask=example_mask, reference_free=reference_free,
                         loss_of_logits=loss_of_logits)


PREFERENCE_LOSSES: dict[str, Callable[..., tuple[jax.Array, Metrics]]] = {
    'dpo': dpo,
    'cdpo': cdpo,
    'robust': robust,
    'ipo': ipo,
    'hinge': hinge,
    'simpo': simpo,
    'orpo': orpo,
    'kto': kto,
    'unlikelihood': unlikelihood,
}
