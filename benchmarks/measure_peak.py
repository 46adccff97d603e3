"""The matmul peak of this machine through XLA: median GFLOP/s of large square matmuls.

    .venv/bin/python benchmarks/measure_peak.py [--sizes 2048 4096] [--repeats 5] [--dtype float32]

`measure_peak(...)` is imported by the other benchmarks for MFU. The reported peak is the best of
the per-size medians (a machine's peak is what its best-shaped matmul reaches).
"""

from __future__ import annotations

import argparse
import time

import bench_common as bc


def measure_peak(sizes=(2048, 3072, 4096), repeats: int = 5, dtype: str = 'float32',
                 chain: int = 2) -> dict:
  """Median GFLOP/s per size and the peak (max over sizes of the medians).

  Each timed call runs `chain` dependent matmuls in one jitted program, so dispatch overhead
  is amortized; inputs stay on device; compile time is excluded.
  """
  import jax
  import jax.numpy as jnp

  per_size = {}
  for n in sizes:
    ka, kb = jax.random.split(jax.random.key(n))
    a = jax.random.normal(ka, (n, n), dtype) / n ** 0.5
    b = jax.random.normal(kb, (n, n), dtype)

    @jax.jit
    def f(a, b):
      x = a
      for _ in range(chain):
        x = jnp.dot(x, b, preferred_element_type=jnp.dtype(dtype))
      return x

    f(a, b).block_until_ready()
    times = bc.timed_repeats(lambda: f(a, b).block_until_ready(), repeats)
    gflops = [chain * 2.0 * n ** 3 / t / 1e9 for t in times]
    per_size[n] = bc.stats(gflops)
    bc.log(f'matmul {n}: median {per_size[n]["median"]:.1f} GFLOP/s')
  peak = max(s['median'] for s in per_size.values())
  return {'peak_gflops': peak, 'dtype': dtype, 'per_size': per_size}


def peak_gflops(value: float = 0.0, dtype: str = 'float32') -> float:
  """`value` if given (> 0), else a fresh measurement (sizes 2048 and 4096, 5 repeats)."""
  if value > 0:
    return value
  return measure_peak(sizes=(2048, 4096), repeats=5, dtype=dtype)['peak_gflops']


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--sizes', type=int, nargs='+', default=[2048, 3072, 4096])
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--dtype', default='float32')
  args = p.parse_args()
  load0 = bc.loadavg()
  t0 = time.perf_counter()
  out = measure_peak(tuple(args.sizes), args.repeats, args.dtype)
  bc.emit({'bench': 'measure_peak', **out, 'wall_s': time.perf_counter() - t0,
           'loadavg_start': load0, **bc.env_info()})


if __name__ == '__main__':
  main()
