"""The DPO paper's IMDb reward–KL frontier (arXiv:2305.18290 Fig. 2 left, App. C) at CPU scale.

Stages (cached, `alignlab/imdb_stages.py`): tokenizer → SFT π_ref on IMDb train reviews → K = 4
samples per prompt from π_ref, 6 pairs each labelled by the gold reward → Bradley–Terry reward
model. The gold reward is VADER (`task.gold=vader`, the default) or a sentiment classifier
trained on the real IMDb labels (`--set task.gold=classifier`, `alignlab/train/classifier.py`).
Methods, each evaluated every `eval_every` steps (each evaluation one point):
DPO β sweep, Unlikelihood α sweep, Preferred-FT over seeds, IPO / cDPO / SimPO / ORPO / KTO
(one vectorized program per loss family: `sweep.fit_sweep`, vmapped over β/α/seed), PPO with
the learned RM at adaptive-controller KL targets, PPO-GT (the gold reward itself), RLOO, GRPO,
and Best-of-N reranked by the reward model.

A point (`evaluate.evaluate_sampled`) = mean gold reward ± stderr on held-out test prompts, and
the sequence-level KL(π‖π_ref) = Σ over response tokens of the exact per-token KL of the full
next-token distributions (the paper's footnote 3), with the sampled k1/k3 estimates beside it,
the proxy (RM) reward, and the implicit reward's accuracy on held-out pairs. Each finished run
also gets its win rate against π_ref samples at T ∈ {0, 0.25, 0.5, 0.75, 1} (`win_rate.jsonl`,
collected into `win_rates.csv`; the DPO paper's Fig. 2 right with the gold reward as judge).
Best-of-N has no per-token policy; its KL is the analytic log N − (N − 1)/N (Stiennon et al.
2020, arXiv 2009.01325 App. G; Gao et al. 2022, arXiv 2210.10760 §2).

    df = run(get_config('quick'), 'runs/imdb_quick')
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignlab import evaluate, plots, runs
from alignlab import imdb_stages as st
from alignlab.config import ModelConfig, OptimizerConfig, to_dict
from alignlab.data import imdb
from alignlab.data.tokenizer import TokenizerConfig
from alignlab.experiment import enable_compilation_cache, unknown_variant
from alignlab.sampling import sample
from alignlab.sweep import SweepBatches, fit_sweep, run_state
from alignlab.train import preference, sft
from alignlab.train import reward_model as rm
from alignlab.train.rollout import RewardModel, from_token_lists

VARIANTS = ('tiny', 'quick', 'paper')
BEST_BY = ('objective', 'max')
EXPERIMENT = 'imdb_frontier'


@dataclasses.dataclass(frozen=True)
class ImdbFrontierConfig:
  task: st.ImdbTaskConfig = st.ImdbTaskConfig()
  seeds: tuple[int, ...] = (0,)
  # Offline (preference) methods.
  steps: int = 150
  batch_size: int = 32
  optimizer: OptimizerConfig = OptimizerConfig(name='adamw', learning_rate=1e-4, warmup_steps=15)
  dpo_betas: tuple[float, ...] = (0.05, 0.1, 1.0, 5.0)
  unlikelihood_alphas: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)
  preferred_ft: bool = True
  # (loss, β) of the other DPO-family losses, one run per seed each.
  other_losses: tuple[tuple[str, float], ...] = (('ipo', 0.1), ('cdpo', 0.1), ('simpo', 2.0),
                                                 ('orpo', 0.1), ('kto', 0.1))
  # Online methods (train/ppo.py): iterations of `ppo_prompts` prompts each.
  ppo_kl_targets: tuple[float, ...] = (3.0, 6.0, 9.0, 12.0)
  ppo_gt: bool = True
  rloo_grpo: bool = True
  ppo_iterations: int = 60
  ppo_prompts: int = 32
  ppo_lr: float = 1e-4
  ppo_kl_coef: float = 0.05  # initial β of the adaptive controller
  ppo_kl_horizon: float = 2000.0  # episodes (Ziegler et al. 2019 use 10k at larger batch)
  rl_beta: float = 0.05  # fixed β of PPO-GT, RLOO and GRPO
  ppo_eval_every: int = 0  # 0: eval_every
  bon_ns: tuple[int, ...] = (1, 2, 4, 8, 16)
  # Evaluation.
  eval_every: int = 25
  n_eval_prompts: int = 128
  eval_beta: float = 0.1  # the β of the reported J_β = E[r] − β·KL
  eval_seed: int = 1234


def get_config(variant: str = 'quick') -> ImdbFrontierConfig:
  if variant not in VARIANTS:
    raise unknown_variant(variant, VARIANTS)
  if variant == 'tiny':
    task = st.ImdbTaskConfig(
        data=imdb.ImdbConfig(max_docs=300), tokenizer=TokenizerConfig(vocab_size=384),
        model=ModelConfig(vocab_size=384, max_seq_len=32, d_model=24, n_layers=1, n_heads=2),
        sft=st.SftConfig(seq_len=20, steps=10, batch_size=16, optimizer=OptimizerConfig(learning_rate=3e-3)),
        pairs=st.PairsStageConfig(n_prompts=64, max_new_tokens=12, batch_size=16, heldout_fraction=0.2),
        reward_model=st.RewardModelConfig(steps=6, batch_size=8, eval_every=3, n_normalize_prompts=64))
    return ImdbFrontierConfig(
        task=task, steps=4, batch_size=8, dpo_betas=(0.1, 1.0), unlikelihood_alphas=(),
        other_losses=(), ppo_kl_targets=(6.0,), ppo_gt=False, rloo_grpo=False,
        ppo_iterations=2, ppo_prompts=8, bon_ns=(1, 4), eval_every=2, n_eval_prompts=64)
  if variant == 'quick':
    # Sized for ≤ 10 min on 2 CPU cores: every method, a subset of the paper's sweeps, one seed.
    task = st.ImdbTaskConfig(
        sft=st.SftConfig(steps=200, optimizer=OptimizerConfig(learning_rate=3e-3, schedule='cosine',
                                                               warmup_steps=20, total_steps=200)),
        # 1,024 prompts and 600 steps: the RM reaches 0.69 held-out accuracy (150 steps on 512
        # prompts: 0.49, chance; PPO then has nothing to optimize).
        pairs=st.PairsStageConfig(n_prompts=1024),
        reward_model=st.RewardModelConfig(steps=600, batch_size=64,
                                          optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=20)))
    return ImdbFrontierConfig(task=task, steps=100, unlikelihood_alphas=(0.1, 1.0),
                              ppo_kl_targets=(3.0, 9.0), ppo_iterations=40, ppo_eval_every=10)
  task = st.ImdbTaskConfig(
      tokenizer=TokenizerConfig(vocab_size=8192),
      model=ModelConfig(vocab_size=8192, max_seq_len=128, d_model=256, n_layers=4, n_heads=4),
      sft=st.SftConfig(seq_len=128, steps=4000, batch_size=64, optimizer=OptimizerConfig(
          learning_rate=1e-3, schedule='cosine', warmup_steps=200, total_steps=4000)),
      pairs=st.PairsStageConfig(n_prompts=4096, max_new_tokens=48),
      reward_model=st.RewardModelConfig(steps=2000, batch_size=64, eval_every=200))
  return ImdbFrontierConfig(task=task, seeds=(0, 1, 2), steps=1500, batch_size=64, eval_every=100,
                            ppo_iterations=400, ppo_prompts=64, n_eval_prompts=512)


# ---------------------------------------------------------------------------------------------
# Evaluation


class Evaluator:
  """One fixed set of held-out prompts and one sampling key for every method and step; every
  point comes from `alignlab.evaluate`, the same code for every method."""

  def __init__(self, cfg: ImdbFrontierConfig, task: st.ImdbTask):
    self.cfg, self.task = cfg, task
    self.prompts, tokens_NxP, mask_NxP = st.prompts_for(task.cfg, task.tokenizer, 'test', cfg.n_eval_prompts,
                                                        cfg.eval_seed)
    self.tokens_NxP, self.mask_NxP = jnp.asarray(tokens_NxP), jnp.asarray(mask_NxP)
    self.gold_fn = from_token_lists(task.gold)  # the rollout's form, for PPO
    self.reward = RewardModel(task.reward_model.graphdef, task.reward_model.params)
    self.key = jax.random.key(cfg.eval_seed)
    self.heldout_pairs = task.pairs.heldout

  def proxy(self, tokens_BxT, attention_mask_BxT):
    return rm.score(self.reward.graphdef, self.reward.params, tokens_BxT, attention_mask_BxT)

  def __call__(self, params, beta: float | None = None) -> dict:
    """A frontier point: gold ± se, Σ-token exact KL with k1/k3, J_β, the proxy reward, and
    the implicit reward's accuracy on held-out pairs (β only scales its margin)."""
    task, p = self.task, self.task.cfg.prompt_len
    point = evaluate.evaluate_sampled(task.sft.graphdef, params, task.sft.params, self.prompts, task.gold,
                                      self.key, task.cfg.sampling(1.0), self.cfg.eval_beta, self.proxy,
                                      prompt_len=p)
    point.update(evaluate.implicit_reward_accuracy(
        task.sft.graphdef, params, task.sft.params, self.heldout_pairs,
        beta=self.cfg.eval_beta if beta is None else beta, prompt_len=p))
    point['beta'] = self.cfg.eval_beta
    return point

  @functools.cached_property
  def reference_gold(self) -> np.ndarray:
    """Gold rewards of one π_ref sample (T = 1) per prompt: what every win rate is against."""
    task = self.task
    return evaluate.gold_of_samples(task.sft.graphdef, task.sft.params, self.prompts, task.gold,
                                    jax.random.fold_in(self.key, 1), task.cfg.sampling(1.0),
                                    prompt_len=task.cfg.prompt_len)

  def win_rates(self, params) -> list[dict]:
    """Against `reference_gold` at each of `evaluate.TEMPERATURES`, gold as judge."""
    task = self.task
    return evaluate.win_rate_vs_reference(task.sft.graphdef, params, task.sft.params, self.prompts, task.gold,
                                          jax.random.fold_in(self.key, 2), task.cfg.sampling(1.0),
                                          prompt_len=task.cfg.prompt_len, reference_scores=self.reference_gold)

  def best_of_n(self, n: int) -> tuple[dict, list[dict]]:
    """π_ref samples reranked by the learned RM (its normalized score is the proxy): the
    point, and the win rate at T = 1 against the π_ref samples of `win_rates`."""
    task = self.task
    tokens_BxP = jnp.repeat(self.tokens_NxP, n, axis=0)
    mask_BxP = jnp.repeat(self.mask_NxP, n, axis=0)
    out = sample(task.sft.graphdef, task.sft.params, tokens_BxP, mask_BxP,
                 jax.random.fold_in(self.key, n), task.cfg.sampling(1.0))
    proxy_NxK = np.asarray(self.proxy(out.tokens, out.attention_mask)).reshape(-1, n)
    best_N = np.arange(len(proxy_NxK)) * n + proxy_NxK.argmax(-1)
    host = [np.asarray(x)[best_N] for x in (out.tokens, out.attention_mask, out.response_mask)]
    gold_N = self.gold_fn(*host).astype(np.float64)
    kl = math.log(n) - (n - 1) / n
    point = {**evaluate.mean_stderr('gold_reward', gold_N), 'kl': kl, 'kl_stderr': 0.0, 'kl_k1': kl, 'kl_k3': kl, 'proxy_reward': float(proxy_NxK.max(-1).mean()),
             'objective': float(gold_N.mean() - self.cfg.eval_beta * kl), 'beta': self.cfg.eval_beta}
    wins = (gold_N > self.reference_gold) + 0.5 * (gold_N == self.reference_gold)
    return point, [{'temperature': 1.0, 'win_rate': float(wins.mean()), 'n': len(wins)}]


# ---------------------------------------------------------------------------------------------
# Methods


def _run_config(cfg: ImdbFrontierConfig, method: str, loss_name: str | None) -> dict:
  return {'method': method, 'loss': loss_name, 'steps': cfg.steps, 'batch_size': cfg.batch_size,
          'optimizer': to_dict(cfg.optimizer), 'ppo_iterations': cfg.ppo_iterations,
          'ppo': [cfg.ppo_lr, cfg.ppo_prompts, cfg.ppo_kl_coef, cfg.ppo_kl_horizon, cfg.rl_beta, cfg.ppo_eval_every],
          'eval': [cfg.eval_every, cfg.n_eval_prompts, cfg.eval_seed], 'task': to_dict(cfg.task)}


def _preference_sweep(cfg, task, evaluator, out_dir: Path, method: str, loss_name: str | None,
                      param: str, runs_: list[tuple[float, int]], arrays: dict, progress: bool) -> None:
  """R runs of one loss, (hparam value, seed) each, as one vmapped program (`sweep.fit_sweep`)."""
  graphdef, ref_params = task.sft.graphdef, task.sft.params
  p = task.cfg.prompt_len
  if loss_name is None:  # Preferred-FT: NLL of the chosen responses
    loss_fn = sft.make_loss_fn(graphdef, response_start=p)
    hparams: dict[str, Any] = {}
  else:
    loss_fn = preference.make_loss_fn(graphdef, loss_name, prompt_len=p)
    hparams = {param: [v for v, _ in runs_]}
  config = _run_config(cfg, method, loss_name)
  dirs = [runs.prepare_run(out_dir, method, {param: v} if param else {}, s, config, experiment=EXPERIMENT)
          for v, s in runs_]
  if all(runs.is_complete(d) for d in dirs):
    return
  t0 = time.perf_counter()

  betas = [v if param == 'beta' else None for v, _ in runs_]

  def eval_fn(state_R, step):
    del step
    return [evaluator(run_state(state_R['params'], r), betas[r]) for r in range(len(runs_))]

  state = fit_sweep(loss_fn, ref_params, SweepBatches(arrays, cfg.batch_size, [s for _, s in runs_]), hparams,
            optimizer=cfg.optimizer, n_steps=cfg.steps, run_dirs=dirs, configs=[config] * len(dirs),
            shared={'ref_params': ref_params} if loss_name == 'kto' else None,
            mesh=task.mesh, eval_fn=eval_fn, eval_every=cfg.eval_every, desc=method, progress=progress)
  for r, d in enumerate(dirs):
    runs.write_jsonl(d / 'win_rate.jsonl', evaluator.win_rates(run_state(state['params'], r)))
    runs.mark_complete(d, wall_s=time.perf_counter() - t0, vectorized_with=len(dirs))


def _rl_run(cfg, task, evaluator, out_dir: Path, method: str, param: str, value: float, seed: int,
            progress: bool) -> None:
  from alignlab.train import ppo as ppo_mod
  run_dir = runs.prepare_run(out_dir, method, {param: value}, seed, _run_config(cfg, method, None),
                             experiment=EXPERIMENT)
  if runs.is_complete(run_dir):
    return
  t0 = time.perf_counter()
  algorithm = {'ppo': 'ppo', 'ppo_gt': 'ppo', 'rloo': 'rloo', 'grpo': 'grpo'}[method]
  adaptive = method == 'ppo'
  k = 1 if algorithm == 'ppo' else 4
  opt = OptimizerConfig(learning_rate=cfg.ppo_lr, eps=1e-5)
  pcfg = ppo_mod.PPOConfig(
      algorithm=algorithm, n_iterations=cfg.ppo_iterations, samples_per_prompt=k,
      sampling=task.cfg.sampling(1.0), optimizer=opt, value_optimizer=opt,
      kl_coef=cfg.ppo_kl_coef if adaptive else cfg.rl_beta,
      kl_controller='adaptive' if adaptive else 'fixed', kl_target=value if adaptive else 6.0,
      kl_horizon=cfg.ppo_kl_horizon, seed=seed)
  n_prompts = cfg.ppo_prompts // k
  pool = st.prompts_for(task.cfg, task.tokenizer, 'train', 4096, 10_000 + seed)

  def prompts_fn(step):
    idx = np.random.default_rng([seed, step]).choice(len(pool[1]), n_prompts, replace=False)
    return pool[1][idx], pool[2][idx]

  gold_fn = evaluator.gold_fn
  reward = gold_fn if method == 'ppo_gt' else evaluator.reward
  value_model = None
  if algorithm == 'ppo':
    # PPO's value function starts from the RM (Huang et al. 2024); PPO-GT has no RM, so from
    # the policy's backbone with a zero head.
    value_model = ppo_mod.init_value_model(
        st.model_config(task.cfg, task.tokenizer), task.mesh, jax.random.key(seed),
        reward_params=task.reward_model.params if method == 'ppo' else None,
        policy_params=task.sft.params if method == 'ppo_gt' else None, zero_head=method == 'ppo_gt')
  state = ppo_mod.train_ppo(pcfg, (task.sft.graphdef, task.sft.params), task.sft.params, reward, prompts_fn, run_dir,
                    value=value_model, gold=gold_fn if method != 'ppo_gt' else None,
                    eval_fn=lambda state, step: evaluator(state['policy']), eval_every=cfg.ppo_eval_every or cfg.eval_every,
                    mesh=task.mesh, progress=progress, config={'method': method, param: value})
  runs.write_jsonl(run_dir / 'win_rate.jsonl', evaluator.win_rates(state['policy']))
  runs.mark_complete(run_dir, wall_s=time.perf_counter() - t0)


def _single_point(cfg, out_dir: Path, method: str, hparams: dict, point_fn) -> None:
  """A method with no training (π_ref itself, Best-of-N): one evaluation point at step 0 and
  its win rates; `point_fn() -> (point, win_rate_rows)`."""
  run_dir = runs.prepare_run(out_dir, method, hparams, 0, _run_config(cfg, method, None), experiment=EXPERIMENT)
  if not runs.is_complete(run_dir):
    point, win_rates = point_fn()
    runs.write_jsonl(run_dir / 'eval.jsonl', [{'step': 0, **point}])
    runs.write_jsonl(run_dir / 'win_rate.jsonl', win_rates)
    runs.mark_complete(run_dir)


def run(cfg: ImdbFrontierConfig, out_dir: str | Path, progress: bool = True):
  """Builds (or reuses) the stages, trains and evaluates every method (complete runs are
  skipped, partial ones resume), writes `results.csv`, `frontier.png` and `stages.json` in
  `out_dir`; returns the results table (`runs.collect_results`)."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  # Runs of one method recompile identical programs (fresh closures); the persistent cache
  # turns every compile after the first into a load (DESIGN.md §5).
  enable_compilation_cache()
  t0 = time.perf_counter()
  task = st.build_task(cfg.task, progress=progress)
  timings = {'stages_s': time.perf_counter() - t0}
  evaluator = Evaluator(cfg, task)
  _single_point(cfg, out_dir, 'sft', {}, lambda: (evaluator(task.sft.params), evaluator.win_rates(task.sft.params)))
  p = task.cfg.prompt_len
  arrays = {k: v for k, v in task.pairs.train.items() if k.endswith(('_tokens', '_mask'))}
  arrays = preference.reference_logps(task.sft.graphdef, task.sft.params, arrays, prompt_len=p)
  sweeps = [('dpo', 'dpo', 'beta', cfg.dpo_betas), ('unlikelihood', 'unlikelihood', 'alpha', cfg.unlikelihood_alphas)]
  sweeps += [(name, name, 'lambda_' if name == 'orpo' else 'beta', (b,)) for name, b in cfg.other_losses]
  for method, loss_name, param, values in sweeps:
    if values:
      runs_ = [(float(v), s) for v in values for s in cfg.seeds]
      _preference_sweep(cfg, task, evaluator, out_dir, method, loss_name, param, runs_, arrays, progress)
  if cfg.preferred_ft:
    chosen = {k: arrays[k] for k in ('chosen_tokens', 'chosen_attention_mask', 'chosen_response_mask')}
    _preference_sweep(cfg, task, evaluator, out_dir, 'preferred_ft', None, '',
                      [(float('nan'), s) for s in cfg.seeds], sft.chosen_as_sft(chosen), progress)
  timings['offline_s'] = time.perf_counter() - t0 - timings['stages_s']
  rl = [('ppo', 'kl_target', t) for t in cfg.ppo_kl_targets]
  rl += [('ppo_gt', 'beta', cfg.rl_beta)] if cfg.ppo_gt else []
  rl += [('rloo', 'beta', cfg.rl_beta), ('grpo', 'beta', cfg.rl_beta)] if cfg.rloo_grpo else []
  for method, param, value in rl:
    for seed in cfg.seeds:
      _rl_run(cfg, task, evaluator, out_dir, method, param, value, seed, progress)
  timings['online_s'] = time.perf_counter() - t0 - timings['stages_s'] - timings['offline_s']
  for n in cfg.bon_ns:
    _single_point(cfg, out_dir, 'best_of_n', {'n': n}, lambda n=n: evaluator.best_of_n(n))
  df = runs.collect_results(out_dir)
  df.to_csv(out_dir / 'results.csv', index=False)
  runs.collect_win_rates(out_dir).to_csv(out_dir / 'win_rates.csv', index=False)
  timings['total_s'] = time.perf_counter() - t0
  (out_dir / 'stages.json').write_text(json.dumps(
      {'from_cache': task.from_cache, 'gold': task.gold_info, 'reward_model': task.reward_model.metrics,
       'pairs': dataclasses.asdict(task.pairs.dataset.stats), 'timings': timings,
       'config': to_dict(cfg)}, indent=2, default=str))
  plot(df, out_dir)
  return df


# ---------------------------------------------------------------------------------------------
# Outputs


def plot(df, out_dir: str | Path) -> list[Path]:
  """The reward–KL frontier (the DPO paper's Fig. 2 left): each evaluation a point."""
  import pandas as pd
  out_dir = Path(out_dir)
  paths = [plots.plot_frontier(df, out_dir / 'frontier.png',
                               title='IMDb sentiment: gold reward vs Σ-token exact KL')]
  if (out_dir / 'win_rates.csv').exists():
    paths.append(plots.plot_win_rates(pd.read_csv(out_dir / 'win_rates.csv'), out_dir / 'win_rates.png',
                                      title='IMDb: win rate vs π_ref, gold reward as judge'))
  return paths


def summary(df) -> str:
  """Per method, its best evaluation point by J_β (means over seeds): the printed table."""
  return runs.format_table(runs.best_points(df, *BEST_BY))


if __name__ == '__main__':
  import sys
  variant = sys.argv[1] if len(sys.argv) > 1 else 'quick'
  out = Path(sys.argv[2] if len(sys.argv) > 2 else f'runs/imdb_frontier-{variant}')
  frame = run(get_config(variant), out)
  print(summary(frame))
  print(f'plot: {out / "frontier.png"}')
