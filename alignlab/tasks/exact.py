"""The exact task: how close does each method get to the optimum π*_β of
J_β(π) = E r − β·KL(π‖π_ref) when every quantity is computed exactly (`exact_math.py`)?

Stages (cached, `alignlab/stages.py`):
1. `exact_sft`: π_ref, the transformer SFT'd on samples of an analytic reference; from then on
   its exact log-probs over every response define the task's reference.
2. `exact_pairs`: pairs y1, y2 ~ π_ref labelled by the Bradley–Terry model of the gold reward
   (arXiv 2305.18290 Eq. 1), π_ref's log-probs precomputed, and held-out pairs. With
   `pairs.support_size` > 0 the training pairs mention only that many responses per prompt,
   and every point also reports `off_support_mass` (Xu et al. 2024, arXiv 2404.10719, §4).
3. `exact_rm` (on first need): a Bradley–Terry reward model on the same pairs, normalized so
   that π_ref's responses score mean 0, std 1 with the exact π_ref-weighted moments (Ziegler et
   al. 2019, arXiv 1909.08593).

A point is exact: E r, KL(π‖π_ref), J_β, the gap J_β(π*) − J_β(π) = β·KL(π‖π*) and its
fraction of π_ref's gap, the frontier's reward at the run's KL (`reward_shortfall` =
frontier_reward − gold_reward ≥ 0 is β-free), and the accuracy of β·log π/π_ref on held-out
pairs ordered by gold reward. β is the method's own β where it has one, else `eval_beta`.
Best-of-N is exact too (`exact_math.best_of_n_logp`: its true KL, not the analytic bound),
ranked by the gold reward or by the reward model (`best_of_n_reward`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignlab import sharding, stages
from alignlab.config import (ConfigError, ModelConfig, OptimizerConfig, SamplingConfig,
                             split_fields, to_dict)
from alignlab.evaluate import TEMPERATURES
from alignlab.heads import CausalLM, ScalarModel, embedding_from_lm, last_token_value
from alignlab.tasks import exact_math as em
from alignlab.train import preference, reward_model, sft
from alignlab.train.batches import ArrayBatches
from alignlab.train.fit import fit

GREEDY_TEMPERATURE = 1e-6  # T = 0: logits / 1e-6 make every row one-hot


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
  # > 0: the training pairs mention only this many responses per prompt (`em.support_mask`,
  # drawn from `seed`; both responses of a pair ~ π_ref restricted to them), and evaluation
  # reports the mass off that support (Xu et al. 2024, arXiv 2404.10719, §4). Held-out pairs
  # stay on every response. 0 (off) is left out of the cache key, so keys made before the
  # field existed still match.
  support_size: int = 0


def pairs_record(pc: PairsConfig) -> dict:
  """The pairs stage's part of the cache key and run identity: its fields, less `support_size`
  when it is off."""
  record = to_dict(pc)
  if not pc.support_size:
    del record['support_size']
  return record


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  steps: int = 300
  batch_size: int = 256
  learning_rate: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Config:
  problem: em.ExactTaskConfig = em.ExactTaskConfig()
  # The architecture; the vocabulary, length and masked ids are set from `problem`.
  model: ModelConfig = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128)
  sft: SFTConfig = SFTConfig()
  pairs: PairsConfig = PairsConfig()
  reward_model: RewardModelConfig = RewardModelConfig()
  eval_beta: float = 0.3  # the β of J_β for methods that have none of their own
  win_rate_temperatures: tuple[float, ...] = TEMPERATURES
  frontier_points: int = 81
  # What Best-of-N ranks its N candidates by: 'gold' (the true reward: the best any reranker
  # can do) or 'model' (the reward model learned from the same pairs, as in the pipeline's
  # RLHF arm). Part of the evaluation key only when it is not 'gold', so older keys match.
  best_of_n_reward: str = 'gold'


# Jitted once per process: eager calls would compile every small op anew.
_sample_pairs = jax.jit(em.sample_pairs_bt, static_argnums=(1, 4))
best_of_n_logp = jax.jit(em.best_of_n_logp)
win_rate = jax.jit(em.exact_win_rate)
_frontier = jax.jit(em.frontier)
_mean_kl = jax.jit(lambda logp, ref_logp: em.kl(logp, ref_logp).mean())
_frontier_reward_at_kl = jax.jit(em.frontier_reward_at_kl)
BEST_OF_N_REWARDS = ('gold', 'model')


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sft_responses(problem: em.ExactTaskConfig, key: jax.Array, n: int):
  """n responses per prompt from the analytic reference: (analytic logp_PxY, responses (P·n, R))."""
  analytic_PxY = em.random_reference(problem)
  index_PxN = jax.random.categorical(key, analytic_PxY, axis=-1, shape=(n, problem.n_prompts)).T
  return analytic_PxY, em.response_from_index(problem, index_PxN.reshape(-1))


def model_config(cfg: Config) -> ModelConfig:
  return dataclasses.replace(cfg.model, vocab_size=em.model_vocab_size(cfg.problem),
                             max_seq_len=cfg.problem.length + 1,
                             masked_output_ids=em.masked_output_ids(cfg.problem))


def _init(cfg: Config, mesh):
  mcfg = model_config(cfg)
  return sharding.init_params(lambda rngs: CausalLM(mcfg, rngs=rngs), mesh,
                              jax.random.key(cfg.sft.seed))


def sft_key(cfg: Config) -> dict:
  return {'task': cfg.problem, 'model': model_config(cfg), 'sft': cfg.sft}


def _build_sft(cfg: Config, mesh, progress: bool, out: Path, work: Path) -> None:
  problem = cfg.problem
  graphdef, params = _init(cfg, mesh)
  analytic_PxY, responses_NxR = _sft_responses(problem, jax.random.key(cfg.sft.seed),
                                               cfg.sft.samples_per_prompt)
  prompt_N = np.repeat(np.arange(problem.n_prompts), cfg.sft.samples_per_prompt)
  tokens = em.make_sequences(problem, prompt_N, np.asarray(responses_NxR))
  attn_T, resp_T = em.sequence_masks(problem)
  data = {'tokens': tokens, 'attention_mask': np.tile(attn_T, (len(tokens), 1)),
          'response_mask': np.tile(resp_T, (len(tokens), 1))}
  key = sft_key(cfg)
  state = fit(sft.make_loss_fn(graphdef), params, ArrayBatches(data, cfg.sft.batch_size,
                                                               seed=cfg.sft.seed),
              optimizer=OptimizerConfig(learning_rate=cfg.sft.learning_rate), n_steps=cfg.sft.steps,
              run_dir=work / 'sft', config=key, mesh=mesh, seed=cfg.sft.seed,
              save_every=max(cfg.sft.steps // 4, 1), log_every=10, desc='sft π_ref',
              progress=progress)
  ref_params = state['params']
  ref_logp = exact_policy_logp(graphdef, ref_params, problem)
  stages.save_params(out / 'params', ref_params, key)
  np.save(out / 'ref_logp.npy', np.asarray(ref_logp))
  (out / 'info.json').write_text(json.dumps(
      {'kl_analytic_to_sft': float(_mean_kl(analytic_PxY, ref_logp))}))


def _build_pairs(cfg: Config, graphdef, ref_params, ref_logp, r, out: Path, work: Path) -> None:
  del work
  problem, pc = cfg.problem, cfg.pairs
  draw_logp = None
  if pc.support_size:
    support_PxY = em.support_mask(problem, pc.support_size, pc.seed)
    np.save(out / 'support.npy', support_PxY)
    # π_ref renormalized onto the support: a response off it is never drawn.
    draw_logp = jnp.where(jnp.asarray(support_PxY), ref_logp, -jnp.inf)
  pairs = _sample_pairs(jax.random.key(pc.seed), problem, ref_logp, r, pc.pairs_per_prompt,
                        draw_logp)
  batch = preference.reference_logps(graphdef, ref_params, em.preference_batch(problem, pairs),
                                     prompt_len=1, batch_size=512)
  np.savez(out / 'train.npz', **batch)
  held = _sample_pairs(jax.random.key(pc.seed + 7919), problem, ref_logp, r, pc.heldout_per_prompt)
  np.savez(out / 'heldout.npz', prompt_index=held.prompt_index, first_index=held.chosen_index,
           second_index=held.rejected_index, first_score=held.chosen_score,
           second_score=held.rejected_score)


@functools.partial(jax.jit, static_argnames=('graphdef', 'problem'))
def exact_policy_logp(graphdef, params, problem: em.ExactTaskConfig,
                      temperature: float | jax.Array = 1.0) -> jax.Array:
  """log π(y|x) of every response, (P, Y), of a `CausalLM` whose next-token logits are divided
  by `temperature` (traced; per-token tempering, as a sampler does)."""
  model = nnx.merge(graphdef, params)
  return em.policy_logprobs_all(lambda t, m: model(t, m) / temperature, problem)


@functools.partial(jax.jit, static_argnames=('graphdef', 'n_rows', 'n_prompts'))
def _score_table(graphdef, params, tokens_GxBxT, *, n_rows: int, n_prompts: int):
  model = nnx.merge(graphdef, params)

  def one(tokens_BxT):
    mask_BxT = jnp.ones_like(tokens_BxT)
    return last_token_value(model(tokens_BxT, mask_BxT), mask_BxT)

  scores_GxB = jax.lax.map(one, tokens_GxBxT)
  return scores_GxB.reshape(-1)[:n_rows].reshape(n_prompts, -1)


def reward_table(problem: em.ExactTaskConfig, graphdef, params, *, batch_size: int = 4096) -> jax.Array:
  """A scalar model's score of every (prompt, response), (P, Y) in lexicographic order: the
  learned reward that PPO optimizes and Best-of-N ranks by."""
  tokens_NxT = em.full_sequences(problem).reshape(-1, problem.length + 1)
  n_rows = tokens_NxT.shape[0]
  batch_size = min(batch_size, n_rows)
  n_batches = -(-n_rows // batch_size)
  padded_NxT = np.concatenate([tokens_NxT, np.broadcast_to(
      tokens_NxT[:1], (n_batches * batch_size - n_rows, tokens_NxT.shape[1]))])
  return _score_table(graphdef, params, jnp.asarray(padded_NxT.reshape(n_batches, batch_size, -1)),
                      n_rows=n_rows, n_prompts=problem.n_prompts)


def _build_reward_model(cfg: Config, env: dict, out: Path, work: Path) -> None:
  rc = cfg.reward_model
  graphdef, params = sharding.init_params(lambda k: ScalarModel(env['model_cfg'], rngs=k),
                                          env['mesh'], jax.random.key(7))
  params = embedding_from_lm(env['ref_params'], params)
  key = {'pairs': env['run_key'], 'rm': to_dict(rc)}
  state = fit(reward_model.make_loss_fn(graphdef), params,
              ArrayBatches(env['pairs'], rc.batch_size, seed=0),
              optimizer=OptimizerConfig(learning_rate=rc.learning_rate), n_steps=rc.steps,
              run_dir=work / 'rm', config=key, mesh=env['mesh'], log_every=10,
              desc='reward model', progress=env['progress'])
  params = state['params']
  # π_ref's responses score mean 0, std 1, with the exact π_ref-weighted moments.
  table = np.asarray(reward_table(cfg.problem, graphdef, params), np.float64)
  p = np.exp(np.asarray(env['ref_logp'], np.float64))
  p /= p.sum(-1, keepdims=True)
  mean = float((p * table).sum() / table.shape[0])
  std = float(np.sqrt((p * (table - mean) ** 2).sum() / table.shape[0]))
  params = {**params, 'gain': params['gain'] / std, 'bias': (params['bias'] - mean) / std}
  stages.save_params(out / 'params', params, key)
  corr = float(np.corrcoef(((table - mean) / std).ravel(), np.asarray(env['r']).ravel())[0, 1])
  (out / 'info.json').write_text(json.dumps({'corr_with_gold': corr}))


@functools.partial(jax.jit, static_argnames=('graphdef', 'problem'))
def _evaluate_params(graphdef, problem, params, beta, ref_logp, r, heldout):
  return evaluate_logp(exact_policy_logp(graphdef, params, problem), beta, ref_logp, r, heldout)


@jax.jit
def evaluate_logp(logp, beta, ref_logp, r, heldout):
  m = em.exact_metrics(logp, ref_logp, r, beta)
  frontier = em.frontier_reward_at_kl(ref_logp, r, m['kl'])
  acc = em.exact_implicit_accuracy(logp, ref_logp, *heldout, beta=beta)
  return {'gold_reward': m['reward'], 'kl': m['kl'], 'objective': m['objective'],
          'optimal_objective': m['optimal_objective'], 'gap': m['gap'],
          'gap_fraction': m['gap_fraction'], 'frontier_reward': frontier,
          'reward_shortfall': frontier - m['reward'],
          'implicit_accuracy': acc['implicit_accuracy']}


@jax.jit
def support_metrics(logp, support, ref_logp, r, beta):
  """The mass π puts off the data's support; for scale, the mass π*_β puts there (π* follows
  the gold reward everywhere, so it is what a method that generalizes correctly off the support
  would reach; Xu et al. 2024, arXiv 2404.10719, §4); and `support_split_gap_fraction`, the part
  of `gap_fraction` due to the split of mass between the support and the rest alone
  (`em.support_split_kl`)."""
  star_logp = em.optimal_policy(ref_logp, r, beta)
  ref_gap = em.gap(ref_logp, ref_logp, r, beta).mean()
  split_gap = beta * em.support_split_kl(logp, star_logp, support).mean()
  return {'off_support_mass': em.off_support_mass(logp, support),
          'optimal_off_support_mass': em.off_support_mass(star_logp, support),
          'support_split_gap_fraction': split_gap / jnp.maximum(ref_gap, jnp.finfo(jnp.float32).tiny)}


def exact_row(metrics: dict, beta: float) -> dict:
  """A results row of `evaluate_logp`'s metrics: exact, so no sampling error."""
  row = {k: float(v) for k, v in jax.device_get(metrics).items()}
  return {**row, 'gold_reward_stderr': 0.0, 'kl_stderr': 0.0, 'beta': float(beta)}


def setup(cfg: Config, *, mesh, progress: bool = True, log=print) -> dict:
  """Builds (or reads) π_ref and the pairs; returns the task's env (`alignlab/tasks/__init__.py`)."""
  cfg.problem.validate()
  if cfg.best_of_n_reward not in BEST_OF_N_REWARDS:
    raise ConfigError(f'task.best_of_n_reward={cfg.best_of_n_reward!r}; expected one of '
                      f'{BEST_OF_N_REWARDS}')
  sft_dir, cached = stages.cached_stage('exact_sft', sft_key(cfg),
                                        functools.partial(_build_sft, cfg, mesh, progress))
  graphdef, like = _init(cfg, mesh)
  ref_params = stages.restore_params(sft_dir / 'params', like, sft_key(cfg))
  ref_logp = jnp.asarray(np.load(sft_dir / 'ref_logp.npy'))
  info = stages.read_json(sft_dir / 'info.json')
  if not cached:
    log(f'π_ref trained (KL(analytic ‖ π_ref) = {info["kl_analytic_to_sft"]:.4f}): {sft_dir}')
  r = jnp.asarray(em.gold_reward(cfg.problem))
  pairs_key = {'sft': sft_key(cfg), 'pairs': pairs_record(cfg.pairs)}
  pairs_dir, _ = stages.cached_stage(
      'exact_pairs', pairs_key,
      functools.partial(_build_pairs, cfg, graphdef, ref_params, ref_logp, r))
  with np.load(pairs_dir / 'train.npz') as f:
    pairs = {k: f[k] for k in f.files}
  with np.load(pairs_dir / 'heldout.npz') as f:
    heldout = tuple(jnp.asarray(f[k]) for k in ('prompt_index', 'first_index', 'second_index',
                                                 'first_score', 'second_score'))
  support = (jnp.asarray(np.load(pairs_dir / 'support.npy')) if cfg.pairs.support_size
             else None)
  env = {'name': 'exact', 'mesh': mesh, 'progress': progress, 'model_cfg': model_config(cfg),
         'graphdef': graphdef, 'ref_params': ref_params, 'ref_logp': ref_logp, 'r': r,
         'prompt_len': 1, 'pairs': pairs, 'run_key': to_dict(pairs_key),
         'eval_key': split_fields(cfg, EVAL_FIELDS + (
             ('best_of_n_reward',) if cfg.best_of_n_reward != 'gold' else ()))[1],
         'stages': {'sft': str(sft_dir), 'pairs': str(pairs_dir)}}

  def with_support(row, logp, beta):
    if support is None:
      return row
    metrics = support_metrics(logp, support, ref_logp, r, jnp.float32(beta))
    return {**row, **{k: float(v) for k, v in jax.device_get(metrics).items()}}

  def evaluate(params, beta=None):
    beta = cfg.eval_beta if beta is None else beta
    row = exact_row(_evaluate_params(graphdef, cfg.problem, params, jnp.float32(beta), ref_logp, r,
                                 heldout), beta)
    if support is None:
      return row
    return with_support(row, exact_policy_logp(graphdef, params, cfg.problem), beta)

  def win_rates(params):
    rows = []
    for t in cfg.win_rate_temperatures:
      logp = exact_policy_logp(graphdef, params, cfg.problem,
                               jnp.float32(max(t, GREEDY_TEMPERATURE)))
      rows.append({'temperature': float(t), 'win_rate': float(win_rate(logp, ref_logp, r))})
    return rows

  def best_of_n(n):
    # The exact law of the best of n draws from π_ref by the ranking reward (`best_of_n_reward`).
    ranking = r if cfg.best_of_n_reward == 'gold' else reward_table_()
    logp = best_of_n_logp(ref_logp, ranking, n)
    row = exact_row(evaluate_logp(logp, jnp.float32(cfg.eval_beta), ref_logp, r, heldout),
               cfg.eval_beta)
    bound = em.best_of_n_kl_bound(n)  # log n − (n − 1)/n: Beirami et al., arXiv 2401.01879, §3
    row['kl_bound'] = float(bound)
    # Where a frontier plot that takes the bound as BoN's KL puts it: the frontier's reward at
    # the bound, against `frontier_reward` at the true KL.
    row['frontier_reward_at_bound'] = float(_frontier_reward_at_kl(ref_logp, r, bound))
    row = with_support(row, logp, cfg.eval_beta)
    # Best-of-N draws its N candidates from π_ref at temperature 1.
    return row, [{'temperature': 1.0, 'win_rate': float(win_rate(logp, ref_logp, r))}]

  @functools.cache
  def reward_model_():
    from alignlab.train.rollout import RewardModel
    rm_key = {'pairs': env['run_key'], 'rm': to_dict(cfg.reward_model)}
    path, _ = stages.cached_stage('exact_rm', rm_key,
                                  functools.partial(_build_reward_model, cfg, env))
    rm_graphdef, rm_like = sharding.init_params(lambda k: ScalarModel(env['model_cfg'], rngs=k),
                                                mesh, jax.random.key(7))
    return RewardModel(rm_graphdef, stages.restore_params(path / 'params', rm_like, rm_key))

  @functools.cache
  def reward_table_():
    """The reward model's (normalized) score of every response, (P, Y)."""
    rm = reward_model_()
    return reward_table(cfg.problem, rm.graphdef, rm.params)

  def rl_prompts(seed, k, rollouts):
    del seed  # every iteration samples every prompt
    rows = max(rollouts // (cfg.problem.n_prompts * k), 1)
    prompt_B = np.repeat(em.prompt_tokens(cfg.problem), rows)[:, None]
    return lambda step: (prompt_B, np.ones_like(prompt_B))

  def frontier():
    import pandas as pd
    betas = np.geomspace(0.01, 100.0, cfg.frontier_points)
    kl, reward = _frontier(ref_logp, r, jnp.asarray(betas, jnp.float32))
    return pd.DataFrame({'beta': betas, 'kl': np.asarray(kl), 'gold_reward': np.asarray(reward)})

  env.update(evaluate=evaluate, win_rates=win_rates, best_of_n=best_of_n,
             reward_model=reward_model_, gold=em.exact_task_reward(cfg.problem),
             rl_prompts=rl_prompts, frontier=frontier,
             rl_sampling=SamplingConfig(max_new_tokens=cfg.problem.length, eos_id=-1, pad_id=0))
  return env


VERDICT = ('gap_fraction', 'min')  # how far from π* at each KL budget
BEST_BY = ('gap_fraction', 'min')
PLOTS = ('frontier', 'gap', 'win_rates')
# What evaluation alone reads (a change re-evaluates); `frontier_points` shapes frontier.csv
# only, which every run of the experiment recomputes.
EVAL_FIELDS = ('eval_beta', 'win_rate_temperatures')
