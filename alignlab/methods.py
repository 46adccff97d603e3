"""Every method of every task, in one table: `METHODS[name]` says how it trains, which
hyperparameter a sweep varies, and its default values.

    METHODS = {'dpo': {'train': train_preference, 'hparam': 'beta', 'values': (0.1,),
                       'loss': 'dpo', 'own_beta': True}, ...}

A method trains against a task's `env` (`alignlab/tasks/__init__.py` lists its keys) with
`train(env, name, runs, cfg, out_dir, progress) -> n_trained`: `runs` is a list of
`(hparam_value, seed)`, `cfg` the experiment config (`cfg.train` for offline methods,
`cfg.rl` for online ones). It writes one run dir per run (`runs.py`), skips complete ones and
returns how many it trained.

Keys of an entry:
  train     the train function (one of the four below, or your own)
  hparam    the swept hyperparameter (a traced loss argument, or the RL knob), None if none
  values    its default values (an experiment's `sweeps.<name>` replaces them)
  own_beta  the method has a β of its own, and J_β is reported at it where the task does so
  loss      train_preference: a `PREFERENCE_LOSSES` key, or None for Preferred-FT (NLL of
            the chosen responses)
  fixed     train_preference: loss hyperparameters held fixed (traced, like the swept one)
  ref_per_batch  train_preference: the loss runs π_ref per batch (KTO's reference point)
  (a task's env may give `batches`, the class of its training batches: `fit.RunBatches` unless
  it says otherwise, e.g. `batches.GrainBatches`)
  unpaired  train_preference: where the task gives `env['unpaired']` (a file of KTO rows), train
            on its single labelled examples with its `loss_fn`, not on pairs
  algorithm train_rl: 'ppo' | 'rloo' | 'grpo' (`train/ppo.py`)
  reward    train_rl: 'model' (the task's Bradley–Terry reward model) or 'gold'
  adaptive  train_rl: the swept value is the adaptive KL controller's target (Ziegler et al.
            2019, arXiv 1909.08593), else it is the fixed KL coefficient β
  ppo       train_rl: `PPOConfig` fields held fixed, e.g. where the KL term goes and its
            estimator ({'kl_penalty': 'loss', 'kl_estimator': 'k2'})

A new preference loss is one function in `losses/preference.py` plus one entry here; a new
RL algorithm one branch in `train/ppo.py` plus one entry.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax

from alignlab import runs
from alignlab.config import ConfigError, OptimizerConfig, to_dict
from alignlab.train import fit as fit_lib
from alignlab.train import ppo, preference, sft


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Offline methods (the DPO family, Unlikelihood, Preferred-FT). A decaying schedule with
  `optimizer.total_steps=0` decays over `steps`.

  The protocol: `steps` is the budget; `eval_points` > 0 evaluates on a geometric grid of that
  many steps (else every `eval_every`); a run whose evaluated KL(π‖π_ref) reaches `kl_cap`
  nats (0: no cap) stops there, so every method traces its path over the same KL range."""
  steps: int = 400
  batch_size: int = 128
  eval_every: int = 50
  save_every: int = 100
  log_every: int = 1
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, schedule='cosine')
  eval_points: int = 0
  kl_cap: float = 0.0

  def resolved_optimizer(self) -> OptimizerConfig:
    if self.optimizer.schedule != 'constant' and not self.optimizer.total_steps:
      return dataclasses.replace(self.optimizer, total_steps=self.steps)
    return self.optimizer


def eval_steps(steps: int, eval_points: int) -> list[int] | None:
  return fit_lib.eval_schedule(steps, eval_points) if eval_points else None


def kl_cap_rule(cap: float):
  """The stopping rule of a frontier: stop once the evaluated KL reaches `cap` nats."""
  if not cap:
    return None
  return lambda row: (f'kl {row["kl"]:.3g} ≥ cap {cap:g}'
                      if row.get('kl', 0.0) >= cap else None)


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Online methods (PPO, PPO-GT, RLOO, GRPO): `iterations` of `rollouts` sequences each."""
  iterations: int = 80
  rollouts: int = 256  # sequences per iteration (prompts × samples per prompt)
  group_size: int = 4  # k samples per prompt for rloo / grpo
  learning_rate: float = 1e-3
  schedule: str = 'constant'  # 'linear': decays to 0 over every update, so the policy settles
  epochs: int = 4
  minibatches: int = 1
  eval_every: int = 20
  save_every: int = 0  # 0: at every evaluation
  kl_coef: float = 0.05  # the adaptive controller's initial β
  # Episodes; 0: set from the run's size so that the controller can move β by `kl_range`× in
  # half of the run (`auto_kl_horizon`), so that a KL target is reached and held.
  kl_horizon: float = 0.0
  kl_range: float = 10.0
  # What the controller sees: the exact per-token KL summed over each sampled response
  # (`train/rollout.py`), not the single-sample k1, whose noise (even negative values at small
  # KL) drives β the wrong way at alignlab's batch sizes.
  kl_measure: str = 'exact'
  eval_points: int = 0  # > 0: a geometric grid of evaluation iterations (else eval_every)
  kl_cap: float = 0.0  # stop a run once its evaluated KL reaches this many nats (0: no cap)


def auto_kl_horizon(rl: RLConfig, episodes_per_iteration: int) -> float:
  """The horizon H of the adaptive KL controller (Ziegler et al. 2019, arXiv 1909.08593, §2.2:
  β ← β·(1 + e·n/H), |e| ≤ 0.2) at which β can change by `rl.kl_range`× within half of the
  run's iterations: (1 + 0.2·n/H)^(I/2) = range. Ziegler et al.'s fixed H = 10,000 episodes
  suits their 2 M episodes; at alignlab's thousands it would let β move by < 1 % per
  iteration, so a KL target would never be reached."""
  if rl.kl_horizon:
    return rl.kl_horizon
  per_iteration = rl.kl_range ** (2.0 / max(rl.iterations, 1)) - 1.0
  return 0.2 * episodes_per_iteration / per_iteration


def train_preference(env: dict, name: str, runs_: list[tuple[Any, int]], cfg, out_dir: Path,
                     progress: bool) -> int:
  """R runs of one loss, (hparam value, seed) each, as one vectorized program over the pairs
  with π_ref's log-probs precomputed (`train/fit.py`)."""
  spec = METHODS[name]
  tc = cfg.train
  if spec['loss'] is None:  # Preferred-FT: NLL of the chosen responses
    loss_fn = sft.make_loss_fn(env['graphdef'], response_start=env['prompt_len'])
    data = sft.chosen_as_sft(env['pairs'])
  elif spec.get('unpaired') and 'unpaired' in env:
    loss_fn, data = env['unpaired']['loss_fn'], env['unpaired']['examples']
  else:
    loss_fn = preference.make_loss_fn(env['graphdef'], spec['loss'], prompt_len=env['prompt_len'])
    data = env['pairs']
  rows = [{**({spec['hparam']: v} if spec['hparam'] else {}), **spec.get('fixed', {})}
          for v, _ in runs_]
  config = {'task': env['run_key'], 'method': _spec_record(spec), 'train': to_dict(tc),
            'eval': env['eval_key']}
  dirs = [runs.prepare_run(out_dir, name, {spec['hparam']: v} if spec['hparam'] else {}, s,
                           {**config, 'hparams': row}, experiment=cfg.name)
          for (v, s), row in zip(runs_, rows)]
  todo = [i for i, d in enumerate(dirs) if not runs.is_complete(d)]
  if not todo:
    return 0
  n_pairs = len(next(iter(data.values())))
  if tc.batch_size > n_pairs:
    raise ConfigError(f'train.batch_size={tc.batch_size} exceeds the {n_pairs} training pairs '
                      f'of task {env["name"]}')
  shards = env['mesh'].shape['data'] * env['mesh'].shape['fsdp']
  if tc.batch_size % shards:
    raise ConfigError(f'train.batch_size={tc.batch_size} does not split over the mesh\'s '
                      f'{shards} batch shards (mesh.data × mesh.fsdp); use a multiple of {shards}')
  betas = [runs_[i][0] if spec.get('own_beta') else None for i in todo]

  def eval_fn(state_R, step):
    del step
    return [env['evaluate'](fit_lib.run_state(state_R['params'], r), b) for r, b in enumerate(betas)]

  t0 = time.perf_counter()
  state_R, failed = fit_lib.fit_runs(
      loss_fn, env['ref_params'],
      env.get('batches', fit_lib.RunBatches)(data, tc.batch_size, [runs_[i][1] for i in todo]),
      fit_lib.stack_hparams([rows[i] for i in todo]) if rows[0] else {},
      optimizer=tc.resolved_optimizer(), n_steps=tc.steps, run_dirs=[dirs[i] for i in todo],
      configs=[_config(dirs[i]) for i in todo],
      ref_params=env['ref_params'] if spec.get('ref_per_batch') else None, mesh=env['mesh'],
      save_every=tc.save_every, eval_fn=eval_fn, eval_every=tc.eval_every,
      log_every=tc.log_every, desc=name, progress=progress,
      eval_steps=eval_steps(tc.steps, tc.eval_points), stop_fn=kl_cap_rule(tc.kl_cap))
  for r, i in enumerate(todo):
    if failed[r] is None:
      runs.write_jsonl(dirs[i] / 'win_rate.jsonl',
                       env['win_rates'](fit_lib.run_state(state_R['params'], r)))
      runs.mark_complete(dirs[i], wall_s=time.perf_counter() - t0, vectorized_with=len(todo))
  return len(todo)


def _ppo_config(env: dict, rl: RLConfig, spec: dict, value: float, seed: int) -> ppo.PPOConfig:
  k = rl.group_size if spec['algorithm'] in ('rloo', 'grpo') else 1
  updates = rl.iterations * rl.epochs * rl.minibatches
  optimizer = OptimizerConfig(learning_rate=rl.learning_rate, eps=1e-5, schedule=rl.schedule,
                              total_steps=updates + 1 if rl.schedule != 'constant' else 0)
  return ppo.PPOConfig(
      algorithm=spec['algorithm'], n_iterations=rl.iterations, samples_per_prompt=k,
      sampling=env['rl_sampling'], optimizer=optimizer,
      value_optimizer=OptimizerConfig(learning_rate=rl.learning_rate, eps=1e-5),
      ppo_epochs=rl.epochs, num_minibatches=rl.minibatches,
      kl_coef=rl.kl_coef if spec['adaptive'] else value,
      kl_controller='adaptive' if spec['adaptive'] else 'fixed',
      kl_target=value if spec['adaptive'] else 6.0,
      kl_horizon=auto_kl_horizon(rl, max(rl.rollouts // k, 1) * k), kl_measure=rl.kl_measure,
      seed=seed,
      save_every=rl.save_every or rl.eval_every, **spec.get('ppo', {}))


def train_rl(env: dict, name: str, runs_: list[tuple[Any, int]], cfg, out_dir: Path,
             progress: bool) -> int:
  """One run at a time (each iteration samples and scores on the host): PPO with the
  reward model or the gold reward, RLOO, GRPO (`train/ppo.py`)."""
  spec = METHODS[name]
  trained = 0
  for value, seed in runs_:
    pcfg = _ppo_config(env, cfg.rl, spec, value, seed)
    run = runs.prepare_run(out_dir, name, {spec['hparam']: value}, seed,
                           {'task': env['run_key'], 'method': _spec_record(spec),
                            'ppo': to_dict(pcfg), 'rl': to_dict(cfg.rl), 'eval': env['eval_key']},
                           experiment=cfg.name)
    if runs.is_complete(run):
      continue
    trained += 1
    model_reward = spec['reward'] == 'model'
    reward = env['reward_model']() if model_reward else env['gold']
    value_model = None
    if pcfg.uses_value:
      # The value function starts from the RM (Huang et al. 2024, arXiv 2403.17031); with the
      # gold reward there is no RM, so from π_ref's backbone with a zero head.
      value_model = ppo.init_value_model(
          env['model_cfg'], env['mesh'], jax.random.key(seed),
          reward_params=reward.params if model_reward else None,
          policy_params=None if model_reward else env['ref_params'], zero_head=not model_reward)
    beta = value if spec.get('own_beta') else None
    t0 = time.perf_counter()
    try:
      state = ppo.train_ppo(
          pcfg, (env['graphdef'], env['ref_params']), env['ref_params'], reward,
          env['rl_prompts'](seed, pcfg.samples_per_prompt, cfg.rl.rollouts), run,
          value=value_model, gold=env['gold'] if model_reward else None,
          eval_fn=lambda st, step: env['evaluate'](st['policy'], beta),
          eval_every=cfg.rl.eval_every, mesh=env['mesh'], progress=progress,
          config=_config(run), eval_steps=eval_steps(cfg.rl.iterations, cfg.rl.eval_points),
          stop_fn=kl_cap_rule(cfg.rl.kl_cap))
    except fit_lib.TrainingDiverged:
      continue  # recorded in the run dir's failed.json by the loop
    runs.write_jsonl(run / 'win_rate.jsonl', env['win_rates'](state['policy']))
    runs.mark_complete(run, wall_s=time.perf_counter() - t0,
                       **(target_check(run, value) if spec['adaptive'] else {}))
  return trained


KL_TARGET_TOLERANCE = 0.25  # a run's final KL within ±25 % of its target meets it


def target_check(run: Path, target: float) -> dict:
  """The adaptive controller's target against the KL its run reached (the last evaluation):
  a miss is recorded (`done.json`, then the `kl_target_met` column of results.csv) and
  flagged in the verdict, never plotted as if the target had been met."""
  last = fit_lib.read_last(run / 'eval.jsonl') or {}
  kl = float(last.get('kl', float('nan')))
  return {'kl_target': float(target), 'kl_final': kl,
          'kl_target_met': bool(abs(kl - target) <= KL_TARGET_TOLERANCE * target)}


def planned_flops(env: dict, name: str, cfg) -> float:
  """The training model-FLOPs one run of `name` takes at its full budget (6·N per trained
  token, 2·N per forward-only one; Kaplan et al. 2020, arXiv 2001.08361 §2.1): what
  `pipeline.run` states before it starts. Evaluation and sampling for it are not counted."""
  spec = METHODS[name]
  params = env['ref_params']
  n = float(sum(x.size for x in jax.tree.leaves(params)))
  if spec['train'] is train_preference:
    pairs = env['pairs']
    width = sum(pairs[k].shape[1] for k in pairs if k.endswith('_tokens'))
    per_token = 6.0 + (4.0 if spec.get('ref_per_batch') else 0.0)  # π_ref's forward per batch
    return n * per_token * cfg.train.batch_size * width * cfg.train.steps
  if spec['train'] is train_rl:
    pcfg = _ppo_config(env, cfg.rl, spec, 1.0, 0)
    rows = max(cfg.rl.rollouts // pcfg.samples_per_prompt, 1)
    return ppo.episode_cost(pcfg, params, (rows, env['prompt_len']))['train_flops'] * cfg.rl.iterations
  return 0.0


def best_of_n(env: dict, name: str, runs_: list[tuple[Any, int]], cfg, out_dir: Path,
              progress: bool) -> int:
  """π_ref's samples reranked by the reward model: one evaluation point per N, no training."""
  del progress
  # One point per N: the task's evaluation draws the candidates with its own fixed key.
  return sum(_single_point(env, name, {'n': int(n)}, cfg, out_dir,
                           lambda n=int(n): env['best_of_n'](n))
             for n, seed in runs_ if seed == cfg.seeds[0])


def reference(env: dict, name: str, runs_: list[tuple[Any, int]], cfg, out_dir: Path,
              progress: bool) -> int:
  """π_ref itself: the point every frontier starts from."""
  del runs_, progress
  return _single_point(env, name, {}, cfg, out_dir, lambda: (env['evaluate'](env['ref_params'], None),
                                                      env['win_rates'](env['ref_params'])))


def _single_point(env, name, hparams, cfg, out_dir, point_fn) -> int:
  run = runs.prepare_run(out_dir, name, hparams, 0,
                         {'task': env['run_key'], 'method': _spec_record(METHODS[name]),
                          'eval': env['eval_key']}, experiment=cfg.name)
  if runs.is_complete(run):
    return 0
  point, win_rates = point_fn()
  runs.write_jsonl(run / 'eval.jsonl', [{'step': 0, **point}])
  runs.write_jsonl(run / 'win_rate.jsonl', win_rates)
  runs.mark_complete(run)
  return 1


def restore_policy(env: dict, name: str, run_dir: Path, cfg) -> tuple[int, Any]:
  """(step, policy params) of a trained run's latest checkpoint (`alignlab eval --recompute`)."""
  from alignlab.checkpoint import Checkpointer
  from alignlab.config import from_dict
  from alignlab.train.optim import make_optimizer
  from alignlab.train.step import init_state
  spec = METHODS[name]
  with Checkpointer(Path(run_dir) / 'checkpoints', {}) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise runs.RunDirError(f'{run_dir} has no checkpoint')
    if spec['train'] is train_rl:
      pcfg = from_dict(ppo.PPOConfig, _config(run_dir)['config']['ppo'])
      value = (ppo.init_value_model(env['model_cfg'], env['mesh'], jax.random.key(0))[1]
               if pcfg.uses_value else None)
      template = ppo.init_ppo_state(pcfg, env['ref_params'], value, env['mesh'])
      return step, ckpt.restore(template, step)['policy']
    template = init_state(env['ref_params'], make_optimizer(cfg.train.resolved_optimizer()),
                          jax.random.key(0))
    return step, ckpt.restore(template, step)['params']


def _config(run: Path) -> dict:
  return json.loads((run / 'config.json').read_text())


def _spec_record(spec: dict) -> dict:
  return {k: v for k, v in spec.items() if k not in ('train', 'values')}


METHODS: dict[str, dict] = {
    'sft': {'train': reference, 'hparam': None, 'values': (0,)},
    'dpo': {'train': train_preference, 'loss': 'dpo', 'hparam': 'beta', 'values': (0.1,),
            'own_beta': True},
    'ipo': {'train': train_preference, 'loss': 'ipo', 'hparam': 'beta', 'values': (0.1,),
            'own_beta': True},
    'cdpo': {'train': train_preference, 'loss': 'cdpo', 'hparam': 'beta', 'values': (0.1,),
             'fixed': {'label_smoothing': 0.1}, 'own_beta': True},
    'kto': {'train': train_preference, 'loss': 'kto', 'hparam': 'beta', 'values': (0.1,),
            'own_beta': True, 'ref_per_batch': True, 'unpaired': True},
    'simpo': {'train': train_preference, 'loss': 'simpo', 'hparam': 'beta', 'values': (2.0,),
              'fixed': {'gamma': 0.5}},
    'orpo': {'train': train_preference, 'loss': 'orpo', 'hparam': 'lambda_', 'values': (0.1,)},
    'unlikelihood': {'train': train_preference, 'loss': 'unlikelihood', 'hparam': 'alpha',
                     'values': (0.1, 1.0)},
    'preferred_ft': {'train': train_preference, 'loss': None, 'hparam': None, 'values': (0,)},
    'best_of_n': {'train': best_of_n, 'hparam': 'n', 'values': (1, 4, 16)},
    'ppo': {'train': train_rl, 'algorithm': 'ppo', 'reward': 'model', 'adaptive': True,
            'hparam': 'kl_target', 'values': (3.0,)},
    'ppo_gt': {'train': train_rl, 'algorithm': 'ppo', 'reward': 'gold', 'adaptive': False,
               'hparam': 'beta', 'values': (0.05,), 'own_beta': True},
    'rloo': {'train': train_rl, 'algorithm': 'rloo', 'reward': 'gold', 'adaptive': False,
             'hparam': 'beta', 'values': (0.05,), 'own_beta': True},
    'grpo': {'train': train_rl, 'algorithm': 'grpo', 'reward': 'gold', 'adaptive': False,
             'hparam': 'beta', 'values': (0.05,), 'own_beta': True},
    # Where GRPO's KL term goes and its estimator (experiments/exact_kl_estimators.py): 'grpo'
    # is k3 in the loss; `losses.ppo.kl_penalty_loss` says which gradient each one follows.
    'grpo_kl_reward': {'train': train_rl, 'algorithm': 'grpo', 'reward': 'gold',
                       'adaptive': False, 'hparam': 'beta', 'values': (0.05,), 'own_beta': True,
                       'ppo': {'kl_penalty': 'reward'}},
    'grpo_k1': {'train': train_rl, 'algorithm': 'grpo', 'reward': 'gold', 'adaptive': False,
                'hparam': 'beta', 'values': (0.05,), 'own_beta': True,
                'ppo': {'kl_estimator': 'k1'}},
    'grpo_k2': {'train': train_rl, 'algorithm': 'grpo', 'reward': 'gold', 'adaptive': False,
                'hparam': 'beta', 'values': (0.05,), 'own_beta': True,
                'ppo': {'kl_estimator': 'k2'}},
    'grpo_k3_ratio': {'train': train_rl, 'algorithm': 'grpo', 'reward': 'gold',
                      'adaptive': False, 'hparam': 'beta', 'values': (0.05,), 'own_beta': True,
                      'ppo': {'kl_estimator': 'k3', 'kl_ratio_correction': True}},
    # The reward model at a fixed KL coefficient β: RLHF's arm of J_β at the β the DPO family
    # optimizes (experiments/exact_data_size.py).
    'ppo_fixed': {'train': train_rl, 'algorithm': 'ppo', 'reward': 'model', 'adaptive': False,
                  'hparam': 'beta', 'values': (0.05,), 'own_beta': True},
    'rloo_rm': {'train': train_rl, 'algorithm': 'rloo', 'reward': 'model', 'adaptive': False,
                'hparam': 'beta', 'values': (0.05,), 'own_beta': True},
}

# `sweeps.<method>`: the values each method runs with (one field per METHODS entry, so a new
# entry is overridable from the command line at once: `--set sweeps.dpo='(0.1,1.0)'`).
Sweeps = dataclasses.make_dataclass(
    'Sweeps', [(name, tuple[float, ...], dataclasses.field(default=tuple(spec['values'])))
               for name, spec in METHODS.items()], frozen=True)
Sweeps.__module__ = __name__


def validate(methods: tuple[str, ...], sweeps: Any, train: TrainConfig, rl: RLConfig) -> None:
  """Values no method can use, named by their full key, before anything is written."""
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ConfigError(f'methods: unknown {unknown}; known: {", ".join(METHODS)}')
  for m in methods:
    hparam, values = METHODS[m]['hparam'], getattr(sweeps, m)
    if hparam and not values:
      raise ConfigError(f'sweeps.{m} is empty; give at least one {hparam}')
    bad = [v for v in values if hparam and not v > 0]
    if bad:
      raise ConfigError(f'sweeps.{m}: {hparam} must be > 0, got {bad}')
  for key, value in (('train.steps', train.steps), ('rl.iterations', rl.iterations)):
    if value < 0:
      raise ConfigError(f'{key} must be ≥ 0, got {value}')
  for key, value in (('train.batch_size', train.batch_size), ('train.eval_every', train.eval_every),
                     ('train.log_every', train.log_every), ('rl.rollouts', rl.rollouts),
                     ('rl.eval_every', rl.eval_every)):
    if value < 1:
      raise ConfigError(f'{key} must be ≥ 1, got {value}')
  for key, value in (('train.optimizer.learning_rate', train.optimizer.learning_rate),
                     ('rl.learning_rate', rl.learning_rate)):
    if not value > 0:
      raise ConfigError(f'{key} must be > 0, got {value}')
