"""PPO throughput on the GPT-2-shaped benchmark model (`ModelConfig.gpt2_bench()`).

One PPO iteration = sample (jitted KV-cache sampler) → score (one jitted program: policy and
reference log-probs, exact per-token KL, entropy, value function, learned reward model) →
update (one jitted program: GAE, `ppo_epochs` × `num_minibatches` clipped policy + value
steps, KL controller). Policy, reference, reward model and value function all have the
benchmark shape. The first iteration (compilation) is not timed.

Prints one JSON object: rollout tokens/s (sampled response tokens per second of sampling,
and per second of sampling + scoring), PPO iterations/s, and the mean seconds of each phase.

    .venv/bin/python benchmarks/ppo_throughput.py --iters 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--iters', type=int, default=3, help='timed iterations (after 1 warm-up)')
  parser.add_argument('--batch', type=int, default=64, help='prompts per rollout batch')
  parser.add_argument('--prompt-len', type=int, default=8)
  parser.add_argument('--new-tokens', type=int, default=64)
  parser.add_argument('--epochs', type=int, default=4)
  parser.add_argument('--minibatches', type=int, default=1)
  args = parser.parse_args()

  from alignlab import sharding
  from alignlab.config import ModelConfig, OptimizerConfig, SamplingConfig
  from alignlab.heads import CausalLM, ScalarModel
  from alignlab.train import ppo
  from alignlab.train.rollout import RewardModel

  model_cfg = ModelConfig.gpt2_bench()
  mesh = sharding.make_mesh()
  graphdef, policy_params = sharding.init_params(lambda r: CausalLM(model_cfg, rngs=r), mesh,
                                                 jax.random.key(0))
  _, ref_params = sharding.init_params(lambda r: CausalLM(model_cfg, rngs=r), mesh,
                                       jax.random.key(1))
  rm_graphdef, rm_params = sharding.init_params(lambda r: ScalarModel(model_cfg, rngs=r), mesh,
                                                jax.random.key(2))
  value_graphdef, value_params = ppo.init_value_model(model_cfg, mesh, jax.random.key(3),
                                                      reward_params=rm_params)
  # No EOS: every response runs to the full length, so the work per iteration is fixed.
  cfg = ppo.PPOConfig(sampling=SamplingConfig(max_new_tokens=args.new_tokens, eos_id=-1),
                      optimizer=OptimizerConfig(learning_rate=1e-5, eps=1e-5),
                      value_optimizer=OptimizerConfig(learning_rate=1e-5, eps=1e-5),
                      ppo_epochs=args.epochs, num_minibatches=args.minibatches)
  cfg.validate()
  state = ppo.init_ppo_state(cfg, policy_params, value_params, mesh)
  iteration = ppo.make_iteration(cfg, graphdef, ref_params, RewardModel(rm_graphdef, rm_params),
                                 mesh, prompt_len=args.prompt_len, value_graphdef=value_graphdef,
                                 state_template=state)
  hparams = {'learning_rate': jnp.float32(1e-5), 'value_learning_rate': jnp.float32(1e-5)}
  rng = np.random.default_rng(0)
  tokens_BxP = rng.integers(1, model_cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
  batch = sharding.shard_batch({'tokens': tokens_BxP, 'mask': np.ones_like(tokens_BxP)}, mesh)
  prompts = (batch['tokens'], batch['mask'])

  times = []
  with sharding.use_mesh(mesh):
    for i in range(args.iters + 1):
      start = time.perf_counter()
      state, metrics = iteration(state, prompts, hparams)
      jax.block_until_ready(state)
      total = time.perf_counter() - start
      if i:  # iteration 0 compiles
        times.append({'sample': float(metrics['time/sample_s']),
                      'score': float(metrics['time/score_s']),
                      'update': float(metrics['time/update_s']), 'total': total})
  mean = {k: float(np.mean([t[k] for t in times])) for k in times[0]}
  response_tokens = args.batch * args.new_tokens
  print(json.dumps({
      'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{jax.device_count()}',
      'host': platform.node(),
      'model': 'gpt2_bench (4 layers, d_model 256, 4 heads, vocab 8192)',
      'batch': args.batch, 'prompt_len': args.prompt_len, 'new_tokens': args.new_tokens,
      'ppo_epochs': args.epochs, 'num_minibatches': args.minibatches,
      'timed_iterations': args.iters,
      'rollout_tokens_per_s_sampling': response_tokens / mean['sample'],
      'rollout_tokens_per_s_sampling_and_scoring':
          response_tokens / (mean['sample'] + mean['score']),
      'ppo_iterations_per_s': 1.0 / mean['total'],
      'seconds': mean,
      'fraction': {k: mean[k] / mean['total'] for k in ('sample', 'score', 'update')},
  }, indent=1))


if __name__ == '__main__':
  main()
