"""In-memory batches: `ArrayBatches` as a pure function of the step, `GrainBatches` read with
grain.

CPU-scale datasets (preference pairs, LM chunks, rollouts' prompts) fit in memory as arrays
of equal length. `ArrayBatches`: each epoch uses its own seeded permutation, so the batch at
step s is the same in an uninterrupted run and in a resumed one. `GrainBatches`: each run's
order is a grain pipeline read through its iterator, whose state the training loop saves
with every checkpoint and restores on resume (`train/fit.py`).
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np


class ArrayBatches:

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, *, seed: int = 0,
               shuffle: bool = True):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'arrays of different lengths: {lengths}')
    self.arrays = arrays
    self.n = next(iter(lengths.values()))
    if self.n < batch_size:
      raise ValueError(f'{self.n} examples cannot fill a batch of {batch_size}')
    self.batch_size = batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.steps_per_epoch = self.n // batch_size  # the remainder of each epoch is dropped

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
             else np.arange(self.n))
    return order[i * self.batch_size:(i + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    idx = self.indices(step)
    return {k: v[idx] for k, v in self.arrays.items()}


class GrainBatches:
  """Per-run batches of rows of `arrays`, the order of run r a grain pipeline over the row
  indices: `MapDataset.range(n).shuffle(seed=seeds[r]).repeat().batch(batch_size)` — another
  permutation each epoch (grain reshuffles a repeated dataset per epoch), every row once per
  epoch, batches that may run on into the next epoch (none is dropped). A drop-in for
  `fit.RunBatches`: `fit_runs` gathers the batches from `arrays` inside the program.

  Read through the runs' grain iterators: `next_indices(step)` is (R, B) int32, the next
  batch of each run; `get_state()` / `set_state(states, step)` are the iterators' states
  (JSON, one per run), which `fit.loop` saves beside every checkpoint and restores on resume,
  so a run resumed mid-epoch reads on exactly where it stopped. `indices(step)` is the same
  batch by random access, without moving the iterators.

  Multi-host ready: `shard_index` / `shard_count` (e.g. `jax.process_index()`,
  `jax.process_count()`) keep that process's rows of every global batch, a contiguous slice
  of batch_size / shard_count rows, so the processes' slices tile the global batch in order
  (`jax.make_array_from_process_local_data` assembles it); the default is the whole batch."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seeds: Sequence[int], *,
               shuffle: bool = True, shard_index: int = 0, shard_count: int = 1):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'arrays of different lengths: {lengths}')
    self.n = next(iter(lengths.values()))
    if self.n < batch_size:
      raise ValueError(f'{self.n} examples cannot fill a batch of {batch_size}')
    if not 0 <= shard_index < shard_count or batch_size % shard_count:
      raise ValueError(f'shard {shard_index} of {shard_count}: the batch of {batch_size} rows '
                       'must split evenly over the shards')
    self.arrays, self.batch_size = arrays, batch_size
    self.seeds = [int(s) for s in seeds]
    self.shuffle = shuffle
    local = batch_size // shard_count
    self._rows = slice(shard_index * local, (shard_index + 1) * local)
    self.pipelines = []
    for seed in self.seeds:
      ds = grain.MapDataset.range(self.n)
      ds = ds.shuffle(seed=seed) if shuffle else ds
      self.pipelines.append(ds.repeat().batch(batch_size, drop_remainder=True))
    # No reader threads: the index batches are computed on demand, in order.
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    self.iterators = [iter(p.to_iter_dataset(options)) for p in self.pipelines]
    self.position = 0

  @property
  def n_runs(self) -> int:
    return len(self.seeds)

  def indices(self, step: int) -> np.ndarray:
    return np.stack([p[int(step)][self._rows] for p in self.pipelines]).astype(np.int32)

  def next_indices(self, step: int) -> np.ndarray:
    """The next batch of every run's iterator; `step` is where the loop believes it is."""
    if step != self.position:
      raise ValueError(f'the grain iterators are at batch {self.position}, the loop at step '
                       f'{step}: their state was not restored with the checkpoint')
    self.position += 1
    return np.stack([next(it)[self._rows] for it in self.iterators]).astype(np.int32)

  def get_state(self) -> list[dict]:
    return [it.get_state() for it in self.iterators]

  def set_state(self, states: Sequence[dict], step: int) -> None:
    for it, state in zip(self.iterators, states, strict=True):
      it.set_state(state)
    self.position = step


def fixed_batches(n: int, batch_size: int):
  """(index, n_real) of fixed-size batches over n rows, the last filled by wrapping around to
  the first rows: every batch has one shape, so a jitted scorer compiles once for any n. Keep
  the first `n_real` results of each batch."""
  for start in range(0, n, batch_size):
    yield np.arange(start, start + batch_size) % n, min(batch_size, n - start)
