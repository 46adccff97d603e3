"""Decoder-only transformer backbone (Flax NNX), shared by policy, reference, reward model and
value function; only the head differs (see `heads.py`).

Dimension legend (shape suffixes used across alignlab):
  B batch            T sequence (query) length     S key/cache length
  P prompt length    R response length             N samples per prompt
  V vocabulary       D d_model                     F MLP width
  H attention heads  K head dim                    L layers
  G key/value heads  Q query heads per key/value head (H = G·Q; grouped-query attention)

Every parameter declares its partition spec over the mesh axes ('data', 'fsdp', 'tensor')
where it is created (`_param`); `sharding.init_params` reads them back. Weight matrices are
split over 'fsdp' on the model dimension and over 'tensor' on heads / MLP width / vocab
(Megatron layout: column-parallel in, row-parallel out).

The model is padding-aware: callers pass position ids and a boolean attention mask
`mask_BxTxS`, so a left-padded prompt gives the same logits on its real tokens as the
unpadded prompt. A fixed-size KV cache (a plain pytree, not NNX state, so that it threads
through `lax.scan`) serves decoding.

Mixed precision: parameters are stored in `cfg.param_dtype` and cast to the compute dtype
`cfg.dtype` where they are used (`_cast`), so that with bf16 compute and fp32 parameters every
matmul runs in bf16 (an fp32 weight would silently promote `x @ w` back to fp32) and the KV
cache receives bf16 keys. Normalization statistics, the softmax of attention and everything
downstream of the logits (log-softmax, log-probs, KL, losses) are float32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from alignlab.config import ModelConfig
from alignlab.sharding import constrain

KVCache = list[dict[str, jax.Array]]  # per layer: {'k': BxGxSxK, 'v': BxGxSxK}

_NEG_INF = -1e30  # finite, so that a fully masked row (a pad query) gives no NaN


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], spec: tuple[Any, ...], *, std: float | None,
           dtype: Any) -> nnx.Param:
  """A parameter with its partition spec; std=None means zeros, 'ones' handled by caller."""
  if std is None:
    value = jnp.zeros(shape, dtype)
  else:
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, out_sharding=spec)


def _cast(param: nnx.Param, dtype: Any) -> jax.Array:
  """A parameter's value in the compute dtype (a no-op when the dtypes agree)."""
  return param[...].astype(dtype)


def check_length(length: int, cfg: ModelConfig, what: str = 'sequence length') -> None:
  """Trace-time check of a static length against `cfg.max_seq_len`.

  Past `max_seq_len` a learned position embedding is indexed out of range, which `jnp.take`
  answers with NaN (its default fill mode for floats), and a RoPE model runs outside the
  context it was trained for: both are a silent wrong number, so they are an error."""
  if length > cfg.max_seq_len:
    raise ValueError(f'{what} {length} exceeds model.max_seq_len={cfg.max_seq_len}; shorten or '
                     f'truncate the input, or use a model with a longer context')


def positions_from_mask(attention_mask_BxT: jax.Array) -> jax.Array:
  """Position ids that skip padding: the first real token is position 0."""
  return jnp.maximum(jnp.cumsum(attention_mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(attention_mask_BxT: jax.Array) -> jax.Array:
  """mask_BxTxT[b, i, j]: query i may attend to key j (j ≤ i and j is a real token)."""
  t = attention_mask_BxT.shape[-1]
  causal_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))
  return causal_TxT[None] & attention_mask_BxT.astype(bool)[:, None, :]


def cache_mask(valid_BxS: jax.Array, first_slot: jax.Array | int, n_queries: int) -> jax.Array:
  """mask_BxTxS for T = `n_queries` new tokens written to cache slots [first_slot, first_slot + T):
  query i may attend to slot j ≤ first_slot + i when slot j holds a real token."""
  slots_S = jnp.arange(valid_BxS.shape[-1])
  query_slot_T = first_slot + jnp.arange(n_queries)
  return (slots_S[None, None, :] <= query_slot_T[None, :, None]) & valid_BxS.astype(bool)[:, None]


class Norm(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    del rngs
    self.kind = cfg.norm
    self.eps = cfg.norm_eps
    self.scale = nnx.Param(jnp.ones((cfg.d_model,), cfg.param_dtype), out_sharding=(None,))
    if cfg.norm == 'layernorm':
      self.bias = nnx.Param(jnp.zeros((cfg.d_model,), cfg.param_dtype), out_sharding=(None,))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxD.astype(jnp.float32)
    if self.kind == 'layernorm':
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps)
    x = x * self.scale[...].astype(jnp.float32)
    if self.kind == 'layernorm':
      x = x + self.bias[...].astype(jnp.float32)
    return x.astype(x_BxTxD.dtype)


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
  """The K/2 rotary angular frequencies θ^(−2i/K), rescaled as `cfg.rope_scaling` says.

  'linear' divides every frequency by the factor (position interpolation, Chen et al. 2023,
  arXiv 2306.15595). 'llama3' is Llama 3.1's band-wise rule (Meta's reference code,
  `apply_scaling` in llama-models): wavelengths shorter than original_len / high_freq_factor
  keep their frequency, those longer than original_len / low_freq_factor are divided by the
  factor, and the band between interpolates linearly in original_len / wavelength."""
  k = cfg.head_dim
  freqs_K2 = cfg.rope_theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
  factor = cfg.rope_scaling_factor
  if cfg.rope_scaling == 'linear':
    return freqs_K2 / factor
  if cfg.rope_scaling == 'llama3':
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    ratio_K2 = cfg.rope_original_max_len * freqs_K2 / (2 * math.pi)  # original_len / wavelength
    smooth_K2 = jnp.clip((ratio_K2 - low) / (high - low), 0.0, 1.0)
    return (1 - smooth_K2) * freqs_K2 / factor + smooth_K2 * freqs_K2
  return freqs_K2


def rope(x_BxTxHxK: jax.Array, positions_BxT: jax.Array, theta: float,
         freqs_K2: jax.Array | None = None) -> jax.Array:
  """Rotary position embedding (Su et al. 2021, arXiv 2104.09864), rotate-half form (the
  layout of Hugging Face's Llama-family checkpoints). `freqs_K2` (from `rope_frequencies`)
  overrides the unscaled frequencies of `theta`."""
  k = x_BxTxHxK.shape[-1]
  if freqs_K2 is None:
    freqs_K2 = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
  angles_BxTxK2 = positions_BxT[..., None].astype(jnp.float32) * freqs_K2
  sin, cos = jnp.sin(angles_BxTxK2)[:, :, None], jnp.cos(angles_BxTxK2)[:, :, None]
  x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxK.dtype)


def use_fused_attention(cfg: ModelConfig) -> bool:
  """Whether multi-token passes use `jax.nn.dot_product_attention` (`cfg.attention`)."""
  if cfg.attention == 'auto':
    return jax.default_backend() in ('gpu', 'tpu')
  return cfg.attention == 'fused'


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, h, k, g = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.kv_heads
    self.cfg = cfg
    # Heads split over 'tensor' so each shard owns whole heads. With as many key/value heads
    # as query heads, one fused q/k/v projection (the layout of every earlier alignlab
    # checkpoint); with grouped-query attention, a query and a fused key/value projection.
    if g == h:
      self.w_qkv = _param(rngs, (d, 3, h, k), ('fsdp', None, 'tensor', None), std=cfg.init_std,
                          dtype=cfg.param_dtype)
    else:
      self.w_q = _param(rngs, (d, h, k), ('fsdp', 'tensor', None), std=cfg.init_std,
                        dtype=cfg.param_dtype)
      self.w_kv = _param(rngs, (d, 2, g, k), ('fsdp', None, 'tensor', None), std=cfg.init_std,
                         dtype=cfg.param_dtype)
    # GPT-2 scales the residual projections by 1/sqrt(2L) at init.
    self.w_out = _param(rngs, (h, k, d), ('tensor', None, 'fsdp'),
                        std=cfg.init_std / math.sqrt(2 * cfg.n_layers), dtype=cfg.param_dtype)
    if cfg.has_qkv_bias:
      if g == h:
        self.b_qkv = _param(rngs, (3, h, k), (None, 'tensor', None), std=None,
                            dtype=cfg.param_dtype)
      else:
        self.b_q = _param(rngs, (h, k), ('tensor', None), std=None, dtype=cfg.param_dtype)
        self.b_kv = _param(rngs, (2, g, k), (None, 'tensor', None), std=None,
                           dtype=cfg.param_dtype)
    if cfg.use_bias:
      self.b_out = _param(rngs, (d,), (None,), std=None, dtype=cfg.param_dtype)

  def project(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK) before RoPE, in the compute dtype of `x_BxTxD`."""
    cfg, dtype = self.cfg, x_BxTxD.dtype
    if cfg.kv_heads == cfg.n_heads:
      qkv_BxTx3xHxK = jnp.einsum('btd,dchk->btchk', x_BxTxD, _cast(self.w_qkv, dtype))
      if cfg.has_qkv_bias:
        qkv_BxTx3xHxK = qkv_BxTx3xHxK + _cast(self.b_qkv, dtype)
      return tuple(qkv_BxTx3xHxK[:, :, i] for i in range(3))
    q_BxTxHxK = jnp.einsum('btd,dhk->bthk', x_BxTxD, _cast(self.w_q, dtype))
    kv_BxTx2xGxK = jnp.einsum('btd,dcgk->btcgk', x_BxTxD, _cast(self.w_kv, dtype))
    if cfg.has_qkv_bias:
      q_BxTxHxK = q_BxTxHxK + _cast(self.b_q, dtype)
      kv_BxTx2xGxK = kv_BxTx2xGxK + _cast(self.b_kv, dtype)
    return q_BxTxHxK, kv_BxTx2xGxK[:, :, 0], kv_BxTx2xGxK[:, :, 1]

  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache: dict | None, cache_index):
    cfg = self.cfg
    dtype = x_BxTxD.dtype
    q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = self.project(x_BxTxD)
    if cfg.positions == 'rope':
      freqs_K2 = rope_frequencies(cfg)
      q_BxTxHxK = rope(q_BxTxHxK, positions_BxT, cfg.rope_theta, freqs_K2)
      k_BxTxGxK = rope(k_BxTxGxK, positions_BxT, cfg.rope_theta, freqs_K2)
    b, t, h, kd = q_BxTxHxK.shape
    g = cfg.kv_heads
    if cache is not None:
      # The cache is stored head-major (BxGxSxK), the layout the attention dots read: only the
      # T new rows are transposed, never the whole cache (a per-step copy of every layer's
      # cache otherwise; benchmarks/findings.md).
      k_BxGxSxK = jax.lax.dynamic_update_slice_in_dim(
          cache['k'], k_BxTxGxK.transpose(0, 2, 1, 3), cache_index, axis=2)
      v_BxGxSxK = jax.lax.dynamic_update_slice_in_dim(
          cache['v'], v_BxTxGxK.transpose(0, 2, 1, 3), cache_index, axis=2)
      cache = {'k': k_BxGxSxK, 'v': v_BxGxSxK}
      keys, values, kv_layout = k_BxGxSxK, v_BxGxSxK, 'bgsk'
    else:
      keys, values, kv_layout = k_BxTxGxK, v_BxTxGxK, 'bsgk'
    if t > 1 and use_fused_attention(cfg):
      if cache is not None:  # the kernel takes sequence-major keys: one copy per pass, not per step
        keys, values = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3)
      out_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, keys, values,
                                                 mask=mask_BxTxS[:, None],
                                                 scale=1 / math.sqrt(cfg.head_dim))
      return self._output(out_BxTxHxK), cache
    # Query head g·Q + q reads key/value head g (the grouping of Ainslie et al. 2023 and of
    # Hugging Face's `repeat_kv`). With G = H (Q = 1) the einsums are written without the
    # unit axis, so a multi-head model compiles to the program it did before grouped-query
    # attention existed (same HLO op counts for the sampler). scores/probs: BxHxTxS or
    # BxGxQxTxS; out: BxTxHxK or BxTxGxQxK.
    q_layout = 'bthk' if g == h else 'btgqk'
    kv_layout = kv_layout.replace('g', 'h') if g == h else kv_layout
    scores_layout = 'bhts' if g == h else 'bgqts'
    q = q_BxTxHxK if g == h else q_BxTxHxK.reshape(b, t, g, h // g, kd)
    scores = jnp.einsum(f'{q_layout},{kv_layout}->{scores_layout}', q, keys)
    scores = scores.astype(jnp.float32) / math.sqrt(cfg.head_dim)
    mask = mask_BxTxS[:, None] if g == h else mask_BxTxS[:, None, None]
    probs = jax.nn.softmax(jnp.where(mask, scores, _NEG_INF), axis=-1).astype(dtype)
    out = jnp.einsum(f'{scores_layout},{kv_layout}->{q_layout}', probs, values)
    return self._output(out.reshape(b, t, h, kd)), cache

  def _output(self, out_BxTxHxK: jax.Array) -> jax.Array:
    dtype = out_BxTxHxK.dtype
    out_BxTxD = jnp.einsum('bthk,hkd->btd', out_BxTxHxK, _cast(self.w_out, dtype))
    if self.cfg.use_bias:
      out_BxTxD = out_BxTxD + _cast(self.b_out, dtype)
    return out_BxTxD


class Mlp(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.ff_dim
    self.cfg = cfg
    self.w_in = _param(rngs, (d, f), ('fsdp', 'tensor'), std=cfg.init_std, dtype=cfg.param_dtype)
    if cfg.mlp == 'swiglu':
      self.w_gate = _param(rngs, (d, f), ('fsdp', 'tensor'), std=cfg.init_std, dtype=cfg.param_dtype)
    self.w_out = _param(rngs, (f, d), ('tensor', 'fsdp'),
                        std=cfg.init_std / math.sqrt(2 * cfg.n_layers), dtype=cfg.param_dtype)
    if cfg.use_bias:
      self.b_in = _param(rngs, (f,), ('tensor',), std=None, dtype=cfg.param_dtype)
      self.b_out = _param(rngs, (d,), (None,), std=None, dtype=cfg.param_dtype)

  def __call__(self, x_BxTxD):
    dtype = x_BxTxD.dtype
    h_BxTxF = x_BxTxD @ _cast(self.w_in, dtype)
    if self.cfg.use_bias:
      h_BxTxF = h_BxTxF + _cast(self.b_in, dtype)
    if self.cfg.mlp == 'swiglu':
      h_BxTxF = jax.nn.silu(x_BxTxD @ _cast(self.w_gate, dtype)) * h_BxTxF
    else:
      h_BxTxF = jax.nn.gelu(h_BxTxF, approximate=True)  # GPT-2's tanh GELU
    h_BxTxF = constrain(h_BxTxF, ('batch', None, 'tensor'))
    out_BxTxD = h_BxTxF @ _cast(self.w_out, dtype)
    if self.cfg.use_bias:
      out_BxTxD = out_BxTxD + _cast(self.b_out, dtype)
    return out_BxTxD


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.norm_attn = Norm(cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm_mlp = Norm(cfg, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index):
    attn_BxTxD, cache = self.attn(self.norm_attn(x_BxTxD), positions_BxT, mask_BxTxS, cache,
                                  cache_index)
    x_BxTxD = constrain(x_BxTxD + attn_BxTxD, ('batch', None, None))
    x_BxTxD = constrain(x_BxTxD + self.mlp(self.norm_mlp(x_BxTxD)), ('batch', None, None))
    return x_BxTxD, cache


class Transformer(nnx.Module):
  """Token + (learned) position embeddings → L pre-norm blocks → final norm."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ('tensor', 'fsdp'), std=cfg.init_std,
                        dtype=cfg.param_dtype)
    if cfg.positions == 'learned':
      self.pos_embed = _param(rngs, (cfg.max_seq_len, cfg.d_model), (None, 'fsdp'), std=0.01,
                              dtype=cfg.param_dtype)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.norm_final = Norm(cfg, rngs=rngs)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
               cache: KVCache | None = None, cache_index: jax.Array | int = 0
               ) -> tuple[jax.Array, KVCache | None]:
    # S is the key length: T without a cache, the cache length with one; positions are < S.
    check_length(mask_BxTxS.shape[-1], self.cfg)
    dtype = jnp.dtype(self.cfg.dtype)
    # The tables lie split over D ('fsdp'), the tokens over rows. Looked up as they lie, the
    # lookup's gradient (a scatter-add of row-split cotangents into a D-split table) has no
    # efficient resharding, and XLA replicates the whole B×T×D cotangent instead ("Involuntary
    # full rematerialization"). Gathered over D first, as FSDP gathers every weight before
    # use, the tied table is the one the unembedding gathers anyway, and the position table
    # is smaller than the activations (T×D). An untied token table keeps its layout: its
    # gather (V×D) is not always the cheaper one.
    embed_VxD = self.embed[...]
    if self.cfg.tie_embeddings:
      embed_VxD = constrain(embed_VxD, ('tensor', None))
    x_BxTxD = jnp.take(embed_VxD, tokens_BxT, axis=0).astype(dtype)
    if self.cfg.positions == 'learned':
      x_BxTxD = x_BxTxD + jnp.take(constrain(self.pos_embed[...], (None, None)), positions_BxT,
                                   axis=0).astype(dtype)
    x_BxTxD = constrain(x_BxTxD, ('batch', None, None))
    if self.cfg.scan_layers and tokens_BxT.shape[1] > 1:
      x_BxTxD, new_cache = self._scan_blocks(x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index)
      return self.norm_final(x_BxTxD), new_cache
    new_cache = [] if cache is not None else None
    # Remat (Chen et al. 2016, arXiv 1604.06174): a block keeps only its input for the
    # backward pass and recomputes the rest, so activation memory is one block's, not L's.
    run = nnx.remat(lambda block, *args: block(*args)) if self.cfg.remat else (
        lambda block, *args: block(*args))
    for i, block in enumerate(self.blocks):
      x_BxTxD, layer_cache = run(block, x_BxTxD, positions_BxT, mask_BxTxS,
                                 None if cache is None else cache[i], cache_index)
      if cache is not None:
        new_cache.append(layer_cache)
    return self.norm_final(x_BxTxD), new_cache

  def _scan_blocks(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
                   cache: KVCache | None, cache_index: jax.Array | int
                   ) -> tuple[jax.Array, KVCache | None]:
    """The blocks as one `lax.scan` over their parameters (and KV caches) stacked on a leading
    L axis: XLA compiles the body once, not L times. The stacks are copies made inside the
    program, so the stored parameters and the cache stay per-layer lists. Only multi-token
    passes (training, scoring, prefill) come here: a one-token decode step keeps the loop, as
    stacking would copy every layer's cache at each decoded token."""
    block_def = nnx.graphdef(self.blocks[0])
    params_L = jax.tree.map(lambda *xs: jnp.stack(xs),
                            *(nnx.to_pure_dict(nnx.state(b)) for b in self.blocks))
    cache_L = None if cache is None else jax.tree.map(lambda *xs: jnp.stack(xs), *cache)

    def body(x_BxTxD, layer):
      block_params, layer_cache = layer
      return nnx.merge(block_def, block_params)(x_BxTxD, positions_BxT, mask_BxTxS, layer_cache,
                                                cache_index)

    # Remat as in the loop: a layer keeps only its input for the backward pass.
    x_BxTxD, new_cache_L = jax.lax.scan(jax.checkpoint(body) if self.cfg.remat else body,
                                        x_BxTxD, (params_L, cache_L))
    if cache is None:
      return x_BxTxD, None
    return x_BxTxD, [jax.tree.map(lambda x, i=i: x[i], new_cache_L) for i in range(self.cfg.n_layers)]

  def attend_embeddings(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """Tied LM head: logits = hidden · Eᵀ, accumulated and returned in float32 (bf16 logits
    would keep ≈ 3 significant digits: a logit of 20 rounded by up to 0.06)."""
    return jnp.einsum('btd,vd->btv', hidden_BxTxD, _cast(self.embed, hidden_BxTxD.dtype),
                      preferred_element_type=jnp.float32)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
  """An empty fixed-size KV cache of `length` slots."""
  shape = (batch, cfg.kv_heads, length, cfg.head_dim)
  dtype = jnp.dtype(cfg.dtype)
  return [{'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)} for _ in range(cfg.n_layers)]
