"""RLHF by PPO with a KL penalty, and its variants on the same rollout engine: PPO-GT (the gold
reward as the reward function), RLOO and GRPO.

One iteration = one rollout batch (`train/rollout.py`) + one jitted update:

1. Rewards. The KL to π_ref enters in one of two forms (`kl_penalty`):
   - 'reward': the per-token penalty −β·(log π − log π_ref) (the k1 estimate) added to the
     reward, with the score at the last token (Ziegler et al. 2019, arXiv 1909.08593, Eq. 2;
     InstructGPT, arXiv 2203.02155, Eq. 2; Huang et al. 2024, arXiv 2403.17031);
   - 'loss': a term β·k(π, π_ref) averaged over tokens in the loss (`kl_estimator`: k1, k2 or
     k3 of Schulman 2020; k3 = ρ − 1 − log ρ with ρ = π_ref/π is GRPO's, Shao et al. 2024,
     arXiv 2402.03300, Eq. 4), optionally weighted by π_θ/π_old (`kl_ratio_correction`,
     DeepSeek-V3.2 §3.1 Eq. 7; `losses.ppo.kl_penalty_loss` says what each gradient is).
   β is fixed or follows the adaptive controller of Ziegler et al. (§2.2): e = clip(KL/target −
   1, ±0.2), β ← β·(1 + e·n/horizon), n the episodes of the batch.
2. Advantages.
   - 'ppo': a value function (a separate `ScalarModel`) and GAE (Schulman et al. 2016, arXiv
     1506.02438; γ = 1, λ = 0.95), optional reward whitening without mean shift and advantage
     whitening (Huang et al. 2024);
   - 'rloo': k samples per prompt and the leave-one-out baseline on the sequence reward
     R = score − β·Σ_t(log π − log π_ref) (Ahmadian et al. 2024, arXiv 2402.14740);
   - 'grpo': k samples per prompt, A = (r − mean)/std within the group, KL in the loss
     (arXiv 2402.03300 §4.1.2), the loss averaged per sequence then over sequences (Eq. 3).
3. `ppo_epochs` passes over the batch in `num_minibatches` minibatches, each a clipped policy
   loss (Schulman et al. 2017, arXiv 1707.06347, Eq. 7) + vf_coef × clipped value loss. The
   minibatch permutation comes from the state's RNG, so a resumed run replays exactly.

The whole update (rewards, GAE, every epoch and minibatch, the KL controller) is one jitted
program with the old state donated. `train_ppo` runs iterations with `train/fit.py`'s loop:
resume from the latest orbax checkpoint, progress bar, `metrics.jsonl`, NaN guard.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from alignlab import distributed, sharding
from alignlab.config import ConfigError, OptimizerConfig, SamplingConfig, to_dict
from alignlab.heads import ScalarModel, embedding_from_lm
from alignlab.losses.ppo import (adaptive_kl_update, gae, grpo_advantages, kl_k1, kl_k2, kl_k3,
                                 kl_penalty_loss, masked_mean, masked_whiten, per_token_rewards,
                                 ppo_policy_loss, ppo_value_loss, rloo_advantages)
from alignlab.sampling import sample
from alignlab.train.fit import TrainingDiverged, diverged_message, loop
from alignlab.train.optim import apply_updates, make_optimizer
from alignlab.train.rollout import (GoldReward, RewardModel, Rollout, check_sampling,
                                    evaluate_samples, logps_from_response_logits,
                                    response_logits, shifted_values)

ALGORITHMS = ('ppo', 'rloo', 'grpo')


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """PPO-with-KL and its variants. Defaults follow Huang et al. 2024 (arXiv 2403.17031) and
  Ziegler et al. 2019 (arXiv 1909.08593)."""
  algorithm: str = 'ppo'  # 'ppo' | 'rloo' | 'grpo'
  n_iterations: int = 100  # rollout + update iterations
  samples_per_prompt: int = 1  # k responses per prompt of `prompts_fn` (≥ 2 for rloo / grpo)
  sampling: SamplingConfig = SamplingConfig()
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-6, eps=1e-5)
  value_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-6, eps=1e-5)
  ppo_epochs: int = 4
  num_minibatches: int = 1
  clip_eps: float = 0.2
  value_clip_eps: float = 0.2
  # The value function has its own optimizer (and learning rate); vf_coef scales its gradient,
  # which with Adam matters through the clip and ε, as in Huang et al.'s joint optimizer.
  vf_coef: float = 0.1
  gamma: float = 1.0
  lam: float = 0.95
  whiten_rewards: bool = False  # scale per-token rewards by their std, keeping the mean
  whiten_advantages: bool = True  # ppo and rloo; GRPO's advantages are group-normalized already
  kl_penalty: str = 'auto'  # 'reward' (k1 in the reward) | 'loss' | 'auto' (loss for grpo)
  kl_estimator: str = 'auto'  # the KL in the loss: 'k1' | 'k2' | 'k3' | 'auto' (k3)
  kl_ratio_correction: bool = False  # the KL in the loss weighted by π_θ/π_old per token
  kl_coef: float = 0.05  # β, or its initial value under the adaptive controller
  kl_controller: str = 'fixed'  # 'fixed' | 'adaptive'
  kl_target: float = 6.0  # nats per sequence, adaptive controller only
  kl_horizon: float = 10_000.0  # episodes, adaptive controller only
  kl_measure: str = 'k1'  # the KL the controller sees: 'k1' (Ziegler et al.) | 'exact'
  no_eos_score: float | None = None  # the score of a response without EOS (e.g. −1)
  loss_aggregation: str = 'auto'  # 'token' | 'sequence' (GRPO's Eq. 3) | 'auto'
  seed: int = 0
  save_every: int = 0

  @property
  def resolved_kl_penalty(self) -> str:
    if self.kl_penalty == 'auto':
      return 'loss' if self.algorithm == 'grpo' else 'reward'
    return self.kl_penalty

  @property
  def resolved_kl_estimator(self) -> str:
    if self.kl_estimator == 'auto':
      return 'k3' if self.resolved_kl_penalty == 'loss' else 'k1'
    return self.kl_estimator

  @property
  def resolved_loss_aggregation(self) -> str:
    if self.loss_aggregation == 'auto':
      return 'sequence' if self.algorithm == 'grpo' else 'token'
    return self.loss_aggregation

  @property
  def uses_value(self) -> bool:
    return self.algorithm == 'ppo'

  def validate(self) -> None:
    for key, value, allowed in (('algorithm', self.algorithm, ALGORITHMS),
                                ('kl_penalty', self.kl_penalty, ('auto', 'reward', 'loss')),
                                ('kl_controller', self.kl_controller, ('fixed', 'adaptive')),
                                ('kl_measure', self.kl_measure, ('k1', 'exact')),
                                ('kl_estimator', self.kl_estimator, ('auto', 'k1', 'k2', 'k3')),
                                ('loss_aggregation', self.loss_aggregation,
                                 ('auto', 'token', 'sequence'))):
      if value not in allowed:
        raise ConfigError(f'ppo.{key}={value!r}; expected one of {allowed}')
    if self.resolved_kl_penalty == 'reward' and (self.resolved_kl_estimator != 'k1'
                                                 or self.kl_ratio_correction):
      raise ConfigError('ppo.kl_estimator / kl_ratio_correction choose the KL in the loss; the KL '
                        "in the reward is k1 per token (set ppo.kl_penalty='loss')")
    if self.algorithm in ('rloo', 'grpo') and self.samples_per_prompt < 2:
      raise ConfigError(f'ppo.algorithm={self.algorithm!r} needs samples_per_prompt ≥ 2, got '
                        f'{self.samples_per_prompt}')
    if self.samples_per_prompt < 1 or self.ppo_epochs < 1 or self.num_minibatches < 1:
      raise ConfigError('ppo.samples_per_prompt, ppo_epochs and num_minibatches must be ≥ 1')
    if self.kl_controller == 'adaptive' and not (self.kl_target > 0 and self.kl_horizon > 0):
      raise ConfigError('the adaptive KL controller needs kl_target > 0 and kl_horizon > 0')
    if self.no_eos_score is not None and self.sampling.eos_id < 0:
      raise ConfigError('ppo.no_eos_score needs sampling.eos_id ≥ 0')
    check_sampling(self.sampling)


# ---------------------------------------------------------------------------------------------
# Value function initialization


def init_value_model(model_cfg, mesh, key: jax.Array, *, reward_params: dict | None = None,
                     policy_params: dict | None = None, zero_head: bool = False):
  """`(graphdef, params)` of the value function, a separate `ScalarModel` with the policy's
  architecture. Initialized from the reward model (the default in Huang et al. 2024), or with
  the policy's backbone (`policy_params`), or fresh. zero_head=True zeroes the scalar head and
  resets the gain and bias (Ziegler et al. 2019 zero-initialize the value head)."""
  if reward_params is not None and policy_params is not None:
    raise ValueError('initialize the value function from the reward model or the policy, not both')
  graphdef, params = sharding.init_params(
      lambda r: ScalarModel(model_cfg, rngs=r, zero_init_head=zero_head), mesh, key)
  if reward_params is not None:
    params = jax.tree.map(jnp.copy, reward_params)
  elif policy_params is not None:
    params = embedding_from_lm(jax.tree.map(jnp.copy, policy_params), params)
  if zero_head:
    params = {**params, 'w_head': jnp.zeros_like(params['w_head']),
              'b_head': jnp.zeros_like(params['b_head']),
              'gain': jnp.ones_like(params['gain']), 'bias': jnp.zeros_like(params['bias'])}
  return graphdef, params


# ---------------------------------------------------------------------------------------------
# Advantages


def rollout_stats(ro: Rollout, kl_coef: jax.Array) -> dict[str, jax.Array]:
  """Sequence-level statistics of a rollout: KL estimates summed over the response (k1 is
  `objective/kl`, as in Huang et al. 2024; `kl_exact` sums the exact per-token KL of the full
  next-token distributions, the DPO paper's definition), RLHF reward, entropy, score."""
  resp = ro.response_mask.astype(bool)
  kw = dict(policy_logps=ro.logprobs, ref_logps=ro.ref_logprobs, mask=resp)
  k1_B = kl_k1(**kw).sum(-1)
  lengths_B = resp.sum(-1).astype(jnp.float32)
  return {
      'objective/kl': k1_B.mean(),
      'objective/kl_k1': k1_B.mean(),
      'objective/kl_k2': kl_k2(**kw).sum(-1).mean(),
      'objective/kl_k3': kl_k3(**kw).sum(-1).mean(),
      'objective/kl_exact': ro.kl.sum(-1).mean(),
      'objective/entropy': ro.entropy.sum(-1).mean(),
      'objective/scores': ro.scores.mean(),
      'objective/gold_score': ro.gold_scores.mean(),
      'objective/rlhf_reward': ro.scores.mean() - kl_coef * k1_B.mean(),
      'rollout/response_length': lengths_B.mean(),
      'rollout/eos_frac': ro.has_eos.astype(jnp.float32).mean(),
  }


def advantages_and_returns(cfg: PPOConfig, ro: Rollout, kl_coef: jax.Array):
  """(advantages_BxT, returns_BxT, extra metrics) of a rollout for `cfg.algorithm`."""
  resp_BxT = ro.response_mask.astype(jnp.float32)
  reward_coef = kl_coef if cfg.resolved_kl_penalty == 'reward' else 0.0
  metrics = {}
  if cfg.algorithm == 'ppo':
    rewards_BxT = per_token_rewards(score_B=ro.scores, policy_logps_BxT=ro.logprobs,
                                    ref_logps_BxT=ro.ref_logprobs, response_mask_BxT=resp_BxT,
                                    kl_coef=reward_coef)
    if cfg.whiten_rewards:
      rewards_BxT = masked_whiten(rewards_BxT, resp_BxT, shift_mean=False)
    advantages_BxT, returns_BxT = gae(rewards_BxT=rewards_BxT, values_BxT=ro.values,
                                      mask_BxT=resp_BxT, gamma=cfg.gamma, lam=cfg.lam)
    metrics['val/returns'] = masked_mean(returns_BxT, resp_BxT)
    metrics['val/values'] = masked_mean(ro.values, resp_BxT)
  else:
    k = cfg.samples_per_prompt
    k1_B = kl_k1(policy_logps=ro.logprobs, ref_logps=ro.ref_logprobs, mask=resp_BxT).sum(-1)
    rewards_B = ro.scores - reward_coef * k1_B
    if rewards_B.shape[0] % k:
      raise ValueError(f'{rewards_B.shape[0]} sequences are not groups of {k} samples')
    rewards_GxK = rewards_B.reshape(-1, k)
    if cfg.algorithm == 'rloo':
      advantages_B = rloo_advantages(rewards_BxN=rewards_GxK).reshape(-1)
    else:
      advantages_B = grpo_advantages(rewards_BxN=rewards_GxK).reshape(-1)
    advantages_BxT = advantages_B[:, None] * resp_BxT
    returns_BxT = jnp.zeros_like(advantages_BxT)
  if cfg.whiten_advantages and cfg.algorithm != 'grpo':
    advantages_BxT = masked_whiten(advantages_BxT, resp_BxT)
  return advantages_BxT, returns_BxT, metrics


def loss_weights(cfg: PPOConfig, response_mask_BxT: jax.Array) -> jax.Array:
  """Per-token weights of the policy loss: 1 per response token ('token': the mean over all
  tokens of the minibatch) or 1/|y| ('sequence': the mean over tokens of each response, then
  over responses, GRPO's Eq. 3)."""
  resp_BxT = response_mask_BxT.astype(jnp.float32)
  if cfg.resolved_loss_aggregation == 'token':
    return resp_BxT
  return resp_BxT / jnp.maximum(resp_BxT.sum(-1, keepdims=True), 1.0)


# ---------------------------------------------------------------------------------------------
# The loss of one minibatch and the jitted update


def ppo_loss(params: dict, batch: dict, kl_coef: jax.Array, *, cfg: PPOConfig, policy_graphdef,
             value_graphdef, prompt_len: int) -> tuple[jax.Array, dict]:
  """The PPO loss of one minibatch: clipped policy loss (+ β·k when the KL is in the loss)
  + vf_coef × clipped value loss. `params` = {'policy': ..., 'value': ...} ('value' only for
  'ppo'); `batch` holds tokens, attention_mask, response_mask, old_logps, ref_logps,
  advantages, weights and, for 'ppo', old_values and returns."""
  tokens_BxT, attention_mask_BxT = batch['tokens'], batch['attention_mask']
  response_mask_BxT = batch['response_mask']
  policy = nnx.merge(policy_graphdef, params['policy'])
  logits_BxR1xV = response_logits(policy, tokens_BxT, attention_mask_BxT, prompt_len=prompt_len,
                                  temperature=cfg.sampling.temperature)
  logps_BxT = logps_from_response_logits(logits_BxR1xV, tokens_BxT, response_mask_BxT,
                                         prompt_len=prompt_len)
  pg_loss, pg_metrics = ppo_policy_loss(logps=logps_BxT, old_logps=batch['old_logps'],
                                        advantages=batch['advantages'], mask=batch['weights'],
                                        clip_eps=cfg.clip_eps)
  loss = pg_loss
  metrics = {k: v for k, v in pg_metrics.items() if not k.endswith(('_sum', '/count'))}
  if cfg.resolved_kl_penalty == 'loss':
    kl_loss, kl_metrics = kl_penalty_loss(
        logps=logps_BxT, ref_logps=batch['ref_logps'], mask=batch['weights'],
        estimator=cfg.resolved_kl_estimator, old_logps=batch['old_logps'],
        ratio_correction=cfg.kl_ratio_correction)
    loss = loss + kl_coef * kl_loss
    metrics['policy/kl_loss'] = kl_metrics['kl/loss']
  if cfg.uses_value:
    value_model = nnx.merge(value_graphdef, params['value'])
    values_BxT = shifted_values(value_model(tokens_BxT, attention_mask_BxT), response_mask_BxT)
    vf_loss, vf_metrics = ppo_value_loss(values=values_BxT, old_values=batch['old_values'],
                                         returns=batch['returns'], mask=response_mask_BxT,
                                         clip_eps=cfg.value_clip_eps)
    loss = loss + cfg.vf_coef * vf_loss
    metrics.update({k: v for k, v in vf_metrics.items() if not k.endswith(('_sum', '/count'))})
  metrics['loss'] = jax.lax.stop_gradient(loss)
  return loss, metrics


def update_batch(cfg: PPOConfig, ro: Rollout, kl_coef: jax.Array) -> tuple[dict, dict]:
  """The arrays every minibatch draws from, and the advantage metrics."""
  advantages_BxT, returns_BxT, metrics = advantages_and_returns(cfg, ro, kl_coef)
  batch = {'tokens': ro.tokens, 'attention_mask': ro.attention_mask,
           'response_mask': ro.response_mask, 'old_logps': ro.logprobs,
           'ref_logps': ro.ref_logprobs, 'advantages': advantages_BxT,
           'weights': loss_weights(cfg, ro.response_mask)}
  if cfg.uses_value:
    batch.update(old_values=ro.values, returns=returns_BxT)
  return batch, metrics


def make_update(cfg: PPOConfig, policy_graphdef, value_graphdef, *, prompt_len: int) -> Callable:
  """`update(state, rollout, key, hparams) -> (state, metrics)`: every epoch and minibatch of
  one rollout batch, then the KL controller. Pure; jit it (`train_ppo` donates the state).
  hparams: 'learning_rate' and (for 'ppo') 'value_learning_rate', traced scalars."""
  policy_tx = make_optimizer(cfg.optimizer)
  value_tx = make_optimizer(cfg.value_optimizer)

  def loss_fn(params, minibatch, kl_coef):
    return ppo_loss(params, minibatch, kl_coef, cfg=cfg, policy_graphdef=policy_graphdef,
                    value_graphdef=value_graphdef, prompt_len=prompt_len)

  def update(state, ro: Rollout, key, hparams):
    kl_coef = state['kl_coef']
    batch, adv_metrics = update_batch(cfg, ro, kl_coef)
    b = ro.tokens.shape[0]
    if b % cfg.num_minibatches:
      raise ValueError(f'a rollout batch of {b} does not split into {cfg.num_minibatches} '
                       'minibatches')
    mb = b // cfg.num_minibatches
    keys = jax.random.split(key, cfg.ppo_epochs)
    perms_ExB = jax.vmap(lambda k: jax.random.permutation(k, b))(keys)
    index_MxMB = perms_ExB.reshape(cfg.ppo_epochs * cfg.num_minibatches, mb)

    def one_minibatch(carry, index_MB):
      params, opt_states = carry
      minibatch = jax.tree.map(lambda x: jnp.take(x, index_MB, axis=0), batch)
      grads, metrics = jax.grad(loss_fn, has_aux=True)(params, minibatch, kl_coef)
      new_params, new_opt = {}, {}
      for name, tx, lr in (('policy', policy_tx, hparams['learning_rate']),
                           ('value', value_tx, hparams.get('value_learning_rate'))):
        if name not in params:
          continue
        updates, new_opt[name] = tx.update(grads[name], opt_states[name], params[name])
        new_params[name] = apply_updates(params[name], updates, lr)
      metrics['policy/grad_norm'] = jnp.sqrt(sum(jnp.sum(jnp.square(g))
                                                 for g in jax.tree.leaves(grads['policy'])))
      return (new_params, new_opt), metrics

    params = {'policy': state['policy']}
    opt_states = {'policy': state['policy_opt']}
    if cfg.uses_value:
      params['value'], opt_states['value'] = state['value'], state['value_opt']
    (params, opt_states), metrics_M = jax.lax.scan(one_minibatch, (params, opt_states), index_MxMB)
    metrics = {k: v.mean() for k, v in metrics_M.items()}
    metrics.update(adv_metrics)
    metrics.update(rollout_stats(ro, kl_coef))
    metrics['kl_coef'] = kl_coef
    if cfg.kl_controller == 'adaptive':
      measured = (metrics['objective/kl'] if cfg.kl_measure == 'k1'
                  else metrics['objective/kl_exact'])
      kl_coef = adaptive_kl_update(kl_coef=kl_coef, measured_kl=measured, target=cfg.kl_target,
                                   n_steps=b, horizon=cfg.kl_horizon)
    new_state = {**state, 'policy': params['policy'], 'policy_opt': opt_states['policy'],
                 'kl_coef': kl_coef.astype(jnp.float32), 'step': state['step'] + 1}
    if cfg.uses_value:
      new_state.update(value=params['value'], value_opt=opt_states['value'])
    return new_state, metrics

  return update


# ---------------------------------------------------------------------------------------------
# State and the training entry point


def _on_mesh(tree, mesh):
  """Puts leaves that are not yet laid out on `mesh` (scalars, RNG keys, optimizer counters)
  onto it, replicated, so that the jitted update sees one device set."""
  def one(x):
    if isinstance(getattr(x, 'sharding', None), NamedSharding) and x.sharding.mesh == mesh:
      return x
    return distributed.reshard(x, sharding.replicated(mesh))  # device_put on one process
  return jax.tree.map(one, tree)


def init_ppo_state(cfg: PPOConfig, policy_params: dict, value_params: dict | None, mesh) -> dict:
  """{'policy', 'policy_opt', ['value', 'value_opt'], 'kl_coef', 'rng', 'step'}; params are
  copied (the update donates its state, and the caller's reference may share buffers with the
  initial policy)."""
  state = {'policy': jax.tree.map(jnp.copy, policy_params),
           'kl_coef': jnp.asarray(cfg.kl_coef, jnp.float32),
           'rng': jax.random.key(cfg.seed), 'step': jnp.zeros((), jnp.int32)}
  state['policy_opt'] = make_optimizer(cfg.optimizer).init(state['policy'])
  if cfg.uses_value:
    if value_params is None:
      raise ValueError("algorithm='ppo' needs a value function: pass value=(graphdef, params) "
                       '(see init_value_model)')
    state['value'] = jax.tree.map(jnp.copy, value_params)
    state['value_opt'] = make_optimizer(cfg.value_optimizer).init(state['value'])
  return _on_mesh(state, mesh)


def _prompt_rows(prompts, k: int) -> tuple[np.ndarray, np.ndarray]:
  tokens_BxP, mask_BxP = prompts if isinstance(prompts, tuple) else (
      prompts['prompt_tokens'], prompts['prompt_mask'])
  tokens_BxP = np.repeat(np.asarray(tokens_BxP, np.int32), k, axis=0)
  mask_BxP = np.repeat(np.asarray(mask_BxP, np.int32), k, axis=0)
  return tokens_BxP, mask_BxP


def make_iteration(cfg: PPOConfig, policy_graphdef, ref_params, reward: RewardModel | GoldReward,
                   mesh, *, prompt_len: int, value_graphdef=None, gold: GoldReward | None = None,
                   state_template: dict | None = None) -> Callable:
  """`iteration(state, prompts, hparams) -> (state, metrics)`: rollout, then the jitted update.
  `prompts` = (tokens_BxP, mask_BxP) on the mesh, already repeated k times per prompt.
  Metrics include the wall time of sampling, scoring and the update (`time/*`)."""
  update = make_update(cfg, policy_graphdef, value_graphdef, prompt_len=prompt_len)
  out_shardings = None
  if state_template is not None:
    out_shardings = (sharding.shardings_of(state_template), sharding.replicated(mesh))
  update_jit = jax.jit(update, out_shardings=out_shardings, donate_argnums=(0,))
  has_gold = gold is not None or not isinstance(reward, RewardModel)

  def iteration(state, prompts, hparams):
    prompt_tokens_BxP, prompt_mask_BxP = prompts
    rng, sample_key, update_key = jax.random.split(state['rng'], 3)
    t0 = time.perf_counter()
    samples = jax.block_until_ready(sample(policy_graphdef, state['policy'], prompt_tokens_BxP,
                                           prompt_mask_BxP, sample_key, cfg.sampling))
    t1 = time.perf_counter()
    value = (value_graphdef, state['value']) if cfg.uses_value else None
    ro = jax.block_until_ready(evaluate_samples(
        samples, policy_graphdef, state['policy'], ref_params, reward, prompt_len=prompt_len,
        value=value, gold=gold, eos_id=cfg.sampling.eos_id, no_eos_score=cfg.no_eos_score,
        temperature=cfg.sampling.temperature))
    t2 = time.perf_counter()
    state, metrics = update_jit({**state, 'rng': rng}, ro, update_key, hparams)
    metrics = jax.block_until_ready(metrics)
    t3 = time.perf_counter()
    metrics = {**metrics, 'time/sample_s': t1 - t0, 'time/score_s': t2 - t1,
               'time/update_s': t3 - t2}
    if not has_gold:
      metrics.pop('objective/gold_score')
    return state, metrics

  return iteration


def episode_cost(cfg: PPOConfig, policy_params, prompt_shape: tuple[int, int]) -> dict:
  """Per iteration: the sequences sampled (`generated_tokens` new tokens), and the model FLOPs
  of the policy and, for PPO, the value model (2·N per token forward, 6·N forward + backward;
  Kaplan et al. 2020, arXiv 2001.08361 §2.1): sampling, the π_ref and old-policy forwards, and
  `ppo_epochs` updates of every token (the reward model's scoring forward is counted once)."""
  n = float(sum(np.prod(x.shape) for x in jax.tree.leaves(policy_params)))
  rows = prompt_shape[0] * cfg.samples_per_prompt
  tokens = rows * (prompt_shape[1] + cfg.sampling.max_new_tokens)
  models = 2 if cfg.uses_value else 1
  flops = n * tokens * (2 + 2 + 2 + 2 * models + 6 * cfg.ppo_epochs * models)
  return {'generated_tokens': float(rows * cfg.sampling.max_new_tokens),
          'train_tokens': float(tokens * cfg.ppo_epochs), 'train_flops': flops}


def train_ppo(cfg: PPOConfig, policy: tuple[Any, dict], ref_params: dict,
              reward: RewardModel | GoldReward, prompts_fn: Callable[[int], Any],
              run_dir: str | Path, *, value: tuple[Any, dict] | None = None,
              gold: GoldReward | None = None, eval_fn: Callable[[dict, int], dict] | None = None,
              eval_every: int = 0, mesh=None, progress: bool = True,
              stop_after: int | None = None, config: Any = None,
              eval_steps: list[int] | None = None, stop_fn: Callable | None = None) -> dict:
  """Trains the policy for `cfg.n_iterations` rollout + update iterations; returns the state.

  - `policy` = (graphdef, params) of a `CausalLM` (the initial policy, usually π_ref);
    `ref_params` the frozen reference (same graphdef).
  - `reward`: a `RewardModel` (learned, read at EOS) or a gold function on the host
    (`fn(tokens, attention_mask, response_mask) -> (B,)`; PPO-GT). `gold` is only logged
    (`objective/gold_score`).
  - `prompts_fn(step) -> (prompt_tokens_BxP, prompt_mask_BxP)` left-padded host arrays, a
    pure function of the step (resume replays it); each row is sampled
    `cfg.samples_per_prompt` times.
  - `value` = (graphdef, params) of the value `ScalarModel` (algorithm 'ppo'; see
    `init_value_model`).
  - The run lives in `run_dir`: `checkpoints/` (state: policy, value, both optimizer states,
    kl_coef, rng, step; every `cfg.save_every` iterations and at the end), `metrics.jsonl`,
    `eval.jsonl` (`eval_fn(state, step)` every `eval_every`). A run is resumed from the latest
    checkpoint and replays exactly; a non-finite loss stops it (`TrainingDiverged`) with the
    last good checkpoint kept. `stop_after` ends early (to simulate an interruption).
  - `eval_steps` and `stop_fn` are `train/fit.py`'s protocol (`loop`): evaluation steps and a
    stopping rule on each evaluation; each evaluation row records the iterations' cost
    (`episode_cost`).
  """
  cfg.validate()
  mesh = mesh if mesh is not None else sharding.make_mesh()
  policy_graphdef, policy_params = policy
  value_graphdef, value_params = value if value is not None else (None, None)
  state = init_ppo_state(cfg, policy_params, value_params, mesh)
  prompt_len = int(np.asarray(_prompt_rows(prompts_fn(0), 1)[0]).shape[1])
  iteration = make_iteration(cfg, policy_graphdef, ref_params, reward, mesh,
                             prompt_len=prompt_len, value_graphdef=value_graphdef, gold=gold,
                             state_template=state)
  hparams = {'learning_rate': jnp.asarray(cfg.optimizer.learning_rate, jnp.float32)}
  if cfg.uses_value:
    hparams['value_learning_rate'] = jnp.asarray(cfg.value_optimizer.learning_rate, jnp.float32)

  def prompts_at(step):
    tokens_BxP, mask_BxP = _prompt_rows(prompts_fn(step), cfg.samples_per_prompt)
    batch = sharding.shard_batch({'tokens': tokens_BxP, 'mask': mask_BxP}, mesh)
    return batch['tokens'], batch['mask']

  run_config = {'ppo': to_dict(cfg), 'extra': to_dict(config) if config is not None else {}}
  with sharding.use_mesh(mesh):
    state, failed = loop(
        iteration, state, lambda step: (prompts_at(step), hparams), n_steps=cfg.n_iterations,
        run_dirs=[run_dir], configs=[run_config], save_every=cfg.save_every,
        eval_fn=None if eval_fn is None else (lambda st, step: [eval_fn(st, step)]),
        eval_every=eval_every, desc=f'{cfg.algorithm}', progress=progress, stop_after=stop_after,
        eval_steps=eval_steps, stop_fn=stop_fn,
        cost_per_step=episode_cost(cfg, policy_params, prompts_fn(0)[0].shape))
  if failed[0] is not None:
    raise TrainingDiverged(diverged_message(cfg.algorithm, failed[0], run_dir))
  return state
