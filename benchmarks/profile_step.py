"""Profiles alignlab's DPO step (jax.profiler) and prints the top XLA ops by total time.

    .venv/bin/python benchmarks/profile_step.py --mode per_batch [--variant fused_logprobs]
"""

from __future__ import annotations

import argparse
import collections
import tempfile

import bench_common as bc


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--mode', default='per_batch')
  p.add_argument('--variant', default='baseline')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--top', type=int, default=25)
  args = p.parse_args()
  import jax
  import variants
  variants.apply(args.variant)
  from alignlab import sharding
  import dpo_step
  cfg = bc.model_config('gpt2_bench')
  ns = argparse.Namespace(seed=0, lr=1e-6, beta=0.1, pairs=8, prompt_len=64, response_len=64,
                          no_donate=False)
  step, state, batch, hp, _, mesh = dpo_step.build(cfg, ns, args.mode)
  d = tempfile.mkdtemp(prefix='alignlab_prof_')
  with sharding.use_mesh(mesh):
    for _ in range(3):
      state, m = step(state, batch, hp)
    jax.block_until_ready(state)
    jax.profiler.start_trace(d)
    for _ in range(args.steps):
      state, m = step(state, batch, hp)
    jax.block_until_ready(state)
    jax.profiler.stop_trace()
  path, tot, cnt = bc.trace_op_times(d)
  bc.log(f'trace: {path}')
  shapes = bc.hlo_op_shapes(step.lower(state, batch, hp).compile().as_text())
  skip = ('ThunkExecutor', '$', 'SlinkyThreadPool', 'Thunk')
  ops = {k: v for k, v in tot.items() if not k.startswith(skip) and k in shapes}
  total = sum(ops.values())
  by_kind = collections.Counter()
  for k, v in ops.items():
    kind = 'dot (ynn/xnn)' if k.startswith(('ynn', 'xnn')) or 'dot' in k or 'convolution' in k else (
        'elementwise/reduce fusion' if 'fusion' in k else k.split('.')[0])
    by_kind[kind] += v
  print(f'ops total {total / 1e3 / args.steps:.1f} ms/step')
  for k, v in by_kind.most_common():
    print(f'  {k:30s} {v / 1e3 / args.steps:8.1f} ms/step  {100 * v / total:5.1f} %')
  for k, v in collections.Counter(ops).most_common(args.top):
    print(f'{v / 1e3 / args.steps:9.2f} ms  {cnt[k] / args.steps:4.1f}x  {k:28s} {shapes[k][:120]}')


if __name__ == '__main__':
  main()
