"""IPO's bandits (Azar et al. 2023, arXiv 2310.12036 §5.1, `alignlab/tasks/bandit.py`): DPO and
IPO on 3 actions with a uniform π_ref, the total-order dataset (`--set task.dataset=
unobserved_pair` for the other); Adam, learning rate 0.01, batch 9 (the whole dataset).
"""

import dataclasses

from alignlab.config import OptimizerConfig
from alignlab.methods import Sweeps, TrainConfig
from alignlab.pipeline import ExperimentConfig, unknown_variant
from alignlab.tasks import bandit

VARIANTS = ('tiny', 'quick', 'paper')
TAUS = (0.1, 0.5, 1.0)


def get_config(variant: str = 'quick') -> ExperimentConfig:
  train = TrainConfig(steps=1000, batch_size=9, eval_every=100, save_every=500, log_every=10,
                      optimizer=OptimizerConfig(name='adam', learning_rate=1e-2, grad_clip=0.0))
  base = ExperimentConfig(name='bandit', task=bandit.Config(), methods=('dpo', 'ipo'),
                          sweeps=Sweeps(dpo=TAUS, ipo=TAUS), train=train, seeds=(0, 1, 2))
  if variant == 'quick':
    return base
  if variant == 'tiny':
    return dataclasses.replace(base, train=dataclasses.replace(train, steps=20, eval_every=10),
                               sweeps=Sweeps(dpo=(0.5,), ipo=(0.5,)), seeds=(0,))
  if variant == 'paper':  # the paper's 18,000 steps and 10 seeds
    return dataclasses.replace(base, train=dataclasses.replace(train, steps=18_000, eval_every=1000,
                                                               save_every=2000),
                               seeds=tuple(range(10)))
  raise unknown_variant(variant, VARIANTS)
