"""Reward-model losses: Bradley–Terry on pairs of scalar rewards, and the logistic loss of a
classifier trained on labels (the IMDb sentiment classifier used as a gold reward)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from alignlab.losses.lm import masked_sum_count


def bradley_terry(*, chosen_rewards: jax.Array, rejected_rewards: jax.Array,
                  example_mask: jax.Array | None = None,
                  margin: jax.Array | float | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Bradley–Terry pairwise loss for a reward model (Ouyang et al. 2022, arXiv 2203.02155,
  Eq. 1; DPO paper arXiv 2305.18290 Eq. 2):

      loss = mean_b −log σ(r_w − r_l − margin)

  `margin` (scalar or (B,)) is the optional offset of Llama 2 (arXiv 2307.09288, Eq. 2);
  None means 0. `example_mask` (B,) of 0/1 drops padding pairs; the mean is
  sum(loss·mask)/sum(mask).

  Metrics (detached, masked means): `accuracy` (fraction with r_w > r_l, strict), `margin`
  (mean r_w − r_l), `rewards/chosen`, `rewards/rejected`; and `loss_sum` (with gradient) and
  `count` for exact accumulation over micro-batches.
  """
  chosen_B = chosen_rewards.astype(jnp.float32)
  rejected_B = rejected_rewards.astype(jnp.float32)
  diff_B = chosen_B - rejected_B
  offset = 0.0 if margin is None else jnp.asarray(margin, jnp.float32)
  losses_B = -jax.nn.log_sigmoid(diff_B - offset)
  loss, loss_sum, count = masked_sum_count(losses_B, example_mask)

  def mean(x_B):
    return jax.lax.stop_gradient(masked_sum_count(x_B, example_mask)[0])

  metrics = {
      'accuracy': mean((chosen_B > rejected_B).astype(jnp.float32)),
      'margin': mean(diff_B),
      'rewards/chosen': mean(chosen_B),
      'rewards/rejected': mean(rejected_B),
      'loss_sum': loss_sum,
      'count': count,
  }
  return loss, metrics


def logistic(*, logits: jax.Array, labels: jax.Array,
             example_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy of a scalar logit against a 0/1 label (logistic regression on the
  sequence score):

      loss = mean_b −[y_b·log σ(s_b) + (1 − y_b)·log σ(−s_b)]

  Metrics (detached, masked means): `accuracy` (sign of s agrees with y; s = 0 counts as
  negative), `prob/positive` (mean σ(s)); and `loss_sum`, `count` as in `bradley_terry`.
  """
  logits_B = logits.astype(jnp.float32)
  labels_B = labels.astype(jnp.float32)
  losses_B = -(labels_B * jax.nn.log_sigmoid(logits_B) + (1.0 - labels_B) * jax.nn.log_sigmoid(-logits_B))
  loss, loss_sum, count = masked_sum_count(losses_B, example_mask)

  def mean(x_B):
    return jax.lax.stop_gradient(masked_sum_count(x_B, example_mask)[0])

  metrics = {
      'accuracy': mean(((logits_B > 0) == (labels_B > 0.5)).astype(jnp.float32)),
      'prob/positive': mean(jax.nn.sigmoid(logits_B)),
      'loss_sum': loss_sum,
      'count': count,
  }
  return loss, metrics


REWARD_LOSSES: dict[str, Callable[..., tuple[jax.Array, dict[str, jax.Array]]]] = {
    'bradley_terry': bradley_terry,
    'logistic': logistic,
}
