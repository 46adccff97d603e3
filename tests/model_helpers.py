"""Shared helpers of the model-level tests (test_bf16, test_gqa, test_memory_paths)."""

import jax
import jax.numpy as jnp
import numpy as np

from alignlab import sharding
from alignlab.heads import CausalLM


def init_single(cfg, model_cls=CausalLM, seed: int = 0):
  """(graphdef, params) of `model_cls(cfg)` on one device."""
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  return sharding.init_params(lambda r: model_cls(cfg, rngs=r), mesh, jax.random.key(seed))


def shared_prompt_rows(vocab_size: int, prompt_len: int, response_len: int, *, low: int = 0,
                       right_pad: int = 2, seed: int = 0):
  """(tokens, attention_mask, response_mask) of 2B = 4 rows in the canonical layout, rows i
  and B + i sharing a prompt; the first prompt is left-padded by 2 (its pad queries attend to
  nothing) and row 1's response right-padded by `right_pad`. Ids are drawn from
  [low, vocab_size)."""
  rng = np.random.default_rng(seed)
  prompt = rng.integers(low, vocab_size, (2, prompt_len))
  tokens = np.concatenate([np.concatenate([prompt, prompt]),
                           rng.integers(low, vocab_size, (4, response_len))], axis=1)
  attention = np.ones_like(tokens)
  attention[[0, 2], :2] = 0
  attention[1, tokens.shape[1] - right_pad:] = 0
  response = attention.copy()
  response[:, :prompt_len] = 0
  return [jnp.asarray(a, jnp.int32) for a in (tokens, attention, response)]
