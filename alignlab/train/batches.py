"""In-memory batches as a pure function of the step: `batch_at(step)`.

CPU-scale datasets (preference pairs, LM chunks, rollouts' prompts) fit in memory as arrays
of equal length. Each epoch uses its own seeded permutation, so the batch at step s is the
same in an uninterrupted run and in a resumed one.
"""

from __future__ import annotations

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


def fixed_batches(n: int, batch_size: int):
  """(index, n_real) of fixed-size batches over n rows, the last filled by wrapping around to
  the first rows: every batch has one shape, so a jitted scorer compiles once for any n. Keep
  the first `n_real` results of each batch."""
  for start in range(0, n, batch_size):
    yield np.arange(start, start + batch_size) % n, min(batch_size, n - start)
