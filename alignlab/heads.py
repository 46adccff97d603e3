"""Heads on the shared transformer: the LM head (policy, reference) and the scalar head
(reward model: one score per sequence, read at the last real token; value function: one
value per position)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alignlab.config import ModelConfig
from alignlab.model import KVCache, Transformer, _param, causal_mask, positions_from_mask


class CausalLM(nnx.Module):
  """Transformer + LM head (tied to the token embedding by default, as in GPT-2)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.backbone = Transformer(cfg, rngs=rngs)
    if not cfg.tie_embeddings:
      self.w_lm = _param(rngs, (cfg.d_model, cfg.vocab_size), ('fsdp', 'tensor'),
                         std=cfg.init_std, dtype=cfg.param_dtype)

  def hidden(self, tokens_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    positions_BxT = positions_from_mask(attention_mask_BxT)
    hidden_BxTxD, _ = self.backbone(tokens_BxT, positions_BxT, causal_mask(attention_mask_BxT))
    return hidden_BxTxD

  def head_weights(self) -> jax.Array:
    """The LM head as a DxV matrix: for a tied head, the transposed embedding, materialized.

    The decode loop computes this once and reuses it every step: a (few rows) × DxV product is
    ≈ 1.7× faster on XLA:CPU than the same product against the VxD embedding at 8 rows, and the
    same at 64 (benchmarks/findings.md)."""
    dtype = jnp.dtype(self.cfg.dtype)  # in the compute dtype: cast once, not every step
    if self.cfg.tie_embeddings:
      return self.backbone.embed[...].T.astype(dtype)
    return self.w_lm[...].astype(dtype)

  def logits(self, hidden_BxTxD: jax.Array, head_DxV: jax.Array | None = None) -> jax.Array:
    """float32 logits_BxTxV; the product accumulates in float32 whatever the compute dtype."""
    if head_DxV is not None:
      logits_BxTxV = jnp.matmul(hidden_BxTxD, head_DxV.astype(hidden_BxTxD.dtype),
                                preferred_element_type=jnp.float32)
    elif self.cfg.tie_embeddings:
      logits_BxTxV = self.backbone.attend_embeddings(hidden_BxTxD)
    else:
      logits_BxTxV = jnp.matmul(hidden_BxTxD, self.w_lm[...].astype(hidden_BxTxD.dtype),
                                preferred_element_type=jnp.float32)
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    if self.cfg.masked_output_ids:
      masked_V = jnp.zeros((self.cfg.vocab_size,), bool).at[
          jnp.asarray(self.cfg.masked_output_ids)].set(True)
      logits_BxTxV = jnp.where(masked_V, -1e9, logits_BxTxV)
    return logits_BxTxV

  def __call__(self, tokens_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    return self.logits(self.hidden(tokens_BxT, attention_mask_BxT))

  def decode(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
             cache: KVCache, cache_index: jax.Array | int, head_DxV: jax.Array | None = None
             ) -> tuple[jax.Array, KVCache]:
    """Writes T new tokens into cache slots [cache_index, cache_index + T) and returns their
    logits; `mask_BxTxS` says which cache slots each new token may attend to. `head_DxV`:
    `head_weights()` computed once by the caller (a decode loop), or None."""
    hidden_BxTxD, cache = self.backbone(tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index)
    return self.logits(hidden_BxTxD, head_DxV), cache


class ScalarModel(nnx.Module):
  """Transformer + a linear scalar head: values_BxT, one number per position.

  As a reward model, the score of a sequence is the value at its last real token
  (`last_token_value`); as a value function every response position is used. `gain` and
  `bias` are kept apart from the head so that a reward model can be normalized after
  training (π_ref samples scoring mean 0, std 1; Ziegler et al. 2019, arXiv 1909.08593).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, zero_init_head: bool = False):
    self.cfg = cfg
    self.backbone = Transformer(cfg, rngs=rngs)
    std = None if zero_init_head else 1.0 / (cfg.d_model + 1) ** 0.5
    self.w_head = _param(rngs, (cfg.d_model,), ('fsdp',), std=std, dtype=cfg.param_dtype)
    self.b_head = _param(rngs, (), (), std=None, dtype=cfg.param_dtype)
    self.gain = nnx.Param(jnp.ones((), cfg.param_dtype), out_sharding=())
    self.bias = nnx.Param(jnp.zeros((), cfg.param_dtype), out_sharding=())

  def __call__(self, tokens_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    positions_BxT = positions_from_mask(attention_mask_BxT)
    hidden_BxTxD, _ = self.backbone(tokens_BxT, positions_BxT, causal_mask(attention_mask_BxT))
    f32 = jnp.float32  # the score and everything after it in float32, whatever the param dtype
    raw_BxT = hidden_BxTxD.astype(f32) @ self.w_head[...].astype(f32) + self.b_head[...].astype(f32)
    return raw_BxT * self.gain[...].astype(f32) + self.bias[...].astype(f32)


def last_token_index(attention_mask_BxT: jax.Array) -> jax.Array:
  """Index of the last real token of each row (prompts left-padded, responses right-padded)."""
  t = attention_mask_BxT.shape[-1]
  positions_T = jnp.arange(t)
  return jnp.max(jnp.where(attention_mask_BxT.astype(bool), positions_T, -1), axis=-1)


def last_token_value(values_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
  """The scalar at the last real token of each row (never at padding)."""
  index_B = last_token_index(attention_mask_BxT)
  return jnp.take_along_axis(values_BxT, index_B[:, None], axis=-1)[:, 0]


def embedding_from_lm(lm_params: dict, scalar_params: dict) -> dict:
  """Scalar-model params whose backbone is copied from an LM (reward model and value
  function are initialized from the SFT model)."""
  return {**scalar_params, 'backbone': lm_params['backbone']}
