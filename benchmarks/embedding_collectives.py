"""The collectives of one FSDP gradient step, with alignlab's embedding lookup (the tied token
table and the position table gathered over D first) and the lookup before it (the tables
looked up as they lie, split over D): the bytes and
count of each kind in the compiled program, and whether XLA had to replicate a tensor whole
("Involuntary full rematerialization"). Bytes, not seconds: they do not depend on the
machine, and on fake CPU devices seconds would not mean what they mean on a GPU or TPU.

    .venv/bin/python benchmarks/embedding_collectives.py [--mesh 2,4,1]

Each layout compiles in its own subprocess (8 fake CPU devices), for tied and untied token
tables (an untied token table is looked up as it lies in both: only its position table
differs). "before" drops the table constraints of `Transformer.__call__` and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
BYTES = {'f32': 4, 's32': 4, 'u32': 4, 'bf16': 2, 'f16': 2, 'pred': 1}


def _collectives(hlo: str) -> dict:
  """{kind: [count, bytes]} of the compiled HLO's collectives (a tuple result: its parts)."""
  out = {k: [0, 0] for k in KINDS}
  for line in hlo.splitlines():
    m = re.search(r'= (.*?) (' + '|'.join(KINDS) + r')(?:-start)?\(', line)
    if not m:
      continue
    size = 0
    for dtype, dims in re.findall(r'(\w+)\[([\d,]*)\]', m.group(1)):
      n = 1
      for d in filter(None, dims.split(',')):
        n *= int(d)
      size += n * BYTES.get(dtype, 4)
    out[m.group(2)][0] += 1
    out[m.group(2)][1] += size
  return out


def one(layout: str, tied: bool, mesh_shape: tuple[int, int, int]) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from alignlab import model, sharding
  from alignlab.config import MeshConfig, ModelConfig
  from alignlab.heads import CausalLM
  if layout == 'before':
    kept = model.constrain
    model.constrain = lambda x, spec: x if spec in (('tensor', None), (None, None)) else kept(x, spec)
  cfg = ModelConfig(vocab_size=2048, max_seq_len=64, d_model=128, n_layers=2, n_heads=4,
                    tie_embeddings=tied)
  mesh = sharding.make_mesh(MeshConfig(*mesh_shape))
  graphdef, params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh,
                                          jax.random.key(0))
  tokens_BxT = jax.device_put(
      np.random.default_rng(0).integers(0, cfg.vocab_size, (16, 32)).astype(np.int32),
      sharding.batch_sharding(mesh))

  def loss(p, tokens_BxT):
    m = nnx.merge(graphdef, p)
    logits_BxTxV = m.logits(m.hidden(tokens_BxT, jnp.ones_like(tokens_BxT)))
    logps_BxTxV = jax.nn.log_softmax(logits_BxTxV[:, :-1], -1)
    return -jnp.take_along_axis(logps_BxTxV, tokens_BxT[:, 1:, None], -1).mean()

  with sharding.use_mesh(mesh):
    hlo = jax.jit(jax.grad(loss)).lower(params, tokens_BxT).compile().as_text()
  return _collectives(hlo)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--mesh', default='2,4,1', help='data,fsdp,tensor (product 8)')
  parser.add_argument('--one', nargs=2, metavar=('LAYOUT', 'TIED'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  mesh_shape = tuple(int(x) for x in args.mesh.split(','))
  if args.one:
    print(json.dumps(one(args.one[0], args.one[1] == 'tied', mesh_shape)))
    return
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT),
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  print(f'mesh data,fsdp,tensor = {args.mesh}; V 2048, D 128, 2 layers, B 16 × T 32')
  print(f'{"table":8s} {"layout":9s} ' + ' '.join(f'{k:>20s}' for k in KINDS) +
        '   total MB  full remat')
  for tied in ('tied', 'untied'):
    for layout in ('alignlab', 'before'):
      proc = subprocess.run([sys.executable, __file__, '--mesh', args.mesh, '--one', layout, tied],
                            env=env, capture_output=True, text=True, check=True)
      found = json.loads(proc.stdout.strip().splitlines()[-1])
      remat = proc.stderr.count('Involuntary full rematerialization')
      cells = ' '.join(f'{c:4d} × {b / 1e6:8.3f} MB'.rjust(20) for c, b in found.values())
      total = sum(b for _, b in found.values()) / 1e6
      print(f'{tied:8s} {layout:9s} {cells} {total:10.3f}  {remat:10d}')


if __name__ == '__main__':
  main()
