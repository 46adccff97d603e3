"""Alternative implementations of alignlab hot spots, patched in by the benchmarks
(`--variant a,b`) to measure a gain before proposing the change to alignlab itself.

Each entry patches module globals that alignlab looks up at trace time, so it must be applied
before the first jitted call. Every variant computes the same function (checked by
`check_variants.py`-style asserts in `dpo_step.py --check`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


# ---------------------------------------------------------------- log-probs over the vocab

def _onehot_gather_logprobs(logits_BxTxV, targets_BxT):
  """Target logit by a masked sum instead of take_along_axis: its gradient is a dense select,
  not a scatter into a zeros (B, T, V) array."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  v = logits_BxTxV.shape[-1]
  hit_BxTxV = jax.lax.broadcasted_iota(jnp.int32, logits_BxTxV.shape, 2) == targets_BxT[..., None]
  target_BxT = jnp.sum(jnp.where(hit_BxTxV, logits_BxTxV, 0.0), axis=-1)
  del v
  return target_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)


@jax.custom_vjp
def _fused_logprobs(logits_BxTxV, targets_BxT):
  return _onehot_gather_logprobs(logits_BxTxV, targets_BxT)


def _fused_fwd(logits_BxTxV, targets_BxT):
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  m_BxT = jnp.max(logits_BxTxV, axis=-1)
  lse_BxT = m_BxT + jnp.log(jnp.sum(jnp.exp(logits_BxTxV - m_BxT[..., None]), axis=-1))
  hit = jax.lax.broadcasted_iota(jnp.int32, logits_BxTxV.shape, 2) == targets_BxT[..., None]
  target_BxT = jnp.sum(jnp.where(hit, logits_BxTxV, 0.0), axis=-1)
  return target_BxT - lse_BxT, (logits_BxTxV, targets_BxT, lse_BxT)


def _fused_bwd(res, g_BxT):
  """d logp / d logits = onehot(target) − softmax: one fused elementwise pass over (B, T, V)."""
  logits_BxTxV, targets_BxT, lse_BxT = res
  hit = jax.lax.broadcasted_iota(jnp.int32, logits_BxTxV.shape, 2) == targets_BxT[..., None]
  p_BxTxV = jnp.exp(logits_BxTxV - lse_BxT[..., None])
  grad = g_BxT[..., None] * (hit.astype(jnp.float32) - p_BxTxV)
  return grad, None


_fused_logprobs.defvjp(_fused_fwd, _fused_bwd)


def _fused_gather_logprobs(logits_BxTxV, targets_BxT):
  return _fused_logprobs(logits_BxTxV, targets_BxT)


# ---------------------------------------------------------------- attention

def _attention_sdpa(self, x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index):
  """The same attention through jax.nn.dot_product_attention (XLA implementation):
  BTHK layout throughout, no explicit transposes in the model code."""
  from alignlab.model import rope
  cfg = self.cfg
  qkv = jnp.einsum('btd,dchk->btchk', x_BxTxD, self.w_qkv[...])
  if cfg.use_bias:
    qkv = qkv + self.b_qkv[...]
  q, k, v = (qkv[:, :, i] for i in range(3))
  if cfg.positions == 'rope':
    q = rope(q, positions_BxT, cfg.rope_theta)
    k = rope(k, positions_BxT, cfg.rope_theta)
  if cache is not None:
    raise NotImplementedError('a training-step variant: no KV cache (alignlab.model.Attention decodes)')
  out = jax.nn.dot_product_attention(q, k, v, mask=mask_BxTxS[:, None], implementation='xla')
  out_BxTxD = jnp.einsum('bthk,hkd->btd', out, self.w_out[...])
  if cfg.use_bias:
    out_BxTxD = out_BxTxD + self.b_out[...]
  return out_BxTxD, cache


def _attention_separate_qkv(self, x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index):
  """Three (D, D) matmuls instead of one fused (D, 3·D) and a strided split."""
  from alignlab.model import _NEG_INF
  cfg = self.cfg
  w = self.w_qkv[...]
  d = x_BxTxD.shape[-1]
  h, kd = cfg.n_heads, cfg.head_dim
  outs = []
  for i in range(3):
    y = x_BxTxD @ w[:, i].reshape(d, h * kd)
    if cfg.use_bias:
      y = y + self.b_qkv[...][i].reshape(h * kd)
    outs.append(y.reshape(*y.shape[:2], h, kd))
  q, k, v = outs
  if cache is not None:
    raise NotImplementedError('a training-step variant: no KV cache (alignlab.model.Attention decodes)')
  s = jnp.einsum('bthk,bshk->bhts', q, k) / math.sqrt(kd)
  s = jnp.where(mask_BxTxS[:, None], s, _NEG_INF)
  p = jax.nn.softmax(s, axis=-1)
  out = jnp.einsum('bhts,bshk->bthk', p, v)
  out_BxTxD = jnp.einsum('bthk,hkd->btd', out, self.w_out[...])
  if cfg.use_bias:
    out_BxTxD = out_BxTxD + self.b_out[...]
  return out_BxTxD, cache


# ---------------------------------------------------------------- sampling

def _with_logprob(logits_BxV, token_B):
  logprob_B = (jnp.take_along_axis(logits_BxV, token_B[:, None], axis=-1)[:, 0]
               - jax.nn.logsumexp(logits_BxV, axis=-1))
  return token_B.astype(jnp.int32), logprob_B


def _choose_flat_cdf(logits_BxV, key, cfg):
  """Inverse CDF with one cumulative sum over the whole vocabulary (alignlab's sampler before
  the two-level `sampling.inverse_cdf`)."""
  from alignlab.sampling import filter_logits
  if cfg.temperature == 0:
    return _with_logprob(logits_BxV, jnp.argmax(logits_BxV, axis=-1))
  filtered = filter_logits(logits_BxV, cfg)
  cdf_BxV = jnp.cumsum(jnp.exp(filtered - jnp.max(filtered, axis=-1, keepdims=True)), axis=-1)
  u_Bx1 = jax.random.uniform(key, (logits_BxV.shape[0], 1)) * cdf_BxV[:, -1:]
  token_B = jnp.minimum(jnp.sum(cdf_BxV <= u_Bx1, axis=-1), logits_BxV.shape[-1] - 1)
  return _with_logprob(logits_BxV, token_B)


def _choose_gumbel(logits_BxV, key, cfg):
  """`jax.random.categorical` (a Gumbel per vocabulary entry): the textbook sampler."""
  from alignlab.sampling import filter_logits
  if cfg.temperature == 0:
    return _with_logprob(logits_BxV, jnp.argmax(logits_BxV, axis=-1))
  return _with_logprob(logits_BxV, jax.random.categorical(key, filter_logits(logits_BxV, cfg), axis=-1))


def _choose_greedy(logits_BxV, key, cfg):
  """Lower bound only (not a sampler at temperature 1): the cost without any RNG."""
  del key, cfg
  return _with_logprob(logits_BxV, jnp.argmax(logits_BxV, axis=-1))


def apply(names: str | None) -> list[str]:
  """Applies a comma-separated list of variants; returns the names applied."""
  from alignlab import logprobs, model, sampling
  applied = []
  for name in [n for n in (names or '').split(',') if n and n != 'baseline']:
    if name == 'onehot_gather':
      logprobs.gather_logprobs = _onehot_gather_logprobs
    elif name == 'fused_logprobs':
      logprobs.gather_logprobs = _fused_gather_logprobs
    elif name == 'sdpa':
      model.Attention.__call__ = _attention_sdpa
    elif name == 'separate_qkv':
      model.Attention.__call__ = _attention_separate_qkv
    elif name == 'flat_cdf':
      sampling._choose = _choose_flat_cdf
    elif name == 'gumbel':
      sampling._choose = _choose_gumbel
    elif name == 'greedy':
      sampling._choose = _choose_greedy
    else:
      raise ValueError(f'unknown variant {name!r}')
    applied.append(name)
  return applied
