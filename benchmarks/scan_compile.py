"""Compile time at depth: the jitted DPO train step (AdamW, precomputed π_ref log-probs, 8
pairs of prompt 64 + response 64) with the blocks as a Python loop vs `scan_layers=True`, at
12 and 24 layers of the `gpt2_bench` width (d 256, 4 heads, vocabulary 8192): compile time
grows with the program the loop unrolls, not with the width.

    .venv/bin/python benchmarks/scan_compile.py [--layers 12 24] [--repeats 2]

Per (layers, loop|scan): trace+lower and XLA compile seconds (each repeat a fresh `jax.jit`,
so nothing is reused; the persistent compilation cache is not enabled here), the number of
HLO instructions of the optimized program, and one timed step. One JSON line each.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import bench_common as bc


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--layers', type=int, nargs='+', default=[12, 24])
  p.add_argument('--repeats', type=int, default=2)
  args = p.parse_args()
  load0 = bc.loadavg()

  import jax
  import jax.numpy as jnp
  from alignlab import sharding
  from alignlab.config import MeshConfig, ModelConfig, OptimizerConfig
  from alignlab.heads import CausalLM
  from alignlab.train import preference
  from alignlab.train.optim import make_optimizer
  from alignlab.train.step import init_state, jit_step, make_train_step
  from dpo_step import make_batch

  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  tx = make_optimizer(OptimizerConfig(name='adamw', learning_rate=1e-6, grad_clip=1.0))
  hparams = {'learning_rate': jnp.asarray(1e-6, jnp.float32), 'beta': jnp.asarray(0.1, jnp.float32)}
  for n_layers in args.layers:
    base = dataclasses.replace(ModelConfig.gpt2_bench(), n_layers=n_layers, attention='einsum')
    graphdef, params = sharding.init_params(lambda r: CausalLM(base, rngs=r), mesh,
                                            jax.random.key(0))
    pairs = preference.reference_logps(graphdef, params, make_batch(base, 8, 64, 64),
                                       prompt_len=64, batch_size=8)
    batch = sharding.shard_batch(pairs, mesh)
    for scan in (False, True):
      cfg = dataclasses.replace(base, scan_layers=scan)
      variant_def = sharding.abstract_model(lambda r, cfg=cfg: CausalLM(cfg, rngs=r))[0]
      lower_s, compile_s = [], []
      for _ in range(args.repeats):
        loss_fn = preference.make_loss_fn(variant_def, 'dpo', prompt_len=64)
        state = init_state(jax.tree.map(jnp.copy, params), tx, jax.random.key(0))
        step = jit_step(make_train_step(loss_fn, tx), state, mesh)
        with sharding.use_mesh(mesh):
          t0 = time.perf_counter()
          lowered = step.lower(state, batch, hparams)
          lower_s.append(time.perf_counter() - t0)
          compiled = lowered.compile()
          compile_s.append(time.perf_counter() - t0 - lower_s[-1])
      with sharding.use_mesh(mesh):
        state, metrics = compiled(state, batch, hparams)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, hparams)
        jax.block_until_ready((state, metrics))
        step_s = time.perf_counter() - t0
      instructions = sum(1 for line in compiled.as_text().splitlines() if ' = ' in line)
      name = 'scan' if scan else 'loop'
      bc.log(f'L={n_layers} {name}: lower {min(lower_s):.2f} s, compile {min(compile_s):.2f} s, '
             f'{instructions} HLO instructions, step {step_s:.2f} s')
      bc.emit({'bench': 'scan_compile', 'n_layers': n_layers, 'layers': name,
               'lower_s': lower_s, 'compile_s': compile_s, 'hlo_instructions': instructions,
               'step_s': step_s, 'loss': float(metrics['loss']), 'loadavg_start': load0,
               **bc.env_info()})


if __name__ == '__main__':
  main()
