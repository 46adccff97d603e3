import dataclasses

import pytest

from alignlab.config import (ConfigError, ModelConfig, MeshConfig, OptimizerConfig, apply_overrides,
                             config_hash, from_dict, to_dict)


@dataclasses.dataclass(frozen=True)
class _Experiment:
  model: ModelConfig = ModelConfig()
  mesh: MeshConfig = MeshConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  betas: tuple[float, ...] = (0.1, 1.0)
  name: str = 'x'


def test_override_nested_and_types():
  cfg = apply_overrides(_Experiment(), ['model.d_model=128', 'optimizer.learning_rate=3e-4',
                                        'model.tie_embeddings=false', 'betas=(0.5,)', 'name=run'])
  assert cfg.model.d_model == 128 and isinstance(cfg.model.d_model, int)
  assert cfg.optimizer.learning_rate == 3e-4
  assert cfg.model.tie_embeddings is False
  assert cfg.betas == (0.5,)
  assert cfg.name == 'run'
  assert _Experiment().model.d_model == 256  # the original is untouched


def test_unknown_key_names_key_and_suggestions():
  with pytest.raises(ConfigError) as e:
    apply_overrides(_Experiment(), ['model.d_modle=128'])
  assert "'model.d_modle'" in str(e.value) and 'model.d_model' in str(e.value)
  with pytest.raises(ConfigError, match='optimizer.learning_rate'):
    apply_overrides(_Experiment(), ['optimizer.learning_rat=1'])


def test_bad_values():
  with pytest.raises(ConfigError, match='^model.d_model: expected an int'):  # the whole key
    apply_overrides(_Experiment(), ['model.d_model=abc'])
  with pytest.raises(ConfigError, match='key=value'):
    apply_overrides(_Experiment(), ['model.d_model'])
  with pytest.raises(ConfigError, match='is a section'):
    apply_overrides(_Experiment(), ['model=3'])


def test_round_trip_and_hash():
  cfg = apply_overrides(_Experiment(), ['model.n_layers=3'])
  assert from_dict(_Experiment, to_dict(cfg)) == cfg
  assert config_hash(cfg) == config_hash(from_dict(_Experiment, to_dict(cfg)))
  assert config_hash(cfg) != config_hash(_Experiment())


def test_model_validate():
  with pytest.raises(ConfigError, match='divisible'):
    ModelConfig(d_model=30, n_heads=4).validate()
  with pytest.raises(ConfigError, match='norm'):
    ModelConfig(norm='batchnorm').validate()
