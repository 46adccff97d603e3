"""Profiles alignlab's sampler (jax.profiler) on the sampler benchmark's workload and prints
the top XLA ops per decode step.

    .venv/bin/python benchmarks/profile_sampler.py --batch 64 [--variant flat_cdf]
"""

from __future__ import annotations

import argparse
import tempfile

import bench_common as bc


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--new-tokens', type=int, default=64)
  p.add_argument('--calls', type=int, default=3)
  p.add_argument('--top', type=int, default=30)
  p.add_argument('--variant', default='baseline')
  args = p.parse_args()
  import jax
  import jax.numpy as jnp
  import variants
  variants.apply(args.variant)
  from alignlab import sharding
  from alignlab.config import MeshConfig, SamplingConfig
  from alignlab.heads import CausalLM
  from alignlab.sampling import sample

  cfg = bc.model_config('gpt2_bench')
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda rngs: CausalLM(cfg, rngs=rngs), mesh, jax.random.key(0))
  prompts = jnp.ones((args.batch, 8), jnp.int32)
  mask = jnp.ones_like(prompts)
  scfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, top_k=0, top_p=1.0, eos_id=-1,
                        pad_id=0)
  jax.block_until_ready(sample(graphdef, params, prompts, mask, jax.random.key(9), scfg))
  d = tempfile.mkdtemp(prefix='alignlab_prof_')
  jax.profiler.start_trace(d)
  for i in range(args.calls):
    jax.block_until_ready(sample(graphdef, params, prompts, mask, jax.random.key(i), scfg))
  jax.profiler.stop_trace()
  path, total, count = bc.trace_op_times(d)
  shapes = bc.hlo_op_shapes(sample.lower(graphdef, params, prompts, mask, jax.random.key(0), scfg).compile().as_text(),
                            width=110)
  steps = args.calls * args.new_tokens
  bc.log(f'trace: {path}')
  for name, us in total.most_common(args.top):
    print(f'{us / 1e3 / steps:8.3f} ms/step {count[name] / steps:5.1f}x  {name[:36]:36s} {shapes.get(name, "")[:100]}')


if __name__ == '__main__':
  main()
