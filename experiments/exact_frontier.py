"""The exact task: how close does each method get to the optimum π*_β of
J_β(π) = E r − β·KL(π‖π_ref) when every quantity is computed exactly? (`alignlab/tasks/exact.py`)

Each preference method is ONE vectorized program over its values × seeds; PPO (reward model
learned from the same pairs, adaptive KL controller at each target), PPO-GT, RLOO and GRPO
(gold reward, fixed β) train one run at a time; Best-of-N is exact. Seeds vary each run's data
order and RNG; the pairs and π_ref are shared by every run.
"""

import dataclasses

from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.methods import RLConfig, Sweeps, TrainConfig
from alignlab.pipeline import ExperimentConfig, unknown_variant
from alignlab.tasks import exact

VARIANTS = ('tiny', 'quick', 'paper')
METHODS = ('dpo', 'ipo', 'cdpo', 'kto', 'simpo', 'orpo', 'unlikelihood', 'preferred_ft',
           'best_of_n', 'ppo', 'ppo_gt', 'rloo', 'grpo')
SWEEPS = Sweeps(dpo=(0.1, 0.3, 1.0, 3.0), ipo=(0.3, 1.0), cdpo=(0.3,), kto=(0.3,), simpo=(2.0,),
                orpo=(0.1, 1.0), unlikelihood=(0.1, 1.0), best_of_n=(2, 4, 8, 16, 32, 64, 128),
                ppo=(1.0, 3.0), ppo_gt=(0.3,), rloo=(0.3,), grpo=(0.3,))
# The RL learning rate decays linearly to 0, so the policy settles instead of wandering around
# the optimum at the noise floor; the adaptive controller starts at the task's eval β.
RL = RLConfig(iterations=80, rollouts=8 * 32, group_size=4, learning_rate=1e-3, schedule='linear',
              epochs=4, minibatches=4, eval_every=20, eval_points=6, kl_coef=0.3)
TRAIN = TrainConfig(steps=400, batch_size=128, eval_every=50, save_every=100, log_every=10,
                    optimizer=OptimizerConfig(learning_rate=1e-3, schedule='cosine'),
                    eval_points=8)


def get_config(variant: str) -> ExperimentConfig:
  base = ExperimentConfig(name='exact_frontier', task=exact.Config(), methods=METHODS,
                          sweeps=SWEEPS, train=TRAIN, rl=RL)
  if variant == 'quick':
    return base
  if variant == 'tiny':
    problem = exact.em.ExactTaskConfig(n_prompts=3, vocab=4, length=3)
    return dataclasses.replace(
        base,
        task=exact.Config(
            problem=problem, model=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32),
            sft=exact.SFTConfig(samples_per_prompt=256, steps=40, batch_size=64, learning_rate=1e-2),
            pairs=exact.PairsConfig(pairs_per_prompt=64, heldout_per_prompt=32),
            reward_model=exact.RewardModelConfig(steps=10, batch_size=32),
            win_rate_temperatures=(0.0, 1.0), frontier_points=21),
        train=TrainConfig(steps=12, batch_size=32, eval_every=6, save_every=6, log_every=1,
                          optimizer=OptimizerConfig(learning_rate=3e-3, schedule='cosine')),
        sweeps=dataclasses.replace(SWEEPS, dpo=(0.3, 1.0), ipo=(0.3,), orpo=(0.1,),
                                   unlikelihood=(0.1,), best_of_n=(2, 8), ppo=(1.0,)),
        rl=dataclasses.replace(RL, iterations=3, rollouts=3 * 8, epochs=1, minibatches=1,
                               eval_every=3, eval_points=0))
  if variant == 'paper':
    return dataclasses.replace(
        base,
        task=exact.Config(sft=exact.SFTConfig(samples_per_prompt=8192, steps=1500),
                          pairs=exact.PairsConfig(pairs_per_prompt=8192, heldout_per_prompt=512)),
        train=dataclasses.replace(TRAIN, steps=2000, eval_points=12, save_every=200),
        rl=dataclasses.replace(RL, iterations=300),
        sweeps=dataclasses.replace(SWEEPS, dpo=(0.05, 0.1, 0.3, 1.0, 3.0), ipo=(0.1, 0.3, 1.0),
                                   cdpo=(0.1, 0.3, 1.0), kto=(0.1, 0.3, 1.0),
                                   unlikelihood=(0.05, 0.1, 0.5, 1.0),
                                   best_of_n=(2, 4, 8, 16, 32, 64, 128, 256, 1024)),
        seeds=(0, 1, 2))
  raise unknown_variant(variant, VARIANTS)
