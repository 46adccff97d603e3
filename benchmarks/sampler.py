"""alignlab's jitted KV-cache sampler (`alignlab.sampling.sample`) on the GPT-2-shaped model:
prompts of 8 tokens (no padding), 64 new tokens, temperature 1 (top-k 0, top-p 1, no EOS stop:
every sequence gets exactly 64 new tokens), the same workload as benchmarks/peers/hf_generate.py.

    .venv/bin/python benchmarks/sampler.py --batch 64 [--repeats 5] [--variant inverse_cdf]

new tokens/s = batch · 64 / wall time of one `sample` call (block_until_ready), compile apart;
each repeat uses a fresh key.
"""

from __future__ import annotations

import argparse
import time

import bench_common as bc


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  bc.add_common_args(p)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--prompt-len', type=int, default=8)
  p.add_argument('--new-tokens', type=int, default=64)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--variant', default='baseline', help='comma list from benchmarks/variants.py')
  args = p.parse_args()
  load0 = bc.loadavg()

  import jax
  import numpy as np
  import variants
  applied = variants.apply(args.variant)
  from alignlab import sharding
  from alignlab.config import MeshConfig, SamplingConfig
  from alignlab.heads import CausalLM
  from alignlab.sampling import sample

  cfg = bc.model_config(args.config, args.dtype)
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda rngs: CausalLM(cfg, rngs=rngs), mesh,
                                          jax.random.key(args.seed))
  rng = np.random.default_rng(args.seed)
  prompts = jax.numpy.asarray(rng.integers(1, cfg.vocab_size, (args.batch, args.prompt_len)),
                              jax.numpy.int32)
  mask = jax.numpy.ones_like(prompts)
  scfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                        eos_id=-1, pad_id=0)
  t0 = time.perf_counter()
  out = sample(graphdef, params, prompts, mask, jax.random.key(1000), scfg)
  jax.block_until_ready(out)
  compile_s = time.perf_counter() - t0
  assert out.tokens.shape == (args.batch, args.prompt_len + args.new_tokens)
  times = []
  for i in range(args.repeats):
    t0 = time.perf_counter()
    out = sample(graphdef, params, prompts, mask, jax.random.key(i), scfg)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  n_new = args.batch * args.new_tokens
  tps = [n_new / t for t in times]
  # Decode FLOPs per new token (matmuls; attention over the cache is small): 2·N + 2·D·V.
  flops_per_token = 2.0 * bc.matmul_params(cfg) + 2.0 * cfg.d_model * cfg.vocab_size
  st = bc.stats(tps)
  bc.emit({'bench': 'sampler', 'impl': 'alignlab', 'variant': applied or ['baseline'],
           'config': args.config, 'dtype': args.dtype, 'batch': args.batch,
           'prompt_tokens': args.prompt_len, 'new_tokens_per_seq': args.new_tokens,
           'times_s': times, 'new_tokens_per_s': tps, 'new_tokens_per_s_stats': st,
           'median_new_tokens_per_s': st['median'], 'compile_s': compile_s,
           'decode_gflops_median': st['median'] * flops_per_token / 1e9,
           'loadavg_start': load0, **bc.env_info()})


if __name__ == '__main__':
  main()
