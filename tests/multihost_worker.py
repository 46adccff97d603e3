"""One process of `tests/test_multihost.py`'s online checks (or the whole of them, alone).

    python tests/multihost_worker.py OUT_DIR MESH [COORDINATOR NUM_PROCESSES PROCESS_ID]

The device count comes from XLA_FLAGS (8 alone, 4 each for two). On a tiny policy over the
mesh `MESH` (JSON [data, fsdp, tensor]): the sampled evaluation of `alignlab/evaluate.py`
(gold reward on the host, a reward model's proxy reward on device, win rates, Best-of-N, the
implicit-reward accuracy), then two PPO iterations (with a value model and a learned reward,
the gold reward logged) and two RLOO iterations (gold reward on the host) through
`ppo.train_ppo` into `OUT_DIR/<algorithm>/`. Writes `OUT_DIR/report-<process>.json`: every
number, so that the test compares the processes with each other and with one process.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np


def main(out: Path, mesh_shape: list[int], coordinator=None, n_processes=None, process_id=None):
  from alignlab import distributed
  distributed.initialize(coordinator, n_processes, process_id)  # before any JAX work

  import os

  import jax
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):  # the test shares one between its runs
    jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

  from alignlab import sharding
  from alignlab.config import MeshConfig, ModelConfig, OptimizerConfig, SamplingConfig
  from alignlab.heads import CausalLM, ScalarModel
  from alignlab import evaluate
  from alignlab.train import ppo, reward_model
  from alignlab.train.rollout import RewardModel

  cfg = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layers=1, n_heads=4, d_ff=64)
  mesh = sharding.make_mesh(MeshConfig(*mesh_shape))
  graphdef, params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(0))
  _, ref_params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(1))
  rm_graphdef, rm_params = sharding.init_params(lambda r: ScalarModel(cfg, rngs=r), mesh,
                                                jax.random.key(2))
  proxy = functools.partial(reward_model.score, rm_graphdef, rm_params)
  rng = np.random.default_rng(0)
  # 11 prompts of 1..4 tokens over batches of 4: a short last batch, padded with repeats.
  prompts = [rng.integers(2, 64, 1 + i % 4).tolist() for i in range(11)]

  def gold_lists(prompts_, responses):  # a host reward of token lists (as VADER is)
    return np.asarray([(sum(p) * 3 + sum(r)) % 11 / 5.0 - 1.0
                       for p, r in zip(prompts_, responses)], np.float32)

  sampling = SamplingConfig(max_new_tokens=6, eos_id=1, pad_id=0)
  key = jax.random.key(5)
  with sharding.use_mesh(mesh):
    report = {'sampled': evaluate.evaluate_sampled(graphdef, params, ref_params, prompts,
                                                   gold_lists, key, sampling, 0.5, proxy,
                                                   batch_size=4)}
    report['win_rates'] = evaluate.win_rate_vs_reference(
        graphdef, params, ref_params, prompts, gold_lists, key, sampling,
        temperatures=(0.0, 1.0), batch_size=4)
    tokens_BxP, mask_BxP = evaluate.pad_prompts(prompts[:4], 4, 0)
    kept, scores_BxN = evaluate.best_of_n_samples(
        graphdef, ref_params, tokens_BxP, mask_BxP, key, sampling, 3,
        lambda t, a, r: proxy(t, a))
    report['best_of_n'] = {'tokens': np.asarray(kept.tokens).tolist(),
                           'scores': np.asarray(scores_BxN).tolist()}
    pairs = {}
    for side in ('chosen', 'rejected'):
      tokens = rng.integers(2, 64, (6, 9)).astype(np.int32)
      response = np.zeros((6, 9), np.int32)
      response[:, 4:] = 1
      pairs.update({f'{side}_tokens': tokens, f'{side}_attention_mask': np.ones_like(tokens),
                    f'{side}_response_mask': response})
    pairs['chosen_score'], pairs['rejected_score'] = rng.normal(size=(2, 6)).astype(np.float32)
    report['implicit'] = evaluate.implicit_reward_accuracy(
        graphdef, params, ref_params, pairs, beta=0.5, prompt_len=4, batch_size=4)

    def gold_sequences(tokens_BxT, attention_mask_BxT, response_mask_BxT):
      del attention_mask_BxT
      return (((tokens_BxT * response_mask_BxT).sum(-1) % 7) / 3.0 - 1.0).astype(np.float32)

    prompt_BxP = rng.integers(2, 64, (8, 3)).astype(np.int32)
    prompts_fn = lambda step: (prompt_BxP, np.ones_like(prompt_BxP))  # noqa: E731
    optimizer = OptimizerConfig(learning_rate=1e-3, eps=1e-5)
    value = ppo.init_value_model(cfg, mesh, jax.random.key(3), reward_params=rm_params)
    for algorithm, k, reward, extra in (
        ('ppo', 1, RewardModel(rm_graphdef, rm_params),
         {'value': value, 'gold': gold_sequences}),
        ('rloo', 2, gold_sequences, {})):
      pcfg = ppo.PPOConfig(algorithm=algorithm, n_iterations=2, samples_per_prompt=k,
                           sampling=sampling, optimizer=optimizer, value_optimizer=optimizer,
                           ppo_epochs=2, num_minibatches=2, kl_coef=0.1, save_every=1)
      state = ppo.train_ppo(pcfg, (graphdef, params), ref_params, reward, prompts_fn,
                            out / algorithm, mesh=mesh, progress=False, **extra)
      report[algorithm] = {
          'policy': np.concatenate([np.ravel(x) for x in
                                    jax.tree.leaves(distributed.to_host(state['policy']))]
                                   ).tolist()}
  (out / f'report-{distributed.process_index()}.json').write_text(json.dumps(report))


if __name__ == '__main__':
  args = sys.argv[1:]
  main(Path(args[0]), json.loads(args[1]), *(args[2:3] + [int(a) for a in args[3:5]]))
