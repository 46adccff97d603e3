"""Hugging Face checkpoints in and out: GPT-2 and the Llama family (Llama 2/3, Qwen2/2.5,
Mistral), as `config.json` + `*.safetensors` (+ `tokenizer.json`).

    cfg, graphdef, params, tokenizer = load_pretrained('path/to/gpt2')
    save_pretrained('out/', cfg, graphdef, params, tokenizer)

Weights are read and written with the `safetensors` library (its NumPy API), one tensor at a
time, and each is converted to alignlab's layout by a transpose and a reshape only, so that
import → export → import is bitwise. The mapping, per family (`_tensor_map`):

  HF (torch `Linear` weights are out × in; GPT-2's `Conv1D` are in × out)   alignlab
  embedding V×D                                                             embed V×D
  q/k/v projections (H·K)×D, (G·K)×D each (GPT-2: c_attn D×3D)              w_qkv D×3×H×K (G = H)
                                                                            or w_q D×H×K + w_kv D×2×G×K
  output projection D×(H·K) (GPT-2: c_proj D×D)                             w_out H×K×D
  MLP up/gate F×D, down D×F (GPT-2: c_fc D×F, c_proj F×D)                   w_in, w_gate D×F; w_out F×D
  untied LM head V×D                                                        w_lm D×V
  sequence-classification head `score` 1×D (no bias; reward models)        w_head D (× gain)

Reward models and value functions (`ScalarModel`) are written as the family's
`*ForSequenceClassification` with one label: its `score` is the scalar head with the gain
folded in, and the constant the head adds (bias · gain + offset) goes to config.json as
`alignlab_score_offset`, which transformers has no place for (its `score` has no bias): its
scores are alignlab's minus that constant.

RoPE: Hugging Face's Llama-family checkpoints store q/k in the rotate-half layout that
`model.rope` uses, so no permutation is needed. Anything in `config.json` that alignlab's
model cannot reproduce exactly is an error naming the file and the field (`HFFormatError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from alignlab.artifacts import atomic_dir
from alignlab.checkpoint import restore_params, save_params
from alignlab.config import MeshConfig, ModelConfig, from_dict, to_dict
from alignlab.data.tokenizer import CONFIG_FILENAME, FILENAME as TOKENIZER_FILENAME, Tokenizer
from alignlab.heads import CausalLM, ScalarModel
from alignlab.sharding import abstract_model, make_mesh, param_shardings

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'
FAMILIES = ('gpt2', 'llama', 'qwen2', 'mistral')
_ARCHITECTURES = {'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM',
                  'qwen2': 'Qwen2ForCausalLM', 'mistral': 'MistralForCausalLM'}
_CLASSIFIERS = {'gpt2': 'GPT2ForSequenceClassification', 'llama': 'LlamaForSequenceClassification',
                'qwen2': 'Qwen2ForSequenceClassification',
                'mistral': 'MistralForSequenceClassification'}
_DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16, 'float16': np.float16}
# Buffers some checkpoints store beside the weights: GPT-2's causal-mask tables and older
# Llama exports' RoPE frequencies. They are recomputed, never read.
_BUFFER_SUFFIXES = ('.attn.bias', '.attn.masked_bias', '.rotary_emb.inv_freq')
_MASKED_IDS_KEY = 'alignlab_masked_output_ids'  # not a transformers field; ignored by it
_SCORE_OFFSET_KEY = 'alignlab_score_offset'  # likewise: the constant transformers' score lacks


class HFFormatError(ValueError):
  """A checkpoint directory alignlab cannot read exactly; the message names file and field."""


# ----------------------------------------------------------------------------- config


def _field(hf: dict, key: str, source: str, default: Any = ...) -> Any:
  if key in hf and hf[key] is not None:
    return hf[key]
  if default is ...:
    raise HFFormatError(f'{source}: required field {key!r} is missing')
  return default


def _require(hf: dict, key: str, allowed: tuple, source: str, default: Any = None) -> Any:
  value = hf.get(key, default)
  if value not in allowed:
    raise HFFormatError(f'{source}: {key}={value!r} is not supported (alignlab supports '
                        f'{", ".join(map(repr, allowed))})')
  return value


def _rope_fields(hf: dict, source: str) -> dict:
  """RoPE θ and scaling, from transformers ≥ 5's `rope_parameters` or the older `rope_theta`
  + `rope_scaling`."""
  if isinstance(hf.get('rope_parameters'), dict):
    params, key = dict(hf['rope_parameters']), 'rope_parameters'
  else:
    params, key = dict(hf.get('rope_scaling') or {}), 'rope_scaling'
    params.setdefault('rope_theta', hf.get('rope_theta', 10_000.0))
  kind = params.get('rope_type', params.get('type', 'default'))
  out = {'rope_theta': float(params.get('rope_theta', 10_000.0))}
  if kind == 'default':
    return out
  if kind not in ('linear', 'llama3'):
    raise HFFormatError(f"{source}: {key}.rope_type={kind!r} is not supported (alignlab supports "
                        f"'default', 'linear', 'llama3')")
  out.update(rope_scaling=kind, rope_scaling_factor=float(_field(params, 'factor', f'{source}: {key}')))
  if kind == 'llama3':
    where = f'{source}: {key}'
    out.update(rope_low_freq_factor=float(_field(params, 'low_freq_factor', where)),
               rope_high_freq_factor=float(_field(params, 'high_freq_factor', where)),
               rope_original_max_len=int(_field(params, 'original_max_position_embeddings', where)))
  return out


def config_from_hf(hf: dict, source: str = CONFIG) -> ModelConfig:
  """The `ModelConfig` of a transformers `config.json` (a dict); `source` names the file in
  errors."""
  family = hf.get('model_type')
  if family not in FAMILIES:
    raise HFFormatError(f'{source}: model_type={family!r} is not supported (alignlab supports '
                        f'{", ".join(FAMILIES)})')
  # initializer_range is transformers' init std, alignlab's init_std (it matters only to
  # fresh layers, e.g. a reward head; kept so that the config round-trips).
  extra = {'init_std': float(hf.get('initializer_range', 0.02))}
  if hf.get(_MASKED_IDS_KEY):
    extra['masked_output_ids'] = tuple(int(i) for i in hf[_MASKED_IDS_KEY])
  if family == 'gpt2':
    _require(hf, 'activation_function', ('gelu_new', 'gelu_pytorch_tanh'), source, 'gelu_new')
    _require(hf, 'scale_attn_weights', (True,), source, True)
    _require(hf, 'scale_attn_by_inverse_layer_idx', (False,), source, False)
    _require(hf, 'add_cross_attention', (False,), source, False)
    d = int(_field(hf, 'n_embd', source))
    cfg = ModelConfig(
        vocab_size=int(_field(hf, 'vocab_size', source)),
        max_seq_len=int(_field(hf, 'n_positions', source)), d_model=d,
        n_layers=int(_field(hf, 'n_layer', source)), n_heads=int(_field(hf, 'n_head', source)),
        d_ff=int(_field(hf, 'n_inner', source, 4 * d)),
        norm_eps=float(_field(hf, 'layer_norm_epsilon', source, 1e-5)),
        tie_embeddings=bool(hf.get('tie_word_embeddings', True)), **extra)
  else:
    _require(hf, 'hidden_act', ('silu',), source, 'silu')
    d, h = int(_field(hf, 'hidden_size', source)), int(_field(hf, 'num_attention_heads', source))
    if hf.get('head_dim') not in (None, d // h):
      raise HFFormatError(f'{source}: head_dim={hf["head_dim"]} is not supported (alignlab needs '
                          f'hidden_size / num_attention_heads = {d // h})')
    if family == 'llama':
      # Llama's optional biases (q/k/v/o without MLP, or the gate's) have no alignlab layout.
      _require(hf, 'attention_bias', (False,), source, False)
      _require(hf, 'mlp_bias', (False,), source, False)
      bias = {'use_bias': False}
    elif family == 'qwen2':
      # Qwen2 has q/k/v biases and no other (Qwen2 technical report, arXiv 2407.10671).
      _require(hf, 'use_sliding_window', (False,), source, False)
      for kind in hf.get('layer_types') or ():
        if kind != 'full_attention':
          raise HFFormatError(f'{source}: layer_types containing {kind!r} is not supported '
                              f"(alignlab supports 'full_attention' only)")
      bias = {'use_bias': False, 'qkv_bias': True}
    else:
      bias = {'use_bias': False}
    max_len = int(_field(hf, 'max_position_embeddings', source))
    if family == 'mistral' and hf.get('sliding_window'):
      # Within one window, sliding-window attention is full causal attention (Jiang et al.
      # 2023, arXiv 2310.06825 §2): capping the context at the window keeps the model exact.
      max_len = min(max_len, int(hf['sliding_window']))
    cfg = ModelConfig(
        vocab_size=int(_field(hf, 'vocab_size', source)), max_seq_len=max_len, d_model=d,
        n_layers=int(_field(hf, 'num_hidden_layers', source)), n_heads=h,
        n_kv_heads=int(_field(hf, 'num_key_value_heads', source, h)),
        d_ff=int(_field(hf, 'intermediate_size', source)),
        norm='rmsnorm', mlp='swiglu', positions='rope',
        norm_eps=float(_field(hf, 'rms_norm_eps', source, 1e-6)),
        tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
        **_rope_fields(hf, source), **bias, **extra)
  if cfg.n_kv_heads == cfg.n_heads:
    cfg = dataclasses.replace(cfg, n_kv_heads=0)  # the fused layout, as alignlab builds it
  if cfg.has_qkv_bias == cfg.use_bias:
    cfg = dataclasses.replace(cfg, qkv_bias=None)
  try:
    cfg.validate()
  except ValueError as e:
    raise HFFormatError(f'{source}: {e}') from None
  return cfg


def head_of(hf: dict, source: str = CONFIG) -> str:
  """'lm' for a causal LM checkpoint, 'scalar' for a one-label sequence classifier (a reward
  model, loaded as a `ScalarModel`)."""
  architectures = hf.get('architectures') or []
  if not any(str(a).endswith('ForSequenceClassification') for a in architectures):
    return 'lm'
  labels = len(hf.get('id2label') or {}) or hf.get('num_labels', 2)  # transformers' default: 2
  if labels != 1:
    raise HFFormatError(f'{source}: a sequence classifier with {labels} labels (id2label) is not '
                        f'supported (alignlab reads one: a reward model or value function)')
  return 'scalar'


def family_of(cfg: ModelConfig) -> str:
  """The Hugging Face family whose architecture is exactly `cfg`'s."""
  if (cfg.positions, cfg.norm, cfg.mlp) == ('learned', 'layernorm', 'gelu'):
    if cfg.use_bias and cfg.has_qkv_bias and cfg.kv_heads == cfg.n_heads:
      return 'gpt2'
  elif (cfg.positions, cfg.norm, cfg.mlp) == ('rope', 'rmsnorm', 'swiglu'):
    if not cfg.use_bias:
      return 'qwen2' if cfg.has_qkv_bias else 'llama'
  raise HFFormatError(f'no Hugging Face family has this layout: positions={cfg.positions!r}, '
                      f'norm={cfg.norm!r}, mlp={cfg.mlp!r}, use_bias={cfg.use_bias}, '
                      f'qkv_bias={cfg.qkv_bias}, n_kv_heads={cfg.n_kv_heads}')


def config_to_hf(cfg: ModelConfig, dtype: str, head: str = 'lm') -> dict:
  """The transformers `config.json` (a dict) of `cfg` with its `head` ('lm', or 'scalar': a
  one-label sequence classifier); its weights are stored in `dtype`."""
  family = family_of(cfg)
  architecture = (_ARCHITECTURES if head == 'lm' else _CLASSIFIERS)[family]
  out: dict[str, Any] = {'architectures': [architecture], 'model_type': family,
                         'vocab_size': cfg.vocab_size, 'tie_word_embeddings': cfg.tie_embeddings,
                         'torch_dtype': dtype, 'initializer_range': cfg.init_std}
  if family == 'gpt2':
    out.update(n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
               n_head=cfg.n_heads, n_inner=cfg.ff_dim, activation_function='gelu_new',
               layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  else:
    out.update(hidden_size=cfg.d_model, intermediate_size=cfg.ff_dim,
               num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
               num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, hidden_act='silu',
               max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
               rope_theta=cfg.rope_theta, attention_dropout=0.0)
    if cfg.rope_scaling != 'none':
      scaling = {'rope_type': cfg.rope_scaling, 'factor': cfg.rope_scaling_factor}
      if cfg.rope_scaling == 'llama3':
        scaling.update(low_freq_factor=cfg.rope_low_freq_factor,
                       high_freq_factor=cfg.rope_high_freq_factor,
                       original_max_position_embeddings=cfg.rope_original_max_len)
      out['rope_scaling'] = scaling
    if family == 'llama':
      out.update(attention_bias=False, mlp_bias=False)
    else:
      out.update(use_sliding_window=False, sliding_window=None)
  if cfg.masked_output_ids:
    out[_MASKED_IDS_KEY] = list(cfg.masked_output_ids)
  if head == 'scalar':
    out.update(id2label={'0': 'LABEL_0'}, label2id={'LABEL_0': 0})
  return out


def _special_token_ids(tokenizer: Tokenizer | None) -> dict:
  # Without them transformers falls back to its class defaults (GPT-2's 50256, out of range
  # for any other vocabulary).
  if tokenizer is None:
    return {'bos_token_id': None, 'eos_token_id': None, 'pad_token_id': None}
  return {'bos_token_id': tokenizer.bos_id, 'eos_token_id': tokenizer.eos_id,
          'pad_token_id': tokenizer.pad_id if tokenizer.has_pad else None}


# ----------------------------------------------------------------------------- tensor map


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One alignlab parameter and the Hugging Face tensor(s) it is made of.

  Each HF tensor (shape `hf_shape`) is transposed when `transpose` (a torch `Linear`) and
  reshaped to `part_shape`; several parts are stacked on `axis` (q, k, v into w_qkv)."""
  path: tuple
  names: tuple[str, ...]
  hf_shape: tuple[int, ...]
  part_shape: tuple[int, ...]
  transpose: bool = False
  axis: int = 0

  def to_alignlab(self, arrays: list[np.ndarray]) -> np.ndarray:
    parts = [(a.T if self.transpose else a).reshape(self.part_shape) for a in arrays]
    return parts[0] if len(parts) == 1 else np.stack(parts, axis=self.axis)

  def to_hf(self, value: np.ndarray) -> list[np.ndarray]:
    parts = [value] if len(self.names) == 1 else [np.take(value, i, axis=self.axis)
                                                   for i in range(len(self.names))]
    inner = self.hf_shape[::-1] if self.transpose else self.hf_shape
    return [np.ascontiguousarray(p.reshape(inner).T if self.transpose else p.reshape(inner))
            for p in parts]


def _tensor_map(cfg: ModelConfig, head: str = 'lm') -> list[_Tensor]:
  family = family_of(cfg)
  d, h, g, k, f, v = (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_dim,
                      cfg.vocab_size)
  out = []

  def add(path, names, hf_shape, part_shape, transpose=False, axis=0):
    names = (names,) if isinstance(names, str) else tuple(names)
    out.append(_Tensor(tuple(path), names, tuple(hf_shape), tuple(part_shape), transpose, axis))

  if family == 'gpt2':
    pre = 'transformer.'
    add(('backbone', 'embed'), pre + 'wte.weight', (v, d), (v, d))
    add(('backbone', 'pos_embed'), pre + 'wpe.weight', (cfg.max_seq_len, d), (cfg.max_seq_len, d))
    for i in range(cfg.n_layers):
      hp, ap = f'{pre}h.{i}.', ('backbone', 'blocks', i)
      for norm, ln in (('norm_attn', 'ln_1'), ('norm_mlp', 'ln_2')):
        add(ap + (norm, 'scale'), f'{hp}{ln}.weight', (d,), (d,))
        add(ap + (norm, 'bias'), f'{hp}{ln}.bias', (d,), (d,))
      add(ap + ('attn', 'w_qkv'), f'{hp}attn.c_attn.weight', (d, 3 * d), (d, 3, h, k))
      add(ap + ('attn', 'b_qkv'), f'{hp}attn.c_attn.bias', (3 * d,), (3, h, k))
      add(ap + ('attn', 'w_out'), f'{hp}attn.c_proj.weight', (d, d), (h, k, d))
      add(ap + ('attn', 'b_out'), f'{hp}attn.c_proj.bias', (d,), (d,))
      add(ap + ('mlp', 'w_in'), f'{hp}mlp.c_fc.weight', (d, f), (d, f))
      add(ap + ('mlp', 'b_in'), f'{hp}mlp.c_fc.bias', (f,), (f,))
      add(ap + ('mlp', 'w_out'), f'{hp}mlp.c_proj.weight', (f, d), (f, d))
      add(ap + ('mlp', 'b_out'), f'{hp}mlp.c_proj.bias', (d,), (d,))
    add(('backbone', 'norm_final', 'scale'), pre + 'ln_f.weight', (d,), (d,))
    add(('backbone', 'norm_final', 'bias'), pre + 'ln_f.bias', (d,), (d,))
  else:
    add(('backbone', 'embed'), 'model.embed_tokens.weight', (v, d), (v, d))
    for i in range(cfg.n_layers):
      hp, ap = f'model.layers.{i}.', ('backbone', 'blocks', i)
      att = hp + 'self_attn.'
      add(ap + ('norm_attn', 'scale'), hp + 'input_layernorm.weight', (d,), (d,))
      add(ap + ('norm_mlp', 'scale'), hp + 'post_attention_layernorm.weight', (d,), (d,))
      qkv = [att + f'{x}_proj.' for x in 'qkv']
      if g == h:
        add(ap + ('attn', 'w_qkv'), [n + 'weight' for n in qkv], (h * k, d), (d, h, k), True, 1)
      else:
        add(ap + ('attn', 'w_q'), qkv[0] + 'weight', (h * k, d), (d, h, k), True)
        add(ap + ('attn', 'w_kv'), [n + 'weight' for n in qkv[1:]], (g * k, d), (d, g, k), True, 1)
      if cfg.has_qkv_bias:
        if g == h:
          add(ap + ('attn', 'b_qkv'), [n + 'bias' for n in qkv], (h * k,), (h, k))
        else:
          add(ap + ('attn', 'b_q'), qkv[0] + 'bias', (h * k,), (h, k))
          add(ap + ('attn', 'b_kv'), [n + 'bias' for n in qkv[1:]], (g * k,), (g, k))
      add(ap + ('attn', 'w_out'), att + 'o_proj.weight', (d, h * k), (h, k, d), True)
      add(ap + ('mlp', 'w_gate'), hp + 'mlp.gate_proj.weight', (f, d), (d, f), True)
      add(ap + ('mlp', 'w_in'), hp + 'mlp.up_proj.weight', (f, d), (d, f), True)
      add(ap + ('mlp', 'w_out'), hp + 'mlp.down_proj.weight', (d, f), (f, d), True)
    add(('backbone', 'norm_final', 'scale'), 'model.norm.weight', (d,), (d,))
  if head == 'scalar':
    add(('w_head',), 'score.weight', (1, d), (d,))
  elif not cfg.tie_embeddings:
    add(('w_lm',), 'lm_head.weight', (v, d), (d, v), True)
  return out


# ----------------------------------------------------------------------------- files


def _read_json(path: Path) -> dict:
  if not path.is_file():
    raise HFFormatError(f'{path}: file not found')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise HFFormatError(f'{path}: not valid JSON ({e})') from None


def _weight_files(directory: Path) -> dict[str, Path]:
  """Tensor name → the safetensors file holding it (one file, or shards listed by the index)."""
  index = directory / INDEX
  if index.is_file():
    weight_map = _read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise HFFormatError(f'{index}: field "weight_map" is missing')
    files = {}
    for name, shard in weight_map.items():
      if not (directory / shard).is_file():
        raise HFFormatError(f'{index}: weight_map[{name!r}] names shard {shard!r}, which is missing '
                            f'from {directory}')
      files[name] = directory / shard
    return files
  single = directory / WEIGHTS
  if not single.is_file():
    raise HFFormatError(f'{directory}: neither {WEIGHTS} nor {INDEX} found')
  with safe_open(str(single), framework='np') as f:
    return {name: single for name in f.keys()}


def _strip_prefix(name: str, family: str) -> str:
  # Some GPT-2 checkpoints (the original `gpt2` upload among them) omit the `transformer.` prefix.
  if family == 'gpt2' and not name.startswith(('transformer.', 'lm_head.', 'score.')):
    return 'transformer.' + name
  return name


def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


def _get(tree: dict, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def load_pretrained(directory: str | Path, *, dtype: str | None = None,
                    param_dtype: str | None = None, mesh: jax.sharding.Mesh | None = None
                    ) -> tuple[ModelConfig, Any, dict, Tokenizer | None]:
  """(model config, graphdef, params, tokenizer or None) of a Hugging Face checkpoint
  directory; `nnx.merge(graphdef, params)` is a `CausalLM`, or a `ScalarModel` for a
  one-label `*ForSequenceClassification` checkpoint (a reward model: its `score` is the head,
  gain 1, and the offset `save_pretrained` recorded is the bias).

  `param_dtype` defaults to the dtype the weights are stored in (so an export writes the same
  bytes back) and `dtype`, the compute dtype, to `param_dtype`. With `mesh`, each parameter
  is placed in the sharding `model.py` declares for it, built from per-device slices of one
  host copy of that tensor (one tensor on the host at a time); without, on the default device.
  """
  directory = Path(directory)
  hf = _read_json(directory / CONFIG)
  cfg = config_from_hf(hf, str(directory / CONFIG))
  head = head_of(hf, str(directory / CONFIG))
  files = _weight_files(directory)
  family = hf['model_type']
  by_name = {_strip_prefix(n, family): n for n in files}
  tensors = _tensor_map(cfg, head)
  wanted = {n for t in tensors for n in t.names}
  for name in by_name:
    if name in wanted or name.endswith(_BUFFER_SUFFIXES) or (
        cfg.tie_embeddings and head == 'lm' and name == 'lm_head.weight'):
      continue
    raise HFFormatError(f'{files[by_name[name]]}: tensor {by_name[name]!r} has no place in a '
                        f'{family} model with this {CONFIG}')

  handles: dict[Path, Any] = {}
  files_open = contextlib.ExitStack()

  def read(name: str, t: _Tensor) -> np.ndarray:
    if name not in by_name:
      raise HFFormatError(f'{directory}: tensor {name!r} is missing from the safetensors files')
    path = files[by_name[name]]
    if path not in handles:
      handles[path] = files_open.enter_context(safe_open(str(path), framework='np'))
    array = handles[path].get_tensor(by_name[name])
    if tuple(array.shape) != t.hf_shape:
      raise HFFormatError(f'{path}: tensor {by_name[name]!r} has shape {tuple(array.shape)}; '
                          f'{CONFIG} implies {t.hf_shape}')
    return array

  with files_open:
    stored = read(tensors[0].names[0], tensors[0]).dtype
    stored_name = next((k for k, v in _DTYPES.items() if np.dtype(v) == stored), None)
    if param_dtype is None:
      if stored_name is None:
        raise HFFormatError(f'{files[by_name[tensors[0].names[0]]]}: weights stored as {stored}; '
                            f'pass param_dtype (one of {", ".join(_DTYPES)})')
      param_dtype = stored_name
    cfg = dataclasses.replace(cfg, param_dtype=param_dtype, dtype=dtype or param_dtype)
    model_cls = CausalLM if head == 'lm' else ScalarModel
    graphdef, shapes, specs = abstract_model(lambda r: model_cls(cfg, rngs=r))
    shardings = param_shardings(specs, shapes, mesh) if mesh is not None else None
    params = jax.tree.map(lambda x: None, shapes)
    constants = {}
    if head == 'scalar':
      offset = float(hf.get(_SCORE_OFFSET_KEY, 0.0))
      constants = {'b_head': 0.0, 'gain': 1.0, 'bias': offset}
    values = ([(t.path, lambda t=t: t.to_alignlab([read(n, t) for n in t.names])) for t in tensors]
              + [((k,), lambda v=v: np.asarray(v)) for k, v in constants.items()])
    for path, make in values:
      value = make().astype(_DTYPES[param_dtype])
      assert value.shape == _get(shapes, path).shape, (path, value.shape)
      if shardings is None:
        array = jax.device_put(value)
      else:
        array = jax.make_array_from_callback(value.shape, _get(shardings, path),
                                             lambda index, value=value: value[index])
      _set(params, path, array)

  tokenizer = None
  if (directory / TOKENIZER_FILENAME).is_file():
    tokenizer = Tokenizer.load(directory)
    if tokenizer.vocab_size > cfg.vocab_size:
      raise HFFormatError(f'{directory / TOKENIZER_FILENAME}: vocabulary of {tokenizer.vocab_size} '
                          f'tokens exceeds {CONFIG} vocab_size={cfg.vocab_size}')
  return cfg, graphdef, params, tokenizer


def save_pretrained(directory: str | Path, cfg: ModelConfig, graphdef, params: dict,
                    tokenizer: Tokenizer | None = None) -> Path:
  """Writes a `CausalLM`'s or a `ScalarModel`'s `config.json` + `model.safetensors` (+
  `tokenizer.json` and `tokenizer_config.json`) in the layout transformers loads; returns the
  directory.

  Tensors are written in the parameters' dtype. A tied head writes no `lm_head.weight`
  (transformers ties it to the embedding, as it does on save). A `ScalarModel` (reward model,
  value function) is a one-label `*ForSequenceClassification`: `score` = head weights × gain,
  and its constant bias · gain + offset is `alignlab_score_offset` in config.json (module
  docstring). transformers reads the score at the last token that is not `pad_token_id`
  (the tokenizer's pad token, written only where it has one), alignlab at the last token of
  the attention mask: they agree where padding is the pad token and real tokens never are."""
  del graphdef  # the layout is cfg's; kept in the signature to mirror load_pretrained
  head = 'scalar' if 'w_head' in params else 'lm'
  extra = {}
  if head == 'scalar':
    get = lambda k: np.asarray(jax.device_get(params[k]))  # noqa: E731
    # In the parameters' dtype, as the head computes it: score·h = (w·gain)·h.
    params = {**params, 'w_head': get('w_head') * get('gain')}
    extra[_SCORE_OFFSET_KEY] = float(get('b_head') * get('gain') + get('bias'))
  if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
    raise HFFormatError(f'the tokenizer has {tokenizer.vocab_size} tokens, more than the model\'s '
                        f'vocab_size={cfg.vocab_size}')
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tensors = _tensor_map(cfg, head)
  arrays = {}
  dtype_name = None
  for t in tensors:
    value = np.asarray(jax.device_get(_get(params, t.path)))
    dtype_name = dtype_name or next(k for k, v in _DTYPES.items() if np.dtype(v) == value.dtype)
    for name, part in zip(t.names, t.to_hf(value)):
      arrays[name] = part
  save_file(arrays, str(directory / WEIGHTS), metadata={'format': 'pt'})
  config = {**config_to_hf(cfg, dtype_name, head), **_special_token_ids(tokenizer), **extra}
  (directory / CONFIG).write_text(json.dumps(config, indent=2) + '\n')
  if tokenizer is not None:
    _save_tokenizer(directory, tokenizer, cfg.max_seq_len)
  return directory


def _save_tokenizer(directory: Path, tokenizer: Tokenizer, max_len: int) -> None:
  """`tokenizer.json` + a `tokenizer_config.json` naming its special tokens (what both
  transformers and `Tokenizer.load` read)."""
  tokenizer.save(directory)
  names = tokenizer.special_token_names()
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': max_len,
            **{f'{role}_token': name for role, name in names.items() if name is not None}}
  (directory / CONFIG_FILENAME).write_text(json.dumps(config, indent=2) + '\n')


# ----------------------------------------------------------------------------- alignlab model dirs
#
# What `alignlab convert --from-hf` writes and `--to-hf` reads back: the parameters as an
# alignlab (orbax) checkpoint, the model config, and the tokenizer, in a directory written
# whole or not at all (`artifacts.atomic_dir`, with a manifest):
#
#     model.json       {"format": "alignlab-model", "head": "lm" | "scalar", "model": ModelConfig}
#     params/          `checkpoint.save_params` (step 0), read with `checkpoint.restore_params`
#     tokenizer.json   + tokenizer_config.json, where the model has a tokenizer

MODEL_RECORD = 'model.json'
_MODEL_FORMAT = 'alignlab-model'


def is_model_dir(directory: str | Path) -> bool:
  return (Path(directory) / MODEL_RECORD).is_file()


def save_model_dir(directory: str | Path, cfg: ModelConfig, params: dict,
                   tokenizer: Tokenizer | None = None, *, source: str = '') -> Path:
  """Writes an alignlab model dir (above) at `directory`, which must not exist yet."""
  directory = Path(directory)
  if directory.exists():
    raise HFFormatError(f'{directory} already exists; choose another --out or delete it')
  record = {'format': _MODEL_FORMAT, 'head': 'scalar' if 'w_head' in params else 'lm',
            'model': to_dict(cfg), 'source': source}
  with atomic_dir(directory) as tmp:
    (tmp / MODEL_RECORD).write_text(json.dumps(record, indent=1) + '\n')
    save_params(tmp / 'params', params, record)
    if tokenizer is not None:
      _save_tokenizer(tmp, tokenizer, cfg.max_seq_len)
  return directory


def load_model_dir(directory: str | Path, *, mesh: jax.sharding.Mesh | None = None
                   ) -> tuple[ModelConfig, Any, dict, Tokenizer | None]:
  """(model config, graphdef, params, tokenizer or None) of an alignlab model dir, as
  `load_pretrained` returns them; with `mesh`, in the declared shardings."""
  directory = Path(directory)
  record = _read_json(directory / MODEL_RECORD)
  if record.get('format') != _MODEL_FORMAT or record.get('head') not in ('lm', 'scalar'):
    raise HFFormatError(f'{directory / MODEL_RECORD}: not an alignlab model record (format '
                        f'{record.get("format")!r}, head {record.get("head")!r})')
  cfg = from_dict(ModelConfig, record['model'])
  model_cls = CausalLM if record['head'] == 'lm' else ScalarModel
  graphdef, shapes, specs = abstract_model(lambda r: model_cls(cfg, rngs=r))
  if mesh is None:
    mesh = make_mesh(MeshConfig.single(), jax.devices()[:1])
  shardings = param_shardings(specs, shapes, mesh)
  template = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  params = restore_params(directory / 'params', template, record)
  tokenizer = Tokenizer.load(directory) if (directory / TOKENIZER_FILENAME).is_file() else None
  return cfg, graphdef, params, tokenizer
