"""Tasks: one module per task, the same plain functions in each, gathered in `TASKS`.

A task module defines
    Config                      a frozen dataclass: the `task` section of an experiment config
    setup(cfg, *, mesh, progress, log) -> env
                                builds (or reads from the stage cache) π_ref and the preference
                                pairs, and returns the task's env
    BEST_BY = (column, 'min' | 'max')   the column the verdict ranks points by
    PLOTS                       which of `plots.py`'s figures apply ('frontier', 'gap', 'win_rates')

The env is a plain dict; the methods (`alignlab/methods.py`) and the pipeline read only these
keys:
    name, mesh, progress        the task's name, the device mesh, whether to draw progress bars
    model_cfg, graphdef, ref_params   π_ref (every policy starts from it; the reference)
    prompt_len                  P: pairs and prompts are left-padded to it
    pairs                       training pairs in the canonical layout (`data/preference.py`)
                                with π_ref's log-probs precomputed (`ref_chosen_logps`, …)
    run_key, eval_key           what runs depend on: recorded in every run dir and compared.
                                `eval_key` holds the evaluation settings (the task's
                                `EVAL_FIELDS`, `config.split_fields`), `run_key` everything else: a changed
                                eval_key re-runs the runs it affects, a changed run_key is an
                                error (`runs.prepare_run`)
    evaluate(params, beta)      one evaluation point (a dict; `beta` is the method's own β or
                                None) — exact or sampled, the task decides
    win_rates(params)           [{temperature, win_rate, ...}] against π_ref, gold as judge
    best_of_n(n)                (point, win_rates) of π_ref's samples reranked by the RM
    reward_model()              the Bradley–Terry reward model (`train.rollout.RewardModel`),
                                built on first call as a cached stage
    gold                        the gold reward in the rollout's form (`train/rollout.py`)
    rl_prompts(seed, k, rollouts)   prompts_fn(step) -> (tokens_BxP, mask_BxP) for PPO & co.
    rl_sampling                 the `SamplingConfig` of rollouts
    frontier()                  optional: a DataFrame (beta, kl, gold_reward) of the optimum
    stages                      {stage: cache path}, recorded in the experiment's stages.json

A new task is one module and one entry here (`docs/adding_a_task.md`).
"""

from alignlab.tasks import bandit, exact, imdb, preference_file

TASKS = {'exact': exact, 'imdb': imdb, 'bandit': bandit, 'preference_file': preference_file}


def task_of(task_cfg) -> tuple[str, object]:
  """(name, module) of the task whose `Config` `task_cfg` is."""
  for name, module in TASKS.items():
    if isinstance(task_cfg, module.Config):
      return name, module
  raise TypeError(f'{type(task_cfg).__name__} is the Config of no task in TASKS '
                  f'({", ".join(TASKS)})')
