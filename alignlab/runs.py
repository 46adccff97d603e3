"""Run directories of an experiment and the tidy results table built from them.

    out_dir/
      experiment.json                      name, variant, overrides, config
      <method>-<hparam><value>-seed<k>/    one run dir per (method, hyperparameter, seed):
        config.json                        {experiment, method, hparams, seed, config, config_hash}
        metrics.jsonl                      training metrics, one line per logged step
        eval.jsonl                         one evaluation point per line: {step, gold_reward, kl, ...}
        win_rate.jsonl                     (optional) {temperature, win_rate, ...}
        checkpoints/                       orbax checkpoints of the run's training state
        done.json                          written last: the run is complete (resume skips it)
      results.csv, win_rates.csv, *.png    written by the runner

API
---
    run = prepare_run(out_dir, method, hparams, seed, config, experiment=name) -> Path
    is_complete(run) ; mark_complete(run, **info)
    with lock_dir(out_dir): ...            one process owns a run / out dir at a time
    collect_results(out_dir) -> DataFrame   (RESULT_COLUMNS first; NaN where a run lacks one)
    collect_win_rates(out_dir) -> DataFrame
    best_points(df, by='objective', mode='max') -> DataFrame ; format_table(df) -> str

Several processes (`distributed.py`): process 0 alone takes the locks and writes the run dirs;
the others compute with it and wait for its writes where they read them back (`prepare_run`,
`mark_complete`).

`hparams` is the run's identifying hyperparameters, e.g. {'beta': 0.1}; the first one names
the run and fills the `hparam` / `hparam_value` columns. `beta` in the results is the β of
J_β used for `objective` and `gap` (the method's own β where it has one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from alignlab import distributed
from alignlab.artifacts import TMP_PREFIX, write_text_atomic
from alignlab.checkpoint import config_diff
from alignlab.config import config_hash, to_dict

RESULT_COLUMNS = ('method', 'hparam', 'hparam_value', 'seed', 'step', 'gold_reward',
                  'gold_reward_stderr', 'kl', 'kl_stderr', 'kl_k1', 'kl_k3', 'objective', 'beta',
                  'gap', 'gap_fraction', 'proxy_reward')
TABLE_COLUMNS = ('method', 'hparam', 'hparam_value', 'n_seeds', 'step', 'gold_reward', 'kl',
                 'objective', 'gap_fraction', 'proxy_reward')


class RunDirError(ValueError):
  """A run directory that cannot be used (another config, no results, owned by another
  process)."""


LOCK_FILE = '.lock'


def _read_owner(fd: int) -> dict[str, Any]:
  """The {pid, host} a lock file records; {} if it is empty or torn (its writer died or has
  not written yet)."""
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    owner = json.loads(os.read(fd, 4096).decode() or 'null')
  except ValueError:
    return {}
  return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


def _owner_text(owner: dict[str, Any]) -> str:
  return f'pid {owner.get("pid", "?")} on host {owner.get("host", "?")}'


def _take(path: Path) -> int:
  """An fd holding the exclusive flock of `path/LOCK_FILE`, with our pid and host written in
  it; RunDirError if a live process holds it."""
  lock = path / LOCK_FILE
  while True:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      owner = _read_owner(fd)
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        raise
      raise RunDirError(f'{path} is in use by {_owner_text(owner)} (lock {lock}); wait for it to '
                        'finish or stop it, or choose another --out') from None
    # The previous owner may have removed the file between our open and our flock; then we
    # hold a lock on a file nobody else can see, so start again on the current one.
    try:
      same = os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  previous = _read_owner(fd)
  host = socket.gethostname()
  if previous and previous.get('pid') != os.getpid():
    if previous.get('host') != host:
      # flock does not reach across hosts on every shared file system: a free lock says
      # nothing about a process elsewhere, so only a person can tell it is stale.
      os.close(fd)
      raise RunDirError(f'{path} is locked by {_owner_text(previous)} (lock {lock}); if that '
                        f'process is gone, delete {lock} and run again')
    pid = previous.get('pid')
    alive = isinstance(pid, int) and pid > 0 and _pid_alive(pid)
    state = 'running but not holding it (a reused pid)' if alive else 'no longer running'
    print(f'alignlab: taking over {path}: its lock was left by {_owner_text(previous)}, '
          f'which is {state}', file=sys.stderr)
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': host, 'since': time.time()}).encode(), 0)
  os.fsync(fd)
  return fd


@contextlib.contextmanager
def lock_dir(path: str | Path) -> Iterator[Path]:
  """Owns the directory `path` (created if missing) for the block: a second process (the same
  command started twice) gets a RunDirError naming the owner's pid and host instead of
  interleaving its writes with ours. The lock is an flock on `path/.lock`, which also records
  the owner; the kernel drops the flock when its process dies, so a lock file left by a dead
  process on this host is taken over with a one-line note on stderr. Of several processes of
  one program, process 0 takes it for all of them (the others learn whether it could)."""
  path = Path(path)
  if distributed.process_count() > 1:
    with _lock_for_all(path):
      yield path
    return
  path.mkdir(parents=True, exist_ok=True)
  fd = _take(path)
  try:
    yield path
  finally:
    # Unlinked while still held: whoever opens the path next creates a fresh file.
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path / LOCK_FILE)
    os.close(fd)


@contextlib.contextmanager
def _lock_for_all(path: Path) -> Iterator[None]:
  """`lock_dir` for the processes of one program: process 0 holds the lock, and when it
  cannot take it every process raises its RunDirError (none waits for the others)."""
  error = None
  if distributed.is_writer():
    path.mkdir(parents=True, exist_ok=True)
    try:
      fd = _take(path)
    except RunDirError as e:
      error = e
  if not distributed.agree(error is None):
    raise error or RunDirError(f'{path} is in use: process 0 could not take its lock '
                               f'{path / LOCK_FILE}')
  try:
    yield
  finally:
    if distributed.is_writer():
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path / LOCK_FILE)
      os.close(fd)


def _fmt(value: Any) -> str:
  return f'{value:g}' if isinstance(value, float) else str(value)


def run_name(method: str, hparams: dict[str, Any], seed: int) -> str:
  """'dpo-beta0.1-seed0'; a trailing '_' of a name (ORPO's `lambda_`) is dropped."""
  parts = [method] + [f'{k.rstrip("_")}{_fmt(v)}' for k, v in hparams.items()] + [f'seed{seed}']
  return '-'.join(parts)


def _changed(old: dict, new: dict, limit: int = 3) -> str:
  """'config.lr: 0.001 → 0.002, …': the keys whose values differ between two records."""
  diff = config_diff(old, new)
  return ', '.join(diff[:limit]) + (f' (and {len(diff) - limit} more)' if len(diff) > limit else '')


def prepare_run(out_dir: str | Path, method: str, hparams: dict[str, Any], seed: int,
                config: Any, *, experiment: str = '') -> Path:
  """Creates (or checks) the run dir and its config.json.

  `config['eval']` (the task's evaluation settings) is compared apart from the rest. A run
  dir made by another training config is an error: resuming it would mix two experiments. One
  whose evaluation settings changed is started again, with a note: its evaluation path needs
  the policies along the way, and only the last checkpoints are kept, so recomputing what
  the change affects means retraining. One that holds nothing but its config.json (a start
  that failed before any result) is taken over by the new config, so it never blocks the
  corrected command."""
  record = {'experiment': experiment, 'method': method, 'hparams': dict(hparams), 'seed': seed,
            'config': to_dict(config)}
  record['config_hash'] = config_hash(record)
  record['train_hash'] = config_hash(_without_eval(record))
  run = Path(out_dir) / run_name(method, hparams, seed)
  path = run / 'config.json'
  if path.exists() and not _holds_nothing(run):
    saved = _read_json(path)
    if saved.get('config_hash') == record['config_hash']:
      return run
    if saved.get('train_hash') != record['train_hash']:
      raise RunDirError(f'{run} was made by another config ('
                        f'{_changed(_without_eval(saved), _without_eval(record))}); choose '
                        'another --out or delete that run dir')
    if distributed.is_writer():
      print(f'alignlab: {run.name}: evaluation settings changed ('
            f'{_changed(saved["config"].get("eval", {}), record["config"].get("eval", {}))}): '
            'its results are recomputed from step 0', file=sys.stderr, flush=True)
      _clear(run)
  if distributed.is_writer():
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1, default=str))
  distributed.sync('alignlab.runs.prepare_run')  # every process reads config.json next
  return run


def _without_eval(record: dict) -> dict:
  """A run record without its evaluation settings and hashes: what training depends on."""
  out = {k: v for k, v in record.items() if k not in ('config_hash', 'train_hash')}
  out['config'] = {k: v for k, v in (record.get('config') or {}).items() if k != 'eval'}
  return out


def _clear(run: Path) -> None:
  """Empties a run dir but for its lock: config.json goes last, so an interrupted clear
  leaves a dir that still names its old config (and is cleared again by the next start)."""
  for p in sorted(run.iterdir(), key=lambda p: p.name == 'config.json'):
    if p.name == LOCK_FILE:
      continue
    if p.is_dir() and not p.is_symlink():
      shutil.rmtree(p)
    else:
      p.unlink()


def _holds_nothing(run: Path) -> bool:
  """Whether a run dir has no file but its config.json, its lock and temp files (empty
  subdirectories, such as a checkpoints/ no save reached, do not count)."""
  return all(p.name in ('config.json', LOCK_FILE) or p.name.startswith(TMP_PREFIX)
             for p in run.rglob('*') if not p.is_dir())


def _read_json(path: Path) -> Any:
  """A JSON file of a run dir; a torn or empty one (a crash mid-write, a hand edit) is a
  one-line RunDirError naming it rather than a JSONDecodeError traceback."""
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise RunDirError(f'{path} is not valid JSON ({e}); delete the run dir {path.parent} '
                      'and run again') from None


def is_complete(run: str | Path) -> bool:
  return (Path(run) / 'done.json').exists()


def mark_complete(run: str | Path, **info: Any) -> None:
  # Atomic: done.json existing is what "complete" means, so it must never exist torn.
  if distributed.is_writer():
    write_text_atomic(Path(run) / 'done.json', json.dumps({'finished': time.time(), **info}))
  distributed.sync('alignlab.runs.mark_complete')  # no process reads the run as incomplete


def write_text(path: str | Path, text: str) -> None:
  """`Path(path).write_text(text)` by process 0 alone (of several processes)."""
  if distributed.is_writer():
    Path(path).write_text(text)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
  if distributed.is_writer():
    write_text_atomic(path, ''.join(json.dumps(row) + '\n' for row in rows))


def read_jsonl(path: str | Path) -> list[dict]:
  """The rows of a JSONL file ([] if it is absent); a torn or non-JSON line is a one-line
  RunDirError naming the file and line."""
  path = Path(path)
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError as e:
      raise RunDirError(f'{path}:{number} is not a JSON line ({e}); delete that line (or the '
                        f'run dir {path.parent}) and run again') from None
  return rows


def run_dirs(out_dir: str | Path) -> list[Path]:
  return sorted(p.parent for p in Path(out_dir).glob('*/config.json'))


def status(run: str | Path) -> str:
  """'done', 'failed' (a non-finite loss, gradient or evaluation: `failed.json`) or 'running'."""
  run = Path(run)
  return 'failed' if (run / 'failed.json').exists() else 'done' if is_complete(run) else 'running'


def failures(out_dir: str | Path) -> list[tuple[str, dict]]:
  """(run name, failure record) of every failed run under `out_dir`."""
  return [(run.name, _read_json(run / 'failed.json')) for run in run_dirs(out_dir)
          if status(run) == 'failed']


def _identity(run: Path) -> dict[str, Any]:
  record = _read_json(run / 'config.json')
  hparams = record.get('hparams') or {}
  name, value = next(iter(hparams.items()), (None, math.nan))
  done = _read_json(run / 'done.json') if is_complete(run) else {}
  stopped = _read_json(run / 'stopped.json') if (run / 'stopped.json').exists() else {}
  return {'method': record['method'], 'hparam': name.rstrip('_') if name else '',
          'hparam_value': value, 'seed': record.get('seed', 0), 'run': run.name,
          'status': status(run), 'stopped': stopped.get('reason', ''),
          'kl_target_met': done.get('kl_target_met', math.nan)}


def _ordered(df: pd.DataFrame, first: tuple[str, ...]) -> pd.DataFrame:
  for column in first:
    if column not in df:
      df[column] = math.nan
  return df[list(first) + [c for c in df.columns if c not in first]]


def collect_results(out_dir: str | Path) -> pd.DataFrame:
  """One row per evaluation point of every run dir under `out_dir`."""
  rows = []
  for run in run_dirs(out_dir):
    ident = _identity(run)
    rows.extend({**ident, **point} for point in read_jsonl(run / 'eval.jsonl'))
  df = pd.DataFrame(rows)
  df = _ordered(df, RESULT_COLUMNS)
  if len(df):
    df = df.sort_values(['method', 'hparam_value', 'seed', 'step'], kind='stable')
  return df.reset_index(drop=True)


def collect_win_rates(out_dir: str | Path) -> pd.DataFrame:
  rows = []
  for run in run_dirs(out_dir):
    ident = _identity(run)
    rows.extend({**ident, **point} for point in read_jsonl(run / 'win_rate.jsonl'))
  return _ordered(pd.DataFrame(rows), ('method', 'hparam', 'hparam_value', 'seed', 'temperature',
                                       'win_rate'))


def best_points(df: pd.DataFrame, by: str = 'objective', mode: str = 'max') -> pd.DataFrame:
  """Per method, the evaluation point (mean over seeds at equal method, hyperparameter and
  step) with the best `by`. A failed run gives no point: its rows are left out."""
  if 'status' in df:
    df = df[df['status'] != 'failed'].drop(columns='status')
  if not len(df):
    return df
  keys = ['method', 'hparam', 'hparam_value', 'step']
  numeric = [c for c in df.columns if c not in keys + ['run', 'seed']
             and pd.api.types.is_numeric_dtype(df[c])]
  grouped = df.groupby(keys, dropna=False)
  means = grouped[numeric].mean().reset_index()
  means['n_seeds'] = grouped['seed'].nunique().to_numpy()
  means = means[means[by].notna()] if by in means else means
  if not len(means):
    return means
  pick = means.groupby('method')[by].idxmax() if mode == 'max' else means.groupby('method')[by].idxmin()
  return means.loc[pick.to_numpy()].sort_values(by, ascending=mode != 'max').reset_index(drop=True)


def format_table(df: pd.DataFrame, columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
  cols = [c for c in columns if c in df and not (df[c].isna().all() and c != 'method')]
  return df[cols].to_string(index=False, float_format=lambda v: f'{v:.4g}',
                            na_rep='-') if len(df) else '(no results)'
