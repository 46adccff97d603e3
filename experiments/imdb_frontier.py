"""The DPO paper's IMDb reward–KL frontier (arXiv:2305.18290 Fig. 2 left, App. C) at CPU scale.

Stages (cached, `alignlab/imdb_stages.py`): tokenizer → SFT π_ref on IMDb train reviews → K = 4
samples per prompt from π_ref, 6 pairs each labelled by VADER → Bradley–Terry reward model.
Methods, each evaluated every `eval_every` steps (each evaluation one point):
DPO β sweep, Unlikelihood α sweep, Preferred-FT over seeds, IPO / cDPO / SimPO / ORPO / KTO
(one vectorized program per loss family: `sweep.fit_sweep`, vmapped over β/α/seed), PPO with
the learned RM at adaptive-controller KL targets, PPO-GT (VADER as the reward), RLOO, GRPO,
and Best-of-N reranked by the reward model.

A point = mean gold (VADER) reward ± stderr on held-out test prompts, and the sequence-level
KL(π‖π_ref) = Σ over response tokens of the exact per-token KL of the full next-token
distributions (the paper's footnote 3), with the sampled k1/k3 estimates beside it.
Best-of-N has no per-token policy; its KL is the analytic log N − (N − 1)/N (Stiennon et al.
2020, arXiv 2009.01325 App. G; Gao et al. 2022, arXiv 2210.10760 §2).

    df = run(get_config('quick'), 'runs/imdb_quick')
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignlab import imdb_stages as st
from alignlab import plots, runs
from alignlab.config import ModelConfig, OptimizerConfig, to_dict
from alignlab.data import imdb
from alignlab.data.cache import cache_root
from alignlab.data.tokenizer import TokenizerConfig
from alignlab.sampling import sample
from alignlab.sweep import SweepBatches, fit_sweep, run_state
from alignlab.train import preference, sft
from alignlab.train import reward_model as rm
from alignlab.train.rollout import RewardModel, from_token_lists, rollout

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
    from alignlab.experiment import unknown_variant
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
    # Sized for ≤ 10 min on 2 shared CPU cores: a subset of the paper's sweeps.
    task = st.ImdbTaskConfig(
        sft=st.SftConfig(steps=200, optimizer=OptimizerConfig(learning_rate=3e-3, schedule='cosine',
                                                               warmup_steps=20, total_steps=200)),
        reward_model=st.RewardModelConfig(steps=150))
    return ImdbFrontierConfig(task=task, steps=100, unlikelihood_alphas=(0.1, 1.0), other_losses=(('ipo', 0.1),),
                              ppo_kl_targets=(3.0, 9.0), rloo_grpo=False, ppo_iterations=40, ppo_eval_every=10)
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
  """One fixed set of held-out prompts and one sampling key for every method and step."""

  def __init__(self, cfg: ImdbFrontierConfig, task: st.ImdbTask):
    self.cfg, self.task = cfg, task
    _, tokens_NxP, mask_NxP = st.prompts_for(task.cfg, task.tokenizer, 'test', cfg.n_eval_prompts, cfg.eval_seed)
    self.tokens_NxP, self.mask_NxP = jnp.asarray(tokens_NxP), jnp.asarray(mask_NxP)
    self.gold_fn = from_token_lists(task.gold)
    self.reward = RewardModel(task.reward_model.graphdef, task.reward_model.params)
    self.key = jax.random.key(cfg.eval_seed)

  def __call__(self, params) -> dict:
    ro = rollout(self.task.sft.graphdef, params, self.task.sft.params, self.reward, self.tokens_NxP,
                 self.mask_NxP, self.key, self.task.cfg.sampling(1.0), gold=self.gold_fn)
    ro = jax.device_get(ro)
    mask_BxT = np.asarray(ro.response_mask, np.float64)
    kl_B = (np.asarray(ro.kl, np.float64) * mask_BxT).sum(-1)
    log_ratio_BxT = (np.asarray(ro.logprobs, np.float64) - np.asarray(ro.ref_logprobs, np.float64)) * mask_BxT
    k3_BxT = (np.exp(-log_ratio_BxT) - 1.0 + log_ratio_BxT) * mask_BxT
    gold_B = np.asarray(ro.gold_scores, np.float64)
    return _point(gold_B, kl_B, log_ratio_BxT.sum(-1), k3_BxT.sum(-1), np.asarray(ro.scores, np.float64),
                  self.cfg.eval_beta, float(np.mean(ro.has_eos)))

  def best_of_n(self, n: int) -> dict:
    """π_ref samples reranked by the learned RM (its normalized score is the proxy)."""
    task = self.task
    tokens_BxP = jnp.repeat(self.tokens_NxP, n, axis=0)
    mask_BxP = jnp.repeat(self.mask_NxP, n, axis=0)
    out = sample(task.sft.graphdef, task.sft.params, tokens_BxP, mask_BxP,
                 jax.random.fold_in(self.key, n), task.cfg.sampling(1.0))
    proxy_NxK = np.asarray(rm.score(self.reward.graphdef, self.reward.params, out.tokens,
                                    out.attention_mask)).reshape(-1, n)
    best_N = np.arange(len(proxy_NxK)) * n + proxy_NxK.argmax(-1)
    host = [np.asarray(x)[best_N] for x in (out.tokens, out.attention_mask, out.response_mask)]
    gold_N = self.gold_fn(*host).astype(np.float64)
    kl = math.log(n) - (n - 1) / n
    kl_N = np.full(len(gold_N), kl)
    return _point(gold_N, kl_N, kl_N, kl_N, proxy_NxK.max(-1).astype(np.float64), self.cfg.eval_beta,
                  float(np.mean(((host[0] == task.tokenizer.eos_id) & (host[2] > 0)).any(-1))))


def _point(gold_B, kl_B, k1_B, k3_B, proxy_B, beta: float, eos_fraction: float) -> dict:
  n = len(gold_B)
  return {'gold_reward': float(gold_B.mean()), 'gold_reward_stderr': float(gold_B.std(ddof=1) / math.sqrt(n)),
          'kl': float(kl_B.mean()), 'kl_stderr': float(kl_B.std(ddof=1) / math.sqrt(n)),
          'kl_k1': float(k1_B.mean()), 'kl_k3': float(k3_B.mean()), 'proxy_reward': float(proxy_B.mean()),
          'objective': float(gold_B.mean() - beta * kl_B.mean()), 'beta': beta, 'eos_fraction': eos_fraction}


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

  def eval_fn(state_R, step):
    del step
    return [evaluator(run_state(state_R['params'], r)) for r in range(len(runs_))]

  fit_sweep(loss_fn, ref_params, SweepBatches(arrays, cfg.batch_size, [s for _, s in runs_]), hparams,
            optimizer=cfg.optimizer, n_steps=cfg.steps, run_dirs=dirs, configs=[config] * len(dirs),
            shared={'ref_params': ref_params} if loss_name == 'kto' else None,
            mesh=task.mesh, eval_fn=eval_fn, eval_every=cfg.eval_every, desc=method, progress=progress)
  for d in dirs:
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
  ppo_mod.train_ppo(pcfg, (task.sft.graphdef, task.sft.params), task.sft.params, reward, prompts_fn, run_dir,
                    value=value_model, gold=gold_fn if method != 'ppo_gt' else None,
                    eval_fn=lambda state, step: evaluator(state['policy']), eval_every=cfg.ppo_eval_every or cfg.eval_every,
                    mesh=task.mesh, progress=progress, config={'method': method, param: value})
  runs.mark_complete(run_dir, wall_s=time.perf_counter() - t0)


def _single_point(cfg, out_dir: Path, method: str, hparams: dict, point_fn) -> None:
  """A method with no training (π_ref itself, Best-of-N): one evaluation point at step 0."""
  run_dir = runs.prepare_run(out_dir, method, hparams, 0, _run_config(cfg, method, None), experiment=EXPERIMENT)
  if not runs.is_complete(run_dir):
    runs.write_jsonl(run_dir / 'eval.jsonl', [{'step': 0, **point_fn()}])
    runs.mark_complete(run_dir)


def run(cfg: ImdbFrontierConfig, out_dir: str | Path, progress: bool = True):
  """Builds (or reuses) the stages, trains and evaluates every method (complete runs are
  skipped, partial ones resume), writes `results.csv`, `frontier.png` and `stages.json` in
  `out_dir`; returns the results table (`runs.collect_results`)."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if not jax.config.jax_compilation_cache_dir:
    # Runs of one method recompile identical programs (fresh closures); the persistent cache
    # turns every compile after the first into a load (DESIGN.md §5).
    jax.config.update('jax_compilation_cache_dir', str(cache_root() / 'jax_compilation_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  t0 = time.perf_counter()
  task = st.build_task(cfg.task, progress=progress)
  timings = {'stages_s': time.perf_counter() - t0}
  evaluator = Evaluator(cfg, task)
  _single_point(cfg, out_dir, 'sft', {}, lambda: evaluator(task.sft.params))
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
  timings['total_s'] = time.perf_counter() - t0
  (out_dir / 'stages.json').write_text(json.dumps(
      {'from_cache': task.from_cache, 'reward_model': task.reward_model.metrics,
       'pairs': dataclasses.asdict(task.pairs.dataset.stats), 'timings': timings,
       'config': to_dict(cfg)}, indent=2, default=str))
  plot(df, out_dir)
  return df


# ---------------------------------------------------------------------------------------------
# Outputs


def plot(df, out_dir: str | Path) -> list[Path]:
  """The reward–KL frontier (the DPO paper's Fig. 2 left): each evaluation a point."""
  return [plots.plot_frontier(df, Path(out_dir) / 'frontier.png',
                              title='IMDb sentiment: gold (VADER) reward vs Σ-token exact KL')]


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
