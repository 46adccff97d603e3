"""Shared test setup: JAX's persistent compilation cache, and a per-test alignlab cache dir."""

import os

import jax
import pytest

jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('JAX_COMPILATION_CACHE_DIR',
                                 os.path.expanduser('~/.cache/alignlab/jax_compilation_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@pytest.fixture(autouse=True)
def _alignlab_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('ALIGNLAB_CACHE', str(tmp_path / 'alignlab_cache'))
