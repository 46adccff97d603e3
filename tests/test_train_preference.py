"""Preference training: DPO at initialization, invariances (devices, padding, accumulation),
exact resume, the NaN guard."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignlab import sharding
from alignlab.checkpoint import Checkpointer
from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.heads import CausalLM
from alignlab.train import preference
from alignlab.train.batches import ArrayBatches
from alignlab.train.fit import TrainingDiverged
from alignlab.train.optim import make_optimizer
from alignlab.train import fit as run_module
from alignlab.train.fit import fit
from alignlab.train.step import init_state, make_train_step

CFG = ModelConfig(vocab_size=61, max_seq_len=24, d_model=24, n_layers=2, n_heads=3, d_ff=40)


def _model(seed=0):
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  return sharding.init_params(lambda r: CausalLM(CFG, rngs=r), mesh, jax.random.key(seed))


def _pairs(n=16, p=5, r=6, seed=0):
  """Random pairs in the canonical layout with ragged prompts and responses."""
  rng = np.random.default_rng(seed)
  out = {}
  for side in ('chosen', 'rejected'):
    tokens = np.zeros((n, p + r), np.int32)
    attn = np.zeros((n, p + r), np.int32)
    resp = np.zeros((n, p + r), np.int32)
    for i in range(n):
      lp, lr = rng.integers(1, p + 1), rng.integers(1, r + 1)
      tokens[i, p - lp:p] = rng.integers(1, CFG.vocab_size, lp)
      tokens[i, p:p + lr] = rng.integers(1, CFG.vocab_size, lr)
      attn[i, p - lp:p + lr] = 1
      resp[i, p:p + lr] = 1
    out.update({f'{side}_tokens': tokens, f'{side}_attention_mask': attn,
                f'{side}_response_mask': resp})
  # Same prompt on both sides, as in real pairs.
  out['rejected_tokens'][:, :p] = out['chosen_tokens'][:, :p]
  out['rejected_attention_mask'][:, :p] = out['chosen_attention_mask'][:, :p]
  return out


def _loss_and_grads(graphdef, params, batch, prompt_len, beta=0.5):
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=prompt_len)

  def f(p):
    loss_sum, m = loss_fn(p, {k: jnp.asarray(v) for k, v in batch.items()}, {'beta': beta})
    return loss_sum / m['count'], m
  # Jitted: op by op every primitive compiles on its own, several times slower here.
  (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  return loss, metrics, grads


def test_dpo_at_initialization_is_log2():
  graphdef, params = _model()
  pairs = preference.reference_logps(graphdef, params, _pairs(), prompt_len=5, batch_size=8)
  loss, metrics, _ = _loss_and_grads(graphdef, params, pairs, 5)
  assert float(loss) == pytest.approx(math.log(2), abs=1e-5)
  # Policy = reference: every implicit reward is 0 up to float rounding (the reference pass ran
  # at another batch shape). That exact ties are not wins is tested on the loss itself
  # (tests/test_losses_preference.py).
  assert abs(float(metrics['rewards/margin'])) < 1e-5
  assert abs(float(metrics['rewards/chosen'])) < 1e-5
  # Per-batch reference (params as reference) agrees with the precomputed one.
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=5)
  raw = {k: jnp.asarray(v) for k, v in _pairs().items()}
  loss_sum, m = loss_fn(params, raw, {'beta': 0.5, 'ref_params': params})
  assert float(loss_sum / m['count']) == pytest.approx(math.log(2), abs=1e-5)


def _grad_close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol * 1e-2)


def test_extra_padding_does_not_change_loss_or_grads():
  graphdef, params = _model(1)
  pairs = _pairs(seed=1)
  pairs['ref_chosen_logps'] = np.random.default_rng(2).normal(-20, 2, 16).astype(np.float32)
  pairs['ref_rejected_logps'] = np.random.default_rng(3).normal(-20, 2, 16).astype(np.float32)
  padded = dict(pairs)
  for side in ('chosen', 'rejected'):
    for key in ('tokens', 'attention_mask', 'response_mask'):
      x = pairs[f'{side}_{key}']
      padded[f'{side}_{key}'] = np.pad(x, ((0, 0), (3, 4)))  # 3 more prompt pads, 4 response pads
  loss_a, _, grads_a = _loss_and_grads(graphdef, params, pairs, 5)
  loss_b, _, grads_b = _loss_and_grads(graphdef, params, padded, 8)
  assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
  _grad_close(grads_a, grads_b)


def test_gradient_accumulation_1_vs_4():
  graphdef, params = _model(2)
  pairs = _pairs(seed=4)
  pairs['ref_chosen_logps'] = np.random.default_rng(5).normal(-20, 2, 16).astype(np.float32)
  pairs['ref_rejected_logps'] = np.random.default_rng(6).normal(-20, 2, 16).astype(np.float32)
  # Uneven padding pairs so that a mean of micro-batch means would be wrong.
  pairs['example_mask'] = np.array([1] * 13 + [0] * 3, np.float32)
  tx = make_optimizer(OptimizerConfig(name='sgd', grad_clip=0))
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=5)
  batch = {k: jnp.asarray(v) for k, v in pairs.items()}
  hp = {'beta': jnp.float32(0.5), 'learning_rate': jnp.float32(1.0)}
  outs = []
  for accum in (1, 4):
    state = init_state(params, tx, jax.random.key(0))
    new_state, metrics = jax.jit(make_train_step(loss_fn, tx, grad_accum=accum))(state, batch, hp)
    outs.append((new_state['params'], metrics))
  assert float(outs[0][1]['loss']) == pytest.approx(float(outs[1][1]['loss']), rel=1e-6)
  assert float(outs[0][1]['rewards/accuracy']) == pytest.approx(float(outs[1][1]['rewards/accuracy']))
  _grad_close(outs[0][0], outs[1][0])


def test_dpo_same_on_1_and_8_devices():
  meshes = [[1, 1, 1], [8, 1, 1], [2, 2, 2], [1, 2, 4]]
  proc = subprocess.run([sys.executable, str(Path(__file__).with_name('sharded_worker.py')),
                         json.dumps(meshes), 'dpo'], capture_output=True, text=True,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  base = report[str([1, 1, 1])]
  assert base['loss'] > 0
  for m in meshes[1:]:
    assert report[str(m)]['loss'] == pytest.approx(base['loss'], rel=1e-5)
    for name, g in base['grads'].items():
      # Relative to the tensor's scale: entries near 0 differ by reduction order only.
      np.testing.assert_allclose(report[str(m)]['grads'][name], g, rtol=1e-5, atol=1e-5 * np.abs(g).max())


def _fit(tmp, params, graphdef, pairs, n_steps, beta=0.5, **kw):
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=5)
  return fit(loss_fn, params, ArrayBatches(pairs, 4, seed=3),
             optimizer=OptimizerConfig(name='adamw', learning_rate=1e-2, weight_decay=0.01),
             n_steps=n_steps, run_dir=tmp, config={'test': 1}, hparams={'beta': beta},
             progress=False, save_every=2, **kw)


def test_exact_resume_is_bitwise(tmp_path):
  graphdef, params = _model(3)
  pairs = preference.reference_logps(graphdef, params, _pairs(seed=7), prompt_len=5, batch_size=8)
  full = _fit(tmp_path / 'full', params, graphdef, pairs, 8)
  _fit(tmp_path / 'cut', params, graphdef, pairs, 8, stop_after=5)  # "killed" after step 5
  assert Checkpointer(tmp_path / 'cut' / 'checkpoints', {}).latest_step() == 5
  resumed = _fit(tmp_path / 'cut', params, graphdef, pairs, 8)
  for a, b in zip(jax.tree.leaves(full['params']), jax.tree.leaves(resumed['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  steps = [json.loads(l)['step'] for l in (tmp_path / 'cut' / 'metrics.jsonl').read_text().splitlines()]
  assert steps == list(range(1, 9))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  graphdef, params = _model(4)
  pairs = preference.reference_logps(graphdef, params, _pairs(seed=8), prompt_len=5, batch_size=8)
  _fit(tmp_path / 'run', params, graphdef, pairs, 4)
  with pytest.raises(TrainingDiverged, match=r'non-finite loss.*at step 5.*last finite checkpoint is step 4'):
    _fit(tmp_path / 'run', params, graphdef, pairs, 8, beta=float('nan'))
  assert Checkpointer(tmp_path / 'run' / 'checkpoints', {}).latest_step() == 4


def test_fit_reuses_its_compiled_step_across_runs(tmp_path):
  """R runs done one after another with one loss function compile once; β and the learning
  rate stay traced inputs, so the shared program trains each run with its own, exactly as a
  fresh one would."""
  graphdef, params = _model(5)
  pairs = preference.reference_logps(graphdef, params, _pairs(seed=9), prompt_len=5, batch_size=8)
  def go(loss_fn, name, beta):
    opt = OptimizerConfig(name='adamw', learning_rate=1e-2 * beta)
    return fit(loss_fn, params, ArrayBatches(pairs, 4, seed=3), optimizer=opt, n_steps=3,
               run_dir=tmp_path / name, config={'beta': beta}, hparams={'beta': beta},
               progress=False)

  shared = preference.make_loss_fn(graphdef, 'dpo', prompt_len=5)
  first = go(shared, 'a', 0.5)
  step = next(reversed(run_module._STEPS.values()))
  second = go(shared, 'b', 2.0)
  assert next(reversed(run_module._STEPS.values())) is step
  assert step._cache_size() == 1  # one compiled program served both runs
  fresh = go(preference.make_loss_fn(graphdef, 'dpo', prompt_len=5), 'c', 2.0)
  for a, b, c in zip(*(jax.tree.leaves(s['params']) for s in (first, second, fresh))):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(first['params']), jax.tree.leaves(second['params'])))


def test_pairs_must_share_their_prompt():
  graphdef, params = _model(6)
  pairs = _pairs(n=4)
  preference.check_shared_prompts(pairs, 5)
  pairs['rejected_tokens'][2, 4] += 1
  with pytest.raises(ValueError, match=r'pair 2: chosen_tokens and rejected_tokens differ'):
    preference.reference_logps(graphdef, params, pairs, prompt_len=5)


def test_shared_prompt_path_gives_the_same_dpo_loss_and_gradient(monkeypatch):
  """The DPO loss through `pair_logps` with the prompt run once (forced on for P = 5) against
  the concatenated forward: same loss, same gradient, per-batch reference included."""
  graphdef, params = _model(8)
  batch = {k: jnp.asarray(v) for k, v in _pairs(seed=10).items()}
  ref = jax.tree.map(lambda x: x * 1.01, params)
  results = []
  for min_len in (10 ** 9, 1):  # plain, then shared
    monkeypatch.setattr(preference, 'SHARED_PROMPT_MIN_LEN', min_len)
    loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=5)
    results.append(jax.jit(jax.value_and_grad(
        lambda p: loss_fn(p, batch, {'beta': 0.5, 'ref_params': ref})[0]))(params))
  (loss_plain, g_plain), (loss_shared, g_shared) = results
  assert float(loss_shared) == pytest.approx(float(loss_plain), rel=1e-5)
  _grad_close(g_shared, g_plain, tol=1e-4)
