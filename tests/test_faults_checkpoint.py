"""Checkpoints under interrupts: Ctrl-C during saves exits within seconds with one line and
leaves a complete latest step; the Checkpointer closes on every path and never reports a step
that is still being written."""

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from alignlab.checkpoint import Checkpointer

# Saves a 64 MB state whose values equal its step, over and over, as a run does: inside
# `with Checkpointer` or (`bare`, like code that never closes it) not; a KeyboardInterrupt
# becomes one line and exit code 130, as in the CLI.
_SAVER = textwrap.dedent('''
    import contextlib, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores it
    import jax.numpy as jnp
    from alignlab.checkpoint import Checkpointer
    directory, pause, bare = sys.argv[1], float(sys.argv[2]), sys.argv[3] == 'bare'
    try:
      ckpt = Checkpointer(directory, {'task': 'faults'}, max_to_keep=2)
      with contextlib.nullcontext() if bare else ckpt:
        for step in range(1, 10_000):
          ckpt.save(step, {'w': jnp.full((16, 1024, 1024), step, jnp.float32)})
          print('saved', step, flush=True)
          time.sleep(pause)
    except KeyboardInterrupt:
      print('interrupted; run again to resume', file=sys.stderr)
      sys.exit(130)
''')


# Ctrl-C 0.1 s after a save returned: with no pause the next save is then waiting for the
# previous one to commit (orbax's interrupt-unsafe part); with a pause it lands in the sleep
# while that commit runs in the background.
@pytest.mark.parametrize('pause, use', [(0.0, 'with'), (0.4, 'with'), (0.0, 'bare')],
                         ids=['in-save', 'between-saves', 'never-closed'])
def test_ctrl_c_during_saves_exits_fast_and_resumes(tmp_path, pause, use):
  directory = tmp_path / 'ckpt'
  proc = subprocess.Popen([sys.executable, '-c', _SAVER, str(directory), str(pause), use],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    while proc.stdout.readline().split() != ['saved', '3']:
      assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
  finally:
    proc.kill()
  assert time.monotonic() - sent < 10
  assert proc.returncode == 130, err
  assert 'Traceback' not in err, err
  assert err.strip().splitlines()[-1] == 'interrupted; run again to resume'
  with Checkpointer(directory, {'task': 'faults'}) as fresh:
    step = fresh.latest_step()
    assert step is not None and step >= 2
    restored = fresh.restore({'w': jnp.zeros((16, 1024, 1024), jnp.float32)})
  assert np.all(np.asarray(restored['w']) == step)


def _state(step, mb=128):
  return {'w': jnp.full((mb, 256, 1024), step, jnp.float32)}


def test_step_being_written_is_not_latest(tmp_path):
  ckpt = Checkpointer(tmp_path / 'ckpt', {})
  ckpt.save(1, _state(1))
  ckpt.wait()
  ckpt.save(2, _state(2))
  # Orbax already counts step 2 while its background thread writes 128 MB of it.
  assert ckpt.manager.latest_step() == 2
  assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
  ckpt.close()
  assert ckpt.latest_step() == 2


def test_step_cut_short_is_neither_listed_nor_restored(tmp_path):
  with Checkpointer(tmp_path / 'ckpt', {}) as ckpt:
    ckpt.save(1, _state(1, mb=1))
    ckpt.save(2, _state(2, mb=1))
  # What a save cut short leaves where orbax writes in place (no atomic rename): no commit
  # marker, no commit time. Orbax itself still lists such a step.
  step_dir = tmp_path / 'ckpt' / '2'
  (step_dir / 'commit_success.txt').unlink()
  metadata = json.loads((step_dir / '_CHECKPOINT_METADATA').read_text())
  (step_dir / '_CHECKPOINT_METADATA').write_text(json.dumps({**metadata,
                                                             'commit_timestamp_nsecs': None}))
  with Checkpointer(tmp_path / 'ckpt', {}) as fresh:
    assert fresh.manager.all_steps() == [1, 2]
    assert fresh.latest_step() == 1 and fresh.all_steps() == [1]
    with pytest.raises(FileNotFoundError, match=r'ckpt/2 is absent or incomplete'):
      fresh.restore(_state(0, mb=1), step=2)


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_with_block_finishes_the_save_on_an_exception(tmp_path, error):
  with pytest.raises(error):
    with Checkpointer(tmp_path / 'ckpt', {}) as ckpt:
      ckpt.save(1, _state(1, mb=16))
      raise error
  assert ckpt._closed
  with Checkpointer(tmp_path / 'ckpt', {}) as fresh:
    assert fresh.latest_step() == 1


@pytest.fixture
def absl_level():
  logger = logging.getLogger('absl')
  level = logger.level
  yield
  logger.setLevel(level)


def test_abort_abandons_a_hanging_save_within_its_timeout(tmp_path, monkeypatch, capsys,
                                                          absl_level):
  ckpt = Checkpointer(tmp_path / 'ckpt', {})
  ckpt.save(1, _state(1, mb=1))
  ckpt.wait()
  monkeypatch.setattr(ckpt.manager, 'is_saving_in_progress', lambda: True)
  monkeypatch.setattr(ckpt.manager, 'wait_until_finished', lambda: time.sleep(30))
  start = time.monotonic()
  assert ckpt.abort(timeout=0.5) is False
  assert time.monotonic() - start < 5
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert 'abandoned' in err and str(tmp_path / 'ckpt') in err and 'step 1' in err


# A write that the file system refuses, as a full disk does (here: a 1 MB file-size limit,
# EFBIG, which needs no root and no tmpfs), through orbax and tensorstore.
_REFUSED = textwrap.dedent('''
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails: EFBIG
    import jax
    from alignlab.artifacts import user_io_error
    from alignlab.checkpoint import Checkpointer
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
      with Checkpointer(sys.argv[1], {}) as ckpt:
        ckpt.save(1, {'w': jax.random.normal(jax.random.key(0), (1024, 1024))})
    except Exception as e:
      line = user_io_error(e)
      if line is None:
        raise
      print(f'alignlab: error: {line}', file=sys.stderr)
      sys.exit(2)
''')


def test_refused_write_during_a_save_is_one_line_naming_the_file(tmp_path):
  proc = subprocess.run([sys.executable, '-c', _REFUSED, str(tmp_path / 'ckpt')],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f'alignlab: error: {tmp_path / "ckpt"}/1.orbax-checkpoint-tmp/')
  assert 'file too large' in lines[0]
  with Checkpointer(tmp_path / 'ckpt', {}) as fresh:
    assert fresh.latest_step() is None
