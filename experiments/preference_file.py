"""Your own preference data (`alignlab/tasks/preference_file.py`): DPO and its family, the
Bradley–Terry reward model + PPO, RLOO, GRPO and Best-of-N on the pairs of a JSONL or Parquet
file. There is no gold reward: points are scored by a held-out judge, a second reward model
trained on a disjoint half of the train prompts (`judge_reward` = `gold_reward`), beside the
proxy reward model the RL methods optimize (`proxy_reward`), the exact KL(π‖π_ref) on
held-out prompts and the held-out implicit-reward accuracy. A file of KTO rows trains `kto`
on its rows unpaired.

    alignlab run preference_file --variant tiny --set task.data.path=pairs.jsonl
    alignlab run preference_file --set task.data.path=hh.parquet --set task.model.hf_path=DIR
"""

import dataclasses

from alignlab.config import OptimizerConfig
from alignlab.data.tokenizer import TokenizerConfig
from alignlab.methods import RLConfig, Sweeps, TrainConfig
from alignlab.pipeline import ExperimentConfig, unknown_variant
from alignlab.tasks import preference_file as pf

VARIANTS = ('tiny', 'quick')
METHODS = ('sft', 'dpo', 'ipo', 'cdpo', 'simpo', 'orpo', 'kto', 'preferred_ft', 'ppo', 'rloo',
           'grpo', 'best_of_n')
SWEEPS = Sweeps(dpo=(0.1, 0.5), ipo=(0.1,), ppo=(3.0, 6.0), rloo=(0.05,), grpo=(0.05,),
                best_of_n=(1, 4, 16))
TRAIN = TrainConfig(steps=200, batch_size=16, eval_every=50, save_every=0, eval_points=6,
                    optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=10))
RL = RLConfig(iterations=40, rollouts=32, group_size=4, learning_rate=1e-4, eval_points=5)


def get_config(variant: str = 'quick') -> ExperimentConfig:
  if variant not in VARIANTS:
    raise unknown_variant(variant, VARIANTS)
  base = ExperimentConfig(name='preference_file', task=pf.Config(), methods=METHODS,
                          sweeps=SWEEPS, train=TRAIN, rl=RL)
  if variant == 'quick':
    return base
  # tiny: seconds on a CPU, for a first look at a file and for the tests.
  task = pf.Config(
      data=pf.DataConfig(max_prompt_tokens=24, max_response_tokens=16),
      tokenizer=TokenizerConfig(vocab_size=320),
      model=pf.ModelSection(max_seq_len=40, d_model=16, n_layers=1, n_heads=2),
      sft=pf.SftConfig(steps=6, batch_size=4, optimizer=OptimizerConfig(learning_rate=3e-3)),
      reward_model=pf.RewardModelConfig(steps=4, batch_size=4, eval_every=2,
                                        n_normalize_prompts=8),
      n_eval_prompts=8, win_rate_temperatures=(1.0,))
  return dataclasses.replace(
      base, task=task, methods=('sft', 'dpo', 'ipo'),
      sweeps=dataclasses.replace(SWEEPS, dpo=(0.1,), ipo=(0.1,), ppo=(6.0,), best_of_n=(1, 4)),
      train=dataclasses.replace(TRAIN, steps=4, batch_size=4, eval_every=2, eval_points=0),
      rl=dataclasses.replace(RL, iterations=2, rollouts=8, eval_every=2, eval_points=0))
