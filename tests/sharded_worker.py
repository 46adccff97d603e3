"""Run in a subprocess with 8 fake CPU devices (the device count is fixed at JAX start-up).

Prints a JSON report: the loss and gradients on 1 device and on several meshes, and the
shard shapes of a few parameters.
"""

import os

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from alignlab import sharding  # noqa: E402
from alignlab.config import MeshConfig, ModelConfig  # noqa: E402
from alignlab.heads import CausalLM  # noqa: E402
from alignlab.logprobs import sequence_logprobs  # noqa: E402

CFG = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)


def loss_fn(params, graphdef, batch):
  model = nnx.merge(graphdef, params)
  logps = sequence_logprobs(model, batch['tokens'], batch['attention_mask'], batch['response_mask'])
  return -logps.sum() / batch['response_mask'].sum()


def dpo_loss_fn(params, graphdef, batch):
  from alignlab.train.preference import make_loss_fn
  loss_sum, metrics = make_loss_fn(graphdef, 'dpo', prompt_len=6)(params, batch, {'beta': 0.5})
  return loss_sum / metrics['count']


def dpo_batch(rng):
  out = {}
  for side in ('chosen', 'rejected'):
    tokens = rng.integers(1, 64, (8, 12)).astype(np.int32)
    attn = np.ones((8, 12), np.int32)
    attn[:3, :2] = 0
    tokens[:3, :2] = 0
    attn[4:, 10:] = 0
    tokens[4:, 10:] = 0
    resp = attn.copy()
    resp[:, :6] = 0
    out.update({f'{side}_tokens': tokens, f'{side}_attention_mask': attn,
                f'{side}_response_mask': resp})
  out['ref_chosen_logps'] = rng.normal(-40, 1, 8).astype(np.float32)
  out['ref_rejected_logps'] = rng.normal(-40, 1, 8).astype(np.float32)
  return out


def run(mesh_shape, kind='lm'):
  n = int(np.prod(mesh_shape))
  mesh = sharding.make_mesh(MeshConfig(*mesh_shape), jax.devices()[:n])
  graphdef, params = sharding.init_params(lambda r: CausalLM(CFG, rngs=r), mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 64, (8, 12)).astype(np.int32)
  attn = np.ones((8, 12), np.int32)
  attn[:3, :2] = 0
  tokens[:3, :2] = 0
  resp = np.zeros((8, 12), np.int32)
  resp[:, 6:] = 1
  batch = {'tokens': tokens, 'attention_mask': attn, 'response_mask': resp}
  if kind == 'dpo':
    batch = dpo_batch(rng)
  batch = sharding.shard_batch(batch, mesh)
  fn = dpo_loss_fn if kind == 'dpo' else loss_fn
  with sharding.use_mesh(mesh):
    # A training step pins gradients to the parameters' shardings, as here.
    step = jax.jit(jax.value_and_grad(fn), static_argnums=1,
                   out_shardings=(sharding.replicated(mesh), sharding.shardings_of(params)))
    loss, grads = step(params, graphdef, batch)
  flat = {jax.tree_util.keystr(p): np.asarray(g).ravel().tolist()
          for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  w = params['backbone']['blocks'][0]['attn']['w_qkv']
  emb = params['backbone']['embed']
  gw = grads['backbone']['blocks'][0]['mlp']['w_in']
  return {
      'loss': float(loss),
      'grads': flat,
      'w_qkv_spec': [a if a is None or isinstance(a, str) else list(a) for a in w.sharding.spec],
      'w_qkv_shard': list(w.addressable_shards[0].data.shape),
      'embed_shard': list(emb.addressable_shards[0].data.shape),
      'grad_w_in_shard': list(gw.addressable_shards[0].data.shape),
  }


if __name__ == '__main__':
  meshes = json.loads(sys.argv[1])
  kind = sys.argv[2] if len(sys.argv) > 2 else 'lm'
  print(json.dumps({str(m): run(tuple(m), kind) for m in meshes}))
