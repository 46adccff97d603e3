"""RLHF methods of the exact-task experiment, on `alignlab/train/ppo.py`'s `train_ppo`:

  ppo      PPO with a Bradley–Terry reward model learned from the same pairs as DPO (stage
           `exact_rm`, normalized so that π_ref scores mean 0, std 1: Ziegler et al. 2019,
           arXiv 1909.08593), adaptive KL controller at each `methods.ppo_kl_targets`
           (nats per sequence); J_β at `methods.eval_beta`.
  ppo_gt   PPO with the gold reward, fixed KL coefficient β ∈ `methods.rl_betas`; J_β at β.
  rloo     RLOO (arXiv 2402.14740), k = `rl.group_size` samples per prompt, gold reward, β fixed.
  grpo     GRPO (arXiv 2402.03300), k samples per prompt, gold reward, KL (k3) in the loss.

RL runs sample and score on the host every iteration, so they train one run at a time (the
vectorized sweep serves the methods whose data are fixed). Every `rl.eval_every` iterations
the policy is evaluated exactly, like every other method.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from alignlab import runs, stages
from alignlab.config import OptimizerConfig, SamplingConfig
from alignlab.data import exact

RL_METHODS = ('ppo', 'ppo_gt', 'rloo', 'grpo')


@dataclasses.dataclass(frozen=True)
class RLConfig:
  iterations: int = 80
  rollouts_per_prompt: int = 32  # sequences per prompt and iteration
  group_size: int = 4  # k samples per prompt for rloo / grpo
  learning_rate: float = 1e-3
  epochs: int = 4
  minibatches: int = 4
  eval_every: int = 20
  rm_steps: int = 300
  rm_batch_size: int = 256
  rm_learning_rate: float = 1e-3


def available() -> bool:
  try:
    from alignlab.train import ppo
  except ImportError:
    return False
  return hasattr(ppo, 'train_ppo') and hasattr(ppo, 'PPOConfig')


def _ppo_config(rl: RLConfig, task, *, algorithm: str, kl_coef: float, kl_target: float | None):
  from alignlab.train import ppo
  k = rl.group_size if algorithm in ('rloo', 'grpo') else 1
  updates = rl.iterations * rl.epochs * rl.minibatches
  # The learning rate decays linearly to 0, so the policy settles instead of wandering around
  # the optimum at the noise floor (as in tests/test_ppo_exact.py).
  optimizer = OptimizerConfig(learning_rate=rl.learning_rate, eps=1e-5, schedule='linear',
                              total_steps=updates + 1)
  return ppo.PPOConfig(
      algorithm=algorithm, n_iterations=rl.iterations, samples_per_prompt=k,
      sampling=SamplingConfig(max_new_tokens=task.length, eos_id=-1, pad_id=0),
      optimizer=optimizer, value_optimizer=OptimizerConfig(learning_rate=rl.learning_rate, eps=1e-5),
      ppo_epochs=rl.epochs, num_minibatches=rl.minibatches, kl_coef=kl_coef,
      kl_controller='adaptive' if kl_target is not None else 'fixed',
      kl_target=kl_target if kl_target is not None else 6.0, save_every=rl.eval_every)


def _build_reward_model(s, rl: RLConfig, out: Path, work: Path) -> None:
  from alignlab import sharding, sweep
  from alignlab.heads import ScalarModel, embedding_from_lm
  from alignlab.train import reward_model
  from alignlab.train.best_of_n import exact_reward_table
  mcfg = s.model_cfg
  graphdef, params = sharding.init_params(lambda k: ScalarModel(mcfg, rngs=k), s.mesh,
                                          jax.random.key(7))
  params = embedding_from_lm(s.ref_params, params)
  state = sweep.fit_sweep(
      reward_model.make_loss_fn(graphdef), params,
      sweep.SweepBatches(s.pairs, rl.rm_batch_size, [0]), {},
      optimizer=OptimizerConfig(learning_rate=rl.rm_learning_rate), n_steps=rl.rm_steps,
      run_dirs=[work / 'rm'], configs=[{'rl': rl}], mesh=s.mesh, log_every=10,
      desc='reward model', progress=s.progress)
  params = sweep.run_state(state['params'], 0)
  # π_ref's responses score mean 0, std 1, with the exact π_ref-weighted moments.
  table = np.asarray(exact_reward_table(s.cfg.task, graphdef, params), np.float64)
  p = np.exp(np.asarray(s.ref_logp, np.float64))
  p /= p.sum(-1, keepdims=True)
  mean = float((p * table).sum() / table.shape[0])
  std = float(np.sqrt((p * (table - mean) ** 2).sum() / table.shape[0]))
  params = {**params, 'gain': params['gain'] / std, 'bias': (params['bias'] - mean) / std}
  stages.save_tree(out / 'params.npz', params)
  gold = np.asarray(s.r, np.float64)
  corr = float(np.corrcoef(((table - mean) / std).ravel(), gold.ravel())[0, 1])
  (out / 'info.json').write_text(json.dumps({'corr_with_gold': corr}))


def reward_model(s, rl: RLConfig):
  """(graphdef, params) of the normalized reward model, built once per pairs and config."""
  from alignlab import sharding
  from alignlab.heads import ScalarModel
  root = stages.stage_root(s.out_dir)
  path = stages.cached_stage(root, 'exact_rm', {'pairs': s.pairs_key, 'rl_rm': (
      rl.rm_steps, rl.rm_batch_size, rl.rm_learning_rate)},
      functools.partial(_build_reward_model, s, rl))
  graphdef, like = sharding.init_params(lambda k: ScalarModel(s.model_cfg, rngs=k), s.mesh,
                                        jax.random.key(7))
  return graphdef, stages.load_tree(path / 'params.npz', like)


def _log(progress: bool, message: str) -> None:
  if progress:
    print(f'[exact_frontier] {message}', file=sys.stderr, flush=True)


def hparam_values(cfg, name: str) -> tuple[str, tuple[float, ...]]:
  m = cfg.methods
  return ('kl_target', m.ppo_kl_targets) if name == 'ppo' else ('beta', m.rl_betas)


def objective_beta(cfg, name: str, value: float) -> float:
  """The β of J_β: the fixed KL coefficient, or eval_beta under the adaptive controller."""
  return cfg.methods.eval_beta if name == 'ppo' else value


def components(cfg, s, name: str, value: float, seed: int):
  """(PPOConfig, training reward, value model or None) of one run."""
  from alignlab.train import ppo
  from alignlab.train.rollout import RewardModel, exact_task_reward
  algorithm = 'ppo' if name in ('ppo', 'ppo_gt') else name
  pcfg = _ppo_config(cfg.rl, cfg.task, algorithm=algorithm, kl_coef=objective_beta(cfg, name, value),
                     kl_target=value if name == 'ppo' else None)
  pcfg = dataclasses.replace(pcfg, seed=seed)
  if name == 'ppo':
    rm_graphdef, rm_params = reward_model(s, cfg.rl)
    return pcfg, RewardModel(rm_graphdef, rm_params), ppo.init_value_model(
        s.model_cfg, s.mesh, jax.random.key(5), reward_params=rm_params)
  value_model = (ppo.init_value_model(s.model_cfg, s.mesh, jax.random.key(5),
                                      policy_params=s.ref_params, zero_head=True)
                 if algorithm == 'ppo' else None)
  return pcfg, exact_task_reward(cfg.task), value_model


def restore_policy(cfg, s, run: Path, name: str, value: float, seed: int):
  """(step, policy params) of a run's latest checkpoint."""
  from alignlab.checkpoint import Checkpointer
  from alignlab.train import ppo
  pcfg, _, value_model = components(cfg, s, name, value, seed)
  template = ppo.init_ppo_state(pcfg, s.ref_params, value_model[1] if value_model else None, s.mesh)
  ckpt = Checkpointer(run / 'checkpoints', {})
  step = ckpt.latest_step()
  if step is None:
    raise runs.RunDirError(f'{run} has no checkpoint')
  state = ckpt.restore(template, step)
  ckpt.close()
  return step, state['policy']


def train(cfg, get_setup, out_dir: Path, name: str, run_config: dict, progress: bool) -> None:
  """Trains (or resumes) every run of one RL method; `get_setup()` gives the shared π_ref,
  pairs and exact evaluation (`experiments/exact_frontier.py`'s `Setup`)."""
  from alignlab.train import ppo
  from alignlab.train.rollout import exact_task_reward
  hparam, values = hparam_values(cfg, name)
  for value, seed in itertools.product(values, cfg.seeds):
    run = runs.prepare_run(out_dir, name, {hparam: value}, seed,
                           {**run_config, 'rl': cfg.rl, 'method': name},
                           experiment='exact_frontier')
    if runs.is_complete(run):
      _log(progress, f'{name} {hparam}={value} seed {seed}: complete, skipped')
      continue
    s = get_setup()
    beta = objective_beta(cfg, name, value)
    pcfg, reward, value_model = components(cfg, s, name, value, seed)
    rows = max(cfg.rl.rollouts_per_prompt // pcfg.samples_per_prompt, 1)
    prompt_B = np.repeat(exact.prompt_tokens(cfg.task), rows)[:, None]

    def prompts_fn(step):
      del step
      return prompt_B, np.ones_like(prompt_B)

    _log(progress, f'{name} {hparam}={value} seed {seed}')
    t0 = time.time()
    state = ppo.train_ppo(pcfg, (s.graphdef, s.ref_params), s.ref_params, reward, prompts_fn,
                          run, value=value_model,
                          gold=exact_task_reward(cfg.task) if name == 'ppo' else None,
                          eval_fn=lambda st, step: s.evaluate(st['policy'], beta),
                          eval_every=cfg.rl.eval_every, mesh=s.mesh, progress=progress,
                          config=json.loads((run / 'config.json').read_text()))
    runs.write_jsonl(run / 'win_rate.jsonl', s.win_rates(state['policy']))
    runs.mark_complete(run, wall_s=time.time() - t0)
