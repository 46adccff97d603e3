"""Shared helpers of the alignlab benchmarks: configs, timing, statistics, machine info.

Every benchmark script prints one JSON line on stdout (logs go to stderr), like the peers.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


def emit(result: dict) -> None:
  print(json.dumps(result), flush=True)


def stats(xs: list[float]) -> dict:
  xs = [float(x) for x in xs]
  return {'min': min(xs), 'median': statistics.median(xs), 'max': max(xs), 'n': len(xs)}


def loadavg() -> list[float]:
  try:
    with open('/proc/loadavg') as f:
      return [float(x) for x in f.read().split()[:3]]
  except OSError:
    return []


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or platform.machine()


def model_config(name: str, dtype: str = 'float32'):
  import dataclasses
  from alignlab.config import ModelConfig
  cfg = {'gpt2_bench': ModelConfig.gpt2_bench, 'gpt2_small': ModelConfig.gpt2_small}[name]()
  return dataclasses.replace(cfg, dtype=dtype, param_dtype='float32')


def matmul_params(cfg) -> int:
  """Parameters that take part in a matmul per token, LM head and embeddings excluded
  (q/k/v/out projections and the MLP; biases and norms are negligible and left out)."""
  d, f = cfg.d_model, cfg.ff_dim
  mlp = (3 if cfg.mlp == 'swiglu' else 2) * d * f
  return cfg.n_layers * (4 * d * d + mlp)


def attention_fwd_flops(cfg, batch: int, t_query: int, t_key: int) -> float:
  """QKᵀ and PV, full (unmasked) T×S score matrices as computed: 2·2·T·S·D per layer."""
  return cfg.n_layers * batch * 4.0 * t_query * t_key * cfg.d_model


def timed_repeats(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall times of `fn()` (which must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def add_common_args(p) -> None:
  p.add_argument('--config', default='gpt2_bench', choices=['gpt2_bench', 'gpt2_small'])
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--peak-gflops', type=float, default=0.0,
                 help='fp32 matmul peak to use for MFU (0: measure it now with measure_peak)')


def env_info() -> dict:
  import jax
  return {'jax_version': jax.__version__, 'backend': jax.default_backend(),
          'device': str(jax.devices()[0].device_kind), 'cpu': cpu_model(),
          'cores': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'loadavg_end': loadavg()}


def trace_op_times(trace_dir: str) -> tuple[str, Any, Any]:
  """`(path, total_us, count)` per event name of the jax.profiler trace written to `trace_dir`
  (Counters over the complete 'X' events)."""
  import collections
  import glob
  import gzip
  path = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)[0]
  total, count = collections.Counter(), collections.Counter()
  for e in json.load(gzip.open(path))['traceEvents']:
    if e.get('ph') == 'X' and 'dur' in e:
      total[e['name']] += e['dur']
      count[e['name']] += 1
  return path, total, count


def hlo_op_shapes(hlo_text: str, width: int = 150) -> dict[str, str]:
  """Instruction name → the start of its definition (shape and operands) in optimized HLO text,
  to label the ops of a trace."""
  shapes = {}
  for line in hlo_text.splitlines():
    line = line.strip()
    if line.startswith('%') and ' = ' in line:
      name, rest = line[1:].split(' = ', 1)
      shapes[name] = rest[:width]
  return shapes
