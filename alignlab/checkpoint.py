"""orbax-checkpoint save / restore / resume of a training state and the config that made it.

A training state is any pytree (params, optimizer state, step, RNG key, ...). Each saved
step holds the state and the config as JSON. Orbax writes a step to a temporary directory
and renames it when complete; `all_steps` / `latest_step` list only steps that are complete
on disk (not the one an async save is still writing, which orbax itself already counts), so
a run killed mid-save resumes from the previous one. Restoring checks the saved shapes
against the expected ones first, so another width is a `ConfigError` naming the parameter
and the differing config keys, not a shape crash deep inside orbax.

Several processes (`distributed.py`): every process makes the same Checkpointer and calls
`save` / `restore` at the same steps; orbax's multi-host path writes each process's shards
and lets process 0 commit the step, so the directory must be on a file system they share.
Orbax's background save threads meet the other processes at coordination-service barriers
named by the step ("async_commit_complete.12"); several Checkpointers saving the same step
at once (one per run of a fit loop) would all wait at that one name, and the service
refuses a second waiter from the same process ("Barrier ... is already ongoing"): a save
fails or hangs. So each Checkpointer prefixes its barriers with its own number
(orbax's `barrier_sync_key_prefix`), counted in the order Checkpointers are made, which is
the same on every process because every process runs the same program.

Interrupts: use the Checkpointer as a context manager, so it is closed on every path.

    with Checkpointer(run / 'checkpoints', config) as ckpt:
      ...                                     # save / restore
    # success: waits for the last save.  exception or Ctrl-C: waits at most ABORT_WAIT_S
    # for an in-flight save, then abandons it: the next run resumes from the step before,
    # and orbax overwrites the abandoned temp dir when it saves that step again.

A Ctrl-C that arrives inside `save` is held until orbax has handed the save to its
background thread (a second Ctrl-C interrupts at once): orbax's synchronous part is not
interrupt-safe, and an interrupt there leaves threads that print tracebacks at exit. A
Checkpointer that nobody closed (code without `with` that raised) is aborted the same way
when the interpreter exits, before the thread pools its background save needs shut down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import signal
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp

from alignlab.artifacts import user_io_error
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


# How long an interrupted run waits for an in-flight save before abandoning it: long enough
# for a typical save to land (then the rerun resumes from it), short enough that Ctrl-C
# feels immediate.
ABORT_WAIT_S = 5.0


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
  """Holds a first Ctrl-C that arrives in the block and raises it as KeyboardInterrupt when
  the block ends; a second one raises at once. Only where Python's own handler is installed
  (the main thread, no handler of the caller's), else the block runs unchanged."""
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield
    return
  held = []

  def hold(signum, frame):
    if held:
      raise KeyboardInterrupt
    held.append(signum)

  previous = signal.signal(signal.SIGINT, hold)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if held:
    raise KeyboardInterrupt


def _committed(step_dir: Path) -> bool:
  """Whether orbax finished the step: it writes `commit_success.txt` last (just before its
  rename, or in place on file systems without atomic rename). Versions without that file
  stamp `commit_timestamp_nsecs` in the step metadata at the same point."""
  if (step_dir / 'commit_success.txt').is_file():
    return True
  try:
    metadata = json.loads((step_dir / '_CHECKPOINT_METADATA').read_text())
  except (OSError, ValueError):
    return False
  return isinstance(metadata, dict) and metadata.get('commit_timestamp_nsecs') is not None


def _step_complete(step_dir: Path) -> bool:
  """Whether a step directory holds everything a restore reads; one without is still being
  written or was cut short."""
  return (step_dir / 'state').is_dir() and (step_dir / 'config').is_dir() and _committed(step_dir)


class _QuietUserIOErrors(logging.Filter):
  """Drops orbax's logged tracebacks of a save that failed for a reason the user can fix (a
  full disk, no permission): the same error reaches the caller of `save` / `close`, which
  reports it in one line (`artifacts.user_io_error`) instead of a screen per thread."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is None and record.args:
      error = next((a for a in record.args if isinstance(a, BaseException)), None)
    return error is None or user_io_error(error) is None


logging.getLogger('absl').addFilter(_QuietUserIOErrors())

_unclosed: 'weakref.WeakSet[Checkpointer]' = weakref.WeakSet()


def _abort_unclosed() -> None:
  """Finishes or abandons, within one ABORT_WAIT_S in all, the saves of Checkpointers still
  open at exit: otherwise the interpreter shuts down the executors an in-flight orbax save
  runs on, and it dies with a screen of tracebacks."""
  deadline = time.monotonic() + ABORT_WAIT_S
  for ckpt in list(_unclosed):
    ckpt.abort(timeout=max(0.0, deadline - time.monotonic()))


# A CPython hook (concurrent.futures uses it for the same reason): runs before non-daemon
# threads are joined and, registered after orbax imported concurrent.futures, before that
# module shuts its executors down.
threading._register_atexit(_abort_unclosed)  # noqa: SLF001


_made = itertools.count()  # Checkpointers made by this process: each one's barrier prefix


class Checkpointer:
  """Saves every `save_every` steps (and on `force=True`), keeps the newest `max_to_keep`."""

  def __init__(self, directory: str | Path, config: Any, *, max_to_keep: int = 2,
               save_every: int = 1):
    self.directory = Path(directory).absolute()
    self.config = to_dict(config)
    self._closed = False
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, save_interval_steps=save_every,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f'alignlab.checkpointer{next(_made)}')),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})
    _unclosed.add(self)

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    """The steps complete on disk, oldest first."""
    return sorted(s for s in self.manager.all_steps() if _step_complete(self.directory / str(s)))

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    with _sigint_held():
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
    if not _step_complete(self.directory / str(step)):
      raise FileNotFoundError(f'checkpoint {self.directory / str(step)} is absent or incomplete '
                              f'(complete steps: {self.all_steps() or "none"})')
    abstract_state = abstract_like(abstract_state)
    self._check_shapes(step, abstract_state)
    target = _abstract_keys_to_data(abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return _data_to_keys(restored['state'], abstract_state)

  def close(self) -> None:
    """Waits for the last save to finish (its errors propagate) and closes; idempotent."""
    if self._closed:
      return
    self._closed = True
    _unclosed.discard(self)
    try:
      self.manager.wait_until_finished()
    except BaseException:
      with contextlib.suppress(Exception):  # it re-raises the failed save's error
        self.manager.close()
      raise
    self.manager.close()

  def abort(self, timeout: float = ABORT_WAIT_S) -> bool:
    """Closes on a failure path without hanging: waits at most `timeout` s for an in-flight
    save, then abandons it with a one-line note on stderr. Errors of that save are not
    raised (the failure that brought us here is the one to report). Returns whether the
    save finished."""
    if self._closed:
      return True
    self._closed = True
    _unclosed.discard(self)
    errors: list[BaseException] = []

    def finish():
      try:
        self.manager.wait_until_finished()
        self.manager.close()
      except BaseException as e:  # noqa: BLE001 (reported below, never raised)
        errors.append(e)

    in_flight = self.manager.is_saving_in_progress()
    waiter = threading.Thread(target=finish, name='checkpoint-abort', daemon=True)
    waiter.start()
    waiter.join(timeout if in_flight else None)  # with no save in flight, closing is quick
    if waiter.is_alive() or errors:
      # Orbax's threads fail noisily once the interpreter shuts down under them; the one
      # line below says all that matters.
      logging.getLogger('absl').setLevel(logging.CRITICAL + 1)
      why = f'still writing after {timeout:g} s' if waiter.is_alive() else \
          f'{type(errors[0]).__name__}: {errors[0]}'.splitlines()[0]
      latest = self.latest_step()
      resume = f'resumes from step {latest}' if latest is not None else 'starts from scratch'
      print(f'alignlab: abandoned a checkpoint save in {self.directory} ({why}); a rerun '
            f'{resume}', file=sys.stderr)
      return False
    return True


def save_params(directory: str | Path, params: Any, config: Any) -> None:
  """Writes one finished set of parameters (a stage's output) as step 0 of `directory`."""
  with Checkpointer(directory, config, max_to_keep=1) as ckpt:
    ckpt.save(0, params, force=True)


def restore_params(directory: str | Path, template: Any, config: Any) -> Any:
  """Reads what `save_params` wrote onto the shapes and shardings of `template`."""
  with Checkpointer(directory, config, max_to_keep=1) as ckpt:
    return ckpt.restore(template, 0)
