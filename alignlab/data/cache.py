"""The on-disk cache of stage outputs (tokenizer, preference datasets, ...).

Layout: `$ALIGNLAB_CACHE/<kind>/<config_hash>/`, default root `~/.cache/alignlab`. A cache
entry is complete if and only if its directory exists: every entry is built in a hidden
temp dir beside it and renamed into place in one step (`atomic_dir`), so a crash or an
error never leaves a half-written entry that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from alignlab.config import config_hash

ENV_VAR = 'ALIGNLAB_CACHE'
TMP_PREFIX = '.tmp-'


def cache_root() -> Path:
  """`$ALIGNLAB_CACHE`, or `~/.cache/alignlab`; read at each call so tests can redirect it."""
  root = os.environ.get(ENV_VAR)
  return Path(root).expanduser() if root else Path.home() / '.cache' / 'alignlab'


def cache_dir(kind: str, cfg_or_dict: Any) -> Path:
  """The directory of the cache entry of `kind` produced by `cfg_or_dict` (not created)."""
  return cache_root() / kind / config_hash(cfg_or_dict)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
  """Yields an empty temp dir beside `target`; renames it to `target` if the block succeeds.

  On any exception the temp dir is removed and the exception propagates, so `target` either
  does not exist or is complete. If another writer finished `target` first, its entry is kept
  and ours is discarded (entries under one key are built from the same inputs).
  """
  target = Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  # A plain mkdir (not mkdtemp) so the entry gets the usual umask permissions.
  tmp = target.parent / f'{TMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}'
  tmp.mkdir()
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  try:
    os.rename(tmp, target)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if not target.is_dir():
      raise


WORK_PREFIX = '.work-'


def work_dir(target: str | os.PathLike[str]) -> Path:
  """A persistent scratch dir beside the cache entry `target`, for the training run that
  produces it: its checkpoints survive an interruption, so the next call resumes instead of
  starting over. Once the entry is complete the stage copies the run's logs into it
  (`copy_logs`) and removes the scratch dir."""
  target = Path(target)
  return target.parent / f'{WORK_PREFIX}{target.name}'


def copy_logs(run_dir: Path, into: Path) -> None:
  """Copies a run's logs (`*.jsonl`, not its checkpoints) into a cache entry's temp dir."""
  into.mkdir(parents=True, exist_ok=True)
  for log in run_dir.glob('*.jsonl'):
    shutil.copy2(log, into / log.name)
