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
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from alignlab import artifacts, runs
from alignlab.checkpoint import restore_params, save_params
from alignlab.config import to_dict
from alignlab.data.cache import cache_dir, copy_logs, work_dir

__all__ = ['cached_stage', 'save_params', 'restore_params', 'copy_logs', 'read_json']


def cached_stage(kind: str, key: Any, build: Callable[[Path, Path], None]) -> tuple[Path, bool]:
  """(the entry of `kind` for `key`, whether it came from the cache); on a miss it is built
  by `build(out_dir, work_dir)`. An entry is verified against its manifest (sizes and
  checksums, `artifacts.py`) on every use: a missing, truncated or altered file makes it be
  rebuilt, with a one-line note."""
  target = cache_dir(kind, key)
  work = work_dir(target)
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
