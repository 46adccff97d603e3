"""RLHF with PPO: KL estimators, per-token rewards, GAE, whitening, clipped policy and value
losses, RLOO / GRPO advantages and the adaptive KL controller.

Per-token arrays follow the canonical layout of `docs/architecture.md`: (B, T), response tokens
marked by a mask (prompt left-padded, response right-padded, EOS included). Masked reductions
are sum / count; the losses also return their `loss_sum` (with gradient) and `count` so that a
trainer accumulating micro-batches can reproduce the full-minibatch token mean exactly.
References: Ziegler et al. 2019 (arXiv 1909.08593), Huang et al. 2024 "The N+ implementation
details of RLHF with PPO" (arXiv 2403.17031), Schulman et al. 2017 (arXiv 1707.06347),
GAE (Schulman et al. 2016, arXiv 1506.02438), J. Schulman, "Approximating KL divergence" (2020).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from alignlab.losses.lm import masked_sum_count

Metrics = dict[str, jax.Array]


# KL estimators on samples y ~ π, with log ρ = log π_ref(y) − log π(y). All are elementwise
# (any shape); `mask` (optional) zeroes the entries that are not response tokens.

def _log_ratio(policy_logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
  return ref_logps.astype(jnp.float32) - policy_logps.astype(jnp.float32)


def _apply_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  return x if mask is None else jnp.where(mask.astype(bool), x, 0.0)


def kl_k1(*, policy_logps: jax.Array, ref_logps: jax.Array,
          mask: jax.Array | None = None) -> jax.Array:
  """k1 = −log ρ = log π − log π_ref: unbiased for KL(π‖π_ref), high variance, can be < 0."""
  return _apply_mask(-_log_ratio(policy_logps, ref_logps), mask)


def kl_k2(*, policy_logps: jax.Array, ref_logps: jax.Array,
          mask: jax.Array | None = None) -> jax.Array:
  """k2 = ½·(log ρ)²: biased (exact to second order in log ρ), low variance, ≥ 0."""
  return _apply_mask(0.5 * jnp.square(_log_ratio(policy_logps, ref_logps)), mask)


def kl_k3(*, policy_logps: jax.Array, ref_logps: jax.Array,
          mask: jax.Array | None = None) -> jax.Array:
  """k3 = (ρ − 1) − log ρ: unbiased (E_π[ρ] = 1), ≥ 0, low variance. Used in GRPO's loss
  (arXiv 2402.03300, Eq. 4). `expm1` keeps it accurate when ρ ≈ 1."""
  log_ratio = _log_ratio(policy_logps, ref_logps)
  return _apply_mask(jnp.expm1(log_ratio) - log_ratio, mask)


KL_ESTIMATORS: dict[str, Callable[..., jax.Array]] = {'k1': kl_k1, 'k2': kl_k2, 'k3': kl_k3}


def kl_penalty_loss(*, logps: jax.Array, ref_logps: jax.Array, mask: jax.Array,
                    estimator: str = 'k3', old_logps: jax.Array | None = None,
                    ratio_correction: bool = False) -> tuple[jax.Array, Metrics]:
  """The KL term of a loss that carries KL(π_θ‖π_ref) itself (GRPO, Shao et al. 2024, arXiv
  2402.03300, Eq. 3–4) rather than through the reward, averaged over the `mask` weights:

      ℓ_t = w_t · k(π_θ(y_t), π_ref(y_t)),   k ∈ {k1, k2, k3} (Schulman 2020)

  with w_t = 1, or, with ratio_correction=True, the importance weight w_t = π_θ(y_t)/π_old(y_t)
  of the sampling policy (DeepSeek-V3.2, 2025, §3.1 Eq. 7): E_{π_old}[w·k] = E_{π_θ}[k] as a
  function of θ, so the gradient of the corrected k3 is an unbiased per-token estimate of
  ∇KL even when the samples come from π_old; on-policy (π_θ = π_old) its gradient is
  (log π_θ − log π_ref)·∇log π_θ, the same as k2's. Without the weight the gradient of k1 is
  ∇log π_θ (zero in expectation: no pull towards π_ref at all), and k3's is
  (1 − π_ref/π_θ)·∇log π_θ, whose expectation is the gradient of the other direction,
  KL(π_ref‖π_θ) (Shah et al. 2025, arXiv 2512.21852, §3). These are per-token statements;
  the sequence-level KL gradient also credits each token with the KL of the tokens after it,
  which only KL in the reward (`per_token_rewards`) does.

  `mask` holds the loss weights (response mask, or GRPO's 1/|y| per token). Metrics:
  `kl/loss`, `kl/loss_sum` (with gradient), `kl/count`.
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f'estimator={estimator!r}; expected one of {tuple(KL_ESTIMATORS)}')
  values = KL_ESTIMATORS[estimator](policy_logps=logps, ref_logps=ref_logps, mask=mask)
  if ratio_correction:
    if old_logps is None:
      raise ValueError('ratio_correction=True needs old_logps (the sampling policy)')
    # The weight carries the gradient: that is what makes the estimate unbiased off-policy.
    log_w = logps.astype(jnp.float32) - old_logps.astype(jnp.float32)
    values = _apply_mask(jnp.exp(log_w) * values, mask)
  loss, loss_sum, count = masked_sum_count(values, mask)
  metrics = {'kl/loss': jax.lax.stop_gradient(loss), 'kl/loss_sum': loss_sum, 'kl/count': count}
  return loss, metrics


def masked_mean(x: jax.Array, mask: jax.Array, *, axis: int | tuple[int, ...] | None = None
                ) -> jax.Array:
  """Σ x·m / Σ m over `axis` (all axes when None); 0 where the mask is empty. Masked entries
  are dropped with `where`, so inf/NaN there cannot leak."""
  x = x.astype(jnp.float32)
  mask = jnp.broadcast_to(mask.astype(jnp.float32), x.shape)
  total = jnp.sum(jnp.where(mask > 0, x * mask, 0.0), axis=axis)
  count = jnp.sum(mask, axis=axis)
  return total / jnp.where(count > 0, count, 1.0)


def masked_var(x: jax.Array, mask: jax.Array, *, unbiased: bool = True) -> jax.Array:
  """Variance of the masked entries (all of them together). unbiased=True applies Bessel's
  correction n/(n − 1), as in Huang et al. 2024's reference code (arXiv 2403.17031)."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x.astype(jnp.float32) - mean), mask)
  if unbiased:
    count = jnp.sum(jnp.broadcast_to(mask.astype(jnp.float32), x.shape))
    var = var * count / jnp.where(count > 1, count - 1.0, 1.0)
  return var


def masked_whiten(x: jax.Array, mask: jax.Array, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """(x − mean)/√(var + eps) with masked statistics (unbiased variance); 0 off the mask.

  shift_mean=False adds the mean back, scaling without centring: the reward whitening of
  Huang et al. 2024 (arXiv 2403.17031), which keeps the sign information of the rewards.
  Advantages use shift_mean=True.
  """
  x = x.astype(jnp.float32)
  mean = masked_mean(x, mask)
  whitened = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(mask.astype(bool), whitened, 0.0)


def gae(*, rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array,
        gamma: jax.Array | float, lam: jax.Array | float) -> tuple[jax.Array, jax.Array]:
  """Generalized advantage estimation (Schulman et al. 2016, arXiv 1506.02438, Eq. 16),
  as a reverse `lax.scan` over time. Returns (advantages_BxT, returns_BxT), 0 off the mask.

      δ_t = r_t + γ·V_{t'} − V_t,   A_t = δ_t + γλ·A_{t'}

  where t' is the next valid (mask = 1) step after t. After the last valid step the
  bootstrap value and advantage are 0 (the episode ends at EOS or at the length limit, as in
  Huang et al. 2024), and values at masked steps are never read, so whatever the value head
  outputs at padding does not matter. Masked steps pass the carry through unchanged, so the
  left-padded prompt and right padding need no special handling. returns = A + V.
  """
  mask_TxB = mask_BxT.astype(bool).T
  rewards_TxB = rewards_BxT.astype(jnp.float32).T
  values_TxB = values_BxT.astype(jnp.float32).T

  def step(carry, inputs):
    next_value_B, next_advantage_B = carry
    reward_B, value_B, valid_B = inputs
    delta_B = reward_B + gamma * next_value_B - value_B
    advantage_B = delta_B + gamma * lam * next_advantage_B
    carry = (jnp.where(valid_B, value_B, next_value_B),
             jnp.where(valid_B, advantage_B, next_advantage_B))
    return carry, jnp.where(valid_B, advantage_B, 0.0)

  zeros_B = jnp.zeros(rewards_TxB.shape[1:], jnp.float32)
  _, advantages_TxB = jax.lax.scan(step, (zeros_B, zeros_B),
                                   (rewards_TxB, values_TxB, mask_TxB), reverse=True)
  advantages_BxT = advantages_TxB.T
  returns_BxT = jnp.where(mask_BxT.astype(bool), advantages_BxT + values_BxT, 0.0)
  return advantages_BxT, returns_BxT


def last_token_onehot(mask_BxT: jax.Array) -> jax.Array:
  """(B, T) float one-hot of the last position where mask_BxT is 1 (all zeros for an empty
  row). In the canonical layout that is the EOS, or the last token of a truncated response."""
  mask_BxT = mask_BxT.astype(bool)
  t = mask_BxT.shape[-1]
  last_B = jnp.max(jnp.where(mask_BxT, jnp.arange(t), -1), axis=-1)
  return (jnp.arange(t)[None, :] == last_B[:, None]).astype(jnp.float32)


def per_token_rewards(*, score_B: jax.Array, policy_logps_BxT: jax.Array,
                      ref_logps_BxT: jax.Array, response_mask_BxT: jax.Array,
                      kl_coef: jax.Array | float) -> jax.Array:
  """The RLHF reward at each response token (Ziegler et al. 2019, arXiv 1909.08593, Eq. 2;
  Huang et al. 2024):

      r_t = −β·(log π(y_t) − log π_ref(y_t))  + [t = last response token]·score

  with β = kl_coef, 0 off the response. The score goes to the last position where
  response_mask_BxT is 1, never to padding. A penalty for responses without EOS is applied
  by the caller to score_B.
  """
  mask_BxT = response_mask_BxT.astype(bool)
  kl_BxT = kl_k1(policy_logps=policy_logps_BxT, ref_logps=ref_logps_BxT, mask=mask_BxT)
  return -kl_coef * kl_BxT + score_B.astype(jnp.float32)[:, None] * last_token_onehot(mask_BxT)


def ppo_policy_loss(*, logps: jax.Array, old_logps: jax.Array, advantages: jax.Array,
                    mask: jax.Array, clip_eps: jax.Array | float = 0.2
                    ) -> tuple[jax.Array, Metrics]:
  """Clipped surrogate (Schulman et al. 2017, arXiv 1707.06347, Eq. 7), as a loss averaged
  over the masked tokens:

      ρ = exp(log π − log π_old),  ℓ_t = max(−A_t·ρ, −A_t·clip(ρ, 1 − ε, 1 + ε))

  Metrics: `policy/loss`, `policy/clipfrac` (fraction of tokens where the clipped term is
  active), `policy/approxkl` = mean ½(log π − log π_old)² (as in Huang et al. 2024), and
  `policy/loss_sum` (with gradient), `policy/count` for exact accumulation.
  """
  log_ratio = logps.astype(jnp.float32) - old_logps.astype(jnp.float32)
  ratio = jnp.exp(log_ratio)
  advantages = advantages.astype(jnp.float32)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss, loss_sum, count = masked_sum_count(jnp.maximum(unclipped, clipped), mask)
  stop = jax.lax.stop_gradient
  metrics = {
      'policy/loss': stop(loss),
      'policy/clipfrac': stop(masked_mean((clipped > unclipped).astype(jnp.float32), mask)),
      'policy/approxkl': stop(masked_mean(0.5 * jnp.square(log_ratio), mask)),
      'policy/loss_sum': loss_sum,
      'policy/count': count,
  }
  return loss, metrics


def ppo_value_loss(*, values: jax.Array, old_values: jax.Array, returns: jax.Array,
                   mask: jax.Array, clip_eps: jax.Array | float = 0.2
                   ) -> tuple[jax.Array, Metrics]:
  """Clipped value loss (Huang et al. 2024; OpenAI lm-human-preferences), averaged over the
  masked tokens:

      V_clip = V_old + clip(V − V_old, −ε, ε),  ℓ_t = ½·max((V − R)², (V_clip − R)²)

  Metrics: `val/loss`, `val/clipfrac` (fraction where the clipped term is larger), and
  `val/loss_sum` (with gradient), `val/count`.
  """
  values = values.astype(jnp.float32)
  old_values = old_values.astype(jnp.float32)
  returns = returns.astype(jnp.float32)
  clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  unclipped_losses = jnp.square(values - returns)
  clipped_losses = jnp.square(clipped_values - returns)
  loss, loss_sum, count = masked_sum_count(0.5 * jnp.maximum(unclipped_losses, clipped_losses),
                                           mask)
  metrics = {
      'val/loss': jax.lax.stop_gradient(loss),
      'val/clipfrac': jax.lax.stop_gradient(
          masked_mean((clipped_losses > unclipped_losses).astype(jnp.float32), mask)),
      'val/loss_sum': loss_sum,
      'val/count': count,
  }
  return loss, metrics


def rloo_advantages(*, rewards_BxN: jax.Array) -> jax.Array:
  """REINFORCE leave-one-out (Ahmadian et al. 2024, arXiv 2402.14740; Kool et al. 2019):
  with N ≥ 2 samples per prompt, A_i = R_i − mean_{j≠i} R_j. R is the sequence reward
  r_RM − β·Σ_t (log π − log π_ref), built by the caller."""
  rewards_BxN = rewards_BxN.astype(jnp.float32)
  n = rewards_BxN.shape[-1]
  if n < 2:
    raise ValueError(f'rloo_advantages needs at least 2 samples per prompt, got {n}')
  others_mean_BxN = (jnp.sum(rewards_BxN, -1, keepdims=True) - rewards_BxN) / (n - 1)
  return rewards_BxN - others_mean_BxN


def grpo_advantages(*, rewards_BxN: jax.Array, eps: float = 1e-4,
                    unbiased: bool = True) -> jax.Array:
  """Group-relative advantages of GRPO (Shao et al. 2024, arXiv 2402.03300, §4.1.2, outcome
  supervision): A_i = (r_i − mean(r))/(std(r) + eps) within each prompt's group of N.
  unbiased=True uses the N − 1 standard deviation, as common implementations do (TRL)."""
  rewards_BxN = rewards_BxN.astype(jnp.float32)
  std_Bx1 = jnp.std(rewards_BxN, axis=-1, keepdims=True, ddof=1 if unbiased else 0)
  return (rewards_BxN - jnp.mean(rewards_BxN, -1, keepdims=True)) / (std_Bx1 + eps)


def adaptive_kl_update(*, kl_coef: jax.Array | float, measured_kl: jax.Array | float,
                       target: jax.Array | float, n_steps: jax.Array | int,
                       horizon: jax.Array | int) -> jax.Array:
  """One step of the adaptive KL controller (Ziegler et al. 2019, arXiv 1909.08593, §2.2):

      e = clip(KL/KL_target − 1, −0.2, 0.2),   β ← β·(1 + e·n_steps/horizon)

  n_steps is the number of episodes since the last update; the paper uses horizon 10,000.
  Pure (returns the new β), so it can live inside a jitted step.
  """
  error = jnp.clip(jnp.asarray(measured_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
  return jnp.asarray(kl_coef, jnp.float32) * (1.0 + error * n_steps / horizon)


def entropy_from_logits(logits_BxTxV: jax.Array) -> jax.Array:
  """Entropy of softmax(logits) over the last axis: logsumexp(l) − Σ softmax(l)·l. Entries
  at −inf (filtered tokens) have probability 0 and contribute 0, not NaN."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  probs_BxTxV = jax.nn.softmax(logits_BxTxV, axis=-1)
  weighted_BxTxV = jnp.where(probs_BxTxV > 0, probs_BxTxV * logits_BxTxV, 0.0)
  return jax.nn.logsumexp(logits_BxTxV, axis=-1) - jnp.sum(weighted_BxTxV, -1)
