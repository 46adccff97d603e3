"""The K-armed preference bandit of Azar et al. 2023 (IPO, arXiv 2310.12036 §5.1): one prompt,
K = 3 actions, a uniform π_ref, and a fixed preference dataset —

    'total_order'      y1 ≻ y2, y2 ≻ y3, y1 ≻ y3 (every pair observed)
    'unobserved_pair'  y1 ≻ y2, y2 ≻ y3 (y1 vs y3 never observed)

each pair repeated `copies` times. The policy is a one-token transformer (the exact task's
layout with one prompt and responses of length 1, `exact_math.py`) whose untied LM head starts
at zero, so π_ref is exactly uniform; every quantity is computed exactly over the K actions.

The paper's finding, which this task lets one check: DPO's policy goes deterministic on y1 for
every β (the population optimum of its loss puts probability 0 on dominated actions), IPO's
stays near π_ref with a strength set by its τ (β here). A point reports π(y_k) for each action
beside the exact KL(π‖π_ref); `gold_reward` is the Borda score of the dataset (the fraction of
its comparisons an action wins), the reward J_β and the gap to π*_β are computed against.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from alignlab import sharding, stages
from alignlab.config import ModelConfig, OptimizerConfig, SamplingConfig, split_fields, to_dict
from alignlab.heads import CausalLM, ScalarModel, embedding_from_lm
from alignlab.tasks import exact_math as em
from alignlab.tasks.exact import best_of_n_logp, evaluate_logp, exact_policy_logp, exact_row, win_rate
from alignlab.train import reward_model
from alignlab.train.batches import ArrayBatches
from alignlab.train.fit import fit
from alignlab.train.rollout import RewardModel

DATASETS = {'total_order': ((0, 1), (1, 2), (0, 2)), 'unobserved_pair': ((0, 1), (1, 2))}


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = 'total_order'
  actions: int = 3
  copies: int = 3  # each observed pair this many times (the paper's batch of 9 is 3 × 3)
  model: ModelConfig = ModelConfig(d_model=8, n_layers=1, n_heads=1, d_ff=16,
                                   tie_embeddings=False)
  eval_beta: float = 0.1  # J_β of methods without a β of their own
  reward_model_steps: int = 200  # PPO's Bradley–Terry reward model on the pairs
  seed: int = 0

  def validate(self) -> None:
    if self.dataset not in DATASETS:
      raise ValueError(f'task.dataset={self.dataset!r}; expected one of {", ".join(DATASETS)}')
    if self.actions != 3:
      raise ValueError(f'task.actions={self.actions}: the datasets of Azar et al. have 3 actions')
    if self.copies < 1:
      raise ValueError(f'task.copies must be ≥ 1, got {self.copies}')


def problem(cfg: Config) -> em.ExactTaskConfig:
  return em.ExactTaskConfig(n_prompts=1, vocab=cfg.actions, length=1)


def borda(cfg: Config) -> np.ndarray:
  """(1, K): the fraction of the dataset's comparisons each action wins (0 if it is in none)."""
  wins, seen = np.zeros(cfg.actions), np.zeros(cfg.actions)
  for a, b in DATASETS[cfg.dataset]:
    wins[a] += 1
    seen[a] += 1
    seen[b] += 1
  return (wins / np.maximum(seen, 1))[None].astype(np.float32)


def pairs(cfg: Config) -> dict[str, np.ndarray]:
  """The dataset in the canonical layout, with π_ref's log-probs (log 1/K) precomputed."""
  chosen, rejected = np.asarray(DATASETS[cfg.dataset] * cfg.copies).T
  p = problem(cfg)
  first = em.prompt_tokens(p)[0]
  n = len(chosen)
  batch = {}
  for side, action in (('chosen', chosen), ('rejected', rejected)):
    batch[f'{side}_tokens'] = np.stack([np.full(n, first), action + em.RESPONSE_OFFSET], 1).astype(np.int32)
    batch[f'{side}_attention_mask'] = np.ones((n, 2), np.int32)
    batch[f'{side}_response_mask'] = np.tile(np.asarray([[0, 1]], np.int32), (n, 1))
    batch[f'ref_{side}_logps'] = np.full(n, -np.log(cfg.actions), np.float32)
  batch['chosen_score'] = borda(cfg)[0][chosen]
  batch['rejected_score'] = borda(cfg)[0][rejected]
  return batch


def model_config(cfg: Config) -> ModelConfig:
  p = problem(cfg)
  return dataclasses.replace(cfg.model, vocab_size=em.model_vocab_size(p), max_seq_len=2,
                             masked_output_ids=em.masked_output_ids(p))


def setup(cfg: Config, *, mesh, progress: bool = True, log=print) -> dict:
  """π_ref (uniform, no training) and the fixed dataset; the task's env."""
  cfg.validate()
  p, mcfg = problem(cfg), model_config(cfg)
  graphdef, params = sharding.init_params(lambda r: CausalLM(mcfg, rngs=r), mesh,
                                          jax.random.key(cfg.seed))
  ref_params = {**params, 'w_lm': jnp.zeros_like(params['w_lm'])}  # logits 0: uniform π_ref
  ref_logp = exact_policy_logp(graphdef, ref_params, p)
  r = jnp.asarray(borda(cfg))
  data = pairs(cfg)
  heldout = tuple(jnp.asarray(x) for x in (
      np.zeros(len(data['chosen_score']), np.int32), data['chosen_tokens'][:, 1] - 1,
      data['rejected_tokens'][:, 1] - 1, data['chosen_score'], data['rejected_score']))
  del log  # nothing is built: π_ref is uniform and the dataset fixed

  def point(logp, beta):
    row = exact_row(evaluate_logp(logp, jnp.float32(beta), ref_logp, r, heldout), beta)
    row.update({f'p_y{k + 1}': float(v) for k, v in enumerate(np.exp(np.asarray(logp)[0]))})
    return row

  def evaluate(params, beta=None):
    beta = cfg.eval_beta if beta is None else beta
    return point(exact_policy_logp(graphdef, params, p), beta)

  def win_rates(params):
    return [{'temperature': 1.0,
             'win_rate': float(win_rate(exact_policy_logp(graphdef, params, p), ref_logp, r))}]

  def best_of_n(n):
    logp = best_of_n_logp(ref_logp, r, n)
    return point(logp, cfg.eval_beta), [{'temperature': 1.0,
                                         'win_rate': float(win_rate(logp, ref_logp, r))}]

  def init_rm():
    return sharding.init_params(lambda k: ScalarModel(mcfg, rngs=k), mesh,
                                jax.random.key(cfg.seed + 1))

  def build_rm(out, work):
    rm_graphdef, rm_params = init_rm()
    state = fit(reward_model.make_loss_fn(rm_graphdef), embedding_from_lm(ref_params, rm_params),
                ArrayBatches(data, len(data['chosen_score']), seed=cfg.seed),
                optimizer=OptimizerConfig(learning_rate=1e-2), n_steps=cfg.reward_model_steps,
                run_dir=work, config=to_dict(cfg), mesh=mesh, desc='reward model',
                progress=progress)
    stages.save_params(out / 'params', state['params'], to_dict(cfg))

  @functools.cache
  def reward_model_():
    path, _ = stages.cached_stage('bandit_rm', to_dict(cfg), build_rm)
    rm_graphdef, like = init_rm()
    return RewardModel(rm_graphdef, stages.restore_params(path / 'params', like, to_dict(cfg)))

  def gold(tokens_BxT, attention_mask_BxT, response_mask_BxT):
    del attention_mask_BxT, response_mask_BxT
    return np.asarray(r)[0][np.asarray(tokens_BxT)[:, 1] - em.RESPONSE_OFFSET]

  def rl_prompts(seed, k, rollouts):
    del seed
    prompt_B = np.repeat(em.prompt_tokens(p), max(rollouts // k, 1))[:, None]
    return lambda step: (prompt_B, np.ones_like(prompt_B))

  run_key, eval_key = split_fields(cfg, EVAL_FIELDS)
  env = {'name': 'bandit', 'mesh': mesh, 'progress': progress, 'model_cfg': mcfg,
         'graphdef': graphdef, 'ref_params': ref_params, 'prompt_len': 1, 'pairs': data,
         'run_key': run_key, 'eval_key': eval_key,
         'evaluate': evaluate, 'win_rates': win_rates, 'best_of_n': best_of_n,
         'reward_model': reward_model_, 'gold': gold,
         'rl_prompts': rl_prompts, 'rl_sampling': SamplingConfig(max_new_tokens=1, eos_id=-1),
         'stages': {}}
  return env


VERDICT = ('objective', 'max')
BEST_BY = ('objective', 'max')
PLOTS = ('frontier',)
EVAL_FIELDS = ('eval_beta',)  # what evaluation alone reads (a change re-evaluates)
