"""Where the KL term goes, and what it costs (issue 16, study 2), on the exact task
(`alignlab/tasks/exact.py`): GRPO with the gold reward at one β, its KL to π_ref in the reward
(k1 per token) or in the loss as k1, k2, k3 (GRPO's own) or k3 weighted by π_θ/π_old
(`losses.ppo.kl_penalty_loss`), and PPO-GT (k1 in the reward, a value function) for scale.
The runs give each option's final gap fraction (J_β(π*) − J_β(π)) / (J_β(π*) − J_β(π_ref)).

`STUDY[variant]` sizes the gradient study of `alignlab/tasks/exact_kl_grads.py` (each
estimator's sampled gradient against the exact ∇KL(π‖π_ref), by enumeration), which
notebooks/06_kl_estimators.py runs on the same π_ref.
"""

import dataclasses

from alignlab.config import ModelConfig
from alignlab.methods import RLConfig, Sweeps
from alignlab.pipeline import ExperimentConfig, load_experiment, make_config, unknown_variant
from alignlab.tasks import exact, exact_kl_grads

VARIANTS = ('tiny', 'quick', 'paper')
METHODS = ('grpo_kl_reward', 'grpo_k1', 'grpo_k2', 'grpo', 'grpo_k3_ratio', 'ppo_gt')
BETA = 0.3  # the task's eval β: every method is scored by J_β at the β it trains with


def get_config(variant: str) -> ExperimentConfig:
  if variant not in VARIANTS:
    raise unknown_variant(variant, VARIANTS)
  # tiny: the task of the exact frontier's tiny variant (the same cached π_ref and pairs).
  frontier = make_config(load_experiment('exact_frontier'), 'tiny')
  base = ExperimentConfig(name='exact_kl_estimators', task=frontier.task, methods=METHODS,
                          sweeps=Sweeps(**{m: (BETA,) for m in METHODS}), train=frontier.train,
                          rl=frontier.rl)
  if variant == 'tiny':  # the CI smoke test of the notebook: two placements, compile-bound
    return dataclasses.replace(base, methods=('grpo_kl_reward', 'grpo_k3_ratio'))
  # quick: 4 prompts × 4^4 responses, small enough that GRPO gets close to its fixed point in
  # a few minutes, where the estimators' biases (not their speed) decide the gap. Two PPO
  # epochs of two minibatches, so that the later minibatches are off-policy (π_θ ≠ π_old).
  task = dataclasses.replace(
      frontier.task, problem=exact.em.ExactTaskConfig(n_prompts=4, vocab=4, length=4),
      model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64),
      sft=exact.SFTConfig(samples_per_prompt=1024, steps=150, batch_size=128, learning_rate=1e-2),
      pairs=exact.PairsConfig(pairs_per_prompt=256, heldout_per_prompt=64))
  # An iteration takes milliseconds here, compiling the update most of a run's time, so the
  # runs go on until the linearly decaying learning rate lets the policy settle.
  rl = RLConfig(iterations=300, rollouts=4 * 16, group_size=4, learning_rate=3e-3,
                schedule='linear', epochs=2, minibatches=2, eval_every=50, eval_points=8)
  quick = dataclasses.replace(base, task=task, rl=rl, seeds=(0, 1))
  if variant == 'quick':
    return quick
  return dataclasses.replace(quick, rl=dataclasses.replace(rl, iterations=1000, eval_points=10),
                             sweeps=Sweeps(**{m: (0.1, BETA, 1.0) for m in METHODS}),
                             seeds=(0, 1, 2))


# The gradient study's size per variant (`exact_kl_grads.StudyConfig`): the policies are
# steps of the exact ascent of J_β from π_ref, on the variant's task.
STUDY = {
    'tiny': exact_kl_grads.StudyConfig(samples_per_prompt=8, draws=4, path_steps=(4, 8),
                                       path_beta=BETA),
    'quick': exact_kl_grads.StudyConfig(samples_per_prompt=16, draws=64, path_steps=(2, 8, 32),
                                        path_beta=BETA),
    'paper': exact_kl_grads.StudyConfig(samples_per_prompt=16, draws=256,
                                        path_steps=(1, 2, 4, 8, 16, 32, 64, 128), path_beta=BETA),
}
