"""Frozen dataclass configs, one per concern, and the `--set a.b=c` override syntax.

Every stage of alignlab is a pure function of its config. Configs are frozen so that a
config can key a cache (`config_hash`) and cannot drift while a run is going.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from typing import Any


class ConfigError(ValueError):
  """A config key or value that cannot be applied."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer. The default layout is GPT-2's (pre-norm, learned positions,
  LayerNorm, GELU MLP, tied embeddings); `positions='rope'`, `norm='rmsnorm'` and
  `mlp='swiglu'` switch to the Llama-style layout."""
  vocab_size: int = 8192
  max_seq_len: int = 256
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  # Key/value heads (grouped-query attention, Ainslie et al. 2023, arXiv 2305.13245): each
  # group of n_heads / n_kv_heads query heads shares one key/value head. 0 means n_heads
  # (multi-head attention, the fused q/k/v layout of every alignlab model before GQA).
  n_kv_heads: int = 0
  d_ff: int = 0  # 0 means 4 * d_model
  norm: str = 'layernorm'  # 'layernorm' | 'rmsnorm'
  mlp: str = 'gelu'  # 'gelu' | 'swiglu'
  positions: str = 'learned'  # 'learned' | 'rope'
  rope_theta: float = 10_000.0
  # RoPE frequency scaling for long contexts: 'none', 'linear' (positions divided by the
  # factor; Chen et al. 2023, arXiv 2306.15595) or 'llama3' (Llama 3.1's per-band scaling
  # with the low/high frequency factors and the original context length).
  rope_scaling: str = 'none'
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  tie_embeddings: bool = True
  use_bias: bool = True  # GPT-2 has biases; Llama-style layouts usually drop them
  qkv_bias: bool | None = None  # q/k/v projection biases; None follows use_bias (Qwen2: True)
  norm_eps: float = 1e-5
  dtype: str = 'float32'  # activation dtype; fp32 is fastest on XLA:CPU, bf16 for GPU/TPU
  param_dtype: str = 'float32'
  init_std: float = 0.02
  # Attention kernel for multi-token passes (training, scoring, prefill): 'fused' is
  # `jax.nn.dot_product_attention` (the backend picks the kernel, e.g. cuDNN on GPU), 'einsum'
  # the explicit einsum + softmax, 'auto' fused on GPU/TPU and einsum on CPU. One-token decode
  # steps always use the einsum, which reads the head-major KV cache without a copy.
  attention: str = 'auto'
  remat: bool = False  # recompute each block's activations in the backward pass (less memory)
  # Multi-token passes (training, scoring, prefill) run the blocks as one `lax.scan` over
  # their stacked parameters, so a deep model compiles one block instead of L; the parameters
  # keep their per-layer layout (checkpoints, Hugging Face mapping, shardings). One-token
  # decode steps keep the loop.
  scan_layers: bool = dataclasses.field(default=False, metadata={'keyed_if_set': True})
  # Response positions per chunk when computing log-probs: the float32 BxTxV logits are then
  # never materialized whole (each chunk is recomputed in the backward pass). 0: one chunk.
  logits_chunk: int = 0
  # Ids the LM never emits (their logits are −1e9): pad, or the exact task's prompt tokens, so
  # that every distribution the policy defines is over the tokens it may actually produce.
  masked_output_ids: tuple[int, ...] = ()

  @property
  def ff_dim(self) -> int:
    return self.d_ff or 4 * self.d_model

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def has_qkv_bias(self) -> bool:
    return self.use_bias if self.qkv_bias is None else self.qkv_bias

  def validate(self) -> None:
    if self.d_model % self.n_heads:
      raise ConfigError(f'model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}')
    if self.n_kv_heads < 0 or self.n_heads % self.kv_heads:
      raise ConfigError(f'model.n_heads={self.n_heads} is not divisible by '
                        f'model.n_kv_heads={self.n_kv_heads}')
    if self.logits_chunk < 0:
      raise ConfigError(f'model.logits_chunk={self.logits_chunk} must be ≥ 0 (0: no chunking)')
    if self.max_seq_len < 1:
      raise ConfigError(f'model.max_seq_len={self.max_seq_len} must be ≥ 1')
    if self.rope_scaling not in ('none', 'linear', 'llama3'):
      raise ConfigError(f"model.rope_scaling={self.rope_scaling!r}; expected one of "
                        f"('none', 'linear', 'llama3')")
    if self.rope_scaling != 'none' and self.rope_scaling_factor <= 0:
      raise ConfigError(f'model.rope_scaling_factor={self.rope_scaling_factor} must be > 0')
    if self.rope_scaling == 'llama3' and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      raise ConfigError(f'model.rope_high_freq_factor={self.rope_high_freq_factor} must exceed '
                        f'model.rope_low_freq_factor={self.rope_low_freq_factor}')
    for key, value, allowed in (('norm', self.norm, ('layernorm', 'rmsnorm')),
                                ('mlp', self.mlp, ('gelu', 'swiglu')),
                                ('attention', self.attention, ('auto', 'fused', 'einsum')),
                                ('positions', self.positions, ('learned', 'rope'))):
      if value not in allowed:
        raise ConfigError(f'model.{key}={value!r}; expected one of {allowed}')
    if self.positions == 'rope' and self.head_dim % 2:
      raise ConfigError(f'RoPE needs an even head dim, got {self.head_dim}')

  @classmethod
  def gpt2_bench(cls) -> 'ModelConfig':
    """The GPT-2-shaped benchmark model: 4 layers, d_model 256, 4 heads, vocab 8192."""
    return cls(vocab_size=8192, max_seq_len=256, d_model=256, n_layers=4, n_heads=4)

  @classmethod
  def tiny(cls, vocab_size: int = 67) -> 'ModelConfig':
    """Odd, prime-ish sizes so that shape bugs show up in tests."""
    return cls(vocab_size=vocab_size, max_seq_len=48, d_model=40, n_layers=2, n_heads=5, d_ff=56)

  @classmethod
  def gpt2_small(cls) -> 'ModelConfig':
    """GPT-2 small (124M) shapes, for GPU benchmarks."""
    return cls(vocab_size=50304, max_seq_len=1024, d_model=768, n_layers=12, n_heads=12)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh over ('data', 'fsdp', 'tensor'); one axis may be -1 to take the rest."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  @classmethod
  def single(cls) -> 'MeshConfig':
    return cls(data=1, fsdp=1, tensor=1)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = 'adamw'  # 'adamw' | 'adam' | 'rmsprop' | 'sgd'
  learning_rate: float = 1e-4
  schedule: str = 'constant'  # 'constant' | 'cosine' | 'linear' (decay after warmup)
  warmup_steps: int = 0
  total_steps: int = 0  # needed by 'cosine' and 'linear'
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  rms_decay: float = 0.99  # RMSprop's smoothing constant (PyTorch's `alpha`)
  grad_clip: float = 1.0  # global-norm clip; 0 disables

  @classmethod
  def dpo_paper(cls) -> 'OptimizerConfig':
    """DPO paper App. B: RMSprop, lr 1e-6, linear warmup over 150 steps."""
    return cls(name='rmsprop', learning_rate=1e-6, warmup_steps=150, grad_clip=10.0)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 means greedy
  top_k: int = 0  # 0 disables
  top_p: float = 1.0  # 1 disables
  eos_id: int = -1  # -1: no EOS, every sequence runs to max_new_tokens
  pad_id: int = 0


# ----------------------------------------------------------------------------- utilities


def to_dict(cfg: Any) -> Any:
  """A JSON-ready nested dict of a (nested) dataclass config. A field marked `keyed_if_set`
  appears only when it differs from its default: a switch added later then leaves the
  records and cache keys of every existing config as they were."""
  if dataclasses.is_dataclass(cfg):
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if not (f.metadata.get('keyed_if_set') and getattr(cfg, f.name) == f.default)}
  if isinstance(cfg, (list, tuple)):
    return [to_dict(v) for v in cfg]
  if isinstance(cfg, dict):
    return {k: to_dict(v) for k, v in cfg.items()}
  return cfg


def from_dict(cls: type, data: dict[str, Any]) -> Any:
  """Inverse of `to_dict` for a dataclass type; unknown keys are an error."""
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(data) - names
  if unknown:
    raise ConfigError(f'{cls.__name__}: unknown keys {sorted(unknown)}')
  kwargs = {}
  for name, value in data.items():
    kwargs[name] = _coerce(hints[name], value, name)
  return cls(**kwargs)


def split_fields(cfg: Any, fields: tuple[str, ...]) -> tuple[dict, dict]:
  """(`to_dict(cfg)` without `fields`, `fields` alone): e.g. a task's training identity and
  its evaluation settings, which run dirs compare apart (`runs.prepare_run`)."""
  record = to_dict(cfg)
  return ({k: v for k, v in record.items() if k not in fields}, {k: record[k] for k in fields})


def config_hash(cfg: Any, length: int = 12) -> str:
  """A stable short hash of a config (and anything JSON-serializable), for cache keys."""
  blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:length]


def _all_keys(cfg: Any, prefix: str = '') -> list[str]:
  keys = []
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    key = prefix + f.name
    keys.append(key)
    if dataclasses.is_dataclass(value):
      keys.extend(_all_keys(value, key + '.'))
  return keys


def _coerce(hint: Any, value: Any, key: str) -> Any:
  origin = typing.get_origin(hint)
  if dataclasses.is_dataclass(hint) and isinstance(value, dict):
    return from_dict(hint, value)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
      return None
    for arg in args:
      try:
        return _coerce(arg, value, key)
      except (ConfigError, TypeError, ValueError):
        continue
    raise ConfigError(f'{key}: cannot read {value!r} as {hint}')
  if origin in (tuple, list):
    args = typing.get_args(hint)
    if not isinstance(value, (list, tuple)):
      value = (value,)
    inner = args[0] if args else Any
    items = [_coerce(inner, v, key) for v in value]
    return tuple(items) if origin is tuple else items
  if hint is bool:
    if isinstance(value, str):
      if value.lower() in ('true', '1', 'yes'):
        return True
      if value.lower() in ('false', '0', 'no'):
        return False
      raise ConfigError(f'{key}: expected a bool, got {value!r}')
    return bool(value)
  if hint is int:
    if isinstance(value, float) and not value.is_integer():
      raise ConfigError(f'{key}: expected an int, got {value!r}')
    if isinstance(value, bool):
      raise ConfigError(f'{key}: expected an int, got {value!r}')
    try:
      return int(value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f'{key}: expected an int, got {value!r}') from e
  if hint is float:
    try:
      return float(value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f'{key}: expected a float, got {value!r}') from e
  if hint is str:
    return str(value)
  return value


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(cfg: Any, key: str, value: Any, _section: str = '') -> Any:
  """Returns a copy of `cfg` with the dotted `key` set to `value` (coerced to the field type).
  Errors name the whole key (`_section`: the sections above `cfg`, for the recursion)."""
  parts = key.split('.')
  head, rest = parts[0], parts[1:]
  names = {f.name: f for f in dataclasses.fields(cfg)}
  if head not in names:
    valid = _all_keys(cfg)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f'; did you mean {", ".join(close)}?' if close else f'; valid keys: {", ".join(valid)}'
    raise ConfigError(f'unknown config key {key!r}{hint}')
  current = getattr(cfg, head)
  if rest:
    if not dataclasses.is_dataclass(current):
      raise ConfigError(f'config key {head!r} is a value, not a section; cannot set {key!r}')
    try:
      new = override(current, '.'.join(rest), value, f'{_section}{head}.')
    except ConfigError as e:
      if str(e).startswith('unknown config key'):
        valid = [f'{head}.{k}' for k in _all_keys(current)]
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        hint = f'; did you mean {", ".join(close)}?' if close else f'; valid keys: {", ".join(valid)}'
        raise ConfigError(f'unknown config key {key!r}{hint}') from None
      raise
    return dataclasses.replace(cfg, **{head: new})
  hint = typing.get_type_hints(type(cfg))[head]
  if dataclasses.is_dataclass(current) and not isinstance(value, dict):
    raise ConfigError(f'config key {key!r} is a section; set one of its fields, e.g. {key}.{dataclasses.fields(current)[0].name}=...')
  return dataclasses.replace(cfg, **{head: _coerce(hint, value, _section + key)})


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
  """Applies `['model.d_model=128', 'dpo.beta=0.1', ...]` in order."""
  for item in overrides:
    if '=' not in item:
      raise ConfigError(f'override {item!r} is not of the form key=value')
    key, text = item.split('=', 1)
    cfg = override(cfg, key.strip(), _parse_value(text.strip()))
  return cfg
