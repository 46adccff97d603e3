"""The stage cache: every shared stage of every task (π_ref, pairs, reward model, the IMDb
classifier) is built once and reused, keyed by the hash of the config that produced it.

    path, from_cache = cached_stage('exact_sft', key, build)   # build(out_dir, work_dir)
    save_params(path / 'params', params, key)  ;  restore_params(path / 'params', like, key)

Layout: `<cache_root>/<kind>/<config_hash(key)>/` with `key.json` beside the stage's files;
the root is `$ALIGNLAB_CACHE`, else `~/.cache/alignlab` (`data/cache.py`: one root for every
cache, the tokenizer's and the preference datasets' included). Parameters are orbax
checkpoints (`checkpoint.save_params`); arrays are `.npz`. An entry is written into a temp dir
with a manifest and renamed into place, and verified against the manifest when used. `work_dir`
(`.work-<hash>/`) survives an interruption, so a stage that trains resumes from its own
checkpoints there; it is removed once the entry is complete.

Several processes (`distributed.py`) build an entry together: process 0 decides whether it is
intact and holds the lock, every process runs `build` into one shared temp dir (its orbax
saves are multi-host saves, which need the same directory on every process), and process 0
alone writes the key, the manifest and renames the entry into place.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from alignlab import artifacts, distributed, runs
from alignlab.checkpoint import restore_params, save_params
from alignlab.config import to_dict
from alignlab.data.cache import cache_dir, copy_logs, work_dir

__all__ = ['cached_stage', 'save_params', 'restore_params', 'copy_logs', 'read_json']


_SPENT = {'s': 0.0, 'depth': 0}  # wall seconds in `cached_stage` (outermost calls), nesting


def seconds_spent() -> float:
  """Wall seconds this process has spent in `cached_stage` (verifying or building entries):
  `pipeline.run` reads its growth to report a stage built on first use (a reward model) apart
  from the method or evaluation that first asked for it."""
  return _SPENT['s']


def cached_stage(kind: str, key: Any, build: Callable[[Path, Path], None]) -> tuple[Path, bool]:
  """(the entry of `kind` for `key`, whether it came from the cache); on a miss it is built
  by `build(out_dir, work_dir)`. An entry is verified against its manifest (sizes and
  checksums, `artifacts.py`) on every use: a missing, truncated or altered file makes it be
  rebuilt, with a one-line note."""
  t0 = time.perf_counter()
  _SPENT['depth'] += 1
  try:
    return _cached_stage(kind, key, build)
  finally:
    _SPENT['depth'] -= 1
    if not _SPENT['depth']:  # a stage built inside another counts once
      _SPENT['s'] += time.perf_counter() - t0


def _cached_stage(kind: str, key: Any, build: Callable[[Path, Path], None]) -> tuple[Path, bool]:
  target = cache_dir(kind, key)
  work = work_dir(target)
  if distributed.process_count() > 1:
    return _cached_stage_shared(target, work, key, build)
  built = []

  def build_entry(tmp: Path) -> None:
    # One builder at a time per entry: a second process waits for the lock's message instead
    # of training the same stage into the same work dir.
    with runs.lock_dir(work):
      build(tmp, work)
    (tmp / 'key.json').write_text(json.dumps(to_dict(key), indent=1, sort_keys=True, default=str))
    built.append(True)

  artifacts.ensure(target, build_entry)
  if built:
    shutil.rmtree(work, ignore_errors=True)
  return target, not built


def read_json(path: Path) -> dict:
  return json.loads(Path(path).read_text())


def _cached_stage_shared(target: Path, work: Path, key: Any,
                         build: Callable[[Path, Path], None]) -> tuple[Path, bool]:
  """`cached_stage` for the processes of one program (the module docstring)."""
  writer = distributed.is_writer()
  problems = artifacts.verify(target) if writer and target.exists() else []
  if distributed.agree(writer and target.exists() and not problems):
    return target, True
  shared = target.parent / f'{artifacts.TMP_PREFIX}{target.name}-shared'
  with runs.lock_dir(work):
    if writer:
      if problems:
        print(f'alignlab: rebuilding {target}: {problems[0]}', file=sys.stderr)
      artifacts.discard(target)
      shutil.rmtree(shared, ignore_errors=True)  # a build that was cut short
      shared.mkdir(parents=True)
    distributed.sync('alignlab.stages.start')
    build(shared, work)
    distributed.sync('alignlab.stages.built')
    if writer:
      with artifacts.atomic_dir(target) as tmp:  # manifest, fsync, rename
        for child in shared.iterdir():
          os.rename(child, tmp / child.name)
        (tmp / 'key.json').write_text(json.dumps(to_dict(key), indent=1, sort_keys=True,
                                                 default=str))
      shutil.rmtree(shared, ignore_errors=True)
  if writer:
    shutil.rmtree(work, ignore_errors=True)
  distributed.sync('alignlab.stages.done')
  return target, False
