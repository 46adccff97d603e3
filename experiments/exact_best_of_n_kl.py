"""Best-of-N's true KL: the exact KL(π_BoN ‖ π_ref) of Best-of-N on the exact task
(`exact_math.best_of_n_logp`: the law of the best of N draws, ties split exactly) against the
analytic log N − (N − 1)/N that reward–KL frontiers put Best-of-N at (Stiennon et al. 2020,
arXiv 2009.01325 App. G; the IMDb task does, `tasks/imdb.py`), which Beirami et al. 2024
(arXiv 2401.01879, §3) show is only an upper bound. Each point also records the frontier's
reward at the bound (`frontier_reward_at_bound`), so the shortfall a bound-based plot shows
can be set against the true one (`reward_shortfall`).

No training beyond π_ref: one exact evaluation per N, ranked by the gold reward (the KL
depends on the ranking only; `--set task.best_of_n_reward=model` ranks by the reward model).
"""

from alignlab.config import ModelConfig
from alignlab.methods import Sweeps
from alignlab.pipeline import ExperimentConfig, unknown_variant
from alignlab.tasks import exact

VARIANTS = ('tiny', 'quick', 'paper')


def get_config(variant: str = 'quick') -> ExperimentConfig:
  if variant == 'tiny':
    task = exact.Config(
        problem=exact.em.ExactTaskConfig(n_prompts=3, vocab=3, length=2),
        model=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32),
        sft=exact.SFTConfig(samples_per_prompt=128, steps=20, batch_size=64, learning_rate=1e-2),
        pairs=exact.PairsConfig(pairs_per_prompt=8, heldout_per_prompt=8),
        win_rate_temperatures=(1.0,), frontier_points=21)
    ns = (1, 2, 4, 16, 64, 256)
  elif variant == 'quick':  # the default task: 8 prompts × 8^4 = 4096 responses
    task = exact.Config(sft=exact.SFTConfig(samples_per_prompt=2048, steps=400),
                        pairs=exact.PairsConfig(pairs_per_prompt=16, heldout_per_prompt=64),
                        win_rate_temperatures=(1.0,))
    ns = tuple(2 ** i for i in range(0, 21))
  elif variant == 'paper':  # exact_frontier's paper-size π_ref, N up to 2^24
    task = exact.Config(sft=exact.SFTConfig(samples_per_prompt=8192, steps=1500),
                        pairs=exact.PairsConfig(pairs_per_prompt=16, heldout_per_prompt=64),
                        win_rate_temperatures=(1.0,))
    ns = tuple(2 ** i for i in range(0, 25))
  else:
    raise unknown_variant(variant, VARIANTS)
  return ExperimentConfig(name='exact_best_of_n_kl', task=task, methods=('best_of_n',),
                          sweeps=Sweeps(best_of_n=ns))
