"""DPO off the data's support (Xu et al. 2024, "Is DPO Superior to PPO for LLM Alignment?",
arXiv 2404.10719, §4): 8 prompts × 8 one-token responses, and preference pairs that mention
only `SUPPORT` of the 8 responses of each prompt (a random subset per prompt, both responses of
a pair ~ π_ref restricted to it; `alignlab/tasks/exact.py`, `pairs.support_size`).

DPO's loss sees only the log-ratio differences of responses in the pairs, so the mass it puts on
the other responses is set by how the network generalizes, not by the objective; PPO samples
every response and pays β·KL for each, with the reward model (trained on the same restricted
pairs) extrapolating off the support. Every point reports `off_support_mass` (π's probability
off the support, mean over prompts), `optimal_off_support_mass` (π*_β's, the target) and the
exact gap fraction (J(π*) − J(π)) / (J(π*) − J(π_ref)) at the method's β (PPO with the reward
model: at `eval_beta`, with KL targets around KL(π*_β‖π_ref) ≈ 1.3 nats on quick's π_ref).
PPO-GT (the gold reward at the same β) is the reference a perfect reward would give.
"""

import dataclasses

from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.methods import RLConfig, Sweeps, TrainConfig
from alignlab.pipeline import ExperimentConfig, unknown_variant
from alignlab.tasks import exact

VARIANTS = ('tiny', 'quick', 'paper')
SUPPORT = 4  # of the 8 responses per prompt
BETA = 0.3  # the β of J_β for PPO with the reward model, and of PPO-GT
METHODS = ('sft', 'dpo', 'ipo', 'ppo', 'ppo_gt')
PROBLEM = exact.em.ExactTaskConfig(n_prompts=8, vocab=8, length=1)
TASK = exact.Config(problem=PROBLEM, model=ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64),
                    sft=exact.SFTConfig(samples_per_prompt=1024, steps=300, batch_size=256),
                    pairs=exact.PairsConfig(pairs_per_prompt=512, heldout_per_prompt=128,
                                            support_size=SUPPORT),
                    reward_model=exact.RewardModelConfig(steps=300, batch_size=256),
                    eval_beta=BETA, win_rate_temperatures=(1.0,), frontier_points=41)
SWEEPS = Sweeps(dpo=(0.1, 0.3, 1.0), ipo=(0.3,), ppo=(0.7, 1.4), ppo_gt=(BETA,))
TRAIN = TrainConfig(steps=400, batch_size=128, eval_every=50, save_every=200, log_every=20,
                    optimizer=OptimizerConfig(learning_rate=1e-3, schedule='cosine'),
                    eval_points=6)
RL = RLConfig(iterations=60, rollouts=8 * 32, learning_rate=1e-3, schedule='linear', epochs=4,
              minibatches=4, eval_every=20, eval_points=4, kl_coef=BETA)


def get_config(variant: str) -> ExperimentConfig:
  base = ExperimentConfig(name='exact_off_support', task=TASK, methods=METHODS, sweeps=SWEEPS,
                          train=TRAIN, rl=RL, seeds=(0, 1))
  if variant == 'quick':
    return base
  if variant == 'tiny':  # the same 8 × 8 problem, a smaller π_ref, a few steps of everything
    return dataclasses.replace(
        base,
        task=dataclasses.replace(
            TASK, model=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32),
            sft=exact.SFTConfig(samples_per_prompt=128, steps=20, batch_size=64,
                                learning_rate=1e-2),
            pairs=exact.PairsConfig(pairs_per_prompt=32, heldout_per_prompt=16,
                                    support_size=SUPPORT),
            reward_model=exact.RewardModelConfig(steps=10, batch_size=32), frontier_points=11),
        train=TrainConfig(steps=12, batch_size=32, eval_every=6, save_every=12, log_every=6,
                          optimizer=OptimizerConfig(learning_rate=3e-3, schedule='cosine')),
        methods=('sft', 'dpo', 'ppo'),  # each PPO method compiles its own programs: ~1 min
        sweeps=dataclasses.replace(SWEEPS, dpo=(0.3,), ppo=(1.0,)),
        rl=dataclasses.replace(RL, iterations=2, rollouts=8 * 2, epochs=1, minibatches=1,
                               eval_every=2, eval_points=0),
        seeds=(0,))
  if variant == 'paper':
    return dataclasses.replace(
        base,
        task=dataclasses.replace(
            TASK, sft=exact.SFTConfig(samples_per_prompt=4096, steps=1000, batch_size=256),
            pairs=exact.PairsConfig(pairs_per_prompt=2048, heldout_per_prompt=256,
                                    support_size=SUPPORT)),
        train=dataclasses.replace(TRAIN, steps=2000, eval_points=10, save_every=500),
        rl=dataclasses.replace(RL, iterations=200, eval_points=8),
        sweeps=dataclasses.replace(SWEEPS, dpo=(0.05, 0.1, 0.3, 1.0, 3.0), ipo=(0.1, 0.3, 1.0),
                                   ppo=(0.35, 0.7, 1.4, 2.8)),
        seeds=(0, 1, 2))
  raise unknown_variant(variant, VARIANTS)
