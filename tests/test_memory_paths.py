"""The memory-saving paths equal the plain ones: fused attention (jax.nn.dot_product_attention),
chunked log-probs and remat, on values and gradients; chunking lowers the compiled peak."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignlab import sharding
from alignlab.config import ConfigError, ModelConfig
from alignlab.heads import CausalLM
from alignlab.logprobs import sequence_logprobs, shared_prompt_logprobs
from model_helpers import init_single, shared_prompt_rows

BASE = ModelConfig(vocab_size=43, max_seq_len=16, d_model=24, n_layers=2, n_heads=4, d_ff=40,
                   init_std=0.3, attention='einsum')
LAYOUTS = {
    'gpt2': BASE,
    'qwen2_gqa': dataclasses.replace(BASE, positions='rope', norm='rmsnorm', mlp='swiglu',
                                     use_bias=False, qkv_bias=True, n_kv_heads=2,
                                     tie_embeddings=False),
}
VARIANTS = {
    'fused': {'attention': 'fused'},
    'chunked': {'logits_chunk': 3},  # 3 does not divide R = 7: the padded last chunk is cut
    'remat': {'remat': True},
}
P, R = 5, 7


def _pairs(cfg):
  return shared_prompt_rows(cfg.vocab_size, P, R, right_pad=3)


def _values_and_grads(cfg, params):
  graphdef = sharding.abstract_model(lambda r: CausalLM(cfg, rngs=r))[0]
  tokens, attention, response = _pairs(cfg)

  def f(params):
    model = nnx.merge(graphdef, params)
    shared = shared_prompt_logprobs(model, tokens, attention, response, prompt_len=P)
    full = sequence_logprobs(model, tokens, attention, response, response_start=P)
    return shared.sum() + full.sum(), (shared, full, model(tokens, attention))

  (_, outputs), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  return outputs, grads


@pytest.mark.parametrize('variant', list(VARIANTS))
@pytest.mark.parametrize('name', list(LAYOUTS))
def test_variant_equals_plain_path(name, variant):
  cfg = LAYOUTS[name]
  _, params = init_single(cfg)
  plain, plain_grads = _values_and_grads(cfg, params)
  other, other_grads = _values_and_grads(dataclasses.replace(cfg, **VARIANTS[variant]), params)
  for a, b in zip(plain, other):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
  assert np.abs(np.asarray(plain[0])).sum() > 1
  for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(other_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


def test_chunked_logprobs_lower_the_compiled_peak():
  """At V = 4096 the float32 logits dominate: chunking by 8 of R = 64 positions must cut the
  compiled program's temporary memory (XLA's memory analysis) by more than half."""
  cfg = ModelConfig(vocab_size=4096, max_seq_len=96, d_model=32, n_layers=1, n_heads=2, d_ff=32,
                    attention='einsum')
  _, params = init_single(cfg)
  tokens = jnp.ones((8, 80), jnp.int32)
  mask = jnp.ones_like(tokens)

  def temp_bytes(cfg):
    gd = sharding.abstract_model(lambda r: CausalLM(cfg, rngs=r))[0]
    def loss(params):
      model = nnx.merge(gd, params)
      return sequence_logprobs(model, tokens, mask, mask.at[:, :16].set(0), response_start=16).sum()
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

  plain, chunked = temp_bytes(cfg), temp_bytes(dataclasses.replace(cfg, logits_chunk=8))
  assert chunked < 0.5 * plain, (plain, chunked)


def test_invalid_variant_configs():
  with pytest.raises(ConfigError, match='model.attention'):
    dataclasses.replace(BASE, attention='flash').validate()
  with pytest.raises(ConfigError, match='model.logits_chunk'):
    dataclasses.replace(BASE, logits_chunk=-1).validate()
