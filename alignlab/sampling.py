"""Batched, jitted KV-cache sampler: temperature (0 = greedy), top-k, top-p, per-sequence EOS.

One prefill pass writes the left-padded prompts into a fixed-size cache of P + N slots, then
a `lax.scan` decodes one token per step; no Python loop runs over tokens and no shape
depends on the data, so the sampler compiles once per (B, P, N, config).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from alignlab.config import SamplingConfig
from alignlab.model import cache_mask, init_cache, positions_from_mask


class SampleOutput(NamedTuple):
  """All (B, P + N) in the canonical layout (docs/architecture.md)."""
  tokens: jax.Array
  attention_mask: jax.Array
  response_mask: jax.Array
  logprobs: jax.Array  # untempered log π(token) on response tokens, 0 elsewhere


def filter_logits(logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus; Holtzman et al. 2019, arXiv 1904.09751)."""
  logits_BxV = logits_BxV / cfg.temperature
  if cfg.top_k and cfg.top_k < logits_BxV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BxV, cfg.top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
  if cfg.top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass strictly
    # before it is < top_p (so the most likely token always stays).
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_BxV = jnp.where(before_BxV < cfg.top_p, sorted_BxV, jnp.inf)
    threshold_B1 = jnp.min(kept_BxV, axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_B1, -jnp.inf, logits_BxV)
  return logits_BxV


CDF_BLOCK = 128  # vocabulary entries per block of the two-level inverse CDF


def inverse_cdf(weights_BxV: jax.Array, u_B: jax.Array) -> jax.Array:
  """The index i with C[i−1] ≤ u·C[V−1] < C[i], C the cumulative sum of each row's
  non-negative (unnormalized) weights, u ∈ [0, 1): a draw from weights/Σweights, never an
  index of weight 0.

  Two levels instead of one cumulative sum over the vocabulary (which XLA:CPU lowers as a
  tree of reduce-windows costing ≈ 15 % of a decode step): block totals → the block, then the
  cumulative sum of that block's `CDF_BLOCK` weights → the entry. The position inside the
  block is a fraction of the block's own total, so float rounding between the two levels can
  never land on a zero-weight entry past the block's last positive one."""
  b, v = weights_BxV.shape
  pad = (-v) % CDF_BLOCK
  w_BxNxC = jnp.pad(weights_BxV, ((0, 0), (0, pad))).reshape(b, -1, CDF_BLOCK)
  block_BxN = jnp.sum(w_BxNxC, axis=-1)
  block_cdf_BxN = jnp.cumsum(block_BxN, axis=-1)
  target_B = u_B * block_cdf_BxN[:, -1]
  above_BxN = (block_cdf_BxN > target_B[:, None]) & (block_BxN > 0)
  last_positive_B = block_BxN.shape[1] - 1 - jnp.argmax((block_BxN > 0)[:, ::-1], axis=-1)
  j_B = jnp.where(above_BxN.any(-1), jnp.argmax(above_BxN, axis=-1), last_positive_B)
  block_total_B = jnp.take_along_axis(block_BxN, j_B[:, None], axis=-1)[:, 0]
  before_B = jnp.take_along_axis(block_cdf_BxN, j_B[:, None], axis=-1)[:, 0] - block_total_B
  frac_B = jnp.clip((target_B - before_B) / block_total_B, 0.0, 1.0 - 2.0 ** -23)
  inner_BxC = jnp.take_along_axis(w_BxNxC, j_B[:, None, None], axis=1)[:, 0]
  inner_cdf_BxC = jnp.cumsum(inner_BxC, axis=-1)
  i_B = jnp.sum(inner_cdf_BxC <= (frac_B * inner_cdf_BxC[:, -1])[:, None], axis=-1)
  return (j_B * CDF_BLOCK + jnp.minimum(i_B, CDF_BLOCK - 1)).astype(jnp.int32)


def _choose(logits_BxV: jax.Array, key: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """(token_B, log π(token)_B) with π the untempered, unfiltered softmax of the logits."""
  if cfg.temperature == 0:
    token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    max_B = jnp.max(logits_BxV, axis=-1)
    return token_B, max_B - jax.nn.logsumexp(logits_BxV, axis=-1)
  # Inverse-CDF sampling: one uniform per row. `jax.random.categorical` draws a Gumbel per
  # vocabulary entry (B·V threefry numbers per decode step), which costs more than the model's
  # matmuls on XLA:CPU (benchmarks/RESULTS.md). Same distribution: filtered tokens have weight
  # 0 and are never drawn.
  filtered_BxV = filter_logits(logits_BxV, cfg)
  max_B1 = jnp.max(filtered_BxV, axis=-1, keepdims=True)
  weights_BxV = jnp.exp(filtered_BxV - max_B1)
  token_B = inverse_cdf(weights_BxV, jax.random.uniform(key, (logits_BxV.shape[0],)))
  if cfg.temperature == 1.0 and not cfg.top_k and cfg.top_p >= 1.0:
    lse_B = max_B1[:, 0] + jnp.log(jnp.sum(weights_BxV, axis=-1))  # the weights are π's: one exp pass
  else:
    lse_B = jax.nn.logsumexp(logits_BxV, axis=-1)
  return token_B, jnp.take_along_axis(logits_BxV, token_B[:, None], axis=-1)[:, 0] - lse_B


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg'))
def sample(graphdef, params, prompt_tokens_BxP: jax.Array, prompt_mask_BxP: jax.Array,
           key: jax.Array, cfg: SamplingConfig) -> SampleOutput:
  """Samples `cfg.max_new_tokens` tokens after left-padded prompts (each with ≥ 1 real token).

  A sequence is finished once it emits `cfg.eos_id`; its later slots hold `cfg.pad_id` and
  are masked out. Deterministic given `key`.
  """
  model = nnx.merge(graphdef, params)
  b, p = prompt_tokens_BxP.shape
  n = cfg.max_new_tokens
  s = p + n
  if n < 1:
    raise ValueError(f'max_new_tokens must be ≥ 1, got {n}')
  if s > model.cfg.max_seq_len:  # also a RoPE model: past its context is a wrong number too
    raise ValueError(f'prompt length {p} + max_new_tokens {n} exceeds model.max_seq_len '
                     f'{model.cfg.max_seq_len}')
  prompt_mask_BxP = prompt_mask_BxP.astype(bool)
  cache = init_cache(model.cfg, b, s)
  valid_BxS = jnp.concatenate([prompt_mask_BxP, jnp.ones((b, n), bool)], axis=1)
  head_DxV = model.head_weights()  # once, outside the decode loop

  # Prefill: prompt token i attends to real prompt tokens j ≤ i.
  logits_BxPxV, cache = model.decode(prompt_tokens_BxP, positions_from_mask(prompt_mask_BxP),
                                     cache_mask(valid_BxS, 0, p), cache, 0, head_DxV)
  prompt_len_B = prompt_mask_BxP.sum(-1).astype(jnp.int32)

  def pick(logits_BxV, key, done_B):
    token_B, logprob_B = _choose(logits_BxV, key, cfg)
    token_B = jnp.where(done_B, cfg.pad_id, token_B)
    live_B = ~done_B
    done_B = done_B | (token_B == cfg.eos_id) if cfg.eos_id >= 0 else done_B
    return token_B, jnp.where(live_B, logprob_B, 0.0), live_B, done_B

  # Each scan step decodes the token picked last and picks the next one from its logits, so
  # the B×V logits never cross the loop boundary (no per-step copy of the carry): pick the
  # first token after the prefill, then N − 1 decode steps.
  key, sub = jax.random.split(key)
  first = pick(logits_BxPxV[:, -1], sub, jnp.zeros((b,), bool))

  def step(carry, i):
    cache, token_B, done_B, key = carry
    slot = p + i
    logits_Bx1xV, cache = model.decode(token_B[:, None], (prompt_len_B + i)[:, None],
                                       cache_mask(valid_BxS, slot, 1), cache, slot, head_DxV)
    key, sub = jax.random.split(key)
    token_B, logprob_B, live_B, done_B = pick(logits_Bx1xV[:, 0], sub, done_B)
    return (cache, token_B, done_B, key), (token_B, logprob_B, live_B)

  token_B, logprob_B, live_B, done_B = first
  _, (tokens_NxB, logprobs_NxB, live_NxB) = jax.lax.scan(
      step, (cache, token_B, done_B, key), jnp.arange(n - 1))
  tokens_BxN = jnp.concatenate([token_B[:, None], tokens_NxB.T], axis=1)
  logprobs_BxN = jnp.concatenate([logprob_B[:, None], logprobs_NxB.T], axis=1)
  live_BxN = jnp.concatenate([live_B[:, None], live_NxB.T], axis=1).astype(jnp.int32)

  return SampleOutput(
      tokens=jnp.concatenate([prompt_tokens_BxP.astype(jnp.int32), tokens_BxN], axis=1),
      attention_mask=jnp.concatenate([prompt_mask_BxP.astype(jnp.int32), live_BxN], axis=1),
      response_mask=jnp.concatenate([jnp.zeros((b, p), jnp.int32), live_BxN], axis=1),
      logprobs=jnp.concatenate([jnp.zeros((b, p), jnp.float32), logprobs_BxN], axis=1),
  )
