"""One online RL iteration of alignlab (`train/ppo.make_iteration`): PPO, RLOO or GRPO on the
GPT-2-shaped benchmark model, the workload of benchmarks/peers/trl_rl_iter.py (RLOO, GRPO) and
benchmarks/peers/trl_ppo_iter.py (PPO):

- 16 prompts of 8 tokens × 4 completions (64 sequences), exactly 64 new tokens (no EOS stop),
  temperature 1, top-k 0, top-p 1;
- RLOO and GRPO: the reward is a plain host function of the completion ids, the same one the
  peer uses, r = mean(id % 2 == 0); PPO: a reward model and a value model of the policy's shape;
- KL coefficient 0.05, one optimizer step per iteration (1 epoch, 1 minibatch), Adam lr 1e-6.

    .venv/bin/python benchmarks/rl_iter.py --algo grpo [--iters 5] [--warmup 1]

Each iteration is split as `make_iteration` reports it: generation (the jitted KV-cache
sampler), scoring (one program: policy and reference log-probs, the reward, values for PPO),
update (advantages and the optimizer step). The first `--warmup` iterations compile and are
not timed. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import time

import bench_common as bc


def parity_reward(tokens_BxT, attention_mask_BxT, response_mask_BxT):
  """The peer's reward: the fraction of even token ids among the completion's tokens."""
  import numpy as np
  even_BxT = (np.asarray(tokens_BxT) % 2 == 0) & (np.asarray(response_mask_BxT) > 0)
  return even_BxT.sum(1) / np.maximum(np.asarray(response_mask_BxT).sum(1), 1)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  bc.add_common_args(p)
  p.add_argument('--algo', choices=('ppo', 'rloo', 'grpo'), required=True)
  p.add_argument('--iters', type=int, default=5, help='timed iterations')
  p.add_argument('--warmup', type=int, default=1, help='untimed iterations (compilation)')
  p.add_argument('--prompts', type=int, default=16)
  p.add_argument('--k', type=int, default=4, help='completions per prompt')
  p.add_argument('--prompt-len', type=int, default=8)
  p.add_argument('--new-tokens', type=int, default=64)
  p.add_argument('--kl-coef', type=float, default=0.05)
  p.add_argument('--kl-penalty', default='auto', help="PPOConfig.kl_penalty: 'reward' | 'loss'")
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()
  load0 = bc.loadavg()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from alignlab import pipeline, sharding
  from alignlab.config import MeshConfig, OptimizerConfig, SamplingConfig
  from alignlab.heads import CausalLM, ScalarModel
  from alignlab.train import ppo
  from alignlab.train.rollout import RewardModel

  pipeline.enable_compilation_cache()  # the warm-up iteration compiles; it is not timed
  cfg = bc.model_config(args.config, args.dtype)
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, policy = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh,
                                          jax.random.key(args.seed))
  ref = jax.tree.map(jnp.copy, policy)  # π_ref = the policy at the start, as the peers do
  value_graphdef, value_params, reward = None, None, parity_reward
  if args.algo == 'ppo':
    rm_graphdef, rm_params = sharding.init_params(lambda r: ScalarModel(cfg, rngs=r), mesh,
                                                  jax.random.key(args.seed + 1))
    reward = RewardModel(rm_graphdef, rm_params)
    value_graphdef, value_params = ppo.init_value_model(cfg, mesh, jax.random.key(args.seed + 2),
                                                        reward_params=rm_params)
  opt = OptimizerConfig(learning_rate=1e-6, weight_decay=0.0, grad_clip=1.0)
  pcfg = ppo.PPOConfig(
      algorithm=args.algo, samples_per_prompt=args.k,
      sampling=SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, top_k=0,
                              top_p=1.0, eos_id=-1, pad_id=0),
      optimizer=opt, value_optimizer=opt, ppo_epochs=1, num_minibatches=1,
      kl_coef=args.kl_coef, kl_penalty=args.kl_penalty)
  pcfg.validate()
  state = ppo.init_ppo_state(pcfg, policy, value_params, mesh)
  iteration = ppo.make_iteration(pcfg, graphdef, ref, reward, mesh, prompt_len=args.prompt_len,
                                 value_graphdef=value_graphdef, state_template=state)
  hparams = {'learning_rate': jnp.float32(1e-6), 'value_learning_rate': jnp.float32(1e-6)}
  rng = np.random.default_rng(args.seed)
  rows = []
  with sharding.use_mesh(mesh):
    for i in range(args.warmup + args.iters):
      prompts_BxP = np.repeat(rng.integers(1, cfg.vocab_size, (args.prompts, args.prompt_len)),
                              args.k, axis=0).astype(np.int32)  # each prompt k times, adjacent
      batch = sharding.shard_batch({'tokens': prompts_BxP, 'mask': np.ones_like(prompts_BxP)},
                                   mesh)
      t0 = time.perf_counter()
      state, metrics = iteration(state, (batch['tokens'], batch['mask']), hparams)
      jax.block_until_ready(state)
      total = time.perf_counter() - t0
      row = {'total_s': total, 'generate_s': float(metrics['time/sample_s']),
             'score_s': float(metrics['time/score_s']),
             'update_s': float(metrics['time/update_s'])}
      bc.log(f'iteration {i}: ' + ' '.join(f'{k} {v:.3f}' for k, v in row.items()))
      if i >= args.warmup:
        rows.append(row)
  med = {f'median_{k}': bc.stats([r[k] for r in rows])['median'] for k in rows[0]}
  bc.emit({'bench': 'rl_iter', 'impl': 'alignlab', 'algo': args.algo, 'config': args.config,
           'dtype': args.dtype, 'prompts': args.prompts, 'k': args.k,
           'prompt_tokens': args.prompt_len, 'new_tokens_per_seq': args.new_tokens,
           'iters': rows, **med, 'median_iter_s': med['median_total_s'],
           'median_iters_per_s': 1.0 / med['median_total_s'],
           'settings': {'kl_penalty': pcfg.resolved_kl_penalty,
                        'kl_estimator': pcfg.resolved_kl_estimator, 'kl_coef': args.kl_coef,
                        'loss_aggregation': pcfg.resolved_loss_aggregation,
                        'whiten_advantages': pcfg.whiten_advantages, 'ppo_epochs': 1,
                        'num_minibatches': 1, 'learning_rate': 1e-6},
           'loadavg_start': load0, **bc.env_info()})


if __name__ == '__main__':
  main()
