"""Token-level language-model losses: NLL (SFT, Preferred-FT) and the unlikelihood term.

Inputs follow the canonical layout of `docs/architecture.md`: `token_logps_BxT[:, t]` is
log π(tokens[t] | tokens[<t]) and `mask_BxT` marks the tokens that count (the response, EOS
included). Reductions are written as sum / count so that they stay exact under padding and
gradient accumulation: every loss also returns `loss_sum` (which carries gradient) and `count`,
and a trainer that accumulates micro-batches differentiates Σ loss_sum / Σ count.

This file also holds the two numerical helpers the other loss files share: `log1mexp` and
`masked_sum_count`.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

# log(1 − e^x) is −inf at x = 0. Log-probs are clamped to at most this value first, i.e.
# probabilities to ≤ 1 − 1e-5, the same floor as Welleck et al. 2019 (arXiv 1908.04319)
# put on 1 − p. Above the clamp the term is constant, so its gradient there is 0.
LOG1MEXP_MAX_LOGP = math.log1p(-1e-5)


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 − e^x) for x ≤ 0, stable at both ends (Mächler 2012, "Accurately computing
  log(1 − exp(−|a|))"): log(−expm1(x)) near 0, log1p(−e^x) far from it. x is clamped to
  `LOG1MEXP_MAX_LOGP`. Each branch gets an input in its own safe range, so that neither
  produces an inf whose gradient would turn into NaN through the `where`."""
  x = jnp.minimum(x, LOG1MEXP_MAX_LOGP)
  near_zero = x > -math.log(2.0)
  x_near = jnp.where(near_zero, x, -1.0)
  x_far = jnp.where(near_zero, -1.0, x)
  return jnp.where(near_zero, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def masked_sum_count(values: jax.Array,
                     mask: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(mean, sum, count) of `values` over the entries where `mask` > 0.

  mask is 0/1 (nonnegative weights also work: sum(v·m)/sum(m)). Masked entries are removed
  with `where`, not multiplied by 0, so an inf or NaN in a padding slot cannot leak into the
  result. An empty mask gives mean 0 rather than NaN.
  """
  values = values.astype(jnp.float32)
  if mask is None:
    mask = jnp.ones(values.shape, jnp.float32)
  mask = jnp.broadcast_to(mask.astype(jnp.float32), values.shape)
  loss_sum = jnp.sum(jnp.where(mask > 0, values * mask, 0.0))
  count = jnp.sum(mask)
  mean = loss_sum / jnp.where(count > 0, count, 1.0)
  return mean, loss_sum, count


def nll(*, token_logps_BxT: jax.Array,
        mask_BxT: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token-level negative log-likelihood, averaged over all masked tokens of the batch:

      loss = −Σ_{b,t} m_bt · log π(y_bt) / Σ_{b,t} m_bt

  Used by SFT and by Preferred-FT (DPO paper arXiv 2305.18290 §6: SFT on the chosen
  responses). Metrics: `nll` (detached loss), `loss_sum` (with gradient), `count` (tokens).
  """
  loss, loss_sum, count = masked_sum_count(-token_logps_BxT, mask_BxT)
  metrics = {'nll': jax.lax.stop_gradient(loss), 'loss_sum': loss_sum, 'count': count}
  return loss, metrics


def unlikelihood_token_terms(*, token_logps_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Per-token unlikelihood penalty −log(1 − π(y_t)) (Welleck et al. 2019, arXiv 1908.04319,
  token-level unlikelihood, with the negative candidates being the tokens of a dispreferred response), 0 where
  `mask_BxT` is 0. Probabilities are clamped to ≤ 1 − 1e-5 (`LOG1MEXP_MAX_LOGP`)."""
  mask_BxT = mask_BxT.astype(bool)
  # Off the mask the log-prob is 0 (p = 1) in the canonical layout; feed a harmless value
  # there so that no inf appears even before the clamp.
  safe_logps_BxT = jnp.where(mask_BxT, token_logps_BxT.astype(jnp.float32), -1.0)
  return jnp.where(mask_BxT, -log1mexp(safe_logps_BxT), 0.0)


LM_LOSSES: dict[str, Callable[..., tuple[jax.Array, dict[str, jax.Array]]]] = {'nll': nll}
