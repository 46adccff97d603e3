"""Estimates the wall time of `alignlab run imdb_frontier --variant paper` from a partial run:
each distinct program of the experiment runs a few times at the paper config's shapes (random
weights and tokens; the cost of a step does not depend on their values), and its measured
time per call is multiplied by how often the full experiment calls it.

    .venv/bin/python benchmarks/paper_estimate.py [--steps 4] [--variant paper]

Prints one JSON object: seconds per call of each program, the call counts, and the total.
Compilation is timed apart (one compile per program; the persistent cache makes reruns cheap).
Not counted: VADER scoring on the host (measured ≈ 4,000–6,000 texts/s) beyond
what the timed evaluation includes, and writing checkpoints.
"""

from __future__ import annotations

import argparse
import json
import time

import bench_common as bc


def timed(fn, calls: int) -> tuple[float, float]:
  """(first call incl. compile, median of the next `calls`) in seconds; fn blocks."""
  t0 = time.perf_counter()
  fn(0)
  first = time.perf_counter() - t0
  times = []
  for i in range(calls):
    t0 = time.perf_counter()
    fn(i + 1)
    times.append(time.perf_counter() - t0)
  return first, sorted(times)[len(times) // 2]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--steps', type=int, default=4, help='timed calls per program')
  p.add_argument('--variant', default='paper',
                 help="the experiment's variant to estimate ('tiny': a quick check of the script)")
  args = p.parse_args()
  load0 = bc.loadavg()

  import dataclasses

  import jax
  import jax.numpy as jnp
  import numpy as np

  from alignlab import evaluate, methods, pipeline, sharding
  from alignlab.heads import CausalLM, ScalarModel
  from alignlab.sampling import sample
  from alignlab.train import preference, sft
  from alignlab.train import reward_model as rm
  from alignlab.train.optim import make_optimizer
  from alignlab.train.step import init_state, jit_step, make_train_step

  cfg = pipeline.make_config(pipeline.load_experiment('imdb_frontier'), args.variant)
  task, tc, rl = cfg.task, cfg.train, cfg.rl
  v = task.tokenizer.vocab_size
  model_cfg = dataclasses.replace(task.model, vocab_size=v, masked_output_ids=(0, 2))
  mesh = sharding.make_mesh()
  graphdef, params = sharding.init_params(lambda r: CausalLM(model_cfg, rngs=r), mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  p_len, r_len = task.prompt_len, task.pairs.max_new_tokens
  out: dict = {'per_call_s': {}, 'compile_s': {}, 'calls': {}}

  def train_program(name, loss_fn, params0, batch, hparams, optimizer):
    tx = make_optimizer(optimizer)
    state = init_state(jax.tree.map(jnp.copy, params0), tx, jax.random.key(0))
    state = jax.tree.map(lambda x: jax.device_put(x, sharding.replicated(mesh))
                         if not isinstance(x.sharding, jax.sharding.NamedSharding) else x, state)
    step = jit_step(make_train_step(loss_fn, tx), state, mesh)
    hp = {'learning_rate': jnp.float32(optimizer.learning_rate), **hparams}
    box = {'state': state}
    batch = sharding.shard_batch(batch, mesh)

    def call(_):
      with sharding.use_mesh(mesh):
        box['state'], m = step(box['state'], batch, hp)
      jax.block_until_ready(m)

    out['compile_s'][name], out['per_call_s'][name] = timed(call, args.steps)
    bc.log(f'{name}: {out["per_call_s"][name]:.3f} s per step')

  def seqs(n, t, prompt):
    tokens = rng.integers(3, v, (n, t)).astype(np.int32)
    resp = np.zeros((n, t), np.int32)
    resp[:, prompt:] = 1
    return tokens, np.ones((n, t), np.int32), resp

  # SFT π_ref: batch × seq_len review tokens.
  tokens, attn, resp = seqs(task.sft.batch_size, task.sft.seq_len, 1)
  train_program('sft_step', sft.make_loss_fn(graphdef), params, {'tokens': tokens, 'attention_mask': attn,
                                                          'response_mask': resp}, {}, task.sft.optimizer)
  # One offline-method step (DPO with precomputed reference log-probs; every preference loss
  # costs the same two forward/backward passes): batch pairs of P + R tokens.
  pairs = {}
  for side in ('chosen', 'rejected'):
    t, a, r = seqs(tc.batch_size, p_len + r_len, p_len)
    pairs.update({f'{side}_tokens': t, f'{side}_attention_mask': a, f'{side}_response_mask': r})
  pairs['ref_chosen_logps'] = np.full(tc.batch_size, -100.0, np.float32)
  pairs['ref_rejected_logps'] = np.full(tc.batch_size, -100.0, np.float32)
  train_program('preference_step', preference.make_loss_fn(graphdef, 'dpo', prompt_len=p_len), params, pairs,
                {'beta': jnp.float32(0.1)}, tc.resolved_optimizer())
  # The reward model: Bradley–Terry on the same pair shapes.
  rm_graphdef, rm_params = sharding.init_params(lambda r: ScalarModel(model_cfg, rngs=r), mesh, jax.random.key(1))
  rm_batch = {k: v_ for k, v_ in pairs.items() if k.endswith(('_tokens', '_attention_mask'))}
  rm_batch = {k: v_[:task.reward_model.batch_size] for k, v_ in rm_batch.items()}
  train_program('reward_model_step', rm.make_loss_fn(rm_graphdef), rm_params, rm_batch, {},
                task.reward_model.optimizer)
  # Sampling: one call of the pairs stage (batch prompts × k) and of an evaluation (64 prompts).
  prompts = jnp.asarray(rng.integers(3, v, (task.pairs.batch_size * task.pairs.k, p_len)), jnp.int32)
  masks = jnp.ones_like(prompts)
  sampling = task.sampling(1.0)

  def pairs_sample(i):
    jax.block_until_ready(sample(graphdef, params, prompts, masks, jax.random.key(i), sampling))

  out['compile_s']['pairs_sample'], out['per_call_s']['pairs_sample'] = timed(pairs_sample, args.steps)
  # One evaluation point (`Evaluator.__call__`): sampling, exact KL and the proxy on the eval
  # prompts; the gold reward stubbed (VADER is host time, noted above).
  eval_prompts = [list(map(int, rng.integers(3, v, rng.integers(3, p_len + 1)))) for _ in range(task.n_eval_prompts)]

  def proxy(tokens_BxT, attn_BxT):
    return rm.score(rm_graphdef, rm_params, tokens_BxT, attn_BxT)

  def one_eval(i):
    evaluate.evaluate_sampled(graphdef, params, params, eval_prompts, lambda ps, rs: np.zeros(len(ps)),
                              jax.random.key(i), sampling, 0.1, proxy, prompt_len=p_len)

  out['compile_s']['eval_point'], out['per_call_s']['eval_point'] = timed(one_eval, max(1, args.steps // 2))
  # PPO: one iteration ≈ rollout (sample + score) + rl.epochs × (policy and value updates) on
  # rl.rollouts sequences; the update is timed as preference-step-sized passes: measured here
  # as an SFT-loss step on rl.rollouts sequences of P + R tokens, twice per epoch.
  tokens, attn, resp = seqs(rl.rollouts, p_len + r_len, p_len)
  train_program('ppo_update_pass', sft.make_loss_fn(graphdef, response_start=p_len), params,
                {'tokens': tokens, 'attention_mask': attn, 'response_mask': resp}, {},
                tc.resolved_optimizer())
  ppo_prompts = jnp.asarray(rng.integers(3, v, (rl.rollouts, p_len)), jnp.int32)

  def ppo_sample(i):
    jax.block_until_ready(sample(graphdef, params, ppo_prompts, jnp.ones_like(ppo_prompts),
                                 jax.random.key(i), sampling))

  out['compile_s']['ppo_sample'], out['per_call_s']['ppo_sample'] = timed(ppo_sample, args.steps)

  s = out['per_call_s']
  n_seeds = len(cfg.seeds)

  def n_runs(train_fn):  # (value, seed) runs of the experiment's methods trained by train_fn
    return n_seeds * sum(len(getattr(cfg.sweeps, m)) for m in cfg.methods
                         if methods.METHODS[m]['train'] is train_fn)

  offline_runs = n_runs(methods.train_preference)
  rl_runs = n_runs(methods.train_rl)
  n_bon = len(cfg.sweeps.best_of_n) if 'best_of_n' in cfg.methods else 0
  evals_per_offline = tc.steps // tc.eval_every + 1
  evals_per_rl = rl.iterations // rl.eval_every + 1
  n_pair_calls = -(-task.pairs.n_prompts // task.pairs.batch_size)
  counts = {'sft_step': task.sft.steps, 'pairs_sample': n_pair_calls,
            'reward_model_step': task.reward_model.steps,
            'preference_step': offline_runs * tc.steps,
            'eval_point': offline_runs * evals_per_offline + rl_runs * evals_per_rl + 1 + n_bon,
            'ppo_iteration': rl_runs * rl.iterations}
  # sample+score, then per epoch a policy and a value pass over every rollout
  s['ppo_iteration'] = 2 * s['ppo_sample'] + 2 * rl.epochs * s['ppo_update_pass']
  # win rates at the end of each run: 5 temperatures + the shared π_ref draw ≈ 6 evaluation samplings
  counts['eval_point'] += (offline_runs + rl_runs) * 6
  out['calls'] = counts
  out['seconds'] = {k: counts[k] * s[k] for k in counts}
  out['total_s'] = sum(out['seconds'].values())
  out['total_h'] = out['total_s'] / 3600
  out['runs'] = {'offline': offline_runs, 'rl': rl_runs}
  out['loadavg_before'] = load0
  out['loadavg_after'] = bc.loadavg()
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()
