"""Where the KL term goes, and what it costs: each KL estimator's Monte-Carlo gradient on the
exact task against the exact gradient of KL(π‖π_ref), computed by enumeration.

PPO and GRPO never see KL(π_θ‖π_ref) itself: they estimate it from sampled responses and
follow the gradient of a surrogate. On the exact task every response can be enumerated, so the
gradient they should follow, ∇_θ E_x KL(π_θ(·|x)‖π_ref(·|x)), is computable, and so is the
expectation of each surrogate's gradient. The estimators (`ESTIMATORS`), each the KL part of
the update exactly as `train/ppo.py` builds it:

    reward_k1      k1 per token in the reward (Ziegler et al. 2019, arXiv 1909.08593, Eq. 2),
                   advantages the KL-to-go (GAE with γ = λ = 1, no value baseline: the plain
                   REINFORCE estimate), through PPO's clipped ratio loss (arXiv 1707.06347)
    loss_k1/k2/k3  k1, k2, k3 (Schulman 2020, "Approximating KL divergence") per token in the
                   loss (GRPO, arXiv 2402.03300, Eq. 3–4, with k3)
    loss_k3_ratio  k3 weighted by π_θ/π_old (DeepSeek-V3.2 §3.1, Eq. 7)

`losses.ppo.kl_penalty_loss` derives what each gradient estimates. In short: reward_k1 is
unbiased for the sequence-level gradient; loss_k1's gradient is 0 in expectation; loss_k2 and
loss_k3_ratio follow the per-token KL gradient with the contexts held fixed (they ignore that a
token changes the KL of the tokens after it), loss_k3 the gradient of the per-token reverse KL.

Gradients are flattened over every parameter of the transformer policy. The surrogates are
token means (as the trainer's losses are); every response of the exact task has R tokens, so
R × the surrogate's gradient estimates ∇ E_x KL of whole responses, the scale of the exact one.

A study (`kl_gradient_study`) takes policies along the exact ascent of J_β from π_ref (a
partially trained policy at several KL levels) and, for each, draws `draws` rollout batches of
`samples_per_prompt` responses per prompt from π_old; on-policy π_old = π_θ, off-policy π_old is
the policy `off_policy_lag` ascent steps earlier (as after a few PPO minibatch updates).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from alignlab.config import OptimizerConfig
from alignlab.losses.ppo import gae, kl_penalty_loss, per_token_rewards, ppo_policy_loss
from alignlab.tasks import exact_math as em
from alignlab.train.optim import apply_updates, make_optimizer
from alignlab.train.rollout import logps_from_response_logits, response_logits

ESTIMATORS = ('reward_k1', 'loss_k1', 'loss_k2', 'loss_k3', 'loss_k3_ratio')


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  samples_per_prompt: int = 32  # N responses per prompt in one rollout batch
  draws: int = 64  # independent rollout batches per policy
  path_steps: tuple[int, ...] = (2, 8, 32)  # the policies: these ascent steps of J_β from π_ref
  path_beta: float = 0.3  # the β of the ascent
  learning_rate: float = 1e-2  # Adam on the exact J_β
  off_policy_lag: int = 1  # π_old is the policy this many ascent steps earlier (0: none)
  clip_eps: float = 0.2  # reward_k1's PPO clip
  seed: int = 0


# ---------------------------------------------------------------------------------------------
# The exact gradient and the surrogates


def _flat(tree) -> jax.Array:
  return ravel_pytree(tree)[0]


def mean_kl(graphdef, params, problem: em.ExactTaskConfig, ref_logp_PxY: jax.Array) -> jax.Array:
  """E_x KL(π_θ(·|x)‖π_ref(·|x)) of whole responses, every response enumerated."""
  return em.kl(em.exact_policy_logp(graphdef, params, problem), ref_logp_PxY).mean()


@functools.partial(jax.jit, static_argnames=('graphdef', 'problem'))
def exact_kl_gradient(graphdef, params, problem: em.ExactTaskConfig,
                      ref_logp_PxY: jax.Array) -> jax.Array:
  """∇_θ E_x KL(π_θ‖π_ref), flattened: what every estimator below estimates."""
  return _flat(jax.grad(mean_kl, argnums=1)(graphdef, params, problem, ref_logp_PxY))


def token_logps(graphdef, params, tokens_BxT: jax.Array) -> jax.Array:
  """Per-token log π(y_t | x, y_<t) in the canonical layout (the prompt is one token)."""
  model = nnx.merge(graphdef, params)
  ones_BxT = jnp.ones_like(tokens_BxT)
  response_mask_BxT = ones_BxT.at[:, 0].set(0)
  logits = response_logits(model, tokens_BxT, ones_BxT, prompt_len=1)
  return logps_from_response_logits(logits, tokens_BxT, response_mask_BxT, prompt_len=1)


def surrogate_loss(estimator: str, *, logps_BxT, old_logps_BxT, ref_logps_BxT, weights_BxT,
                   clip_eps: float = 0.2) -> jax.Array:
  """The KL part of the loss the trainer differentiates (β = 1), a token mean under
  `weights_BxT` (the response mask, or per-sequence weights)."""
  if estimator == 'reward_k1':
    mask_BxT = (weights_BxT > 0).astype(jnp.float32)
    # The rollout's k1 is computed with the sampling policy's log-probs (no gradient), the
    # score is 0: the reward is −KL alone.
    rewards_BxT = per_token_rewards(score_B=jnp.zeros(logps_BxT.shape[0]),
                                    policy_logps_BxT=old_logps_BxT, ref_logps_BxT=ref_logps_BxT,
                                    response_mask_BxT=mask_BxT, kl_coef=1.0)
    advantages_BxT, _ = gae(rewards_BxT=rewards_BxT, values_BxT=jnp.zeros_like(rewards_BxT),
                            mask_BxT=mask_BxT, gamma=1.0, lam=1.0)
    return ppo_policy_loss(logps=logps_BxT, old_logps=old_logps_BxT, advantages=advantages_BxT,
                           mask=weights_BxT, clip_eps=clip_eps)[0]
  kind = estimator.removeprefix('loss_')
  return kl_penalty_loss(logps=logps_BxT, ref_logps=ref_logps_BxT, mask=weights_BxT,
                         estimator=kind.removesuffix('_ratio'), old_logps=old_logps_BxT,
                         ratio_correction=kind.endswith('_ratio'))[0]


def estimator_gradients(graphdef, params, tokens_BxT, old_logps_BxT, ref_logps_BxT,
                        weights_BxT, *, clip_eps: float = 0.2) -> jax.Array:
  """(E, n_params): R × the gradient of each estimator's surrogate on one batch of sequences
  (ESTIMATORS' order), so that an unbiased one averages to `exact_kl_gradient`."""
  length = tokens_BxT.shape[1] - 1
  logps_BxT, pullback = jax.vjp(lambda p: token_logps(graphdef, p, tokens_BxT), params)

  def loss_grad(estimator):
    return jax.grad(lambda logps: surrogate_loss(
        estimator, logps_BxT=logps, old_logps_BxT=old_logps_BxT, ref_logps_BxT=ref_logps_BxT,
        weights_BxT=weights_BxT, clip_eps=clip_eps))(logps_BxT)

  # A surrogate depends on θ only through the per-token log-probs, so its gradient is the
  # pullback of ∂loss/∂logps: one forward pass serves every estimator. One pullback call per
  # estimator, not `jax.vmap` over the cotangents: under jit on XLA:CPU (jax 0.10.2) the
  # vmapped pullback of a 1024-sequence batch came out wrong (k1's expected gradient, exactly
  # 0 in theory, at half the norm of ∇KL), which tests/test_kl_estimators.py checks.
  return length * jnp.stack([_flat(pullback(loss_grad(e))[0]) for e in ESTIMATORS])


def _sequences(problem: em.ExactTaskConfig, index_PxN: jax.Array) -> jax.Array:
  """Tokens (P·N, 1 + R) of N responses (by index) per prompt, prompt-major."""
  p, n = index_PxN.shape
  prompt_B = jnp.repeat(jnp.asarray(em.prompt_tokens(problem)), n)
  responses_BxR = em.response_from_index(problem, index_PxN.reshape(-1))
  return jnp.concatenate([prompt_B[:, None], responses_BxR], axis=1)


@functools.partial(jax.jit, static_argnames=('graphdef', 'problem', 'clip_eps'))
def expected_gradients(graphdef, params, old_params, ref_params, problem: em.ExactTaskConfig,
                       *, clip_eps: float = 0.2) -> jax.Array:
  """(E, n_params): each estimator's gradient in expectation over y ~ π_old, by enumeration:
  every response of every prompt, weighted by π_old(y|x)."""
  old_logp_PxY = em.exact_policy_logp(graphdef, old_params, problem)
  index_PxY = jnp.broadcast_to(jnp.arange(problem.n_responses), old_logp_PxY.shape)
  tokens_BxT = _sequences(problem, index_PxY)
  seq_weight_B = jnp.exp(old_logp_PxY).reshape(-1)
  weights_BxT = seq_weight_B[:, None] * jnp.ones_like(tokens_BxT).at[:, 0].set(0)
  return estimator_gradients(graphdef, params, tokens_BxT,
                             token_logps(graphdef, old_params, tokens_BxT),
                             token_logps(graphdef, ref_params, tokens_BxT), weights_BxT,
                             clip_eps=clip_eps)


@functools.partial(jax.jit, static_argnames=('graphdef', 'problem', 'n', 'draws', 'clip_eps'))
def sampled_statistics(graphdef, params, old_params, ref_params, problem: em.ExactTaskConfig,
                       exact_g: jax.Array, key: jax.Array, *, n: int, draws: int,
                       clip_eps: float = 0.2) -> dict[str, jax.Array]:
  """Statistics over `draws` rollout batches of n responses per prompt from π_old, each
  estimator's gradient against `exact_g`: per draw the cosine (`cos_DxE`) and the squared
  norm, and the mean gradient over draws (`mean_g_Exn`)."""
  old_logp_PxY = em.exact_policy_logp(graphdef, old_params, problem)

  def one(carry_Exn, key_):
    tokens_BxT = _sequences(problem, em.sample_indices(key_, old_logp_PxY, n))
    weights_BxT = jnp.ones(tokens_BxT.shape, jnp.float32).at[:, 0].set(0.0)
    g_Exn = estimator_gradients(graphdef, params, tokens_BxT,
                                token_logps(graphdef, old_params, tokens_BxT),
                                token_logps(graphdef, ref_params, tokens_BxT), weights_BxT,
                                clip_eps=clip_eps)
    sq_E = jnp.sum(jnp.square(g_Exn), -1)
    cos_E = g_Exn @ exact_g / jnp.maximum(jnp.sqrt(sq_E) * jnp.linalg.norm(exact_g), 1e-30)
    return carry_Exn + g_Exn / draws, (cos_E, sq_E)

  zeros_Exn = jnp.zeros((len(ESTIMATORS), exact_g.shape[0]), jnp.float32)
  mean_g_Exn, (cos_DxE, sq_DxE) = jax.lax.scan(one, zeros_Exn, jax.random.split(key, draws))
  return {'cos_DxE': cos_DxE, 'sq_DxE': sq_DxE, 'mean_g_Exn': mean_g_Exn}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def compare(graphdef, params, old_params, ref_params, problem: em.ExactTaskConfig,
            ref_logp_PxY: jax.Array, key: jax.Array, *, n: int, draws: int,
            clip_eps: float = 0.2) -> list[dict]:
  """One row per estimator for the policy `params` with samples from `old_params`:

      cos_mean, cos_std   cosine of one rollout batch's gradient with the exact one, over draws
      cos_expected        cosine of the estimator's expected gradient (enumerated) with the
                          exact one: 1 for an unbiased estimator, whatever the variance; NaN
                          where the expectation is 0
      norm_expected       ‖expected‖ / ‖exact‖
      var_rel             E‖g − E g‖² / ‖exact‖², the variance of one batch's gradient
                          (around the enumerated expectation)
      mse_rel             E‖g − exact‖² / ‖exact‖² = (bias² + variance) / ‖exact‖²
      cos_of_mean         cosine of the mean gradient over every draw (draws × n per prompt)
  """
  exact_g = np.asarray(exact_kl_gradient(graphdef, params, problem, ref_logp_PxY), np.float64)
  expected_Exn = np.asarray(expected_gradients(graphdef, params, old_params, ref_params, problem,
                                               clip_eps=clip_eps), np.float64)
  stats = jax.device_get(sampled_statistics(graphdef, params, old_params, ref_params, problem,
                                            jnp.asarray(exact_g, jnp.float32), key, n=n,
                                            draws=draws, clip_eps=clip_eps))
  exact_sq = float(exact_g @ exact_g)
  mean_Exn = np.asarray(stats['mean_g_Exn'], np.float64)
  rows = []
  for e, name in enumerate(ESTIMATORS):
    cos_D = np.asarray(stats['cos_DxE'][:, e], np.float64)
    mean_sq = float(np.mean(stats['sq_DxE'][:, e]))
    expected = expected_Exn[e]
    norm_expected = float(np.linalg.norm(expected) / np.sqrt(exact_sq))
    rows.append({
        'estimator': name, 'cos_mean': float(cos_D.mean()), 'cos_std': float(cos_D.std()),
        # An expectation that is 0 up to float32 rounding (k1 in the loss, on-policy) has no
        # direction: NaN, not the cosine of the rounding error.
        'cos_expected': _cosine(expected, exact_g) if norm_expected > 1e-5 else float('nan'),
        'norm_expected': norm_expected,
        'var_rel': (mean_sq - 2 * float(mean_Exn[e] @ expected) + float(expected @ expected))
                   / exact_sq,
        'mse_rel': (mean_sq - 2 * float(mean_Exn[e] @ exact_g) + exact_sq) / exact_sq,
        'cos_of_mean': _cosine(mean_Exn[e], exact_g)})
  return rows


# ---------------------------------------------------------------------------------------------
# Policies to study: the exact ascent of J_β from π_ref


def ascent_path(graphdef, ref_params, problem: em.ExactTaskConfig, ref_logp_PxY: jax.Array,
                r_PxY: jax.Array, *, beta: float, learning_rate: float, steps: int) -> list:
  """Params after 0, 1, …, steps steps of Adam on the exact −J_β(π_θ) from π_ref: a partially
  trained policy at every KL between 0 and that of π*_β."""
  tx = make_optimizer(OptimizerConfig(name='adam', learning_rate=1.0, grad_clip=0.0))

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logp_PxY = em.exact_policy_logp(graphdef, p, problem)
      return -em.objective(logp_PxY, ref_logp_PxY, r_PxY, beta).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return apply_updates(params, updates, learning_rate), opt_state

  params = jax.tree.map(jnp.copy, ref_params)
  opt_state = tx.init(params)
  path = [params]
  for _ in range(steps):
    params, opt_state = step(params, opt_state)
    path.append(params)
  return path


def kl_gradient_study(graphdef, ref_params, problem: em.ExactTaskConfig, ref_logp_PxY: jax.Array,
                      r_PxY: jax.Array, cfg: StudyConfig) -> list[dict]:
  """`compare`'s rows for every policy of the ascent path (`cfg.path_steps`), on-policy and,
  with `cfg.off_policy_lag` > 0, with samples from the policy that many steps earlier. Each row
  also holds the policy's step, exact KL(π_θ‖π_ref), KL(π_old‖π_θ) and `sampling`."""
  path = ascent_path(graphdef, ref_params, problem, ref_logp_PxY, r_PxY, beta=cfg.path_beta,
                     learning_rate=cfg.learning_rate, steps=max(cfg.path_steps))
  key = jax.random.key(cfg.seed)
  rows = []
  for step in cfg.path_steps:
    params = path[step]
    logp_PxY = em.exact_policy_logp(graphdef, params, problem)
    kl_ref = float(em.kl(logp_PxY, ref_logp_PxY).mean())
    olds = [('on_policy', step)]
    if cfg.off_policy_lag and step >= cfg.off_policy_lag:
      olds.append(('off_policy', step - cfg.off_policy_lag))
    for sampling, old_step in olds:
      key, sub = jax.random.split(key)
      old_logp_PxY = em.exact_policy_logp(graphdef, path[old_step], problem)
      kl_old = float(em.kl(old_logp_PxY, logp_PxY).mean())
      for row in compare(graphdef, params, path[old_step], ref_params, problem, ref_logp_PxY,
                         sub, n=cfg.samples_per_prompt, draws=cfg.draws,
                         clip_eps=cfg.clip_eps):
        rows.append({'step': step, 'sampling': sampling, 'kl': kl_ref, 'kl_old_to_policy': kl_old,
                     **row})
  return rows
