"""alignlab's DPO train step on the GPT-2-shaped benchmark model (TRL's shapes, see
benchmarks/peers/trl_dpo_step.py): 8 pairs per step, prompt 64 + response 64 tokens (no padding),
AdamW (constant lr 1e-6, no weight decay, grad-norm clip 1.0), β 0.1, sigmoid DPO loss.

    .venv/bin/python benchmarks/dpo_step.py --mode per_batch   [--steps 10 --repeats 5]
    .venv/bin/python benchmarks/dpo_step.py --mode precomputed [--variant fused_logprobs]

Modes: `per_batch` passes the frozen reference params in hparams (`ref_params`): every step runs
the reference forward (no gradient). `precomputed` computes the reference log-probs once with
`preference.reference_logps` (timed apart: precompute_time_s) and feeds them in the batch.

Timing: compile (first call) apart, then 2 warm-up steps, then `--repeats` timed repeats of
`--steps` steps each, block_until_ready at the end of each repeat. steps/s per repeat; the
median over repeats is the headline.

Model FLOPs per step (matmul FLOPs as computed, counted at 2 per multiply-add). alignlab runs a
pair's shared prompt once (`logprobs.shared_prompt_logprobs`): B prompt rows of P tokens, then
2B response rows of R tokens attending to the prompt's cached keys; TRL runs 2B full rows of P + R.
  tokens  = B·P + 2·B·R                  (token passes; 1,536 here, TRL 2·B·(P+R) = 2,048)
  N       = L·(4·D² + 2·D·F)             (matmul params per token: q,k,v,out and MLP; no embeddings)
  attn    = L·4·D·T·(B·P + 2B·R)         (QKᵀ and PV forward: every query against all T slots,
                                          masked, as computed)
  head    = 2·D·V·(2B·R)                 (LM head forward, only at the R positions with logits)
  policy  = 3·(2·N·tokens + attn + head) (forward + backward = 3× forward: 6·N·tokens + ...)
  ref     = 2·N·tokens + attn + head     (per_batch mode only: reference forward)
MFU = FLOPs per step × steps/s / peak (benchmarks/measure_peak.py, fp32, same machine).
"""

from __future__ import annotations

import argparse
import time

import bench_common as bc


def dpo_flops(cfg, pairs: int, prompt_len: int, response_len: int, per_batch_ref: bool) -> dict:
  rows = 2 * pairs
  t = prompt_len + response_len
  tokens = pairs * prompt_len + rows * response_len
  n = bc.matmul_params(cfg)
  attn = bc.attention_fwd_flops(cfg, 1, tokens, t)
  head = 2.0 * cfg.d_model * cfg.vocab_size * rows * response_len
  fwd = 2.0 * n * tokens + attn + head
  policy = 3.0 * fwd
  ref = fwd if per_batch_ref else 0.0
  return {'tokens': tokens, 'matmul_params': n, 'policy_flops': policy, 'ref_flops': ref,
          'flops_per_step': policy + ref}


def make_batch(cfg, pairs: int, prompt_len: int, response_len: int, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  t = prompt_len + response_len
  out = {}
  prompt_BxP = rng.integers(1, cfg.vocab_size, (pairs, prompt_len))
  for side in ('chosen', 'rejected'):  # one prompt per pair, as in TRL's dataset
    response_BxR = rng.integers(1, cfg.vocab_size, (pairs, response_len))
    out[f'{side}_tokens'] = np.concatenate([prompt_BxP, response_BxR], 1).astype(np.int32)
    out[f'{side}_attention_mask'] = np.ones((pairs, t), np.int32)
    resp = np.zeros((pairs, t), np.int32)
    resp[:, prompt_len:] = 1
    out[f'{side}_response_mask'] = resp
  return out


def build(cfg, args, mode: str):
  """(step_fn, state, batch, hparams, precompute_time_s)."""
  import jax
  import jax.numpy as jnp
  from alignlab import sharding
  from alignlab.config import MeshConfig, OptimizerConfig
  from alignlab.heads import CausalLM
  from alignlab.train import preference
  from alignlab.train.optim import make_optimizer
  from alignlab.train.step import init_state, jit_step, make_train_step

  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda rngs: CausalLM(cfg, rngs=rngs), mesh,
                                          jax.random.key(args.seed))
  ref_params = jax.tree.map(jnp.copy, params)
  opt_cfg = OptimizerConfig(name='adamw', learning_rate=args.lr, weight_decay=0.0, grad_clip=1.0)
  tx = make_optimizer(opt_cfg)
  loss_fn = preference.make_loss_fn(graphdef, 'dpo', prompt_len=args.prompt_len)
  state = init_state(jax.tree.map(jnp.copy, params), tx, jax.random.key(0))
  if getattr(args, 'fix_recompile', False):
    # The proposed alignlab fix: leaves created without a mesh get a replicated mesh sharding, so
    # the step's inputs on call 1 and call 2 have the same types (one compile, not two).
    from jax.sharding import NamedSharding, PartitionSpec
    state = jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding)
                         else jax.device_put(x, NamedSharding(mesh, PartitionSpec())), state)
  step = jit_step(make_train_step(loss_fn, tx), state, mesh, donate=not args.no_donate)
  pairs = make_batch(cfg, args.pairs, args.prompt_len, args.response_len, args.seed)
  hparams = {'learning_rate': jnp.asarray(args.lr, jnp.float32),
             'beta': jnp.asarray(args.beta, jnp.float32)}
  precompute_s = None
  if mode == 'per_batch':
    hparams['ref_params'] = ref_params
  else:
    t0 = time.perf_counter()
    pairs = preference.reference_logps(graphdef, ref_params, pairs, prompt_len=args.prompt_len,
                                       batch_size=args.pairs)
    precompute_s = time.perf_counter() - t0  # includes its compile (one batch here)
  batch = sharding.shard_batch(pairs, mesh)
  return step, state, batch, hparams, precompute_s, mesh


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  bc.add_common_args(p)
  p.add_argument('--mode', choices=['per_batch', 'precomputed'], default='per_batch')
  p.add_argument('--steps', type=int, default=10, help='steps per timed repeat')
  p.add_argument('--pairs', type=int, default=8)
  p.add_argument('--prompt-len', type=int, default=64)
  p.add_argument('--response-len', type=int, default=64)
  p.add_argument('--lr', type=float, default=1e-6)
  p.add_argument('--beta', type=float, default=0.1)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--no-donate', action='store_true')
  p.add_argument('--fix-recompile', action='store_true', help='apply the proposed state placement')
  p.add_argument('--variant', default='baseline', help='comma list from benchmarks/variants.py')
  args = p.parse_args()
  load0 = bc.loadavg()

  import jax
  import variants
  applied = variants.apply(args.variant)
  from alignlab import sharding
  cfg = bc.model_config(args.config, args.dtype)

  step, state, batch, hparams, precompute_s, mesh = build(cfg, args, args.mode)
  with sharding.use_mesh(mesh):
    t0 = time.perf_counter()
    state, metrics = step(state, batch, hparams)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    first_loss = float(metrics['loss'])
    for _ in range(2):
      state, metrics = step(state, batch, hparams)
    jax.block_until_ready(state)
    rates = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = step(state, batch, hparams)
      jax.block_until_ready((state, metrics))
      rates.append(args.steps / (time.perf_counter() - t0))
    # A recompilation would show up as a second cache entry.
    cache_size = step._cache_size() if hasattr(step, '_cache_size') else None
  fl = dpo_flops(cfg, args.pairs, args.prompt_len, args.response_len, args.mode == 'per_batch')
  from measure_peak import peak_gflops
  peak = peak_gflops(args.peak_gflops)
  st = bc.stats(rates)
  gflops = {k: st[k] * fl['flops_per_step'] / 1e9 for k in ('min', 'median', 'max')}
  bc.emit({
      'bench': 'dpo_step', 'impl': 'alignlab', 'mode': args.mode, 'variant': applied or ['baseline'],
      'config': args.config, 'dtype': args.dtype, 'pairs': args.pairs,
      'prompt_len': args.prompt_len, 'response_len': args.response_len,
      'steps_per_repeat': args.steps, 'steps_per_s': rates, 'steps_per_s_stats': st,
      'median_steps_per_s': st['median'], 'compile_s': compile_s,
      'precompute_time_s': precompute_s, 'first_loss': first_loss,
      'final_loss': float(metrics['loss']), 'jit_cache_entries': cache_size,
      **fl, 'achieved_gflops': gflops, 'peak_gflops': peak,
      'mfu': {k: v / peak for k, v in gflops.items()},
      'donate': not args.no_donate, 'loadavg_start': load0, **bc.env_info()})


if __name__ == '__main__':
  main()
