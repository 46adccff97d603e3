"""The exact task (DESIGN.md §4): how close does each method get to the optimum π*_β of
J_β(π) = E r − β·KL(π‖π_ref) when every quantity is computed exactly?

1. π_ref: the transformer, SFT'd on samples of an analytic reference (stage `exact_sft`).
2. Pairs y1, y2 ~ π_ref labelled by the Bradley–Terry model of the gold reward (arXiv
   2305.18290 Eq. 1), with π_ref's log-probs precomputed, and held-out pairs (`exact_pairs`).
3. Methods, each ONE vectorized program over its hyperparameter values × seeds
   (`alignlab/sweep.py`): DPO, IPO, cDPO, KTO, SimPO, ORPO (`PREFERENCE_LOSSES`),
   Unlikelihood, Preferred-FT; Best-of-N exactly (`exact.best_of_n_logp`, no training); PPO,
   PPO-GT, RLOO, GRPO when `alignlab/train/ppo.py` provides them.
4. Every `train.eval_every` steps each run is evaluated exactly: E r, KL(π‖π_ref), J_β, the
   gap J_β(π*) − J_β(π) = β·KL(π‖π*) and its fraction of π_ref's gap, the frontier's reward at
   the run's KL (`frontier_reward`; `reward_shortfall` = frontier_reward − gold_reward ≥ 0 is
   β-free), and the accuracy of β·log π/π_ref on held-out pairs ordered by gold reward.
   β is the method's own β where it has one (DPO, IPO, cDPO, KTO), else `methods.eval_beta`.
5. Final policies: the exact win rate against π_ref at temperatures 0 … 1 (`win_rate.jsonl`).

Seeds vary each run's data order and RNG; the pairs and π_ref are shared by every run.
The model's vocabulary size, length and masked ids are set from the task (`model.*` holds the
architecture only).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignlab import evaluate, runs, stages
from alignlab.config import ConfigError, ModelConfig, OptimizerConfig
from alignlab.data import exact
from alignlab.experiment import unknown_variant
from experiments import _exact_rl
from experiments._exact_rl import RL_METHODS, RLConfig

VARIANTS = ('tiny', 'quick', 'paper')
BEST_BY = ('gap_fraction', 'min')
PREFERENCE_METHODS = ('dpo', 'ipo', 'cdpo', 'kto', 'simpo', 'orpo', 'unlikelihood', 'preferred_ft')
METHODS = PREFERENCE_METHODS + ('best_of_n',) + RL_METHODS


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  samples_per_prompt: int = 2048
  steps: int = 400
  batch_size: int = 256
  learning_rate: float = 3e-3
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class PairsConfig:
  pairs_per_prompt: int = 2048
  heldout_per_prompt: int = 256
  seed: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Training of the preference methods. A decaying schedule with `optimizer.total_steps=0`
  decays over `steps`: the policies settle instead of wandering at the noise floor."""
  steps: int = 400
  batch_size: int = 128
  eval_every: int = 50
  save_every: int = 100
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, schedule='cosine')

  def resolved_optimizer(self) -> OptimizerConfig:
    if self.optimizer.schedule != 'constant' and not self.optimizer.total_steps:
      return dataclasses.replace(self.optimizer, total_steps=self.steps)
    return self.optimizer


@dataclasses.dataclass(frozen=True)
class MethodsConfig:
  run: tuple[str, ...] = METHODS
  eval_beta: float = 0.3  # the β of J_β for methods that have none of their own
  dpo_betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
  ipo_betas: tuple[float, ...] = (0.3, 1.0)
  cdpo_betas: tuple[float, ...] = (0.3,)
  cdpo_label_smoothing: float = 0.1
  kto_betas: tuple[float, ...] = (0.3,)
  simpo_betas: tuple[float, ...] = (2.0,)
  simpo_gamma: float = 0.5
  orpo_lambdas: tuple[float, ...] = (0.1, 1.0)
  unlikelihood_alphas: tuple[float, ...] = (0.1, 1.0)
  best_of_n: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128)
  ppo_kl_targets: tuple[float, ...] = (1.0, 3.0)
  rl_betas: tuple[float, ...] = (0.3,)


@dataclasses.dataclass(frozen=True)
class ExactFrontierConfig:
  task: exact.ExactTaskConfig = exact.ExactTaskConfig()
  model: ModelConfig = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128)
  sft: SFTConfig = SFTConfig()
  pairs: PairsConfig = PairsConfig()
  train: TrainConfig = TrainConfig()
  methods: MethodsConfig = MethodsConfig()
  rl: RLConfig = RLConfig()
  seeds: tuple[int, ...] = (0,)
  win_rate_temperatures: tuple[float, ...] = evaluate.TEMPERATURES
  frontier_points: int = 81


def get_config(variant: str) -> ExactFrontierConfig:
  base = ExactFrontierConfig()
  if variant == 'quick':
    return base
  if variant == 'tiny':
    return dataclasses.replace(
        base, task=exact.ExactTaskConfig(n_prompts=3, vocab=4, length=3),
        model=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32),
        sft=SFTConfig(samples_per_prompt=256, steps=40, batch_size=64, learning_rate=1e-2),
        pairs=PairsConfig(pairs_per_prompt=64, heldout_per_prompt=32),
        train=TrainConfig(steps=12, batch_size=32, eval_every=6, save_every=6,
                          optimizer=OptimizerConfig(learning_rate=3e-3, schedule='cosine')),
        methods=dataclasses.replace(base.methods, dpo_betas=(0.3, 1.0), ipo_betas=(0.3,),
                                    orpo_lambdas=(0.1,), unlikelihood_alphas=(0.1,),
                                    best_of_n=(2, 8), ppo_kl_targets=(1.0,)),
        rl=RLConfig(iterations=3, rollouts_per_prompt=8, epochs=1, minibatches=1, eval_every=3,
                    rm_steps=10, rm_batch_size=32),
        win_rate_temperatures=(0.0, 1.0), frontier_points=21)
  if variant == 'paper':
    return dataclasses.replace(
        base, sft=SFTConfig(samples_per_prompt=8192, steps=1500),
        pairs=PairsConfig(pairs_per_prompt=8192, heldout_per_prompt=512),
        train=TrainConfig(steps=2000, batch_size=128, eval_every=100, save_every=200),
        rl=RLConfig(iterations=300),
        methods=dataclasses.replace(base.methods, dpo_betas=(0.05, 0.1, 0.3, 1.0, 3.0),
                                    ipo_betas=(0.1, 0.3, 1.0), cdpo_betas=(0.1, 0.3, 1.0),
                                    kto_betas=(0.1, 0.3, 1.0), unlikelihood_alphas=(0.05, 0.1, 0.5, 1.0),
                                    best_of_n=(2, 4, 8, 16, 32, 64, 128, 256, 1024)),
        seeds=(0, 1, 2))
  raise unknown_variant(variant, VARIANTS)


# ---------------------------------------------------------------------------------------------
# Methods: which loss, which swept hyperparameter, which fixed ones


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  loss: str  # a PREFERENCE_LOSSES key, or 'sft' (Preferred-FT: NLL of the chosen responses)
  hparam: str | None  # the swept hyperparameter (a traced loss argument)
  values: tuple  # its values; (None,) when nothing is swept
  fixed: tuple[tuple[str, float], ...] = ()
  own_beta: bool = False  # J_β at the method's own β, else at eval_beta
  needs_ref_params: bool = False


def preference_methods(m: MethodsConfig) -> dict[str, Method]:
  return {
      'dpo': Method('dpo', 'dpo', 'beta', m.dpo_betas, own_beta=True),
      'ipo': Method('ipo', 'ipo', 'beta', m.ipo_betas, own_beta=True),
      'cdpo': Method('cdpo', 'cdpo', 'beta', m.cdpo_betas,
                     (('label_smoothing', m.cdpo_label_smoothing),), own_beta=True),
      'kto': Method('kto', 'kto', 'beta', m.kto_betas, own_beta=True, needs_ref_params=True),
      'simpo': Method('simpo', 'simpo', 'beta', m.simpo_betas, (('gamma', m.simpo_gamma),)),
      'orpo': Method('orpo', 'orpo', 'lambda_', m.orpo_lambdas),
      'unlikelihood': Method('unlikelihood', 'unlikelihood', 'alpha', m.unlikelihood_alphas),
      'preferred_ft': Method('preferred_ft', 'sft', None, (None,)),
  }


def rl_available() -> bool:
  """PPO, PPO-GT, RLOO and GRPO run when `alignlab/train/ppo.py` provides `train_ppo`
  (`experiments/_exact_rl.py`); otherwise they are reported as skipped."""
  return _exact_rl.available()


# Jitted once per process: eager calls would compile every small op anew.
_sample_pairs = jax.jit(exact.sample_pairs_bt, static_argnums=(1, 4))
_best_of_n_logp = jax.jit(exact.best_of_n_logp)
_win_rate = jax.jit(evaluate.exact_win_rate)
_frontier = jax.jit(exact.frontier)
_mean_kl = jax.jit(lambda logp, ref_logp: exact.kl(logp, ref_logp).mean())


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sft_responses(task: exact.ExactTaskConfig, key: jax.Array, n: int):
  """n responses per prompt from the analytic reference: (analytic logp_PxY, responses (P·n, R))."""
  analytic_PxY = exact.random_reference(task)
  index_PxN = jax.random.categorical(key, analytic_PxY, axis=-1, shape=(n, task.n_prompts)).T
  return analytic_PxY, exact.response_from_index(task, index_PxN.reshape(-1))


def _log(progress: bool, message: str) -> None:
  if progress:
    print(f'[exact_frontier] {message}', file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Shared stages: π_ref and the pairs


def model_config(cfg: ExactFrontierConfig) -> ModelConfig:
  return dataclasses.replace(cfg.model, vocab_size=exact.model_vocab_size(cfg.task),
                             max_seq_len=cfg.task.length + 1,
                             masked_output_ids=exact.masked_output_ids(cfg.task))


def _init(cfg: ExactFrontierConfig, mesh):
  from alignlab import sharding
  from alignlab.heads import CausalLM
  mcfg = model_config(cfg)
  return sharding.init_params(lambda rngs: CausalLM(mcfg, rngs=rngs), mesh,
                              jax.random.key(cfg.sft.seed))


def sft_key(cfg: ExactFrontierConfig) -> dict:
  return {'task': cfg.task, 'model': model_config(cfg), 'sft': cfg.sft}


def _build_sft(cfg: ExactFrontierConfig, mesh, progress: bool, out: Path, work: Path) -> None:
  from alignlab import sweep
  from alignlab.train import sft
  task = cfg.task
  graphdef, params = _init(cfg, mesh)
  analytic_PxY, responses_NxR = _sft_responses(task, jax.random.key(cfg.sft.seed),
                                               cfg.sft.samples_per_prompt)
  prompt_N = np.repeat(np.arange(task.n_prompts), cfg.sft.samples_per_prompt)
  tokens = exact.make_sequences(task, prompt_N, np.asarray(responses_NxR))
  attn_T, resp_T = exact.sequence_masks(task)
  data = {'tokens': tokens, 'attention_mask': np.tile(attn_T, (len(tokens), 1)),
          'response_mask': np.tile(resp_T, (len(tokens), 1))}
  state = sweep.fit_sweep(
      sft.make_loss_fn(graphdef), params, sweep.SweepBatches(data, cfg.sft.batch_size, [cfg.sft.seed]),
      {}, optimizer=OptimizerConfig(learning_rate=cfg.sft.learning_rate), n_steps=cfg.sft.steps,
      run_dirs=[work / 'sft'], configs=[sft_key(cfg)], mesh=mesh, save_every=max(cfg.sft.steps // 4, 1),
      log_every=10, desc='sft π_ref', progress=progress)
  ref_params = sweep.run_state(state, 0)['params']
  ref_logp = evaluate.exact_policy_logp(graphdef, ref_params, task)
  stages.save_tree(out / 'params.npz', ref_params)
  np.save(out / 'ref_logp.npy', np.asarray(ref_logp))
  (out / 'info.json').write_text(json.dumps(
      {'kl_analytic_to_sft': float(_mean_kl(analytic_PxY, ref_logp))}))


def _build_pairs(cfg: ExactFrontierConfig, graphdef, ref_params, ref_logp, r, out: Path,
                 work: Path) -> None:
  from alignlab.train import preference
  del work
  task, pc = cfg.task, cfg.pairs
  pairs = _sample_pairs(jax.random.key(pc.seed), task, ref_logp, r, pc.pairs_per_prompt)
  batch = preference.reference_logps(graphdef, ref_params, exact.preference_batch(task, pairs),
                                     prompt_len=1, batch_size=512)
  np.savez(out / 'train.npz', **batch)
  held = _sample_pairs(jax.random.key(pc.seed + 7919), task, ref_logp, r, pc.heldout_per_prompt)
  np.savez(out / 'heldout.npz', prompt_index=held.prompt_index, first_index=held.chosen_index,
           second_index=held.rejected_index, first_score=held.chosen_score,
           second_score=held.rejected_score)


@dataclasses.dataclass
class Setup:
  """Everything the runs share, and the exact evaluation every method goes through."""
  cfg: ExactFrontierConfig
  out_dir: Path
  mesh: Any
  model_cfg: ModelConfig
  graphdef: Any
  ref_params: Any
  ref_logp: jax.Array
  r: jax.Array
  pairs_key: dict
  pairs: dict[str, np.ndarray]
  heldout: tuple[jax.Array, ...]
  progress: bool

  def evaluate(self, params, beta: float) -> dict:
    return evaluate_params(self, params, beta)

  def win_rates(self, params) -> list[dict]:
    return win_rates(self, params)


def setup(cfg: ExactFrontierConfig, out_dir: Path, progress: bool = True) -> Setup:
  from alignlab import sharding
  cfg.task.validate()
  mesh = sharding.make_mesh()
  root = stages.stage_root(out_dir)
  t0 = time.time()
  sft_dir = stages.cached_stage(root, 'exact_sft', sft_key(cfg),
                                functools.partial(_build_sft, cfg, mesh, progress))
  graphdef, like = _init(cfg, mesh)
  ref_params = stages.load_tree(sft_dir / 'params.npz', like)
  ref_logp = jnp.asarray(np.load(sft_dir / 'ref_logp.npy'))
  info = json.loads((sft_dir / 'info.json').read_text())
  _log(progress, f'π_ref ready ({time.time() - t0:.1f} s; KL(analytic ‖ π_ref) = '
       f'{info["kl_analytic_to_sft"]:.4f}): {sft_dir}')
  r = jnp.asarray(exact.gold_reward(cfg.task))
  pairs_key = {'sft': sft_key(cfg), 'pairs': cfg.pairs}
  pairs_dir = stages.cached_stage(
      root, 'exact_pairs', pairs_key,
      functools.partial(_build_pairs, cfg, graphdef, ref_params, ref_logp, r))
  with np.load(pairs_dir / 'train.npz') as f:
    pairs = {k: f[k] for k in f.files}
  with np.load(pairs_dir / 'heldout.npz') as f:
    heldout = tuple(jnp.asarray(f[k]) for k in ('prompt_index', 'first_index', 'second_index',
                                                 'first_score', 'second_score'))
  return Setup(cfg, Path(out_dir), mesh, model_config(cfg), graphdef, ref_params, ref_logp, r,
               pairs_key, pairs, heldout, progress)


# ---------------------------------------------------------------------------------------------
# Exact evaluation


@functools.partial(jax.jit, static_argnames=('graphdef', 'task'))
def _evaluate_params(graphdef, task, params, beta, ref_logp, r, heldout):
  logp = evaluate.exact_policy_logp(graphdef, params, task)
  return _evaluate_logp(logp, beta, ref_logp, r, heldout)


@jax.jit
def _evaluate_logp(logp, beta, ref_logp, r, heldout):
  m = evaluate.exact_metrics(logp, ref_logp, r, beta)
  frontier = evaluate.frontier_reward_at_kl(ref_logp, r, m['kl'])
  acc = evaluate.exact_implicit_accuracy(logp, ref_logp, *heldout, beta=beta)
  return {'gold_reward': m['reward'], 'kl': m['kl'], 'objective': m['objective'],
          'optimal_objective': m['optimal_objective'], 'gap': m['gap'],
          'gap_fraction': m['gap_fraction'], 'frontier_reward': frontier,
          'reward_shortfall': frontier - m['reward'],
          'implicit_accuracy': acc['implicit_accuracy']}


def _row(metrics: dict, beta: float) -> dict:
  row = {k: float(v) for k, v in jax.device_get(metrics).items()}
  # Exact: no sampling error.
  return {**row, 'gold_reward_stderr': 0.0, 'kl_stderr': 0.0, 'beta': float(beta)}


def evaluate_params(s: Setup, params, beta: float) -> dict:
  return _row(_evaluate_params(s.graphdef, s.cfg.task, params, jnp.float32(beta), s.ref_logp, s.r,
                               s.heldout), beta)


def win_rates(s: Setup, params) -> list[dict]:
  rows = []
  for t in s.cfg.win_rate_temperatures:
    logp = evaluate.exact_policy_logp(s.graphdef, params, s.cfg.task,
                                      jnp.float32(max(t, evaluate.GREEDY_TEMPERATURE)))
    rows.append({'temperature': float(t),
                 'win_rate': float(_win_rate(logp, s.ref_logp, s.r))})
  return rows


def frontier_table(s: Setup):
  import pandas as pd
  betas = np.geomspace(0.01, 100.0, s.cfg.frontier_points)
  kl, reward = _frontier(s.ref_logp, s.r, jnp.asarray(betas, jnp.float32))
  return pd.DataFrame({'beta': betas, 'kl': np.asarray(kl), 'gold_reward': np.asarray(reward)})


# ---------------------------------------------------------------------------------------------
# Training runs


def run_config(cfg: ExactFrontierConfig) -> dict:
  """What a run depends on besides its method, hyperparameters and seed."""
  return {'task': cfg.task, 'model': model_config(cfg), 'sft': cfg.sft, 'pairs': cfg.pairs,
          'train': cfg.train, 'eval_beta': cfg.methods.eval_beta}


def _loss_fn(s: Setup, method: Method):
  from alignlab.train import preference, sft
  if method.loss == 'sft':
    base = sft.make_loss_fn(s.graphdef)

    def loss_fn(params, batch, hparams):
      return base(params, sft.chosen_as_sft(batch), hparams)
    return loss_fn
  return preference.make_loss_fn(s.graphdef, method.loss, prompt_len=1)


def _train_preference(cfg: ExactFrontierConfig, get_setup, out_dir: Path, method: Method,
                      progress: bool) -> None:
  from alignlab import sweep
  specs = []
  for value, seed in itertools.product(method.values, cfg.seeds):
    hp = {method.hparam: value} if method.hparam else {}
    hp.update(dict(method.fixed))
    ident = {method.hparam: value} if method.hparam else {}
    beta = value if method.own_beta else cfg.methods.eval_beta
    run = runs.prepare_run(out_dir, method.name, ident, seed,
                           {**run_config(cfg), 'loss': method.loss, 'hparams': hp},
                           experiment='exact_frontier')
    specs.append((run, hp, beta, seed))
  pending = [spec for spec in specs if not runs.is_complete(spec[0])]
  if not pending:
    _log(progress, f'{method.name}: {len(specs)} runs complete, skipped')
    return
  s = get_setup()
  _log(progress, f'{method.name}: {len(pending)} runs as one vectorized program'
       + (f' ({len(specs) - len(pending)} complete, skipped)' if len(pending) < len(specs) else ''))
  betas = [beta for _, _, beta, _ in pending]

  def eval_fn(state_R, step):
    del step
    return [evaluate_params(s, sweep.run_state(state_R['params'], i), b) for i, b in enumerate(betas)]

  t0 = time.time()
  state = sweep.fit_sweep(
      _loss_fn(s, method), s.ref_params,
      sweep.SweepBatches(s.pairs, cfg.train.batch_size, [seed for *_, seed in pending]),
      sweep.stack_hparams([hp for _, hp, _, _ in pending]) if pending[0][1] else {},
      optimizer=cfg.train.resolved_optimizer(), n_steps=cfg.train.steps,
      run_dirs=[run for run, *_ in pending],
      configs=[json.loads((run / 'config.json').read_text()) for run, *_ in pending],
      shared={'ref_params': s.ref_params} if method.needs_ref_params else None, mesh=s.mesh,
      save_every=cfg.train.save_every, eval_fn=eval_fn, eval_every=cfg.train.eval_every,
      log_every=max(cfg.train.eval_every // 5, 1), desc=method.name, progress=progress)
  for i, (run, *_) in enumerate(pending):
    runs.write_jsonl(run / 'win_rate.jsonl', win_rates(s, sweep.run_state(state['params'], i)))
    runs.mark_complete(run, wall_s=time.time() - t0, vectorized_with=len(pending))


def _best_of_n(cfg: ExactFrontierConfig, get_setup, out_dir: Path, progress: bool) -> None:
  beta = cfg.methods.eval_beta
  for n in cfg.methods.best_of_n:
    run = runs.prepare_run(out_dir, 'best_of_n', {'n': n}, 0, run_config(cfg),
                           experiment='exact_frontier')
    if runs.is_complete(run):
      continue
    s = get_setup()
    logp = _best_of_n_logp(s.ref_logp, s.r, n)
    row = _row(_evaluate_logp(logp, jnp.float32(beta), s.ref_logp, s.r, s.heldout), beta)
    row['kl_bound'] = float(exact.best_of_n_kl_bound(n))  # Beirami et al., arXiv 2401.01879
    runs.write_jsonl(run / 'eval.jsonl', [{'step': 0, **row}])
    # Best-of-N draws its N candidates from π_ref at temperature 1.
    runs.write_jsonl(run / 'win_rate.jsonl', [{'temperature': 1.0, 'win_rate': float(
        _win_rate(logp, s.ref_logp, s.r))}])
    runs.mark_complete(run)
  _log(progress, f'best_of_n: {len(cfg.methods.best_of_n)} exact points')


def run(cfg: ExactFrontierConfig, out_dir: str | Path, *, progress: bool = True):
  out_dir = Path(out_dir)
  unknown = sorted(set(cfg.methods.run) - set(METHODS))
  if unknown:
    raise ConfigError(f'methods.run: unknown methods {unknown}; known: {", ".join(METHODS)}')
  # Built on first need: resuming a finished experiment touches no stage.
  get_setup = functools.cache(lambda: setup(cfg, out_dir, progress))
  if not (out_dir / 'frontier.csv').exists():
    frontier_table(get_setup()).to_csv(out_dir / 'frontier.csv', index=False)
  table = preference_methods(cfg.methods)
  for name in cfg.methods.run:
    if name in table:
      _train_preference(cfg, get_setup, out_dir, table[name], progress)
    elif name == 'best_of_n':
      _best_of_n(cfg, get_setup, out_dir, progress)
    elif rl_available():
      _exact_rl.train(cfg, get_setup, out_dir, name, run_config(cfg), progress)
    else:
      _log(progress, f'{name}: skipped (alignlab/train/ppo.py provides no train_ppo)')
  return runs.collect_results(out_dir)


# ---------------------------------------------------------------------------------------------
# Plots and re-evaluation (the runner's optional hooks)


def plot(df, out_dir: str | Path) -> list[Path]:
  import pandas as pd
  from alignlab import plots
  out_dir = Path(out_dir)
  frontier_csv = out_dir / 'frontier.csv'
  frontier = pd.read_csv(frontier_csv) if frontier_csv.exists() else None
  paths = [plots.plot_frontier(df, out_dir / 'frontier.png', frontier,
                               title='exact task: every evaluation against the frontier of π*'),
           plots.plot_gap(df, out_dir / 'gap.png')]
  wr_csv = out_dir / 'win_rates.csv'
  if wr_csv.exists():
    paths.append(plots.plot_win_rates(pd.read_csv(wr_csv), out_dir / 'win_rates.png'))
  return paths


def evaluate_run(cfg: ExactFrontierConfig, run_dir: str | Path) -> dict:
  """Exact evaluation of a run dir's latest checkpoint (or, for Best-of-N, of its n)."""
  from alignlab.checkpoint import Checkpointer
  from alignlab.train.optim import make_optimizer
  from alignlab.train.step import init_state
  run_dir = Path(run_dir)
  record = json.loads((run_dir / 'config.json').read_text())
  method, hparams, seed = record['method'], record['hparams'], record['seed']
  s = setup(cfg, run_dir.parent, progress=False)
  if method == 'best_of_n':
    logp = _best_of_n_logp(s.ref_logp, s.r, hparams['n'])
    beta = cfg.methods.eval_beta
    return {'step': 0, **_row(_evaluate_logp(logp, jnp.float32(beta), s.ref_logp, s.r, s.heldout),
                              beta)}
  if method in RL_METHODS:
    value = next(iter(hparams.values()))
    step, params = _exact_rl.restore_policy(cfg, s, run_dir, method, value, seed)
    return {'step': step, **s.evaluate(params, _exact_rl.objective_beta(cfg, method, value))}
  ckpt = Checkpointer(run_dir / 'checkpoints', {})
  step = ckpt.latest_step()
  if step is None:
    raise runs.RunDirError(f'{run_dir} has no checkpoint')
  template = init_state(s.ref_params, make_optimizer(cfg.train.resolved_optimizer()),
                        jax.random.key(0))
  state = ckpt.restore(template, step)
  ckpt.close()
  table = preference_methods(cfg.methods)
  beta = hparams['beta'] if method in table and table[method].own_beta else cfg.methods.eval_beta
  return {'step': step, **s.evaluate(state['params'], beta)}
