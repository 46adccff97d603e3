"""Mixed precision (bf16 compute, fp32 parameters) and the max_seq_len limit, on CPU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignlab.config import ModelConfig, SamplingConfig
from alignlab.heads import CausalLM, ScalarModel
from alignlab.logprobs import sequence_logprobs, shared_prompt_logprobs
from alignlab.sampling import sample
from model_helpers import init_single, shared_prompt_rows

# init_std 0.3 so that the logits are far from uniform and bf16 rounding shows in the log-probs.
F32 = ModelConfig(vocab_size=37, max_seq_len=16, d_model=24, n_layers=2, n_heads=3, d_ff=40,
                  init_std=0.3)
LAYOUTS = {
    'gpt2': F32,
    'llama': dataclasses.replace(F32, positions='rope', norm='rmsnorm', mlp='swiglu',
                                 use_bias=False, tie_embeddings=False),
    'qwen2_gqa': dataclasses.replace(F32, positions='rope', norm='rmsnorm', mlp='swiglu',
                                     use_bias=False, qkv_bias=True, n_heads=4, n_kv_heads=2,
                                     d_model=32),
}
P, R = 5, 6


def _init(cfg, model_cls=CausalLM):
  return init_single(cfg, model_cls)


def _pairs(cfg):
  return shared_prompt_rows(cfg.vocab_size, P, R, low=1, right_pad=2)


@pytest.fixture(params=list(LAYOUTS))
def layout(request):
  return LAYOUTS[request.param]


def test_bf16_compute_close_to_fp32_and_params_stay_fp32(layout):
  graphdef32, params = _init(layout)
  bf16 = dataclasses.replace(layout, dtype='bfloat16')
  graphdef16, params16 = _init(bf16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
  tokens, attention, response = _pairs(layout)

  def logps(graphdef, params):
    model = nnx.merge(graphdef, params)
    return (shared_prompt_logprobs(model, tokens, attention, response, prompt_len=P),
            sequence_logprobs(model, tokens, attention, response, response_start=P))

  shared32, full32 = jax.jit(logps, static_argnums=0)(graphdef32, params)
  shared16, full16 = jax.jit(logps, static_argnums=0)(graphdef16, params)
  assert shared16.dtype == full16.dtype == jnp.float32
  # bf16 keeps 8 significant bits (relative rounding 2^-9 per op); measured max difference
  # 0.03 (gpt2), 0.04 (llama) and 0.16 (qwen2_gqa) nats on per-token log-probs of up to 9 nats. The
  # difference must also be nonzero: the compute really ran in bf16.
  for a16, a32 in ((shared16, shared32), (full16, full32)):
    diff = np.abs(np.asarray(a16) - np.asarray(a32))
    assert 0 < diff.max() < 0.3, diff.max()
  np.testing.assert_allclose(np.asarray(shared16), np.asarray(full16), atol=0.3)

  # Gradients w.r.t. the fp32 parameters stay fp32 and finite (a DPO step's backward).
  def loss(params):
    model = nnx.merge(graphdef16, params)
    return shared_prompt_logprobs(model, tokens, attention, response, prompt_len=P).sum()
  grads = jax.jit(jax.grad(loss))(params)
  assert all(g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all()
             for g in jax.tree.leaves(grads))


def test_bf16_matmuls_run_in_bf16(layout):
  """Every dot in the forward takes bf16 operands: an fp32 weight left uncast would promote
  `x @ w` to fp32 and show up here."""
  bf16 = dataclasses.replace(layout, dtype='bfloat16')
  graphdef, params = _init(bf16)
  tokens, attention, _ = _pairs(layout)
  jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(tokens, attention))(params)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  assert len(dots) >= 4 * bf16.n_layers
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn


def test_bf16_samples(layout):
  bf16 = dataclasses.replace(layout, dtype='bfloat16')
  graphdef, params = _init(bf16)
  tokens, attention, _ = _pairs(layout)
  cfg = SamplingConfig(max_new_tokens=R, temperature=1.0)
  out = sample(graphdef, params, tokens[:, :P], attention[:, :P], jax.random.key(1), cfg)
  assert out.tokens.shape == (4, P + R)
  assert (np.asarray(out.tokens[:, P:]) < bf16.vocab_size).all()
  logps = np.asarray(out.logprobs[:, P:])
  assert logps.dtype == np.float32 and np.isfinite(logps).all() and (logps < 0).all()
  # Greedy decoding in bf16 gives the logprobs of the sequence it returns.
  greedy = sample(graphdef, params, tokens[:, :P], attention[:, :P], jax.random.key(1),
                  dataclasses.replace(cfg, temperature=0.0))
  model = nnx.merge(graphdef, params)
  rescored = sequence_logprobs(model, greedy.tokens, greedy.attention_mask, greedy.response_mask,
                               response_start=P)
  np.testing.assert_allclose(np.asarray(rescored[:, P:]), np.asarray(greedy.logprobs[:, P:]),
                             atol=0.1)


def test_sequences_past_max_seq_len_are_an_error_not_nan(layout):
  """Positions past max_seq_len index the learned position table out of range (NaN under
  jnp.take's fill mode) or run RoPE past its context: every entry point refuses them."""
  graphdef, params = _init(layout)
  model = nnx.merge(graphdef, params)
  t = layout.max_seq_len + 1
  tokens = jnp.ones((2, t), jnp.int32)
  mask = jnp.ones((2, t), jnp.int32)
  response = mask.at[:, :4].set(0)
  match = f'sequence length {t} exceeds model.max_seq_len={layout.max_seq_len}'
  with pytest.raises(ValueError, match=match):
    model(tokens, mask)
  with pytest.raises(ValueError, match=match):
    jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, mask))(params)
  with pytest.raises(ValueError, match=match):
    sequence_logprobs(model, tokens, mask, response, response_start=4)
  with pytest.raises(ValueError, match=match):
    shared_prompt_logprobs(model, tokens, mask, response, prompt_len=4)
  _, scalar_params = _init(layout, ScalarModel)
  scalar = nnx.merge(_init(layout, ScalarModel)[0], scalar_params)
  with pytest.raises(ValueError, match=match):
    scalar(tokens, mask)
  with pytest.raises(ValueError, match=f'exceeds model.max_seq_len {layout.max_seq_len}'):
    sample(graphdef, params, tokens[:, :4], mask[:, :4], jax.random.key(0),
           SamplingConfig(max_new_tokens=layout.max_seq_len - 3))
  # At exactly max_seq_len every logit is finite.
  logits = model(tokens[:, :-1], mask[:, :-1])
  assert np.isfinite(np.asarray(logits)).all()
