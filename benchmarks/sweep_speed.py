"""Vectorized sweep vs one run after another: R DPO runs (R values of β) on the exact task.

Prints one JSON object. Two measurements, compile time always apart:

- `core`: the train step alone. Sequential: one jitted single-run step (β traced, so it
  compiles once and serves every run), R runs × `steps` calls. One program over the run axis
  (`train.fit.make_runs_step`), `steps` calls: `vectorized_vmap` vmaps all R runs,
  `one_program_chunk1` maps over the runs one at a time inside the program (fit_runs'
  default on XLA:CPU). All gather their batch from the same device-resident pairs by index
  inside the program, so the only difference is how the runs are laid out. `compile_s` is
  `jit(...).lower(...).compile()`, once per program; `run_s` times the steps after one warm-up
  call (blocking on the result), in `--rounds` interleaved rounds (min / median / max).
- `api` (with --api): what a user runs, end to end in one process: `fit` R times vs `fit_runs`
  once (compile, checkpoint at the end, metrics files included), `--api-rounds` rounds, each
  from cleared JAX caches. Separate processes would pay the compile R times
  (`core.sequential.compile_s` × R).

Run: .venv/bin/python benchmarks/sweep_speed.py --runs 8 --steps 200 --api
GPU (benchmarks/gpu_suite.py): --config gpt2_small --dtype bfloat16 takes GPT-2 small's body
shapes (the exact task's vocabulary and length stay) and bf16 activations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import bench_common
from alignlab import sharding
from alignlab.config import MeshConfig, ModelConfig, OptimizerConfig
from alignlab.heads import CausalLM
from alignlab.tasks import exact_math as exact
from alignlab.train import fit as fit_lib
from alignlab.train import preference
from alignlab.train.batches import ArrayBatches
from alignlab.train.fit import fit
from alignlab.train.optim import make_optimizer
from alignlab.train.step import init_state, make_train_step


def model_body(args) -> dict:
  """The transformer body's shapes: --d-model / --layers (4 heads, d_ff 2·d_model), or those of
  a named benchmark config (`--config`; the exact task's vocabulary and length stay)."""
  if args.config:
    base = getattr(ModelConfig, args.config)()
    return {'d_model': base.d_model, 'n_layers': base.n_layers, 'n_heads': base.n_heads,
            'd_ff': base.ff_dim}
  return {'d_model': args.d_model, 'n_layers': args.layers, 'n_heads': 4, 'd_ff': 2 * args.d_model}


def setup(args):
  task = exact.ExactTaskConfig()  # 8 prompts, V = 8, length 4
  body = model_body(args)
  model = ModelConfig(vocab_size=exact.model_vocab_size(task), max_seq_len=task.length + 1,
                      **body, dtype=args.dtype, masked_output_ids=exact.masked_output_ids(task))
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(model, rngs=r), mesh, jax.random.key(0))
  r = jnp.asarray(exact.gold_reward(task))
  pairs = exact.preference_batch(task, exact.sample_pairs_bt(
      jax.random.key(1), task, exact.random_reference(task), r, args.pairs_per_prompt))
  pairs = preference.reference_logps(graphdef, params, pairs, prompt_len=1, batch_size=512)
  return mesh, graphdef, params, pairs


def _timed(fn):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


def _summary(run_s: list[float], seq_run_s: list[float], compile_s: float, seq_compile_s: float,
             runs: int, steps: int) -> dict:
  """Per-mode numbers over the rounds; ratios of medians, and per round (same round's seq)."""
  med, seq_med = statistics.median(run_s), statistics.median(seq_run_s)
  return {'compile_s': compile_s, 'run_s': run_s, 'run_s_stats': bench_common.stats(run_s),
          'run_steps_per_s': runs * steps / med,
          'speedup_run': seq_med / med,
          'speedup_run_per_round': bench_common.stats([a / b for a, b in zip(seq_run_s, run_s)]),
          'speedup_with_compile_one_process': (seq_compile_s + seq_med) / (compile_s + med),
          'speedup_with_compile_separate_processes': (runs * seq_compile_s + seq_med)
                                                     / (compile_s + med)}


def core(args, graphdef, params, pairs) -> dict:
  betas = np.geomspace(0.05, 5.0, args.runs).astype(np.float32)
  opt = OptimizerConfig(learning_rate=1e-3)
  tx = make_optimizer(opt)
  step = make_train_step(preference.make_loss_fn(graphdef, 'dpo', prompt_len=1), tx)
  data = jax.device_put({k: jnp.asarray(v) for k, v in pairs.items()})
  batches = fit_lib.RunBatches(pairs, args.batch, list(range(args.runs)))
  indices = [jnp.asarray(batches.indices(i)) for i in range(args.steps + 1)]
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])

  def single(state, data, indices_B, hp):
    return step(state, jax.tree.map(lambda x: x[indices_B], data), hp)

  def hp_of(r):
    return {'learning_rate': jnp.float32(opt.learning_rate), 'beta': jnp.float32(betas[r])}

  hp_R = {'learning_rate': jnp.full((args.runs,), opt.learning_rate, jnp.float32),
          'beta': jnp.asarray(betas)}
  # Sequential: one program, reused by every run (β and the learning rate are traced).
  seq_jit = jax.jit(single, donate_argnums=(0,))
  state = init_state(params, tx, jax.random.key(0))
  seq_compiled, seq_compile = _timed(lambda: seq_jit.lower(state, data, indices[0][0], hp_of(0)).compile())
  # One program over the run axis: every run in one vmap, and one run at a time inside the
  # program (`runs_per_chunk=1`, the XLA:CPU default of fit_runs).
  modes = {'vectorized_vmap': None, 'one_program_chunk1': 1}
  compiled, compile_s = {}, {}
  for name, chunk in modes.items():
    state_R, _, _ = fit_lib.init_runs_state(params, tx, list(range(args.runs)), mesh)
    vec_jit = jax.jit(fit_lib.make_runs_step(step, gather=True, runs_per_chunk=chunk),
                      donate_argnums=(0,))
    compiled[name], compile_s[name] = _timed(
        lambda: vec_jit.lower(state_R, data, indices[0], hp_R, {}).compile())

  def run_sequential() -> float:
    total = 0.0
    for r in range(args.runs):
      state = init_state(jax.tree.map(jnp.copy, params), tx, jax.random.key(r))
      state, _ = jax.block_until_ready(seq_compiled(state, data, indices[0][r], hp_of(r)))  # warm-up
      t0 = time.perf_counter()
      for i in range(1, args.steps + 1):
        state, metrics = seq_compiled(state, data, indices[i][r], hp_of(r))
      jax.block_until_ready(metrics)
      total += time.perf_counter() - t0
    return total

  def run_program(name) -> float:
    state_R, _, _ = fit_lib.init_runs_state(params, tx, list(range(args.runs)), mesh)
    state_R, _ = jax.block_until_ready(compiled[name](state_R, data, indices[0], hp_R, {}))
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
      state_R, metrics = compiled[name](state_R, data, indices[i], hp_R, {})
    jax.block_until_ready(metrics)
    return time.perf_counter() - t0

  # Interleaved rounds: each round times every layout once, so load drifts hit all alike.
  seq_s, prog_s = [], {name: [] for name in modes}
  for _ in range(args.rounds):
    seq_s.append(run_sequential())
    for name in modes:
      prog_s[name].append(run_program(name))
  out = {'sequential': {'compile_s': seq_compile, 'run_s': seq_s,
                        'run_s_stats': bench_common.stats(seq_s),
                        'run_steps_per_s': args.runs * args.steps / statistics.median(seq_s)}}
  for name in modes:
    out[name] = _summary(prog_s[name], seq_s, compile_s[name], seq_compile, args.runs, args.steps)
  return out


def api(args, mesh, graphdef, params, pairs) -> dict:
  """`fit` R times vs `fit_runs` once, per round; every round starts from cleared JAX caches
  (`jax.clear_caches()`), so each pays its compiles as a fresh process would."""
  betas = [float(b) for b in np.geomspace(0.05, 5.0, args.runs)]
  opt = OptimizerConfig(learning_rate=1e-3)
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=1)
  seq_s, vec_s = [], []
  for _ in range(args.api_rounds):
    with tempfile.TemporaryDirectory() as tmp:
      jax.clear_caches()
      t0 = time.perf_counter()
      for r, beta in enumerate(betas):
        fit(loss_fn, params, ArrayBatches(pairs, args.batch, seed=r), optimizer=opt,
            n_steps=args.steps, run_dir=f'{tmp}/alone{r}', config={'beta': beta}, mesh=mesh,
            hparams={'beta': beta}, seed=r, progress=False)
      seq_s.append(time.perf_counter() - t0)
      jax.clear_caches()
      t0 = time.perf_counter()
      state, _ = fit_lib.fit_runs(
          loss_fn, params, fit_lib.RunBatches(pairs, args.batch, list(range(args.runs))),
          {'beta': betas}, optimizer=opt, n_steps=args.steps,
          run_dirs=[f'{tmp}/sweep{r}' for r in range(args.runs)],
          configs=[{'beta': b} for b in betas], mesh=mesh, progress=False)
      jax.block_until_ready(state)
      vec_s.append(time.perf_counter() - t0)
  return {'fit_one_after_another_s': seq_s, 'fit_runs_s': vec_s,
          'fit_one_after_another_stats': bench_common.stats(seq_s),
          'fit_runs_stats': bench_common.stats(vec_s),
          'speedup': statistics.median(seq_s) / statistics.median(vec_s),
          'speedup_per_round': bench_common.stats([a / b for a, b in zip(seq_s, vec_s)])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', type=int, default=8)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--pairs-per-prompt', type=int, default=512)
  parser.add_argument('--d-model', type=int, default=64)
  parser.add_argument('--layers', type=int, default=2)
  parser.add_argument('--config', default='', choices=['', 'gpt2_bench', 'gpt2_small'],
                      help="the body shapes of that config instead of --d-model / --layers")
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                      help='activation dtype (parameters stay float32)')
  parser.add_argument('--rounds', type=int, default=5,
                      help='interleaved timing rounds of the core programs (compiled once)')
  parser.add_argument('--api', action='store_true', help='also time fit × R vs fit_runs')
  parser.add_argument('--api-rounds', type=int, default=5, help='rounds of the --api timing')
  args = parser.parse_args()
  mesh, graphdef, params, pairs = setup(args)
  out = {'bench': 'sweep_speed', 'runs': args.runs, 'steps': args.steps, 'batch': args.batch,
         'model': {'d_model': model_body(args)['d_model'], 'layers': model_body(args)['n_layers'],
                   'config': args.config or None, 'dtype': args.dtype},
         'task': 'exact (8 prompts, V=8, length 4)', 'device': str(jax.devices()[0]),
         'backend': jax.default_backend(), 'jax': jax.__version__,
         'machine': platform.machine(), 'cpus': os.cpu_count(),
         'load_avg_1m': os.getloadavg()[0], 'core': core(args, graphdef, params, pairs)}
  if args.api:
    out['api'] = api(args, mesh, graphdef, params, pairs)
  out['load_avg_1m_after'] = os.getloadavg()[0]
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()
