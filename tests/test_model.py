"""Transformer: causality, padding invariance, KV cache, heads, bad token ids."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignlab import sharding
from alignlab.config import ModelConfig, config_hash, from_dict, to_dict
from alignlab.heads import CausalLM, ScalarModel, last_token_value
from alignlab.logprobs import (check_token_ids, sequence_logprobs, shared_prompt_logprobs, token_kl,
                               token_logprobs)
from alignlab.model import causal_mask, init_cache, positions_from_mask
from model_helpers import shared_prompt_rows

LAYOUTS = {
    'gpt2': ModelConfig.tiny(),
    'llama': ModelConfig.tiny().__class__(**{**ModelConfig.tiny().__dict__, 'positions': 'rope',
                                             'norm': 'rmsnorm', 'mlp': 'swiglu', 'use_bias': False,
                                             'tie_embeddings': False}),
}


def _lm(cfg, seed=0):
  graphdef, params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), sharding.make_mesh(
      sharding.MeshConfig.single(), jax.devices()[:1]), jax.random.key(seed))
  return nnx.merge(graphdef, params)


@pytest.fixture(params=list(LAYOUTS))
def layout(request):
  return LAYOUTS[request.param]


def test_causality(layout):
  model = _lm(layout)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, layout.vocab_size, (2, 11)), jnp.int32)
  mask = jnp.ones_like(tokens)
  t = 6
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % layout.vocab_size)
  a, b = model(tokens, mask), model(changed, mask)
  np.testing.assert_array_equal(np.asarray(a[:, :t]), np.asarray(b[:, :t]))
  assert np.abs(np.asarray(a[:, t:]) - np.asarray(b[:, t:])).max() > 1e-4


def test_left_padding_gives_same_logits(layout):
  model = _lm(layout)
  rng = np.random.default_rng(1)
  real = rng.integers(1, layout.vocab_size, (9,))
  unpadded = jnp.asarray(real[None], jnp.int32)
  padded = jnp.asarray(np.concatenate([np.zeros(4, int), real])[None], jnp.int32)
  pad_mask = jnp.asarray(np.concatenate([np.zeros(4, int), np.ones(9, int)])[None])
  a = model(unpadded, jnp.ones_like(unpadded))
  b = model(padded, pad_mask)
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0, 4:]), atol=1e-5, rtol=1e-5)


def test_kv_cache_matches_full_forward(layout):
  model = _lm(layout)
  rng = np.random.default_rng(2)
  b, p, n = 3, 5, 6
  prompt = rng.integers(1, layout.vocab_size, (b, p))
  prompt_mask = np.ones((b, p), int)
  prompt_mask[0, :2] = 0  # a left-padded row
  prompt[0, :2] = 0
  cont = rng.integers(1, layout.vocab_size, (b, n))
  tokens = jnp.asarray(np.concatenate([prompt, cont], 1), jnp.int32)
  mask = jnp.asarray(np.concatenate([prompt_mask, np.ones((b, n), int)], 1))
  full = model(tokens, mask)
  s = p + n
  cache = init_cache(layout, b, s)
  valid = mask.astype(bool)
  slots = jnp.arange(s)
  positions = positions_from_mask(mask)
  pre_mask = (slots[None, None] <= jnp.arange(p)[None, :, None]) & valid[:, None]
  logits, cache = model.decode(tokens[:, :p], positions[:, :p], pre_mask, cache, 0)
  np.testing.assert_allclose(np.asarray(logits)[1:], np.asarray(full[1:, :p]), atol=1e-5, rtol=1e-5)
  head_DxV = model.head_weights()  # what the sampler passes: the DxV head, computed once
  assert head_DxV.shape == (layout.d_model, layout.vocab_size)
  for i in range(n):
    slot = p + i
    step_mask = (slots <= slot)[None, None] & valid[:, None]
    logits, cache = model.decode(tokens[:, slot:slot + 1], positions[:, slot:slot + 1], step_mask,
                                 cache, slot, head_DxV if i % 2 else None)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, slot]), atol=1e-5,
                               rtol=1e-5)


def test_logprobs_against_numpy_and_response_start():
  cfg = LAYOUTS['gpt2']
  model = _lm(cfg)
  rng = np.random.default_rng(3)
  tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 10)), jnp.int32)
  attn = jnp.ones_like(tokens)
  resp = jnp.asarray(np.array([[0] * 4 + [1] * 6, [0] * 4 + [1] * 3 + [0] * 3]))
  logits = np.asarray(model(tokens, attn), np.float64)
  lsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  expected = np.zeros((2, 10))
  for bi in range(2):
    for t in range(1, 10):
      if resp[bi, t]:
        expected[bi, t] = lsm[bi, t - 1, int(tokens[bi, t])]
  got_full = token_logprobs(jnp.asarray(logits, jnp.float32), tokens, resp)
  got_model = sequence_logprobs(model, tokens, attn, resp)
  got_start = sequence_logprobs(model, tokens, attn, resp, response_start=4)
  for got in (got_full, got_model, got_start):
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)


def test_shared_prompt_logprobs_match_the_concatenated_forward(layout):
  """Chosen ⊕ rejected with the prompt run once: the same log-probs and the same parameter
  gradient as the plain forward over both full rows (left-padded prompts, right-padded
  responses of different lengths)."""
  graphdef, params = sharding.init_params(lambda r: CausalLM(layout, rngs=r), sharding.make_mesh(
      sharding.MeshConfig.single(), jax.devices()[:1]), jax.random.key(7))
  rng = np.random.default_rng(5)
  b, p, r = 3, 5, 6
  prompt = rng.integers(1, layout.vocab_size, (b, p))
  prompt_mask = np.ones((b, p), int)
  prompt_mask[1, :3] = 0
  prompt[1, :3] = 0
  rows, attn, resp = [], [], []
  for lengths in ([6, 2, 4], [3, 6, 1]):  # chosen, then rejected response lengths
    cont = rng.integers(1, layout.vocab_size, (b, r))
    cont_mask = (np.arange(r)[None] < np.asarray(lengths)[:, None]).astype(int)
    rows.append(np.concatenate([prompt, cont * cont_mask], 1))
    attn.append(np.concatenate([prompt_mask, cont_mask], 1))
    resp.append(np.concatenate([np.zeros((b, p), int), cont_mask], 1))
  tokens, attn, resp = (jnp.asarray(np.concatenate(x, 0), jnp.int32) for x in (rows, attn, resp))

  def total(fn, params):
    return jnp.sum(fn(nnx.merge(graphdef, params), tokens, attn, resp) ** 2)

  def plain(m, *a):
    return sequence_logprobs(m, *a, response_start=p)

  def shared(m, *a):
    return shared_prompt_logprobs(m, *a, prompt_len=p)

  # Jitted: op by op, each primitive compiles on its own (the first layout took 36 s so, 13 s
  # jitted, here).
  want = jax.jit(lambda q: plain(nnx.merge(graphdef, q), tokens, attn, resp))(params)
  got = jax.jit(lambda q: shared(nnx.merge(graphdef, q), tokens, attn, resp))(params)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)
  assert (np.asarray(got)[np.asarray(resp) == 0] == 0).all()
  g_want = jax.jit(jax.grad(functools.partial(total, plain)))(params)
  g_got = jax.jit(jax.grad(functools.partial(total, shared)))(params)
  for a, c in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-5 * np.abs(c).max())
  with pytest.raises(ValueError, match='even number of rows'):
    shared(nnx.merge(graphdef, params), tokens[1:], attn[1:], resp[1:])


def test_token_kl_exact():
  rng = np.random.default_rng(4)
  lp, lq = rng.normal(size=(2, 5, 7)), rng.normal(size=(2, 5, 7))
  mask = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
  got = np.asarray(token_kl(jnp.asarray(lp), jnp.asarray(lq), jnp.asarray(mask)))
  p = np.exp(lp) / np.exp(lp).sum(-1, keepdims=True)
  q = np.exp(lq) / np.exp(lq).sum(-1, keepdims=True)
  for b in range(2):
    for t in range(5):
      want = (p[b, t - 1] * np.log(p[b, t - 1] / q[b, t - 1])).sum() if mask[b, t] and t else 0.0
      assert got[b, t] == pytest.approx(want, abs=1e-5)
  assert (got >= -1e-7).all()


def test_scalar_model_reads_last_real_token():
  cfg = LAYOUTS['gpt2']
  graphdef, params = sharding.init_params(lambda r: ScalarModel(cfg, rngs=r), sharding.make_mesh(
      sharding.MeshConfig.single(), jax.devices()[:1]), jax.random.key(0))
  model = nnx.merge(graphdef, params)
  tokens = jnp.asarray([[0, 5, 6, 7, 0, 0], [3, 4, 5, 6, 7, 8]], jnp.int32)
  mask = jnp.asarray([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
  values = model(tokens, mask)
  assert values.shape == (2, 6)
  reward = last_token_value(values, mask)
  np.testing.assert_allclose(np.asarray(reward), np.asarray([values[0, 3], values[1, 5]]))
  # Changing padding after the last real token must not change the reward.
  reward2 = last_token_value(model(tokens.at[0, 4:].set(9), mask), mask)
  np.testing.assert_allclose(np.asarray(reward), np.asarray(reward2), atol=1e-6)


def test_token_ids_outside_vocab_rejected():
  with pytest.raises(ValueError, match='outside the vocabulary'):
    check_token_ids(np.array([[1, 2, 67]]), 67)
  with pytest.raises(ValueError, match='outside the vocabulary'):
    check_token_ids(np.array([[-1, 2]]), 67)
  check_token_ids(np.array([[0, 66]]), 67)


def test_causal_mask_and_positions():
  mask = jnp.asarray([[0, 0, 1, 1, 1]])
  np.testing.assert_array_equal(np.asarray(positions_from_mask(mask)), [[0, 0, 0, 1, 2]])
  m = np.asarray(causal_mask(mask))[0]
  assert m[4, 2] and m[4, 4] and not m[2, 3] and not m[4, 1]


@pytest.mark.parametrize('name, remat, model_classes', [('gpt2', False, (CausalLM, ScalarModel)),
                                                        ('llama_gqa', True, (CausalLM,))])
def test_scan_over_layers_equals_the_loop(name, remat, model_classes):
  """`scan_layers=True` (one `lax.scan` over the stacked blocks) gives the loop's logits,
  sequence log-probs and scalar values, and their gradients, to 1e-5 in float32; it reads
  the same per-layer params; its program holds a loop where the other holds none."""
  base = dataclasses.replace(LAYOUTS['llama' if name != 'gpt2' else 'gpt2'], n_layers=3,
                             init_std=0.2, attention='einsum')
  if name == 'llama_gqa':
    base = dataclasses.replace(base, n_kv_heads=1)
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  tokens, mask, response = shared_prompt_rows(base.vocab_size, 5, 6)

  def run(cfg, model_cls, params):
    graphdef = sharding.abstract_model(lambda r: model_cls(cfg, rngs=r))[0]

    def f(params):
      model = nnx.merge(graphdef, params)
      if model_cls is ScalarModel:
        out = model(tokens, mask)
        return (out * mask).sum(), out
      # The shared-prompt path (the DPO step's) prefills a KV cache, also under the scan.
      out = (sequence_logprobs(model, tokens, mask, response, response_start=5),
             shared_prompt_logprobs(model, tokens, mask, response, prompt_len=5))
      return out[0].sum() + out[1].sum() + 0.01 * model(tokens, mask).sum(), out
    lowered = jax.jit(jax.value_and_grad(f, has_aux=True)).lower(params)
    (_, out), grads = lowered.compile()(params)
    return out, grads, lowered.as_text().count('stablehlo.while')

  scan = dataclasses.replace(base, scan_layers=True, remat=remat)
  for model_cls in model_classes:
    params = sharding.init_params(lambda r: model_cls(base, rngs=r), mesh, jax.random.key(1))[1]
    loop_out, loop_grads, loop_whiles = run(base, model_cls, params)
    scan_out, scan_grads, scan_whiles = run(scan, model_cls, params)
    # Forward and backward of every pass: 2 for the scalar model, 8 for the LM's four.
    assert loop_whiles == 0 and scan_whiles == (2 if model_cls is ScalarModel else 8), scan_whiles
    for a, b in zip(jax.tree.leaves(loop_out), jax.tree.leaves(scan_out)):
      assert np.abs(np.asarray(a)).sum() > 1
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
    assert jax.tree.structure(scan_grads) == jax.tree.structure(loop_grads)
    for a, b in zip(jax.tree.leaves(loop_grads), jax.tree.leaves(scan_grads)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


def test_scan_layers_keeps_existing_cache_keys():
  """The switch is recorded only when set: every config made before it keeps its hash (stage
  cache entries, run dirs), and a config that sets it reads back as it was."""
  assert 'scan_layers' not in to_dict(ModelConfig())
  assert config_hash(ModelConfig()) == 'f6f653e9cc5b'  # the hash before the field existed
  scan = dataclasses.replace(ModelConfig(), scan_layers=True)
  assert to_dict(scan)['scan_layers'] is True and from_dict(ModelConfig, to_dict(scan)) == scan
  assert config_hash(scan) != config_hash(ModelConfig())
