"""Checkpoints: round trip (params, optimizer state, step, RNG), latest step, mismatched config."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignlab import sharding
from alignlab.checkpoint import Checkpointer
from alignlab.config import ConfigError, ModelConfig
from alignlab.heads import CausalLM


def _state(cfg, seed=0):
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  _, params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(seed))
  opt = optax.adamw(1e-3)
  return {'params': params, 'opt_state': opt.init(params), 'step': jnp.int32(0),
          'rng': jax.random.key(seed)}


def _equal(a, b):
  def eq(x, y):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    return bool(np.array_equal(np.asarray(x), np.asarray(y)))
  return all(jax.tree.leaves(jax.tree.map(eq, a, b)))


def test_round_trip_and_latest(tmp_path):
  cfg = ModelConfig.tiny()
  ck = Checkpointer(tmp_path / 'ckpt', {'model': dataclasses.asdict(cfg)}, max_to_keep=2)
  states = {}
  for step in (1, 2, 3):
    states[step] = {**_state(cfg, seed=step), 'step': jnp.int32(step)}
    ck.save(step, states[step])
  ck.wait()
  assert ck.latest_step() == 3 and ck.all_steps() == [2, 3]
  fresh = Checkpointer(tmp_path / 'ckpt', {'model': dataclasses.asdict(cfg)})
  restored = fresh.restore(_state(cfg, seed=99))
  assert _equal(restored, states[3])
  assert not _equal(restored, states[2])
  assert _equal(fresh.restore(_state(cfg, seed=99), step=2), states[2])


def test_incomplete_step_is_ignored(tmp_path):
  cfg = ModelConfig.tiny()
  ck = Checkpointer(tmp_path / 'ckpt', {'model': dataclasses.asdict(cfg)})
  ck.save(1, _state(cfg))
  ck.wait()
  # What an interrupted save leaves behind: orbax's temporary directory for step 2.
  (tmp_path / 'ckpt' / '2.orbax-checkpoint-tmp-0').mkdir()
  assert Checkpointer(tmp_path / 'ckpt', {'model': dataclasses.asdict(cfg)}).latest_step() == 1


def test_mismatched_config_is_clear_error(tmp_path):
  cfg = ModelConfig.tiny()
  ck = Checkpointer(tmp_path / 'ckpt', {'model': dataclasses.asdict(cfg)})
  ck.save(1, _state(cfg))
  ck.wait()
  wider = dataclasses.replace(cfg, d_model=50)
  other = Checkpointer(tmp_path / 'ckpt', {'model': dataclasses.asdict(wider)})
  with pytest.raises(ConfigError, match=r'shape .* in the checkpoint.*model\.d_model: 40 → 50'):
    other.restore(_state(wider))


def test_missing_checkpoint(tmp_path):
  ck = Checkpointer(tmp_path / 'none', {})
  with pytest.raises(FileNotFoundError):
    ck.restore({'x': jnp.zeros(2)})
