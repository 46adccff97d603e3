"""The on-disk cache of stage outputs (tokenizer, preference datasets, ...).

Layout: `$ALIGNLAB_CACHE/<kind>/<config_hash>/`, default root `~/.cache/alignlab`. Every
entry is built in a hidden temp dir beside it, given a manifest of its files' sizes and
checksums, and renamed into place in one step (`atomic_dir`, from `alignlab.artifacts`), so a
crash or an error never leaves a half-written entry; `artifacts.verify(entry)` tells whether
an entry is still intact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from alignlab.artifacts import atomic_dir
from alignlab.config import config_hash

# `atomic_dir` is re-exported: the stages build their entries with `cache.atomic_dir`, and
# `artifacts` holds the one implementation.
__all__ = ['ENV_VAR', 'WORK_PREFIX', 'atomic_dir', 'cache_dir', 'cache_root', 'copy_logs',
           'work_dir']

ENV_VAR = 'ALIGNLAB_CACHE'


def cache_root() -> Path:
  """`$ALIGNLAB_CACHE`, or `~/.cache/alignlab`; read at each call so tests can redirect it."""
  root = os.environ.get(ENV_VAR)
  return Path(root).expanduser() if root else Path.home() / '.cache' / 'alignlab'


def cache_dir(kind: str, cfg_or_dict: Any) -> Path:
  """The directory of the cache entry of `kind` produced by `cfg_or_dict` (not created)."""
  return cache_root() / kind / config_hash(cfg_or_dict)


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
