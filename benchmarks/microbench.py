"""Micro-benchmarks behind the session-3 findings (benchmarks/findings.md): one XLA:CPU
question each, timed in isolation, milliseconds per call (median of `--repeats` timings of
`--calls` back-to-back calls).

    .venv/bin/python benchmarks/microbench.py head              # LM-head layout, B rows
    .venv/bin/python benchmarks/microbench.py decode_attention  # T = 1 attention forms, batch 64
    .venv/bin/python benchmarks/microbench.py train_attention   # (B, H) vs (B·H) batched dots
    .venv/bin/python benchmarks/microbench.py bandwidth         # a sum over 4–256 MB arrays

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import bench_common as bc


def per_call_ms(fn, *args, calls: int, repeats: int) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / calls * 1e3)
  return statistics.median(times)


def head(args):
  """x_BxD against the tied embedding as stored (VxD) and as a materialized DxV matrix."""
  for b in (8, 64, 1024):
    x_BxD = jax.random.normal(jax.random.key(0), (b, 256))
    e_VxD = jax.random.normal(jax.random.key(1), (8192, 256))
    e_DxV = jnp.asarray(e_VxD.T.copy())
    for name, fn, w in (('x·Eᵀ, E stored VxD', lambda x, e: jnp.einsum('bd,vd->bv', x, e), e_VxD),
                        ('x·W, W stored DxV', lambda x, w: x @ w, e_DxV)):
      bc.emit({'bench': 'head', 'rows': b, 'form': name,
               'ms': per_call_ms(fn, x_BxD, w, calls=args.calls, repeats=args.repeats)})
  bc.emit({'bench': 'head', 'form': 'transpose VxD → DxV (once per sample call)',
           'ms': per_call_ms(lambda e: e.T, e_VxD, calls=args.calls, repeats=args.repeats)})


def decode_attention(args):
  """One T = 1 attention (scores, softmax, weighted values) per layer of a 4-layer cache,
  B = 64, H = 4, S = 72, K = 64, inside a scan as in the sampler."""
  b, h, s, k, layers, steps = 64, 4, 72, 64, 4, 20
  q_BxHxK = jax.random.normal(jax.random.key(0), (b, h, k))
  keys = [jax.random.normal(jax.random.key(1 + i), (b, h, s, k)) for i in range(layers)]
  values = [jax.random.normal(jax.random.key(9 + i), (b, h, s, k)) for i in range(layers)]
  keys_t = [jnp.asarray(jnp.swapaxes(x, -1, -2).copy()) for x in keys]

  def dot_dot(q, kk, v):
    p = jax.nn.softmax(jnp.einsum('bhk,bhsk->bhs', q, kk), -1)
    return jnp.einsum('bhs,bhsk->bhk', p, v)

  def mulreduce(q, kk, v):
    p = jax.nn.softmax(jnp.sum(q[:, :, None] * kk, -1), -1)
    return jnp.sum(p[..., None] * v, 2)

  def keys_t_dot(q, kt, v):  # keys stored BxHxKxS
    p = jax.nn.softmax(jnp.einsum('bhk,bhks->bhs', q, kt), -1)
    return jnp.einsum('bhs,bhsk->bhk', p, v)

  def one_batch_dim(q, kk, v):  # per b: all heads' queries against all heads' keys, diagonal kept
    sc = jnp.einsum('bhk,bnk->bhn', q, kk.reshape(b, h * s, k)).reshape(b, h * h, s)[:, ::h + 1]
    p = jax.nn.softmax(sc, -1)
    blocks = (p[:, :, None, :] * jnp.eye(h, dtype=p.dtype)[None, :, :, None]).reshape(b, h, h * s)
    return jnp.einsum('bhn,bnk->bhk', blocks, v.reshape(b, h * s, k))

  def run(att, ks, vs):
    def body(q, _):
      for layer in range(layers):
        q = q + 0.01 * att(q, ks[layer], vs[layer])
      return q, None
    return jax.lax.scan(body, q_BxHxK, None, length=steps)[0]

  for name, att, ks in (('dot, dot', dot_dot, keys), ('multiply-reduce', mulreduce, keys),
                        ('keys BxHxKxS, dot', keys_t_dot, keys_t),
                        ('one batch dim (B), block-diagonal', one_batch_dim, keys)):
    ms = per_call_ms(lambda k_, v_, att=att: run(att, k_, v_), ks, values, calls=max(args.calls // 20, 2),
                     repeats=args.repeats)
    bc.emit({'bench': 'decode_attention', 'form': name, 'ms_per_layer_step': ms / steps / layers})


def train_attention(args):
  """Causal attention forward + backward, B = 16, T = 128, H = 4, K = 64: dots batched over
  (B, H) as in alignlab.model vs over one merged B·H dimension."""
  b, t, h, k = 16, 128, 4, 64
  q, kk, v = (jax.random.normal(jax.random.key(i), (b, t, h, k)) for i in range(3))
  mask = jnp.tril(jnp.ones((t, t), bool))[None].repeat(b, 0)

  def two_batch_dims(q, kk, v):
    sc = jnp.where(mask[:, None], jnp.einsum('bthk,bshk->bhts', q, kk) / 8.0, -1e30)
    return jnp.einsum('bhts,bshk->bthk', jax.nn.softmax(sc, -1), v)

  def one_batch_dim(q, kk, v):
    def merged(x):
      return x.transpose(0, 2, 1, 3).reshape(b * h, t, k)
    sc = jnp.einsum('ntk,nsk->nts', merged(q), merged(kk)).reshape(b, h, t, t) / 8.0
    p = jax.nn.softmax(jnp.where(mask[:, None], sc, -1e30), -1).reshape(b * h, t, t)
    return jnp.einsum('nts,nsk->ntk', p, merged(v)).reshape(b, h, t, k).transpose(0, 2, 1, 3)

  for name, fn in (('(B, H) batch dims', two_batch_dims), ('one B·H batch dim', one_batch_dim)):
    grad = jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) ** 2), (0, 1, 2))
    bc.emit({'bench': 'train_attention', 'form': name,
             'fwd_ms': per_call_ms(fn, q, kk, v, calls=args.calls // 10 or 1, repeats=args.repeats),
             'fwd_bwd_ms': per_call_ms(grad, q, kk, v, calls=args.calls // 10 or 1,
                                       repeats=args.repeats)})


def bandwidth(args):
  for mb in (4, 16, 64, 256):
    x = jnp.ones((mb * 2 ** 20 // 4 // 256, 256))
    ms = per_call_ms(lambda x: jnp.sum(x, 0), x, calls=max(args.calls // 10, 3), repeats=args.repeats)
    bc.emit({'bench': 'bandwidth', 'array_mb': mb, 'ms': ms, 'gb_per_s': mb / 1024 / (ms / 1e3)})


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('what', choices=['head', 'decode_attention', 'train_attention', 'bandwidth'])
  p.add_argument('--calls', type=int, default=100)
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args()
  bc.emit({'bench': 'microbench', **bc.env_info()})
  globals()[args.what](args)


if __name__ == '__main__':
  main()
