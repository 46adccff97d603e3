"""The stage cache: every shared stage of every task (π_ref, pairs, reward model, the IMDb
classifier) is built once and reused, keyed by the hash of the config that produced it.

    path, from_cache = cached_stage('exact_sft', key, build)   # build(out_dir, work_dir)
    save_params(path / 'params', params, key)  ;  restore_params(path / 'params', like, key)

Layout: `<cache_root>/<kind>/<config_hash(key)>/` with `key.json` beside the stage's files;
the root is `$ALIGNLAB_CACHE`, else `~/.cache/alignlab` (`data/cache.py`: one root for every
cache, the tokenizer's and the preference datasets' included). Parameters are orbax
checkpoints (`checkpoint.save_params`); arrays are `.npz`. An entry is written into a temp dir
and renamed into place, so it is complete iff its directory exists. `work_dir`
(`.work-<hash>/`) survives an interruption, so a stage that trains resumes from its own
checkpoints there; it is removed once the entry is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from alignlab.checkpoint import restore_params, save_params
from alignlab.config import to_dict
from alignlab.data.cache import atomic_dir, cache_dir, copy_logs, work_dir

__all__ = ['cached_stage', 'save_params', 'restore_params', 'copy_logs', 'read_json']


def cached_stage(kind: str, key: Any, build: Callable[[Path, Path], None]) -> tuple[Path, bool]:
  """(the entry of `kind` for `key`, whether it came from the cache); on a miss it is built
  by `build(out_dir, work_dir)`."""
  target = cache_dir(kind, key)
  if target.is_dir():
    return target, True
  work = work_dir(target)
  work.mkdir(parents=True, exist_ok=True)
  with atomic_dir(target) as tmp:
    build(tmp, work)
    (tmp / 'key.json').write_text(json.dumps(to_dict(key), indent=1, sort_keys=True, default=str))
  shutil.rmtree(work, ignore_errors=True)
  return target, False


def read_json(path: Path) -> dict:
  return json.loads(Path(path).read_text())
