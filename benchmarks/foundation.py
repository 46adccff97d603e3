"""Issue 2's speed check: a plain LM training step (next-token NLL on every position) at
sequence 128 and the sampler at batch 64, on the GPT-2-shaped config.

    .venv/bin/python benchmarks/foundation.py [--batch 16 --seq 128 --steps 5 --repeats 5]

Training FLOPs per step (forward + backward = 3× forward):
  3 · (2·N·B·T + L·B·4·T²·D + 2·D·V·B·(T−1))   (N = matmul params per token; LM head at T−1 positions)
MFU against benchmarks/measure_peak.py. The sampler part is benchmarks/sampler.py's workload.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import json
import os
import time

import bench_common as bc


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  bc.add_common_args(p)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--seq', type=int, default=128)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--sampler-batch', type=int, default=64)
  args = p.parse_args()
  load0 = bc.loadavg()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from alignlab import sharding
  from alignlab.config import MeshConfig, OptimizerConfig
  from alignlab.heads import CausalLM
  from alignlab.train import sft
  from alignlab.train.optim import make_optimizer
  from alignlab.train.step import init_state, jit_step, make_train_step

  cfg = bc.model_config(args.config, args.dtype)
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda rngs: CausalLM(cfg, rngs=rngs), mesh,
                                          jax.random.key(0))
  tx = make_optimizer(OptimizerConfig(name='adamw', learning_rate=1e-4))
  state = init_state(params, tx, jax.random.key(0))
  step = jit_step(make_train_step(sft.make_loss_fn(graphdef, response_start=1), tx), state, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({
      'tokens': rng.integers(1, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32),
      'attention_mask': np.ones((args.batch, args.seq), np.int32),
      'response_mask': np.pad(np.ones((args.batch, args.seq - 1), np.int32), ((0, 0), (1, 0)))},
      mesh)
  hp = {'learning_rate': jnp.asarray(1e-4, jnp.float32)}
  with sharding.use_mesh(mesh):
    t0 = time.perf_counter()
    state, m = step(state, batch, hp)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    for _ in range(2):
      state, m = step(state, batch, hp)
    jax.block_until_ready(state)
    rates = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, m = step(state, batch, hp)
      jax.block_until_ready(state)
      rates.append(args.steps / (time.perf_counter() - t0))
  tokens = args.batch * args.seq
  fwd = (2.0 * bc.matmul_params(cfg) * tokens + bc.attention_fwd_flops(cfg, args.batch, args.seq, args.seq)
         + 2.0 * cfg.d_model * cfg.vocab_size * args.batch * (args.seq - 1))
  flops = 3.0 * fwd
  from measure_peak import peak_gflops
  peak = peak_gflops(args.peak_gflops)
  st = bc.stats(rates)
  train = {'steps_per_s_stats': st, 'tokens_per_s': {k: v * tokens for k, v in st.items() if k != 'n'},
           'flops_per_step': flops, 'mfu': {k: v * flops / 1e9 / peak for k, v in st.items() if k != 'n'},
           'compile_s': compile_s, 'batch': args.batch, 'seq': args.seq, 'steps_per_repeat': args.steps}
  here = os.path.dirname(os.path.abspath(__file__))
  out = subprocess.run([sys.executable, os.path.join(here, 'sampler.py'), '--batch',
                        str(args.sampler_batch), '--repeats', str(args.repeats), '--config',
                        args.config, '--dtype', args.dtype], capture_output=True, text=True, check=True)
  samp = json.loads(out.stdout.strip().splitlines()[-1])
  bc.emit({'bench': 'foundation', 'argv': ['.venv/bin/python', 'benchmarks/foundation.py'] + sys.argv[1:], 'config': args.config, 'dtype': args.dtype, 'train_step': train,
           'sampler': {k: samp[k] for k in ('batch', 'new_tokens_per_s_stats', 'compile_s')},
           'peak_gflops': peak, 'loadavg_start': load0, **bc.env_info()})


if __name__ == '__main__':
  main()
