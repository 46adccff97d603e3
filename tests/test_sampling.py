"""Sampler: greedy = argmax loop, temperature statistics, top-k/top-p, EOS, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignlab import sharding
from alignlab.config import ModelConfig, SamplingConfig
from alignlab.heads import CausalLM
from alignlab.sampling import filter_logits, inverse_cdf, sample


def _init(cfg, seed=0):
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  return sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(seed))


def _prompts(cfg, rng, b=3, p=5):
  prompt = rng.integers(1, cfg.vocab_size, (b, p))
  mask = np.ones((b, p), int)
  mask[0, :3] = 0
  prompt[0, :3] = 0
  return jnp.asarray(prompt, jnp.int32), jnp.asarray(mask, jnp.int32)


def test_greedy_equals_argmax_loop():
  cfg = ModelConfig.tiny()
  graphdef, params = _init(cfg)
  model = nnx.merge(graphdef, params)
  prompt, mask = _prompts(cfg, np.random.default_rng(0))
  out = sample(graphdef, params, prompt, mask, jax.random.key(0),
               SamplingConfig(max_new_tokens=7, temperature=0.0))
  # Full forward passes over a fixed-length buffer (one compilation): with causal attention
  # the trailing zeros cannot change the logits at the last real token.
  forward = jax.jit(lambda tokens: model(tokens, jnp.ones_like(tokens)))
  for b in range(prompt.shape[0]):
    seq = [int(t) for t, m in zip(prompt[b], mask[b]) if m]
    for _ in range(7):
      buffer = np.zeros((1, 12), np.int32)
      buffer[0, :len(seq)] = seq
      logits = forward(jnp.asarray(buffer))
      seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    np.testing.assert_array_equal(np.asarray(out.tokens[b, 5:]), seq[-7:])
  assert int(out.response_mask.sum()) == 3 * 7
  # Log-probs of the greedy tokens under the model (untempered).
  full = model(out.tokens, out.attention_mask)
  lsm = jax.nn.log_softmax(full, -1)
  want = jnp.take_along_axis(lsm[:, 4:-1], out.tokens[:, 5:, None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logprobs[:, 5:]), np.asarray(want), atol=1e-5)


def test_temperature_distribution_matches_softmax():
  cfg = ModelConfig(vocab_size=5, max_seq_len=8, d_model=16, n_layers=1, n_heads=2, d_ff=24,
                    init_std=0.6)
  graphdef, params = _init(cfg, seed=3)
  model = nnx.merge(graphdef, params)
  n = 4000
  prompt = jnp.full((n, 2), 2, jnp.int32)
  mask = jnp.ones((n, 2), jnp.int32)
  logits = model(prompt[:1], mask[:1])[0, -1]
  for temperature in (1.0, 0.5):
    out = sample(graphdef, params, prompt, mask, jax.random.key(7),
                 SamplingConfig(max_new_tokens=1, temperature=temperature))
    counts = np.bincount(np.asarray(out.tokens[:, 2]), minlength=5)
    expected = np.asarray(jax.nn.softmax(logits / temperature)) * n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 18.5, (temperature, counts, expected)  # χ²(4 dof) 99.9 % quantile
  # And the statistic is sensitive: the distribution at T=1 does not fit T=0.5 samples.
  wrong = np.asarray(jax.nn.softmax(logits)) * n
  assert ((counts - wrong) ** 2 / wrong).sum() > 18.5


def test_filter_logits_top_k_top_p():
  logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  k2 = np.asarray(filter_logits(logits, SamplingConfig(top_k=2)))
  assert np.isfinite(k2[0, :2]).all() and np.isinf(k2[0, 2:]).all()
  p = np.asarray(filter_logits(logits, SamplingConfig(top_p=0.8)))
  assert np.isfinite(p[0, :3]).all() and np.isinf(p[0, 3:]).all()  # 0.5+0.2 < 0.8 ≤ +0.15
  p_small = np.asarray(filter_logits(logits, SamplingConfig(top_p=0.1)))
  assert np.isfinite(p_small[0, 0]) and np.isinf(p_small[0, 1:]).all()


def test_eos_stops_and_masks():
  cfg = ModelConfig.tiny(vocab_size=7)
  graphdef, params = _init(cfg, seed=1)
  prompt, mask = _prompts(cfg, np.random.default_rng(2), b=64, p=3)
  eos = 3
  out = sample(graphdef, params, prompt, mask, jax.random.key(1),
               SamplingConfig(max_new_tokens=12, temperature=1.0, eos_id=eos, pad_id=0))
  toks = np.asarray(out.tokens[:, 3:])
  resp = np.asarray(out.response_mask[:, 3:])
  n_ended = 0
  for b in range(64):
    hits = np.flatnonzero(toks[b] == eos)
    if hits.size:
      n_ended += 1
      first = hits[0]
      assert resp[b, :first + 1].all() and not resp[b, first + 1:].any()
      assert (toks[b, first + 1:] == 0).all()
      assert (np.asarray(out.logprobs[b, 3 + first + 1:]) == 0).all()
    else:
      assert resp[b].all()
  assert n_ended > 10
  np.testing.assert_array_equal(np.asarray(out.attention_mask[:, 3:]), resp)


def test_deterministic_given_key():
  cfg = ModelConfig.tiny()
  graphdef, params = _init(cfg)
  prompt, mask = _prompts(cfg, np.random.default_rng(0))
  scfg = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=10, top_p=0.9)
  a = sample(graphdef, params, prompt, mask, jax.random.key(5), scfg)
  b = sample(graphdef, params, prompt, mask, jax.random.key(5), scfg)
  c = sample(graphdef, params, prompt, mask, jax.random.key(6), scfg)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_too_long_rejected():
  cfg = ModelConfig.tiny()
  graphdef, params = _init(cfg)
  prompt, mask = _prompts(cfg, np.random.default_rng(0))
  with pytest.raises(ValueError, match='max_seq_len'):
    sample(graphdef, params, prompt, mask, jax.random.key(0), SamplingConfig(max_new_tokens=100))


def test_inverse_cdf_matches_the_weights_and_skips_zero_weights():
  # 300 entries (not a multiple of the 128-entry block: the last block is padded), whole
  # blocks of zero weight, zeros inside blocks, and a zero tail.
  rng = np.random.default_rng(0)
  w = rng.gamma(0.5, size=300)
  w[:128] = 0.0
  w[rng.choice(300, 80, replace=False)] = 0.0
  w[290:] = 0.0
  p = w / w.sum()
  n = 200_000
  u = jax.random.uniform(jax.random.key(0), (n,))
  u = u.at[:3].set(jnp.asarray([0.0, 1.0 - 2.0 ** -24, 0.5]))  # the ends of [0, 1)
  draws = np.asarray(inverse_cdf(jnp.broadcast_to(jnp.asarray(w, jnp.float32), (n, 300)), u))
  assert draws.min() >= 0 and draws.max() < 300
  assert np.all(w[draws] > 0), 'drew an entry of weight 0'
  freq = np.bincount(draws, minlength=300) / n
  support = p > 0
  chi2 = float(n * np.sum((freq[support] - p[support]) ** 2 / p[support]))
  dof = int(support.sum()) - 1
  assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)  # mean dof, std sqrt(2 dof)
  # And exactly the one-level inverse CDF away from float ties: index of the first C > u·C[-1].
  grid = jnp.linspace(0.001, 0.999, 997)
  want = np.searchsorted(np.cumsum(w) / w.sum(), np.asarray(grid), side='right')
  got = np.asarray(inverse_cdf(jnp.broadcast_to(jnp.asarray(w, jnp.float32), (997, 300)), grid))
  assert np.mean(got == want) > 0.99
