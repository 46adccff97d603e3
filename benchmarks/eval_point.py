"""The cost of one IMDb frontier point (the quick variant's model and stages) at 512 prompts,
against the sampler alone for the same tokens.

    .venv/bin/python benchmarks/eval_point.py [--prompts 512] [--rounds 5]

A point is `env['evaluate'](params)` of `tasks/imdb.py`: one sample per prompt, the exact
per-token KL of π against π_ref on those samples, the gold reward (VADER, on the host), the
reward model's proxy reward, and the implicit-reward accuracy on the held-out pairs. Each round
times, interleaved: the sampler alone (`evaluate.sample_responses` over the same prompts, same
batches and sampling settings), then the whole point, then the point again with each part
timed on its own (`timings=`: each waits for its result, so nothing overlaps). The stages come from the cache (a quick run builds them; this script
builds them when missing, which takes minutes). The policy is π_ref (the frontier's step 0):
the cost of a point does not depend on the weights, only on the response lengths, and the
sampler runs to its `max_new_tokens` whatever they are. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import time

import bench_common as bc


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--prompts', type=int, default=512)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--variant', default='quick')
  args = p.parse_args()
  load0 = bc.loadavg()

  import jax
  import numpy as np
  from alignlab import evaluate, pipeline
  from alignlab.tasks import imdb

  cfg = pipeline.make_config(pipeline.load_experiment('imdb_frontier'), args.variant,
                             [f'task.n_eval_prompts={args.prompts}'])
  pipeline.enable_compilation_cache()
  _, env = pipeline.setup(cfg, progress=False)
  graphdef, params = env['graphdef'], env['ref_params']
  point_fn = env['evaluate']
  sampling, key = env['rl_sampling'], jax.random.key(0)
  prompts = imdb.prompts_for(cfg.task, env['tokenizer'], 'test', cfg.task.n_eval_prompts,
                             cfg.task.eval_seed)[0]

  def sampler_alone():
    n = 0
    for _, n_real, out in evaluate.sample_responses(graphdef, params, prompts, key, sampling,
                                                    prompt_len=env['prompt_len']):
      n += int(np.asarray(out.response_mask)[:n_real].sum())
    return n

  point_fn(params)  # compile every program once
  sampler_alone()
  rounds = []
  for r in range(args.rounds):
    t0 = time.perf_counter()
    n_tokens = sampler_alone()
    t1 = time.perf_counter()
    point = point_fn(params)
    t2 = time.perf_counter()
    parts = {}
    point_fn(params, timings=parts)  # the same point, each part waiting for its result
    rounds.append({'sampler_s': t1 - t0, 'point_s': t2 - t1, 'response_tokens': n_tokens,
                   **{f'part/{k}': v for k, v in parts.items()}})
    bc.log(f'round {r}: ' + ' '.join(f'{k} {v:.2f}' for k, v in rounds[-1].items()))
  keys = [k for k in rounds[0] if k != 'response_tokens']
  st = {k: bc.stats([x[k] for x in rounds]) for k in keys}
  ratios = [x['point_s'] / x['sampler_s'] for x in rounds]
  bc.emit({'bench': 'eval_point', 'impl': 'alignlab', 'variant': args.variant,
           'prompts': args.prompts, 'gold': cfg.task.gold, 'rounds': rounds, 'stats': st,
           'point_over_sampler': bc.stats(ratios),
           'median_point_over_sampler': bc.stats(ratios)['median'],
           'n_point': point['n'], 'loadavg_start': load0, **bc.env_info()})


if __name__ == '__main__':
  main()
