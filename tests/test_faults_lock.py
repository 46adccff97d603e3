"""Run directories under faults: one process owns a run dir (a second one is refused, a dead
owner's lock is taken over); torn files are one-line errors; done.json is never half-written."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from alignlab import runs
from alignlab.runs import LOCK_FILE, RunDirError, lock_dir

# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
_HOLDER = textwrap.dedent('''
    import sys
    from alignlab.runs import lock_dir
    with lock_dir(sys.argv[1]):
      print('locked', flush=True)
      sys.stdin.read()
''')


def _holder(path):
  proc = subprocess.Popen([sys.executable, '-c', _HOLDER, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'locked'
  return proc


def test_second_process_is_refused_naming_the_owner(tmp_path):
  run = tmp_path / 'run'
  proc = _holder(run)
  try:
    with pytest.raises(RunDirError) as info:
      with lock_dir(run):
        pass
  finally:
    proc.stdin.close()
    proc.wait(timeout=10)
  message = str(info.value)
  assert '\n' not in message
  assert str(run) in message and f'pid {proc.pid}' in message
  assert socket.gethostname() in message
  # The holder's clean exit leaves nothing behind, so the next command just runs.
  assert not (run / LOCK_FILE).exists()
  with lock_dir(run):
    pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
  run = tmp_path / 'run'
  proc = _holder(run)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=10)
  assert json.loads((run / LOCK_FILE).read_text())['pid'] == proc.pid  # left behind
  with lock_dir(run):
    owner = json.loads((run / LOCK_FILE).read_text())
    assert (owner['pid'], owner['host']) == (os.getpid(), socket.gethostname())
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert 'taking over' in err and f'pid {proc.pid}' in err and 'no longer running' in err


def test_lock_is_exclusive_within_one_process_too(tmp_path):
  with lock_dir(tmp_path / 'run'):
    with pytest.raises(RunDirError, match=f'pid {os.getpid()}'):
      with lock_dir(tmp_path / 'run'):
        pass


def test_lock_left_on_another_host_is_not_guessed_stale(tmp_path):
  # A free flock proves nothing about a process on another host (shared file systems).
  run = tmp_path / 'run'
  run.mkdir()
  (run / LOCK_FILE).write_text(json.dumps({'pid': 12345, 'host': 'elsewhere.invalid'}))
  with pytest.raises(RunDirError, match=r'pid 12345 on host elsewhere\.invalid.*delete'):
    with lock_dir(run):
      pass


def test_lock_is_released_on_an_exception(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with lock_dir(tmp_path / 'run'):
      raise KeyboardInterrupt
  assert not (tmp_path / 'run' / LOCK_FILE).exists()
  proc = _holder(tmp_path / 'run')
  proc.stdin.close()
  assert proc.wait(timeout=10) == 0


# ----------------------------------------------------------------------------- run dir files

def _run(tmp_path):
  return runs.prepare_run(tmp_path / 'out', 'dpo', {'beta': 0.1}, 0, {'lr': 1e-3})


def test_torn_eval_line_is_one_line_naming_file_and_line(tmp_path):
  run = _run(tmp_path)
  (run / 'eval.jsonl').write_text('{"step": 0, "kl": 0.0}\n{"step": 10, "kl": 0.')
  with pytest.raises(RunDirError) as info:
    runs.collect_results(tmp_path / 'out')
  message = str(info.value)
  assert '\n' not in message and message.startswith(f'{run / "eval.jsonl"}:2 is not a JSON line')


def test_empty_config_json_is_one_line_naming_it(tmp_path):
  run = _run(tmp_path)
  (run / 'metrics.jsonl').write_text('{"step": 1, "loss": 0.5}\n')
  (run / 'config.json').write_text('')
  with pytest.raises(RunDirError, match=f'^{run / "config.json"} is not valid JSON.*delete'):
    _run(tmp_path)
  with pytest.raises(RunDirError, match='config.json is not valid JSON'):
    runs.collect_results(tmp_path / 'out')


def _prepare(tmp_path, lr):
  return runs.prepare_run(tmp_path / 'out', 'dpo', {'beta': 0.1}, 0, {'lr': lr})


def test_failed_start_does_not_block_the_corrected_command(tmp_path):
  run = _prepare(tmp_path, 1e9)  # a start that failed before any result
  (run / 'checkpoints').mkdir()
  assert _prepare(tmp_path, 1e-3) == run
  assert json.loads((run / 'config.json').read_text())['config']['lr'] == 1e-3
  (run / 'config.json').write_text('')  # torn by a crash, and still nothing to lose
  assert _prepare(tmp_path, 1e-3) == run


def test_run_dir_with_results_of_another_config_is_refused(tmp_path):
  run = _prepare(tmp_path, 1e-3)
  (run / 'checkpoints' / '10').mkdir(parents=True)
  (run / 'checkpoints' / '10' / 'commit_success.txt').write_text('')
  with pytest.raises(RunDirError, match='made by another config'):
    _prepare(tmp_path, 2e-3)
  assert json.loads((run / 'config.json').read_text())['config']['lr'] == 1e-3


def test_done_json_is_absent_when_writing_it_fails(tmp_path, monkeypatch):
  run = _run(tmp_path)

  def full(fd):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(os, 'fsync', full)
  with pytest.raises(OSError):
    runs.mark_complete(run, wall_s=1.0)
  monkeypatch.undo()
  assert not runs.is_complete(run)
  assert sorted(p.name for p in run.iterdir()) == ['config.json']
  runs.mark_complete(run, wall_s=1.0)
  assert json.loads((run / 'done.json').read_text())['wall_s'] == 1.0


def test_refusal_names_the_changed_keys(tmp_path):
  run = _prepare(tmp_path, 1e-3)
  (run / 'eval.jsonl').write_text('{"step": 0}\n')
  with pytest.raises(RunDirError, match=r'config\.lr: 0\.001 → 0\.002'):
    _prepare(tmp_path, 2e-3)


def _prepare_eval(tmp_path, n_prompts):
  return runs.prepare_run(tmp_path / 'out', 'dpo', {'beta': 0.1}, 0,
                          {'lr': 1e-3, 'eval': {'n_eval_prompts': n_prompts}})


def test_changed_evaluation_settings_rerun_the_run(tmp_path, capsys):
  run = _prepare_eval(tmp_path, 128)
  for name in ('eval.jsonl', 'done.json', 'metrics.jsonl'):
    (run / name).write_text('{"step": 0}\n')
  (run / 'checkpoints' / '10').mkdir(parents=True)
  assert _prepare_eval(tmp_path, 128) == run and runs.is_complete(run)  # same: kept
  assert _prepare_eval(tmp_path, 512) == run
  err = capsys.readouterr().err
  assert 'evaluation settings changed (n_eval_prompts: 128 → 512)' in err and 'recomputed' in err
  assert sorted(p.name for p in run.iterdir()) == ['config.json']  # old results gone
  assert json.loads((run / 'config.json').read_text())['config']['eval']['n_eval_prompts'] == 512
  assert not runs.is_complete(run)
