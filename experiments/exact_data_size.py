"""Same data, which gets closer to π*? The gap fraction (J_β(π*) − J_β(π)) / (J_β(π*) − J_β(π_ref))
of DPO, IPO, cDPO and of RLHF with a reward model learned from exactly the same pairs (PPO and
RLOO at the same fixed β, Best-of-N ranked by that reward model), against the number of
preference pairs per prompt, on the exact task (`alignlab/tasks/exact.py`); PPO on the gold
reward (it reads no pairs) is the ceiling. The seed claim (Rafailov et al. 2023, arXiv
2305.18290 §5: DPO "is better at achieving RLHF's optimization objective than most
implementations of RLHF"), measured exactly, as a function of data.

A grid of whole pipelines (`ExperimentConfig.grid`, `pipeline.run_grid`): one point per
(pairs per prompt, data seed k) into OUT/n<size>-data<k>/, where k seeds the pairs, the
held-out pairs (so also the reward model trained on them) and every run's own RNG: the
intervals cover a fresh draw of the data. The point `gold` trains PPO-GT over the same seeds.

Matched budgets, the same at every data size: every preference method and the reward model
take the same number of steps of the same batch of pairs (so small data is seen for more
epochs, as a fixed-compute practitioner would); PPO and RLOO the same iterations of the same
rollouts, scored by the reward model (a learned function, queried freely) — RL's extra cost
is on-policy samples, not pairs. Best-of-N is exact (`exact_math.best_of_n_logp`), its N
the best one at each point (an oracle choice, stated in the figure's legend).
"""

from alignlab.config import ModelConfig, OptimizerConfig
from alignlab.methods import RLConfig, Sweeps, TrainConfig
from alignlab.pipeline import ExperimentConfig, unknown_variant
from alignlab.tasks import exact

VARIANTS = ('tiny', 'quick', 'paper')
BETA = 0.3  # one β for every method and for J_β (task.eval_beta)
METHODS = ('dpo', 'ipo', 'cdpo', 'ppo_fixed', 'rloo_rm', 'best_of_n')
DATA_SEEDS = (1, 2, 3)


def get_config(variant: str = 'quick') -> ExperimentConfig:
  if variant == 'quick':  # 8 prompts × 4^3 responses, a small transformer
    problem = exact.em.ExactTaskConfig(n_prompts=8, vocab=4, length=3)
    sizes, batch, best_of_n = (16, 128, 1024), 128, (1, 2, 4, 8, 16, 32)
    model = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64)
    sft = exact.SFTConfig(samples_per_prompt=1024, steps=200, batch_size=256)
    train_steps, rm_steps = 200, 200
    rl = RLConfig(iterations=40, rollouts=8 * 16, group_size=4, learning_rate=1e-3,
                  schedule='linear', epochs=2, minibatches=2, eval_every=10, eval_points=4,
                  kl_coef=BETA)
    seeds, methods = DATA_SEEDS, METHODS
  elif variant == 'tiny':  # the shape of the study in the fewest compiles, no finding
    problem = exact.em.ExactTaskConfig(n_prompts=3, vocab=3, length=2)
    sizes, batch, best_of_n = (8, 32), 24, (2, 8)
    model = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32)
    sft = exact.SFTConfig(samples_per_prompt=128, steps=20, batch_size=64, learning_rate=1e-2)
    train_steps, rm_steps = 10, 10
    rl = RLConfig(iterations=2, rollouts=3 * 4, group_size=2, epochs=1, minibatches=1,
                  eval_every=2, kl_coef=BETA)
    seeds, methods = DATA_SEEDS[:1], ('dpo', 'ppo_fixed', 'best_of_n')
  elif variant == 'paper':  # the 16 … 16,384 pairs per prompt on the default task
    problem = exact.em.ExactTaskConfig()
    sizes, batch = tuple(16 * 4 ** i for i in range(6)), 128
    best_of_n = tuple(2 ** i for i in range(11))
    model = exact.Config().model
    sft = exact.SFTConfig(samples_per_prompt=8192, steps=1500)
    train_steps, rm_steps = 1000, 1000
    rl = RLConfig(iterations=150, rollouts=8 * 32, group_size=4, learning_rate=1e-3,
                  schedule='linear', epochs=4, minibatches=4, eval_every=25, eval_points=6,
                  kl_coef=BETA)
    seeds, methods = DATA_SEEDS, METHODS
  else:
    raise unknown_variant(variant, VARIANTS)
  task = exact.Config(
      problem=problem, model=model, sft=sft,
      pairs=exact.PairsConfig(pairs_per_prompt=sizes[0], heldout_per_prompt=64),
      reward_model=exact.RewardModelConfig(steps=rm_steps, batch_size=batch),
      eval_beta=BETA, win_rate_temperatures=(1.0,), best_of_n_reward='model')
  train = TrainConfig(steps=train_steps, batch_size=batch, eval_every=train_steps,
                      save_every=train_steps, log_every=10,
                      optimizer=OptimizerConfig(learning_rate=1e-3, schedule='cosine'),
                      eval_points=4 if variant != 'tiny' else 0)
  # A point per (size, data seed k), then `gold`: PPO on the gold reward over the same seeds.
  grid = tuple((f'n{n}-data{k}', f'task.pairs.pairs_per_prompt={n}', f'task.pairs.seed={k}',
                f'seeds=({k},)') for n in sizes for k in seeds)
  grid += (('gold', "methods=('ppo_gt',)", f'seeds={tuple(seeds)}'),)
  sweeps = Sweeps(dpo=(BETA,), ipo=(BETA,), cdpo=(BETA,), ppo_fixed=(BETA,), rloo_rm=(BETA,),
                  ppo_gt=(BETA,), best_of_n=best_of_n)
  return ExperimentConfig(name='exact_data_size', task=task, methods=methods, sweeps=sweeps,
                          train=train, rl=rl, grid=grid)
