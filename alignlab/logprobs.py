"""Per-token log-probs of response tokens, and the exact per-token KL between two models'
next-token distributions. Shared by every loss and by evaluation.

Sequences are in the canonical layout (docs/architecture.md): prompt left-padded to P,
response right-padded to R. Arrays aligned with `tokens_BxT` hold at position t the quantity
for token t, predicted from the logits at t − 1, and are 0 off the response.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignlab.model import cache_mask, init_cache, positions_from_mask


def gather_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log softmax(logits)[target] without materializing the full log-softmax: XLA fuses the
  logsumexp reduction and the gather into one pass over the vocabulary."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return target_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)


def response_logprobs(model, hidden_BxRxD: jax.Array, targets_BxR: jax.Array) -> jax.Array:
  """`gather_logprobs(model.logits(hidden_BxRxD), targets_BxR)` of a `CausalLM`.

  With `model.cfg.logits_chunk` = C > 0 the R positions are processed C at a time (`lax.map`),
  each chunk under `jax.checkpoint`: the float32 B×R×V logits are never materialized whole,
  forward or backward, only B×C×V at a time (the LM head is recomputed per chunk in the
  backward pass). At GPT-2's vocabulary that is 100 MB per 512-token sequence otherwise.
  """
  c = model.cfg.logits_chunk
  b, r, d = hidden_BxRxD.shape
  if not c or c >= r:
    return gather_logprobs(model.logits(hidden_BxRxD), targets_BxR)
  pad = (-r) % c
  n = (r + pad) // c
  hidden_NxBxCxD = jnp.pad(hidden_BxRxD, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, d).swapaxes(0, 1)
  targets_NxBxC = jnp.pad(targets_BxR, ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)

  # The head is read inside each chunk as the model stores it (no D×V transposed copy of a
  # tied embedding, whose cotangent would be one more V×D buffer).
  @jax.checkpoint
  def chunk(hidden_BxCxD, targets_BxC):
    return gather_logprobs(model.logits(hidden_BxCxD), targets_BxC)

  logps_NxBxC = jax.lax.map(lambda xs: chunk(*xs), (hidden_NxBxCxD, targets_NxBxC))
  return logps_NxBxC.swapaxes(0, 1).reshape(b, n * c)[:, :r]


def token_logprobs(logits_BxTxV: jax.Array, tokens_BxT: jax.Array,
                   response_mask_BxT: jax.Array) -> jax.Array:
  """logps_BxT[:, t] = log p(tokens[t] | tokens[<t]) on response tokens, 0 elsewhere."""
  logps_BxTm1 = gather_logprobs(logits_BxTxV[:, :-1], tokens_BxT[:, 1:])
  logps_BxT = jnp.pad(logps_BxTm1, ((0, 0), (1, 0)))
  return logps_BxT * response_mask_BxT.astype(logps_BxT.dtype)


def sequence_logprobs(model, tokens_BxT: jax.Array, attention_mask_BxT: jax.Array,
                      response_mask_BxT: jax.Array, *, response_start: int = 1) -> jax.Array:
  """Per-token response log-probs under a `CausalLM`.

  `response_start` (static) is the first position that may hold a response token — P in
  the canonical layout. Logits are computed only from position `response_start − 1` on, so
  the prompt never pays for the vocabulary projection (a large share of the FLOPs when V is
  large): the hidden states of the prompt are still computed, but not their logits.
  """
  if response_start < 1:
    raise ValueError(f'response_start must be ≥ 1, got {response_start}')
  hidden_BxTxD = model.hidden(tokens_BxT, attention_mask_BxT)
  logps_BxR = response_logprobs(model, hidden_BxTxD[:, response_start - 1:-1],
                                tokens_BxT[:, response_start:])
  logps_BxT = jnp.pad(logps_BxR, ((0, 0), (response_start, 0)))
  return logps_BxT * response_mask_BxT.astype(logps_BxT.dtype)


def shared_prompt_logprobs(model, tokens_2BxT: jax.Array, attention_mask_2BxT: jax.Array,
                           response_mask_2BxT: jax.Array, *, prompt_len: int) -> jax.Array:
  """`sequence_logprobs` for 2B rows whose rows i and B + i hold the same prompt (chosen ⊕
  rejected of one pair), with the prompt run once.

  Under causal attention a prompt token's hidden state never depends on the response, so the
  prompt is encoded once per pair (B rows, its keys and values written to a KV cache) and both
  responses attend to that cache: the forward and backward cost 2B·R + B·P token passes
  instead of 2B·(P + R) (a quarter less when P = R). The gradient reaching the prompt is the
  sum over its two responses, as in the concatenated forward. Same numbers as
  `sequence_logprobs(..., response_start=prompt_len)` up to float rounding
  (tests/test_model.py).
  """
  two_b, t = tokens_2BxT.shape
  b, p = two_b // 2, prompt_len
  if two_b % 2 or not 1 <= p < t:
    raise ValueError(f'need an even number of rows and 1 ≤ prompt_len < T; got {two_b} rows, '
                     f'prompt_len {p}, T {t}')
  positions_2BxT = positions_from_mask(attention_mask_2BxT)
  cache = init_cache(model.cfg, b, t)
  prompt_hidden_BxPxD, cache = model.backbone(tokens_2BxT[:b, :p], positions_2BxT[:b, :p],
                                              cache_mask(attention_mask_2BxT[:b], 0, p), cache, 0)
  cache = [{k: jnp.concatenate([v, v], axis=0) for k, v in layer.items()} for layer in cache]
  response_hidden_2BxRxD, _ = model.backbone(tokens_2BxT[:, p:], positions_2BxT[:, p:],
                                             cache_mask(attention_mask_2BxT, p, t - p), cache, p)
  last_prompt_2Bx1xD = jnp.concatenate([prompt_hidden_BxPxD[:, -1:]] * 2, axis=0)
  # Position p − 1 predicts token p; response positions p … T − 2 predict p + 1 … T − 1.
  hidden_2BxRxD = jnp.concatenate([last_prompt_2Bx1xD, response_hidden_2BxRxD[:, :-1]], axis=1)
  logps_2BxR = response_logprobs(model, hidden_2BxRxD, tokens_2BxT[:, p:])
  logps_2BxT = jnp.pad(logps_2BxR, ((0, 0), (p, 0)))
  return logps_2BxT * response_mask_2BxT.astype(logps_2BxT.dtype)


def sum_and_count(logps_BxT: jax.Array, response_mask_BxT: jax.Array):
  """Summed response log-prob and number of response tokens per sequence."""
  mask = response_mask_BxT.astype(logps_BxT.dtype)
  return (logps_BxT * mask).sum(-1), mask.sum(-1)


def token_kl(logits_p_BxTxV: jax.Array, logits_q_BxTxV: jax.Array,
             response_mask_BxT: jax.Array) -> jax.Array:
  """kl_BxT[:, t] = KL(p(·|tokens[<t]) ‖ q(·|tokens[<t])), the exact KL between the full
  next-token distributions that generate response token t; 0 off the response.

  Summed over the response this is the DPO paper's sequence-level KL (footnote 3 of
  arXiv 2305.18290: "the sum of the per-timestep KL-divergences").
  """
  logp_BxTxV = jax.nn.log_softmax(logits_p_BxTxV[:, :-1].astype(jnp.float32), axis=-1)
  logq_BxTxV = jax.nn.log_softmax(logits_q_BxTxV[:, :-1].astype(jnp.float32), axis=-1)
  kl_BxTm1 = jnp.sum(jnp.exp(logp_BxTxV) * (logp_BxTxV - logq_BxTxV), axis=-1)
  kl_BxT = jnp.pad(kl_BxTm1, ((0, 0), (1, 0)))
  return kl_BxT * response_mask_BxT.astype(kl_BxT.dtype)


def check_token_ids(tokens, vocab_size: int, name: str = 'tokens') -> None:
  """Host-side check: `jnp.take` would silently clamp an out-of-range id."""
  import numpy as np
  tokens = np.asarray(tokens)
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
    bad = tokens[(tokens < 0) | (tokens >= vocab_size)]
    raise ValueError(f'{name}: token id {int(bad.flat[0])} outside the vocabulary [0, {vocab_size})')
