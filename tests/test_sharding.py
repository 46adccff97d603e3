"""Sharding: same loss and gradients on 1 and 8 fake devices; params sharded as declared;
impossible meshes and indivisible dimensions are clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from alignlab import sharding
from alignlab.config import ConfigError, MeshConfig


def test_eight_devices_match_one():
  meshes = [[1, 1, 1], [8, 1, 1], [2, 2, 2], [1, 2, 4]]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, str(Path(__file__).with_name('sharded_worker.py')),
                         json.dumps(meshes)], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  base = report[str([1, 1, 1])]
  for m in meshes[1:]:
    got = report[str(m)]
    assert got['loss'] == pytest.approx(base['loss'], rel=1e-5)
    for name, g in base['grads'].items():
      # Relative to the tensor's scale: entries near 0 differ by reduction order only.
      np.testing.assert_allclose(got['grads'][name], g, rtol=1e-5, atol=1e-5 * np.abs(g).max(), err_msg=f'{m} {name}')
  # Declared layout: w_qkv (D, 3, H, K) over ('fsdp', None, 'tensor', None); embed (V, D) over
  # ('tensor', 'fsdp'); gradients keep the parameters' shardings.
  assert report[str([1, 2, 4])]['w_qkv_spec'] == ['fsdp', None, 'tensor', None]
  assert report[str([1, 2, 4])]['w_qkv_shard'] == [16, 3, 1, 8]
  assert report[str([2, 2, 2])]['w_qkv_shard'] == [16, 3, 2, 8]
  assert report[str([1, 2, 4])]['embed_shard'] == [16, 16]
  assert report[str([1, 2, 4])]['grad_w_in_shard'] == [16, 16]
  assert report[str([8, 1, 1])]['w_qkv_shard'] == [32, 3, 4, 8]


def test_impossible_mesh():
  with pytest.raises(ConfigError, match='needs 8 devices, but 1 are available'):
    sharding.resolve_mesh_shape(MeshConfig(2, 2, 2), 1)
  with pytest.raises(ConfigError, match='at most one axis'):
    sharding.resolve_mesh_shape(MeshConfig(-1, -1, 1), 8)
  with pytest.raises(ConfigError, match='not divisible'):
    sharding.resolve_mesh_shape(MeshConfig(-1, 3, 1), 8)
  assert sharding.resolve_mesh_shape(MeshConfig(-1, 2, 1), 8) == (4, 2, 1)


def test_indivisible_dimension_named_before_compiling():
  devices = np.asarray(jax.devices()[:1])
  # A fake 3-way tensor axis is enough to check divisibility without 3 devices.
  mesh = jax.sharding.Mesh(np.broadcast_to(devices, (1, 1, 1)), sharding.AXES)
  from jax.sharding import PartitionSpec as P

  class _Mesh:
    shape = {'data': 1, 'fsdp': 1, 'tensor': 3}
  with pytest.raises(ConfigError, match=r'w_qkv.*not divisible by mesh axis .tensor. of size 3'):
    sharding.check_divisible('backbone/blocks/0/attn/w_qkv', (32, 3, 4, 8),
                             P('fsdp', None, 'tensor', None), _Mesh())
  del mesh


def test_batch_not_divisible():
  mesh = sharding.make_mesh(MeshConfig.single(), jax.devices()[:1])
  out = sharding.shard_batch({'x': np.zeros((3, 2))}, mesh)
  assert out['x'].shape == (3, 2)
