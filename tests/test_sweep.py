"""Vectorized sweeps: each run of a sweep equals the same run trained alone by `fit`, the
sweep is one compiled program, and an interrupted sweep resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignlab import sharding
from alignlab.tasks import exact as exact_task
from alignlab.train import fit as fit_lib
from alignlab.config import MeshConfig, ModelConfig, OptimizerConfig
from alignlab.tasks import exact_math as exact
from alignlab.heads import CausalLM
from alignlab.train import preference
from alignlab.train.batches import ArrayBatches
from alignlab.train.fit import fit


def _fit_runs(*args, **kwargs):
  """`fit_runs`' state (every run finite here: its failures are asserted None)."""
  state, failed = fit_lib.fit_runs(*args, **kwargs)
  assert failed == [None] * len(failed), failed
  return state

TASK = exact.ExactTaskConfig(n_prompts=3, vocab=3, length=3, reward_seed=2)
MODEL = ModelConfig(vocab_size=exact.model_vocab_size(TASK), max_seq_len=TASK.length + 1,
                    d_model=16, n_layers=1, n_heads=2, d_ff=24,
                    masked_output_ids=exact.masked_output_ids(TASK))
OPT = OptimizerConfig(learning_rate=1e-3)
RUNS = ({'beta': 0.1, 'learning_rate': 1e-3, 'seed': 0},
        {'beta': 0.5, 'learning_rate': 3e-3, 'seed': 1},
        {'beta': 2.0, 'learning_rate': 2e-3, 'seed': 2})
STEPS, BATCH = 8, 16


@pytest.fixture(scope='module')
def setup():
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(MODEL, rngs=r), mesh, jax.random.key(0))
  r = jnp.asarray(exact.gold_reward(TASK))
  ref_logp = exact.random_reference(TASK)
  pairs = exact.preference_batch(TASK, exact.sample_pairs_bt(jax.random.key(1), TASK, ref_logp, r, 32))
  pairs = preference.reference_logps(graphdef, params, pairs, prompt_len=1, batch_size=96)
  return mesh, graphdef, params, pairs


def _hparams():
  return fit_lib.stack_hparams([{k: v for k, v in run.items() if k != 'seed'} for run in RUNS])


def _not_key_bias(path) -> bool:
  # The key bias b_k has an exactly zero gradient (q·(k_j + b_k) shifts every logit of a query
  # by the same q·b_k, and softmax ignores shifts), so its "gradient" is float noise, which
  # Adam normalizes into lr-sized steps: those entries differ between any two reductions
  # orders and never change the model's outputs. Every other parameter is compared.
  return 'b_qkv' not in jax.tree_util.keystr(path)


def _compare(a_params, b_params, graphdef, tol=1e-5):
  flat_a = jax.tree_util.tree_flatten_with_path(a_params)[0]
  flat_b = jax.tree.leaves(b_params)
  for (path, a), b in zip(flat_a, flat_b):
    a, b = np.asarray(a), np.asarray(b)
    if _not_key_bias(path):
      np.testing.assert_allclose(a, b, atol=tol, rtol=0, err_msg=jax.tree_util.keystr(path))
    else:  # only the key third of b_qkv (H, K) is exempt: queries and values must agree
      np.testing.assert_allclose(a[[0, 2]], b[[0, 2]], atol=tol, rtol=0)
  np.testing.assert_allclose(exact_task.exact_policy_logp(graphdef, a_params, TASK),
                             exact_task.exact_policy_logp(graphdef, b_params, TASK), atol=tol, rtol=0)


@pytest.fixture(scope='module')
def alone(setup, tmp_path_factory):
  """Each run of RUNS trained by itself with `fit` (the single-run path)."""
  mesh, graphdef, params, pairs = setup
  base = preference.make_loss_fn(graphdef, 'dpo', prompt_len=1)
  out = []
  for i, run in enumerate(RUNS):
    run_dir = tmp_path_factory.mktemp(f'alone{i}')
    state = fit(base, params, ArrayBatches(pairs, BATCH, seed=run['seed']),
                optimizer=dataclasses.replace(OPT, learning_rate=run['learning_rate']),
                n_steps=STEPS, run_dir=run_dir, config=dict(run), mesh=mesh,
                hparams={'beta': run['beta']}, seed=run['seed'], progress=False)
    out.append((state, run_dir))
  return out


# None: every run in one vmap; 1: lax.map over the runs inside the one program (CPU default).
@pytest.mark.parametrize('runs_per_chunk', [None, 1])
def test_each_run_equals_the_run_trained_alone_and_is_one_program(setup, alone, tmp_path,
                                                                  runs_per_chunk):
  mesh, graphdef, params, pairs = setup
  base = preference.make_loss_fn(graphdef, 'dpo', prompt_len=1)
  traces = []

  def loss_fn(p, batch, hparams):
    traces.append(1)  # runs once per trace, not per run or step
    return base(p, batch, hparams)

  evals = []

  def eval_fn(state_R, step):
    evals.append(step)
    return [{'beta_seen': float(b)} for b in np.asarray(_hparams()['beta'])]

  dirs = [tmp_path / f'sweep{i}' for i in range(len(RUNS))]
  state = _fit_runs(loss_fn, params, fit_lib.RunBatches(pairs, BATCH, [r['seed'] for r in RUNS]),
                          _hparams(), optimizer=OPT, n_steps=STEPS, run_dirs=dirs,
                          configs=[dict(run) for run in RUNS], mesh=mesh, eval_fn=eval_fn,
                          eval_every=4, progress=False, runs_per_chunk=runs_per_chunk)
  assert len(traces) == 1
  assert evals == [0, 4, 8]
  assert jax.tree.leaves(state['params'])[0].shape[0] == len(RUNS)
  for i, run in enumerate(RUNS):
    single, single_dir = alone[i]
    _compare(fit_lib.run_state(state['params'], i), single['params'], graphdef)
    assert int(fit_lib.run_state(state['step'], i)) == STEPS
    np.testing.assert_array_equal(jax.random.key_data(fit_lib.run_state(state['rng'], i)),
                                  jax.random.key_data(single['rng']))
    # Per-run metrics in per-run dirs, the same numbers as the single run's.
    mine = [json.loads(l) for l in (dirs[i] / 'metrics.jsonl').read_text().splitlines()]
    theirs = [json.loads(l) for l in (single_dir / 'metrics.jsonl').read_text().splitlines()]
    assert [m['step'] for m in mine] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([m['loss'] for m in mine], [m['loss'] for m in theirs], atol=1e-5)
    rows = [json.loads(l) for l in (dirs[i] / 'eval.jsonl').read_text().splitlines()]
    assert [row['step'] for row in rows] == [0, 4, 8]
    assert rows[0]['beta_seen'] == pytest.approx(run['beta'])
  # Different hyperparameters really gave different runs.
  assert not np.allclose(np.asarray(fit_lib.run_state(state['params'], 0)['backbone']['embed']),
                         np.asarray(fit_lib.run_state(state['params'], 1)['backbone']['embed']))


def test_interrupted_sweep_resumes_exactly(setup, tmp_path):
  mesh, graphdef, params, pairs = setup
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=1)

  def go(name, **kw):
    dirs = [tmp_path / name / f'run{i}' for i in range(len(RUNS))]
    return _fit_runs(loss_fn, params, fit_lib.RunBatches(pairs, BATCH, [r['seed'] for r in RUNS]),
                           _hparams(), optimizer=OPT, n_steps=STEPS, run_dirs=dirs,
                           configs=[dict(run) for run in RUNS], mesh=mesh, save_every=3,
                           progress=False, **kw), dirs

  full, _ = go('full')
  go('cut', stop_after=5)  # saved at 3 and at the stop (5)
  resumed, dirs = go('cut')
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    a = jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a
    b = jax.random.key_data(b) if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key) else b
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  steps = [json.loads(l)['step'] for l in (dirs[0] / 'metrics.jsonl').read_text().splitlines()]
  assert steps == list(range(1, STEPS + 1))


def test_shared_batch_and_bad_hparams(setup, tmp_path):
  mesh, graphdef, params, pairs = setup
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=1)
  batches = ArrayBatches(pairs, BATCH, seed=0)
  with pytest.raises(ValueError, match='one per run'):
    _fit_runs(loss_fn, params, batches, {'beta': [0.1, 0.2, 0.3]}, optimizer=OPT,
                    n_steps=1, run_dirs=[tmp_path / 'a', tmp_path / 'b'], configs=[{}, {}],
                    mesh=mesh, progress=False)
  # Two runs with equal hyperparameters and a shared batch stay identical.
  state = _fit_runs(loss_fn, params, batches, {'beta': [0.3, 0.3]}, optimizer=OPT,
                          n_steps=2, run_dirs=[tmp_path / 'a', tmp_path / 'b'], configs=[{}, {}],
                          mesh=mesh, progress=False)
  for leaf in jax.tree.leaves(state['params']):
    np.testing.assert_array_equal(np.asarray(leaf[0]), np.asarray(leaf[1]))


WORKER = textwrap.dedent('''
  import os, sys, tempfile
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  import jax, jax.numpy as jnp, numpy as np
  sys.path.insert(0, sys.argv[1])
  import test_sweep as t
  from alignlab import sharding
  from alignlab.train import fit as fit_lib
  from alignlab.config import MeshConfig
  from alignlab.heads import CausalLM
  from alignlab.train import preference
  one = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  out = {}
  for name, mesh in (('one', one), ('runs_on_data', sharding.make_mesh(MeshConfig(data=4, fsdp=2)))):
    graphdef, params = sharding.init_params(lambda r: CausalLM(t.MODEL, rngs=r), mesh, jax.random.key(0))
    r = jnp.asarray(t.exact.gold_reward(t.TASK))
    pairs = t.exact.preference_batch(t.TASK, t.exact.sample_pairs_bt(jax.random.key(1), t.TASK,
                                     t.exact.random_reference(t.TASK), r, 32))
    pairs = preference.reference_logps(graphdef, params, pairs, prompt_len=1, batch_size=96)
    hp = fit_lib.stack_hparams([{'beta': b} for b in (0.1, 0.3, 1.0, 3.0)])
    state = t._fit_runs(preference.make_loss_fn(graphdef, 'dpo', prompt_len=1), params,
                            fit_lib.RunBatches(pairs, t.BATCH, [0, 1, 2, 3]), hp, optimizer=t.OPT,
                            n_steps=3, run_dirs=[tempfile.mkdtemp() for _ in range(4)],
                            configs=[{}] * 4, mesh=mesh, progress=False)
    out[name] = state
    if name == 'runs_on_data':
      spec = state['params']['backbone']['embed'].sharding.spec
      assert spec[0] == 'data', spec
  for a, b in zip(jax.tree.leaves(out['one']['params']), jax.tree.leaves(out['runs_on_data']['params'])):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-4
  print('OK')
''')


@pytest.mark.slow
def test_run_axis_sharded_over_data_devices(tmp_path):
  script = tmp_path / 'worker.py'
  script.write_text(WORKER)
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  proc = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], capture_output=True,
                        text=True, env=env, timeout=600)
  assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr[-3000:]
