"""Shared stages of an experiment (SFT π_ref, preference pairs, reward model), built once and
reused, keyed by the hash of the config that produced them (DESIGN.md §1).

    path = cached_stage(root, 'sft', key, build)   # build(out_dir, work_dir) writes files
    save_tree(path / 'params.npz', params); params = load_tree(path / 'params.npz', like)

Layout: `<root>/<kind>/<config_hash(key)>/`, with `key.json` beside the stage's files. The
root is `$ALIGNLAB_CACHE` when set, else `<out_dir>/cache` (`stage_root`). An entry is
complete iff its directory exists (written into a temp dir and renamed: `data/cache.py`).
`work_dir` (`<hash>.work/`) survives an interruption, so a stage that trains can resume
from its own checkpoints there; it is removed once the entry is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from alignlab.config import config_hash, to_dict
from alignlab.data.cache import ENV_VAR, atomic_dir


def stage_root(out_dir: str | Path) -> Path:
  root = os.environ.get(ENV_VAR)
  return Path(root).expanduser() if root else Path(out_dir) / 'cache'


def cached_stage(root: str | Path, kind: str, key: Any,
                 build: Callable[[Path, Path], None]) -> Path:
  """The entry of `kind` for `key`, built by `build(out_dir, work_dir)` if it is missing."""
  digest = config_hash(key)
  target = Path(root) / kind / digest
  if target.is_dir():
    return target
  work = Path(root) / kind / f'{digest}.work'
  work.mkdir(parents=True, exist_ok=True)
  with atomic_dir(target) as tmp:
    build(tmp, work)
    (tmp / 'key.json').write_text(json.dumps(to_dict(key), indent=1, sort_keys=True, default=str))
  shutil.rmtree(work, ignore_errors=True)
  return target


def _flat(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_tree(path: str | Path, tree: Any) -> None:
  """A pytree of arrays as an .npz keyed by tree paths."""
  np.savez(path, **{k: np.asarray(v) for k, v in _flat(jax.device_get(tree)).items()})


def load_tree(path: str | Path, like: Any) -> Any:
  """The inverse of `save_tree` onto the structure (and shardings, where `like` has them) of
  `like`; a missing or reshaped leaf is an error naming it."""
  with np.load(path) as data:
    stored = {k: data[k] for k in data.files}
  leaves = []
  for key, ref in _flat(like).items():
    if key not in stored:
      raise ValueError(f'{path}: no entry {key}')
    value = stored[key]
    if value.shape != tuple(ref.shape):
      raise ValueError(f'{path}: {key} has shape {value.shape}, expected {tuple(ref.shape)}')
    sharding = getattr(ref, 'sharding', None)
    leaves.append(jax.device_put(value.astype(ref.dtype), sharding) if sharding is not None
                  else jax.numpy.asarray(value, ref.dtype))
  return jax.tree.unflatten(jax.tree.structure(like), leaves)
