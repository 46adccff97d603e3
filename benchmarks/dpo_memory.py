"""Issue 15's speed and memory check: alignlab's DPO train step (AdamW, π_ref's log-probs
precomputed, as the pipeline runs it) at GPT-2 124M shapes (12 layers, d 768, 12 heads,
vocabulary 50,257), 8 pairs of prompt 64 + response 64, for each memory switch of
`ModelConfig` (remat, chunked log-probs, scan over layers).

    .venv/bin/python benchmarks/dpo_memory.py [--variants plain remat chunk16 ...] [--steps 3]

Per variant: the compile time (lower + compile of the jitted step), the compiled program's
memory analysis (`Compiled.memory_analysis()`: arguments, outputs, temporaries, XLA's peak
estimate), and the step time (median of `--steps` timed steps after one warm-up step). Every
variant trains the same parameters: the switches leave the parameter layout unchanged.
One JSON line per variant on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import bench_common as bc

VARIANTS = {
    'plain': {},
    'remat': {'remat': True},
    'chunk16': {'logits_chunk': 16},
    'remat_chunk16': {'remat': True, 'logits_chunk': 16},
    'scan': {'scan_layers': True},
    'scan_remat_chunk16': {'scan_layers': True, 'remat': True, 'logits_chunk': 16},
}
MIB = 2 ** 20


def gpt2_124m(dtype: str):
  from alignlab.config import ModelConfig
  # The einsum attention, as 'auto' picks on CPU, named so a GPU run measures the same path.
  return ModelConfig(vocab_size=50257, max_seq_len=1024, d_model=768, n_layers=12, n_heads=12,
                     dtype=dtype, param_dtype='float32', attention='einsum')


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  return {k: getattr(m, f'{k}_in_bytes') / MIB for k in
          ('argument_size', 'output_size', 'alias_size', 'temp_size', 'peak_memory')}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--pairs', type=int, default=8)
  p.add_argument('--prompt-len', type=int, default=64)
  p.add_argument('--response-len', type=int, default=64)
  args = p.parse_args()
  load0 = bc.loadavg()

  import jax
  import jax.numpy as jnp
  from alignlab import sharding
  from alignlab.config import MeshConfig, OptimizerConfig
  from alignlab.heads import CausalLM
  from alignlab.train import preference
  from alignlab.train.optim import make_optimizer
  from alignlab.train.step import init_state, jit_step, make_train_step
  from dpo_step import dpo_flops, make_batch

  base = gpt2_124m(args.dtype)
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(base, rngs=r), mesh, jax.random.key(0))
  pairs = make_batch(base, args.pairs, args.prompt_len, args.response_len)
  pairs = preference.reference_logps(graphdef, params, pairs, prompt_len=args.prompt_len,
                                     batch_size=args.pairs)
  batch = sharding.shard_batch(pairs, mesh)
  tx = make_optimizer(OptimizerConfig(name='adamw', learning_rate=1e-6, grad_clip=1.0))
  hparams = {'learning_rate': jnp.asarray(1e-6, jnp.float32), 'beta': jnp.asarray(0.1, jnp.float32)}
  flops = dpo_flops(base, args.pairs, args.prompt_len, args.response_len, False)['flops_per_step']
  for name in args.variants:
    cfg = dataclasses.replace(base, **VARIANTS[name])
    variant_def = sharding.abstract_model(lambda r, cfg=cfg: CausalLM(cfg, rngs=r))[0]
    loss_fn = preference.make_loss_fn(variant_def, 'dpo', prompt_len=args.prompt_len)
    state = init_state(jax.tree.map(jnp.copy, params), tx, jax.random.key(0))
    step = jit_step(make_train_step(loss_fn, tx), state, mesh)
    with sharding.use_mesh(mesh):
      t0 = time.perf_counter()
      lowered = step.lower(state, batch, hparams)
      lower_s = time.perf_counter() - t0
      compiled = lowered.compile()
      compile_s = time.perf_counter() - t0 - lower_s
      state, metrics = compiled(state, batch, hparams)  # warm-up
      jax.block_until_ready(state)
      times = []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, hparams)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    st = bc.stats(times)
    mem = memory(compiled)
    bc.log(f'{name}: compile {lower_s + compile_s:.1f} s, step {st["median"]:.2f} s, temp '
           f'{mem["temp_size"]:.0f} MiB, peak {mem["peak_memory"]:.0f} MiB')
    bc.emit({'bench': 'dpo_memory', 'variant': name, 'switches': VARIANTS[name],
             'dtype': args.dtype, 'pairs': args.pairs, 'prompt_len': args.prompt_len,
             'response_len': args.response_len, 'lower_s': lower_s, 'compile_s': compile_s,
             'step_s': times, 'step_s_stats': st, 'gflops_per_step': flops / 1e9,
             'achieved_gflops': flops / st['median'] / 1e9, 'memory_mib': mem,
             'loss': float(metrics['loss']), 'loadavg_start': load0, **bc.env_info()})


if __name__ == '__main__':
  main()
