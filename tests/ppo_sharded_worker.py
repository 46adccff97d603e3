"""Run in a subprocess with 8 fake CPU devices (the device count is fixed at JAX start-up).

For each mesh: evaluates a fixed batch of sequences (the rollout's forward program), then
reports the PPO loss and its gradients on the full batch, and the state after one full
jitted update (2 epochs × 2 minibatches, adaptive KL controller), as JSON.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

from alignlab import sharding  # noqa: E402
from alignlab.config import MeshConfig, ModelConfig, OptimizerConfig, SamplingConfig  # noqa: E402
from alignlab.heads import CausalLM  # noqa: E402
from alignlab.sampling import SampleOutput  # noqa: E402
from alignlab.train import ppo  # noqa: E402
from alignlab.train.rollout import evaluate_samples  # noqa: E402

CFG = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layers=1, n_heads=4, d_ff=64)
P, R, B = 5, 7, 16


def fixed_batch():
  """Left-padded prompts, right-padded responses of different lengths (EOS = 1)."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 64, (B, P + R)).astype(np.int32)
  attn = np.ones((B, P + R), np.int32)
  resp = np.zeros((B, P + R), np.int32)
  for b in range(B):
    pad = b % 3
    tokens[b, :pad], attn[b, :pad] = 0, 0
    length = 1 + (b * 5) % R
    resp[b, P:P + length] = 1
    if b % 2:
      tokens[b, P + length - 1] = 1
    tokens[b, P + length:], attn[b, P + length:] = 0, 0
  return tokens, attn, resp


def gold(tokens, attn, resp):
  return ((tokens * resp).sum(-1) % 7 / 3.0 - 1.0).astype(np.float32)


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x).ravel().tolist()
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def run(mesh_shape):
  n = int(np.prod(mesh_shape))
  mesh = sharding.make_mesh(MeshConfig(*mesh_shape), jax.devices()[:n])
  graphdef, params = sharding.init_params(lambda r: CausalLM(CFG, rngs=r), mesh, jax.random.key(0))
  _, ref_params = sharding.init_params(lambda r: CausalLM(CFG, rngs=r), mesh, jax.random.key(1))
  value_graphdef, value_params = ppo.init_value_model(CFG, mesh, jax.random.key(2),
                                                      policy_params=params)
  cfg = ppo.PPOConfig(sampling=SamplingConfig(max_new_tokens=R, eos_id=1),
                      optimizer=OptimizerConfig(learning_rate=1e-3, eps=1e-5),
                      value_optimizer=OptimizerConfig(learning_rate=1e-3, eps=1e-5),
                      ppo_epochs=2, num_minibatches=2, kl_coef=0.3, kl_controller='adaptive',
                      kl_target=0.5, kl_horizon=100.0, no_eos_score=-1.0)
  tokens, attn, resp = fixed_batch()
  batch = sharding.shard_batch({'tokens': tokens, 'attention_mask': attn, 'response_mask': resp,
                                'logprobs': np.zeros((B, P + R), np.float32)}, mesh)
  with sharding.use_mesh(mesh):
    samples = SampleOutput(**batch)
    ro = evaluate_samples(samples, graphdef, params, ref_params, gold, prompt_len=P,
                          value=(value_graphdef, value_params), eos_id=1, no_eos_score=-1.0)
    state = ppo.init_ppo_state(cfg, params, value_params, mesh)
    kl_coef = state['kl_coef']

    def loss_of(p):
      update_batch, _ = ppo.update_batch(cfg, ro, kl_coef)
      return ppo.ppo_loss(p, update_batch, kl_coef, cfg=cfg, policy_graphdef=graphdef,
                          value_graphdef=value_graphdef, prompt_len=P)

    (loss, _), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
        {'policy': params, 'value': value_params})
    update = jax.jit(ppo.make_update(cfg, graphdef, value_graphdef, prompt_len=P))
    hparams = {'learning_rate': jnp.float32(1e-3), 'value_learning_rate': jnp.float32(1e-3)}
    new_state, metrics = update(state, ro, jax.random.key(3), hparams)
  return {
      'loss': float(loss),
      'grads': flat(grads),
      'scores': np.asarray(ro.scores).tolist(),
      'kl': np.asarray(ro.kl).ravel().tolist(),
      'new_params': flat({'policy': new_state['policy'], 'value': new_state['value']}),
      'kl_coef': float(new_state['kl_coef']),
      'metrics': {k: float(v) for k, v in metrics.items()},
  }


if __name__ == '__main__':
  meshes = json.loads(sys.argv[1])
  print(json.dumps({str(m): run(tuple(m)) for m in meshes}))
