"""One program on several processes (`alignlab/distributed.py`, docs/multihost.md).

The end-to-end check: two local CPU processes of 4 fake devices each, coordinated on
localhost, run the tiny exact frontier; their out dir equals one process's with 8 fake
devices (the same files, one copy each; results.csv within 1e-4; the same training losses
and final parameters).
Twice: on the default mesh (data parallel, one DPO run: every output replicated), and with
two DPO runs on `mesh.data=2 mesh.fsdp=4`, where the run axis is split between the processes
(each holds one run's state; metrics are gathered across them) and the parameters over FSDP.
The online methods the same way: PPO and GRPO on the tiny exact task, and
`tests/multihost_worker.py` (the sampled evaluation of `evaluate.py`, PPO and RLOO iterations,
on `mesh.fsdp=8`, where each rollout batch is split between the processes). One process killed
mid-run: the other aborts within the heartbeat timeout, a rerun resumes. The rest runs in
this process: the start-up flags, the mesh errors, the one-writer gating."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignlab import distributed, runs, sharding
from alignlab.config import ConfigError, MeshConfig

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ['run', 'exact_frontier', '--variant', 'tiny', '--set', "methods=['dpo','best_of_n']",
           '--set', 'sweeps.dpo=[1.0]', '--set', 'sweeps.best_of_n=[4]', '--set',
           'task.sft.steps=2', '--quiet']
# At π = π_ref (DPO's step 0) the KL is rounding noise (±1e-8) and these columns are functions
# of that noise (the sign of each pair's implicit reward, a bisection on a KL of ~0): they
# differ between any two reduction orders, one process or two alike.
NOISE_AT_REFERENCE = ('implicit_accuracy', 'frontier_reward', 'reward_shortfall')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(cache: Path, devices: int) -> dict:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'ALIGNLAB_CACHE': str(cache),
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         'PYTHONPATH': str(ROOT)}
  env.setdefault('JAX_COMPILATION_CACHE_DIR',
                 os.path.expanduser('~/.cache/alignlab/jax_compilation_cache'))
  return env


def _alignlab(args, env, **kw):
  return subprocess.Popen([sys.executable, '-m', 'alignlab.cli', *args], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


ORBAX_ROOTS = ('checkpoints', 'params')  # a run's checkpoints, a stage's parameters


def _files(out: Path) -> list[str]:
  """Every file of an out dir (or cache) but the insides of orbax's checkpoints (each process
  writes its own shards there, `ocdbt.process_<i>/`): their step directories instead."""
  found = []
  for p in sorted(out.rglob('*')):
    rel = p.relative_to(out).as_posix()
    parts = rel.split('/')
    root = next((i for i, part in enumerate(parts) if part in ORBAX_ROOTS), None)
    if root is not None:
      if len(parts) == root + 2 and p.is_dir():
        found.append(rel + '/')  # a saved step
      continue
    if p.is_file():
      found.append(rel)
  return found


def _losses(out: Path) -> dict[str, list[float]]:
  return {p.parent.name: [row['loss'] for row in runs.read_jsonl(p)]
          for p in sorted(out.glob('*/metrics.jsonl'))}


MESHES = {  # name: (extra arguments, DPO runs)
    'data': ([], 1),
    'fsdp-runs-split': (['--set', 'sweeps.dpo=[0.5,1.0]', '--set', 'mesh.data=2', '--set',
                         'mesh.fsdp=4'], 2),
}


@pytest.mark.slow
@pytest.mark.parametrize('mesh', list(MESHES))
def test_two_processes_equal_one(tmp_path, mesh):
  extra, n_runs = MESHES[mesh]
  one, two, outputs = _one_and_two(COMMAND + extra, tmp_path, timeout=600)

  # One voice: process 0 prints the verdict and the plots, process 1 none of it (its stdout
  # holds gloo's own connection lines, interleaved by its threads).
  for marker in ('best point per method', 'verdict:', 'plot: ', 'evaluation points from'):
    assert marker in outputs[0][1] and marker not in outputs[1][1], marker
  # The same run dir: the same files, one copy each (no second writer appended its lines).
  assert _files(two) == _files(one)
  # FSDP without a step XLA can only partition by replicating a tensor whole (the embedding's
  # gradient did, before the tables were gathered over D: model.py, Transformer.__call__).
  for _, _, err in outputs:
    assert 'Involuntary full rematerialization' not in err
  trained = sorted(p.parent.name for p in one.glob('dpo-*/done.json'))
  assert trained == sorted(p.parent.name for p in two.glob('dpo-*/done.json'))
  assert len(trained) == n_runs
  for run in trained:
    for name in ('metrics.jsonl', 'eval.jsonl'):
      a, b = (runs.read_jsonl(d / run / name) for d in (one, two))
      assert [r['step'] for r in a] == [r['step'] for r in b] != [], name
  losses_one, losses_two = _losses(one), _losses(two)
  assert list(losses_one) == list(losses_two) == trained
  for run in trained:
    np.testing.assert_allclose(losses_two[run], losses_one[run], rtol=1e-5, atol=1e-6)
    _states_equal(one, two, run)  # split runs: each from the process that held its state
  # The shared stages too: the cache entries hold the same files.
  assert _files(tmp_path / 'cache2') == _files(tmp_path / 'cache1')

  a, b = pd.read_csv(one / 'results.csv'), pd.read_csv(two / 'results.csv')
  assert list(a.columns) == list(b.columns) and len(a) == len(b) == 1 + 3 * len(trained)
  assert a[['method', 'step']].equals(b[['method', 'step']])
  skip = {'wall_s'}
  numeric = [c for c in a.columns if pd.api.types.is_numeric_dtype(a[c]) and c not in skip]
  at_reference = (a['kl'].abs() < 1e-6).to_numpy()
  for c in numeric:
    rows = ~at_reference if c in NOISE_AT_REFERENCE else np.ones(len(a), bool)
    np.testing.assert_allclose(b[c][rows], a[c][rows], rtol=0, atol=1e-4, err_msg=c)
  assert at_reference.sum() == len(trained)  # DPO's step 0: the only rows left out of those


def _final_state(run_dir: Path) -> dict:
  """{path: numpy array} of a run's last checkpoint (every leaf of its training state)."""
  import jax
  import orbax.checkpoint as ocp
  step = max(int(p.name) for p in (run_dir / 'checkpoints').iterdir() if p.name.isdigit())
  path = run_dir / 'checkpoints' / str(step) / 'state'
  ckpt = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          ckpt.metadata(path).item_metadata)
  leaves = jax.tree_util.tree_flatten_with_path(ckpt.restore(path, restore_args=as_numpy))[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def _identified(state: dict) -> dict:
  """`state` ({path: array}) with the parameters that no loss here determines replaced by what
  the model computes from them. Where a loss is invariant along a direction its gradient
  there is 0 up to rounding (~1e-12), and Adam's m / √v turns that noise into steps of the
  learning rate's size whose sign depends on the reduction order: one process and two drift
  apart there (1e-5 to 3e-3 after a few steps, against ≤ 5e-7 elsewhere) and nowhere else.
  - The attention's key bias (`b_qkv[1]`): it adds q·b_k to every logit of a row, which
    softmax ignores. Dropped.
  - A scalar head's offset: the Bradley–Terry loss of the reward model (whose parameters
    start the value model) is invariant to a constant added to the score, which `b_head`,
    `bias` and the final norm's bias (through `w_head`) each add. Replaced by the one offset
    they make, gain · (b_head + w_head · norm_bias) + bias."""
  out = {}
  for k, v in state.items():
    out[k] = v[[0, 2]] if k.endswith("['b_qkv']") and 'opt' not in k else v
  for k in [k for k in state if k.endswith("['b_head']") and 'opt' not in k]:
    head = k[:-len("['b_head']")]
    gain, w_head = out[f"{head}['gain']"], out[f"{head}['w_head']"]
    b_head, bias = out.pop(k), out.pop(f"{head}['bias']")
    norm_bias = out.pop(f"{head}['backbone']['norm_final']['bias']", np.zeros(w_head.size))
    out[f"{head}['offset']"] = gain * (b_head + w_head.ravel() @ norm_bias.ravel()) + bias
  return out


def _states_equal(one: Path, two: Path, run: str) -> None:
  """The run's final training state (parameters, optimizer moments, counts, key) on two
  processes equals one's: 1e-5, integers exactly; the parameters no loss determines compared
  through what they compute (`_identified`)."""
  a, b = (_identified(_final_state(d / run)) for d in (one, two))
  assert sorted(a) == sorted(b)
  for k in a:
    if a[k].dtype.kind == 'f':
      np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=f'{run} {k}')
    else:
      np.testing.assert_array_equal(b[k], a[k], err_msg=f'{run} {k}')


def _one_and_two(command, tmp_path: Path, timeout: int):
  """`command` on one process of 8 fake devices into tmp_path/one, then on two of 4 into
  tmp_path/two (each with a fresh stage cache); prints both wall times, returns the two out
  dirs and the two processes' (returncode, stdout, stderr)."""
  one, two = tmp_path / 'one', tmp_path / 'two'
  t0 = time.perf_counter()
  proc = _alignlab(command + ['--out', str(one)], _env(tmp_path / 'cache1', 8))
  _, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  t_one = time.perf_counter() - t0
  t0 = time.perf_counter()
  outputs = _two(lambda i: command + ['--out', str(two)], tmp_path / 'cache2', timeout=timeout)
  # On a failure show both processes: the one that aborts first is often not the one at fault.
  # The tails only: the whole of each stderr (where an early error hides) is kept beside.
  if not all(rc == 0 for rc, _, _ in outputs):
    for i, (_, _, err) in enumerate(outputs):
      (tmp_path / f'process{i}.stderr').write_text(err)
  assert all(rc == 0 for rc, _, _ in outputs), '\n'.join(
      f'--- process {i} (exit {rc}; all of it in {tmp_path}/process{i}.stderr):\n'
      f'{err[-2500:]}' for i, (rc, _, err) in enumerate(outputs))
  print(f'1 process × 8 devices: {t_one:.0f} s; 2 processes × 4 devices: '
        f'{time.perf_counter() - t0:.0f} s')
  return one, two, outputs


def _two(args_of, cache: Path, timeout=300):
  """Runs two processes of 4 fake CPU devices, `args_of(i)` the arguments of process i;
  returns [(returncode, stdout, stderr)] once both have ended (or kills them at `timeout`)."""
  port = _free_port()
  env = _env(cache, 4)
  return _wait_all([_alignlab([*args_of(i), '--coordinator', f'127.0.0.1:{port}',
                               '--num-processes', '2', '--process-id', str(i)], env)
                    for i in range(2)], timeout)


def _wait_all(procs, timeout) -> list[tuple[int, str, str]]:
  """[(returncode, stdout, stderr)] of `procs` once all have ended; a process still running
  when this returns or raises (a timeout) is killed, so no test leaves one behind."""
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      results.append((p.returncode, out, err))
    return results
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def _numbers_equal(a, b, path=''):
  """Every number of two JSON reports within 1e-5 (the same structure)."""
  if isinstance(a, dict):
    assert sorted(a) == sorted(b), path
    for k in a:
      _numbers_equal(a[k], b[k], f'{path}/{k}')
  elif isinstance(a, list) and a and isinstance(a[0], dict):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _numbers_equal(x, y, f'{path}[{i}]')
  else:
    np.testing.assert_allclose(np.asarray(b, float), np.asarray(a, float), rtol=0, atol=1e-5,
                               err_msg=path)


def _metrics_equal(one: Path, two: Path, run: str) -> None:
  """A run's metrics.jsonl of one process and of two: the same steps and keys, each number
  within 1e-5 but the wall times (`time/*`)."""
  a, b = runs.read_jsonl(one / run / 'metrics.jsonl'), runs.read_jsonl(two / run / 'metrics.jsonl')
  assert [r['step'] for r in a] == [r['step'] for r in b] != [], run
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y), run
    _numbers_equal({k: v for k, v in x.items() if not k.startswith('time/')},
                   {k: v for k, v in y.items() if not k.startswith('time/')}, run)


def _worker(out: Path, devices: int, coordinator=None, process_id=None):
  args = [sys.executable, str(ROOT / 'tests' / 'multihost_worker.py'), str(out), '[1, 8, 1]']
  if coordinator is not None:
    args += [coordinator, '2', str(process_id)]
  env = _env(out / 'cache', devices)
  # No persistent compilation cache: where one process found its programs there and the other
  # compiled them, the two met at their first collective more than gloo's 30 s apart.
  env.pop('JAX_COMPILATION_CACHE_DIR')
  return subprocess.Popen(args, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)


@pytest.mark.slow
def test_online_methods_and_sampled_evaluation_on_two_processes_equal_one(tmp_path):
  """`tests/multihost_worker.py` on `mesh.fsdp=8`, where the parameters and each rollout batch
  are split between the two processes: the sampled evaluation (gold reward on the host, a
  reward model's proxy reward, win rates, Best-of-N, implicit-reward accuracy) and two PPO and
  two RLOO iterations give one process's numbers on both processes, and their run dirs hold
  the same files, written once."""
  one, two = tmp_path / 'one', tmp_path / 'two'
  one.mkdir()
  two.mkdir()
  proc = _worker(one, 8)
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]
  port = _free_port()
  for rc, _, err in _wait_all([_worker(two, 4, f'127.0.0.1:{port}', i) for i in range(2)], 900):
    assert rc == 0, err[-3000:]
  reference = json.loads((one / 'report-0.json').read_text())
  for i in range(2):
    _numbers_equal(reference, json.loads((two / f'report-{i}.json').read_text()))
  # The host reward ran on every process over the gathered samples: the same scores on both.
  assert (two / 'report-0.json').read_text() == (two / 'report-1.json').read_text()
  assert reference['sampled']['n'] == 11 and len(reference['rloo']['policy']) > 1000
  skip = {'report-1.json'}
  assert [f for f in _files(two) if f not in skip and not f.startswith('cache/')] == [
      f for f in _files(one) if not f.startswith('cache/')]
  for run in ('ppo', 'rloo'):
    _metrics_equal(one, two, run)
    assert [r['step'] for r in runs.read_jsonl(two / run / 'metrics.jsonl')] == [1, 2]


RL_COMMAND = ['run', 'exact_frontier', '--variant', 'tiny', '--set', "methods=['ppo','grpo']",
              '--set', 'task.sft.steps=2', '--quiet']


@pytest.mark.slow
def test_rl_methods_on_two_processes_equal_one(tmp_path):
  """PPO (learned reward model, value model, adaptive KL) and GRPO (the gold reward on the
  host) on the tiny exact task: two processes of 4 devices write one process's out dir."""
  one, two, _ = _one_and_two(RL_COMMAND, tmp_path, timeout=900)
  assert _files(two) == _files(one)
  trained = sorted(p.parent.name for p in one.glob('*/done.json'))
  assert trained == ['grpo-beta0.3-seed0', 'ppo-kl_target1-seed0']
  for run in trained:
    _metrics_equal(one, two, run)
  a, b = pd.read_csv(one / 'results.csv'), pd.read_csv(two / 'results.csv')
  assert list(a.columns) == list(b.columns) and a[['method', 'step']].equals(b[['method', 'step']])
  at_reference = (a['step'] == 0).to_numpy()  # π = π_ref: see NOISE_AT_REFERENCE
  assert at_reference.sum() == 2 and len(a) == 4
  for c in a.columns:
    if pd.api.types.is_numeric_dtype(a[c]) and c != 'wall_s':
      rows = ~at_reference if c in NOISE_AT_REFERENCE else np.ones(len(a), bool)
      np.testing.assert_allclose(b[c][rows], a[c][rows], rtol=0, atol=1e-5, err_msg=c)


CI_COMMAND = COMMAND + ['--set', "methods=['dpo','ppo','best_of_n']"]


def test_two_processes_run_dpo_and_ppo_as_one_does(tmp_path):
  """The default suite's end-to-end check (the slow tests above add the split run axis, GRPO,
  RLOO and the sampled evaluation): the tiny exact frontier with a DPO fit, a PPO run (reward
  model, value model, adaptive KL) and Best-of-N, on two processes of 4 devices, writes the
  out dir one process of 8 writes: the same files once each, the same losses and PPO metrics
  (1e-5), the same final parameters and optimizer states (1e-5), the same results.csv (1e-5),
  and only process 0 speaks."""
  one, two, outputs = _one_and_two(CI_COMMAND, tmp_path, timeout=600)
  for marker in ('best point per method', 'verdict:', 'plot: ', 'evaluation points from'):
    assert marker in outputs[0][1] and marker not in outputs[1][1], marker
  assert _files(two) == _files(one)
  trained = sorted(p.parent.name for p in one.glob('*/done.json'))
  assert trained == ['best_of_n-n4-seed0', 'dpo-beta1-seed0', 'ppo-kl_target1-seed0'], trained
  np.testing.assert_allclose(_losses(two)['dpo-beta1-seed0'], _losses(one)['dpo-beta1-seed0'],
                             rtol=1e-5, atol=1e-6)
  _metrics_equal(one, two, 'ppo-kl_target1-seed0')
  for run in ('dpo-beta1-seed0', 'ppo-kl_target1-seed0'):
    _states_equal(one, two, run)
  a, b = pd.read_csv(one / 'results.csv'), pd.read_csv(two / 'results.csv')
  assert list(a.columns) == list(b.columns) and a[['method', 'step']].equals(b[['method', 'step']])
  at_reference = (a['step'] == 0).to_numpy() & (a['method'] != 'best_of_n').to_numpy()
  for c in a.columns:
    if pd.api.types.is_numeric_dtype(a[c]) and c != 'wall_s':
      rows = ~at_reference if c in NOISE_AT_REFERENCE else np.ones(len(a), bool)
      np.testing.assert_allclose(b[c][rows], a[c][rows], rtol=0, atol=1e-5, err_msg=c)


HEARTBEAT_S = 20
LONG_COMMAND = COMMAND + ['--set', "methods=['dpo']", '--set', 'train.steps=100', '--set',
                          'train.save_every=10', '--set', 'train.eval_every=100']


# Process 1 in the default suite (the heartbeat path: 78 s on the idle machine); process 0
# (the coordinator: the other aborts at once; 61 s) with the slow tests.
@pytest.mark.parametrize('victim', [1, pytest.param(0, marks=pytest.mark.slow)])
def test_a_killed_process_ends_the_other_and_a_rerun_resumes(tmp_path, monkeypatch, victim):
  """One of two processes killed mid-run (SIGKILL, once a checkpoint is saved): the other ends
  with JAX's "another task died" abort, within the heartbeat timeout where process 1 died
  (the coordinator, process 0, stops hearing it) and at once where process 0 died (its
  coordination service goes with it); both rerun resume from the last checkpoint."""
  monkeypatch.setenv(distributed.HEARTBEAT_ENV, str(HEARTBEAT_S))
  out, cache = tmp_path / 'out', tmp_path / 'cache'
  port = _free_port()
  procs = [_alignlab([*LONG_COMMAND, '--out', str(out), '--coordinator', f'127.0.0.1:{port}',
                      '--num-processes', '2', '--process-id', str(i)], _env(cache, 4))
           for i in range(2)]
  try:
    t0 = time.perf_counter()
    while not list(out.glob('dpo-*/checkpoints/*/state')):
      assert procs[0].poll() is None and time.perf_counter() - t0 < 600, 'no checkpoint'
      time.sleep(0.2)
    procs[victim].kill()
    t_kill = time.perf_counter()
    _, err = procs[1 - victim].communicate(timeout=HEARTBEAT_S + 120)
    waited = time.perf_counter() - t_kill
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  print(f'process {1 - victim} ended {waited:.1f} s after process {victim} was killed')
  assert procs[1 - victim].returncode != 0
  assert 'another task died' in err, err[-3000:]
  assert waited < HEARTBEAT_S + 60
  saved = sorted(int(p.name) for p in out.glob('dpo-*/checkpoints/*') if p.name.isdigit())
  assert saved and saved[-1] < 100
  # The rerun (progress bars on) starts its bar at the last checkpoint: it resumed there.
  command = [a for a in LONG_COMMAND if a != '--quiet']
  done = _two(lambda i: command + ['--out', str(out)], cache, timeout=600)
  for rc, _, err in done:
    assert rc == 0, err[-3000:]
  shown = [int(n) for n in re.findall(r'(\d+)/100', done[0][2])]
  assert shown and min(shown) == saved[-1] and max(shown) == 100, shown[:5]
  steps = [r['step'] for r in runs.read_jsonl(next(out.glob('dpo-*/metrics.jsonl')))]
  assert steps == list(range(1, 101))
  assert list(out.glob('dpo-*/done.json'))


def test_two_processes_refuse_a_bad_mesh_and_different_configs(tmp_path):
  out = tmp_path / 'out'
  t0 = time.perf_counter()
  done = _two(lambda i: COMMAND + ['--out', str(out), '--set', 'mesh.data=3'], tmp_path / 'c')
  for rc, _, err in done:
    assert rc == 2, err[-2000:]
    assert ('mesh.data=3 × mesh.fsdp=1 × mesh.tensor=1 needs 3 devices, but 8 are available '
            '(2 processes × 4 local)') in err
  assert not out.exists()
  # Process 1 given another sweep: both stop with the error (neither waits for the other).
  done = _two(lambda i: COMMAND + ['--out', str(out)] + (['--set', 'sweeps.dpo=[0.5]'] * i),
              tmp_path / 'c')
  for rc, _, err in done:
    assert rc == 2 and 'runs another config than some other process' in err, err[-2000:]
  assert not out.exists()
  assert time.perf_counter() - t0 < 240


# One process of the check below: several Checkpointers (one per run of a fit loop) saving
# the same steps at once, as `fit.loop` does, then waiting for all of them.
_CHECKPOINTS = '''
import sys
from pathlib import Path
from alignlab import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np, jax
from jax.sharding import NamedSharding, PartitionSpec as P
from alignlab.checkpoint import Checkpointer
mesh = jax.make_mesh((8,), ('data',))
state = {'w': distributed.put(np.arange(64, dtype=np.float32).reshape(8, 8),
                              NamedSharding(mesh, P('data')))}
ckpts = [Checkpointer(Path(sys.argv[3]) / f'run{r}', {'r': r}) for r in range(4)]
for step in (1, 2, 3):
  for c in ckpts:
    c.save(step, state, force=True)
for c in ckpts:
  c.close()
print('saved', [c.all_steps() for c in ckpts])
'''


def test_two_processes_save_several_checkpoints_at_once(tmp_path):
  """Orbax's save threads meet the other process at barriers named by the step: without a
  prefix of its own per Checkpointer, four saving step 1 at once wait at one name, and the
  coordination service refuses the second ("Barrier ... is already ongoing"; the save fails
  and the processes hang). This hung the split-run-axis frontier (two DPO runs) 2 times in
  about 12."""
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, '-c', _CHECKPOINTS, f'127.0.0.1:{port}', str(i),
                             str(tmp_path)], env=_env(tmp_path / 'cache', 4), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for rc, out, err in _wait_all(procs, 90):
    assert rc == 0 and 'saved [[2, 3], [2, 3], [2, 3], [2, 3]]' in out, err[-3000:]


# ----------------------------------------------------------------------------- start-up


def _cli(*args, timeout=120):
  proc = subprocess.run([sys.executable, '-m', 'alignlab.cli', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)})
  return proc.returncode, proc.stdout, proc.stderr


def _main(capsys, *args):
  """`alignlab ARGS` in this process (the flags at --num-processes 1 start nothing); returns
  (exit status, stdout, stderr)."""
  from alignlab import cli
  try:
    rc = cli.main(list(args))
  except SystemExit as e:  # --help
    rc = e.code
  out, err = capsys.readouterr()
  return rc, out, err


def test_every_command_takes_the_flags(tmp_path, capsys):
  one = ['--coordinator', '127.0.0.1:1', '--num-processes', '1', '--process-id', '0']
  rc, out, err = _main(capsys, 'list', *one)
  assert rc == 0 and 'exact_frontier' in out, err
  for command in (['run', 'x'], ['eval', 'x'], ['plot', 'x'], ['list']):
    rc, out, _ = _main(capsys, *command, '--help')
    assert rc == 0 and '--coordinator' in out and '--process-id' in out, command
  rc, _, err = _main(capsys, 'list', '--coordinator', '127.0.0.1:1')  # the three go together
  assert rc == 2 and err.count('\n') == 1 and '--num-processes' in err, err
  rc, _, err = _main(capsys, 'plot', str(tmp_path), '--coordinator', 'h:1', '--num-processes',
                     '2', '--process-id', '2')
  assert rc == 2 and '--process-id 2 is not in [0, --num-processes 2)' in err, err


def test_initialize(monkeypatch):
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  monkeypatch.setattr(jax.config, 'update', lambda *a: calls.append(a))
  for var in ('SLURM_JOB_ID', 'SLURM_NTASKS'):
    monkeypatch.delenv(var, raising=False)
  # One process: nothing.
  distributed.initialize()
  distributed.initialize('127.0.0.1:5', 1, 0)
  assert calls == []
  with pytest.raises(ValueError, match='go together'):
    distributed.initialize('127.0.0.1:5', 2, None)
  # Flags: gloo for CPU collectives, then jax.distributed.initialize with them.
  distributed.initialize('10.0.0.1:1234', 4, 3)
  assert calls == [('jax_cpu_collectives_implementation', 'gloo'),
                   {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 3}]
  # A SLURM job of several tasks: JAX's own detection (no arguments); one task: nothing.
  calls.clear()
  monkeypatch.setenv('SLURM_JOB_ID', '77')
  monkeypatch.setenv('SLURM_NTASKS', '1')
  distributed.initialize()
  assert calls == []
  monkeypatch.setenv('SLURM_NTASKS', '8')
  distributed.initialize()
  assert calls[-1] == {}


# ----------------------------------------------------------------------------- the mesh


def test_mesh_errors_name_the_keys_and_devices():
  with pytest.raises(ConfigError) as e:
    sharding.resolve_mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8, '2 processes × 4 local')
  message = str(e.value)
  assert '\n' not in message
  for part in ('mesh.data=2', 'mesh.fsdp=2', 'mesh.tensor=1', 'needs 4 devices',
               '8 are available (2 processes × 4 local)'):
    assert part in message, message
  with pytest.raises(ConfigError, match=r'mesh.data=-1 × mesh.fsdp=3 × mesh.tensor=1 cannot '
                                        r'fill 8'):
    sharding.resolve_mesh_shape(MeshConfig(data=-1, fsdp=3), 8)


def test_a_mesh_that_does_not_fit_fails_before_anything_is_written(tmp_path):
  out = tmp_path / 'out'
  rc, _, err = _cli('run', 'exact_frontier', '--variant', 'tiny', '--set', 'mesh.data=3',
                    '--set', 'mesh.fsdp=2', '--out', str(out), '--quiet')
  assert rc == 2 and err.count('\n') == 1, err
  assert 'mesh.data=3 × mesh.fsdp=2 × mesh.tensor=1 needs 6 devices, but 1 are available' in err
  assert not out.exists()


def test_a_process_alive_after_its_work_prints_its_stacks():
  """`watch_exit` (armed by the CLI when a command's work ends on one of several processes):
  still alive after the wait, the process prints every thread's stack, so a hang at exit
  (JAX's shutdown barrier waiting on a peer) names where it was; on one process nothing."""
  def python(patch: str):
    code = (f'import time; from alignlab import distributed as d; {patch}'
            'd.watch_exit(0.5); time.sleep(1.5)')
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                                            'PYTHONPATH': str(ROOT)})
  several = python('d.process_count = lambda: 2; ')
  assert several.returncode == 0 and 'Thread' in several.stderr
  assert '<string>' in several.stderr, several.stderr  # the main thread's frame, in the sleep
  one = python('')
  assert one.returncode == 0 and 'Thread' not in one.stderr, one.stderr


# ----------------------------------------------------------------------------- one writer


def test_only_process_0_writes(tmp_path, monkeypatch):
  from alignlab.train import fit
  monkeypatch.setattr(distributed, 'is_writer', lambda: False)
  monkeypatch.setattr(distributed, 'process_count', lambda: 2)
  monkeypatch.setattr(distributed, 'sync', lambda name: None)
  monkeypatch.setattr(distributed, 'agree', lambda flag: True)  # process 0 took the lock
  with runs.lock_dir(tmp_path / 'locked'):
    assert not (tmp_path / 'locked').exists()  # process 0 made it and holds its lock
  run = runs.prepare_run(tmp_path, 'dpo', {'beta': 0.1}, 0, {'a': 1})
  runs.write_jsonl(run / 'win_rate.jsonl', [{'win_rate': 1.0}])
  runs.mark_complete(run)
  runs.write_text(tmp_path / 'summary.md', 'x')
  fit._append(tmp_path / 'metrics.jsonl', 1, {'loss': 0.0})
  fit.mark_failed(tmp_path, {'step': 1})
  assert list(tmp_path.iterdir()) == []
  # Process 0 writes them all.
  monkeypatch.setattr(distributed, 'is_writer', lambda: True)
  run = runs.prepare_run(tmp_path, 'dpo', {'beta': 0.1}, 0, {'a': 1})
  runs.mark_complete(run)
  fit._append(run / 'metrics.jsonl', 1, {'loss': 0.0})
  assert sorted(p.name for p in run.iterdir()) == ['config.json', 'done.json', 'metrics.jsonl']


def test_lock_failure_reaches_every_process(tmp_path, monkeypatch):
  monkeypatch.setattr(distributed, 'process_count', lambda: 2)
  monkeypatch.setattr(distributed, 'is_writer', lambda: False)
  monkeypatch.setattr(distributed, 'agree', lambda flag: False)  # process 0 could not lock
  with pytest.raises(runs.RunDirError, match='process 0 could not take its lock'):
    with runs.lock_dir(tmp_path):
      pass


def test_to_host_and_put_on_one_process():
  import jax
  mesh = sharding.make_mesh(MeshConfig())
  x = np.arange(2.0 * len(jax.devices())).reshape(-1, 1)
  a = distributed.put(x, sharding.batch_sharding(mesh))
  np.testing.assert_array_equal(distributed.to_host({'a': a})['a'], x)
  assert distributed.agree(True) and not distributed.agree(False)
  assert distributed.is_writer()
  distributed.sync('test')  # a no-op on one process

