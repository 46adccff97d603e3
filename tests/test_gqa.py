"""Grouped-query attention, q/k/v biases and RoPE scaling (the Llama/Qwen2/Mistral layout)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignlab.config import ConfigError, ModelConfig
from alignlab.logprobs import sequence_logprobs, shared_prompt_logprobs
from alignlab.model import init_cache, rope_frequencies
from model_helpers import init_single, shared_prompt_rows

GQA = ModelConfig(vocab_size=41, max_seq_len=24, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2,
                  d_ff=40, positions='rope', norm='rmsnorm', mlp='swiglu', use_bias=False,
                  qkv_bias=True, tie_embeddings=False, rope_theta=1e6, init_std=0.2)


def _init(cfg, seed=0):
  return init_single(cfg, seed=seed)


def _random_biases(params, seed=1):
  """Nonzero q/k/v biases (they are initialized to 0, which would hide a misplaced bias)."""
  rng = np.random.default_rng(seed)
  def one(path, x):
    name = jax.tree_util.keystr(path)
    return x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype) if "'b_" in name else x
  return jax.tree_util.tree_map_with_path(one, params)


def test_param_layout_and_cache_shape():
  graphdef, params = _init(GQA)
  attn = params['backbone']['blocks'][0]['attn']
  assert set(attn) == {'w_q', 'w_kv', 'b_q', 'b_kv', 'w_out'}  # no output bias: use_bias=False
  assert attn['w_q'].shape == (48, 6, 8) and attn['w_kv'].shape == (48, 2, 2, 8)
  assert init_cache(GQA, 3, 5)[0]['k'].shape == (3, 2, 5, 8)
  # The default (n_kv_heads=0) keeps the fused layout of every earlier checkpoint.
  mha = dataclasses.replace(GQA, n_kv_heads=0, qkv_bias=None)
  assert set(_init(mha)[1]['backbone']['blocks'][0]['attn']) == {'w_qkv', 'w_out'}


def test_gqa_equals_mha_with_repeated_key_value_heads():
  """Query head i reads key/value head i // (H/G): the same model written as multi-head
  attention with each key/value head repeated H/G times gives the same logits."""
  graphdef, params = _init(GQA)
  params = _random_biases(params)
  mha_cfg = dataclasses.replace(GQA, n_kv_heads=0)
  mha_graphdef, mha_params = _init(mha_cfg)
  mha_params = jax.tree.map(lambda x: x, mha_params)
  rep = GQA.n_heads // GQA.kv_heads
  for i in range(GQA.n_layers):
    attn = params['backbone']['blocks'][i]['attn']
    w_kv = jnp.repeat(attn['w_kv'], rep, axis=2)  # d, 2, H, K
    b_kv = jnp.repeat(attn['b_kv'], rep, axis=1)
    mha_attn = mha_params['backbone']['blocks'][i]['attn']
    mha_attn['w_qkv'] = jnp.concatenate([attn['w_q'][:, None], w_kv], axis=1)
    mha_attn['b_qkv'] = jnp.concatenate([attn['b_q'][None], b_kv], axis=0)
    mha_attn['w_out'] = attn['w_out']
    mha_params['backbone']['blocks'][i]['norm_attn'] = params['backbone']['blocks'][i]['norm_attn']
    mha_params['backbone']['blocks'][i]['norm_mlp'] = params['backbone']['blocks'][i]['norm_mlp']
    mha_params['backbone']['blocks'][i]['mlp'] = params['backbone']['blocks'][i]['mlp']
  for key in ('embed', 'norm_final'):
    mha_params['backbone'][key] = params['backbone'][key]
  mha_params['w_lm'] = params['w_lm']
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 41, (2, 9)), jnp.int32)
  mask = jnp.ones_like(tokens).at[0, :3].set(0)
  a = nnx.merge(graphdef, params)(tokens, mask)
  b = nnx.merge(mha_graphdef, mha_params)(tokens, mask)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
  assert np.abs(np.asarray(a)).max() > 0.1


def test_gqa_kv_cache_paths_match_the_full_forward():
  graphdef, params = _init(GQA)
  model = nnx.merge(graphdef, _random_biases(params))
  p, r = 5, 4
  tokens, attention, response = shared_prompt_rows(GQA.vocab_size, p, r, seed=2)
  full = sequence_logprobs(model, tokens, attention, response, response_start=p)
  shared = shared_prompt_logprobs(model, tokens, attention, response, prompt_len=p)
  np.testing.assert_allclose(np.asarray(shared), np.asarray(full), atol=1e-5)
  assert np.abs(np.asarray(full)).sum() > 1


def test_rope_scaling_frequencies():
  k, theta = 16, 5e5
  base = theta ** (-np.arange(0, k, 2) / k)
  cfg = dataclasses.replace(GQA, d_model=6 * k, rope_theta=theta)
  np.testing.assert_allclose(np.asarray(rope_frequencies(cfg)), base, rtol=1e-6)
  linear = dataclasses.replace(cfg, rope_scaling='linear', rope_scaling_factor=4.0)
  np.testing.assert_allclose(np.asarray(rope_frequencies(linear)), base / 4, rtol=1e-6)
  # Llama 3.1's rule, written out per frequency from its definition.
  llama3 = dataclasses.replace(cfg, rope_scaling='llama3', rope_scaling_factor=8.0,
                               rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                               rope_original_max_len=64)
  expected = []
  for f in base:
    wavelen = 2 * math.pi / f
    if wavelen < 64 / 4.0:
      expected.append(f)
    elif wavelen > 64 / 1.0:
      expected.append(f / 8.0)
    else:
      smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
      expected.append((1 - smooth) * f / 8.0 + smooth * f)
  got = np.asarray(rope_frequencies(llama3))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert (got == base).any() and (got < base).any()  # both bands present at these sizes


@pytest.mark.parametrize('changes, field', [
    ({'n_kv_heads': 4}, 'n_kv_heads'),
    ({'rope_scaling': 'yarn'}, 'rope_scaling'),
    ({'rope_scaling': 'linear', 'rope_scaling_factor': 0.0}, 'rope_scaling_factor'),
])
def test_invalid_attention_configs(changes, field):
  with pytest.raises(ConfigError, match=f'model.{field}'):
    dataclasses.replace(GQA, **changes).validate()
