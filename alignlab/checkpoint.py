"""orbax-checkpoint save / restore / resume of a training state and the config that made it.

A training state is any pytree (params, optimizer state, step, RNG key, ...). Each saved
step holds the state and the config as JSON. Orbax writes a step to a temporary directory
and renames it when complete, so `latest_step` only ever sees complete steps: a run killed
mid-save resumes from the previous one. Restoring checks the saved shapes against the
expected ones first, so another width is a `ConfigError` naming the parameter and the
differing config keys, not a shape crash deep inside orbax.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from alignlab.config import ConfigError, to_dict


def _flatten_config(d: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten_config(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: d}


def config_diff(saved: dict, current: dict) -> list[str]:
  a, b = _flatten_config(saved), _flatten_config(current)
  return [f'{k}: {a.get(k, "<absent>")!r} → {b.get(k, "<absent>")!r}'
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _is_key(x) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_keys_to_data(tree):
  def one(x):
    if _is_key(x):
      data = jax.eval_shape(jax.random.key_data, x)
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, 'sharding', None))
    return x
  return jax.tree.map(one, tree)


def _data_to_keys(tree, template):
  return jax.tree.map(lambda x, t: jax.random.wrap_key_data(x) if _is_key(t) else x, tree, template)


def _path_name(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))))
  return '.'.join(parts)


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a concrete state: the target of a restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), tree)


class Checkpointer:
  """Saves every `save_every` steps (and on `force=True`), keeps the newest `max_to_keep`."""

  def __init__(self, directory: str | Path, config: Any, *, max_to_keep: int = 2,
               save_every: int = 1):
    self.directory = Path(directory).absolute()
    self.config = to_dict(config)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             save_interval_steps=save_every),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_keys_to_data(state)),
        config=ocp.args.JsonSave(self.config)), force=force)
    return bool(saved)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def saved_config(self, step: int) -> dict:
    path = self.directory / str(step) / 'config' / 'metadata'
    if path.exists():
      return json.loads(path.read_text())
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored['config']

  def _check_shapes(self, step: int, abstract_state: Any) -> None:
    metadata = self.manager.item_metadata(step)['state']
    saved = jax.tree_util.tree_flatten_with_path(metadata)[0]
    expected = jax.tree_util.tree_flatten_with_path(_abstract_keys_to_data(abstract_state))[0]
    saved_shapes = {_path_name(p): tuple(getattr(m, 'shape', ()) or ()) for p, m in saved}
    problems = []
    for path, leaf in expected:
      name = _path_name(path)
      if name not in saved_shapes:
        problems.append(f'{name} is not in the checkpoint')
      elif saved_shapes[name] != tuple(leaf.shape):
        problems.append(f'{name} has shape {saved_shapes[name]} in the checkpoint but '
                        f'{tuple(leaf.shape)} now')
    if problems:
      diff = config_diff(self.saved_config(step), self.config)
      raise ConfigError(
          f'checkpoint {self.directory / str(step)} does not fit the current config: '
          f'{problems[0]}' + (f' (+{len(problems) - 1} more)' if len(problems) > 1 else '') +
          ('; config differs in ' + '; '.join(diff) if diff else ''))

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) onto the shardings of `abstract_state`, a pytree
    of `jax.ShapeDtypeStruct` (or arrays) with `.sharding`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract_state = abstract_like(abstract_state)
    self._check_shapes(step, abstract_state)
    target = _abstract_keys_to_data(abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return _data_to_keys(restored['state'], abstract_state)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def save_params(directory: str | Path, params: Any, config: Any) -> None:
  """Writes one finished set of parameters (a stage's output) as step 0 of `directory`."""
  ckpt = Checkpointer(directory, config, max_to_keep=1)
  ckpt.save(0, params, force=True)
  ckpt.close()


def restore_params(directory: str | Path, template: Any, config: Any) -> Any:
  """Reads what `save_params` wrote onto the shapes and shardings of `template`."""
  ckpt = Checkpointer(directory, config, max_to_keep=1)
  params = ckpt.restore(template, 0)
  ckpt.close()
  return params
