"""Hugging Face import/export (alignlab.hf) against golden fixtures written by transformers.

tests/fixtures/hf/<family>/ were written by benchmarks/peers/make_hf_fixtures.py with
transformers itself (tiny seeded random models, norms and biases randomized): the checkpoint
as transformers saves it, and golden.json with its float32 logits on fixed ids and its greedy
continuation. Nothing here needs torch.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from alignlab import cli, hf, sharding
from alignlab.config import ModelConfig, SamplingConfig
from alignlab.data.tokenizer import Tokenizer
from alignlab.heads import CausalLM, ScalarModel, embedding_from_lm, last_token_value
from alignlab.sampling import sample
from model_helpers import shared_prompt_rows

FIXTURES = Path(__file__).parent / 'fixtures' / 'hf'
FAMILIES = ('gpt2', 'llama', 'qwen2')


def _golden(family):
  return json.loads((FIXTURES / family / 'golden.json').read_text())


def _tensors(path):
  with safe_open(str(path), framework='np') as f:
    return {name: f.get_tensor(name) for name in f.keys()}


def _copy(family, tmp_path):
  return Path(shutil.copytree(FIXTURES / family, tmp_path / family))


def _logits_error(directory, family):
  golden = _golden(family)
  _, graphdef, params, _ = hf.load_pretrained(directory)
  ids = np.asarray(golden['token_ids'], np.int32)
  logits = np.asarray(nnx.merge(graphdef, params)(ids, np.ones_like(ids)))
  return np.abs(logits - np.asarray(golden['logits'])).max()


def _edit_config(directory, **changes):
  path = directory / 'config.json'
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


@pytest.fixture(params=FAMILIES)
def family(request):
  return request.param


def test_config_translation():
  cfg = hf.load_pretrained(FIXTURES / 'llama')[0]
  assert (cfg.n_heads, cfg.n_kv_heads, cfg.tie_embeddings, cfg.rope_scaling) == (4, 2, False, 'llama3')
  assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_original_max_len) == (5e5, 8.0, 16)
  cfg = hf.load_pretrained(FIXTURES / 'qwen2')[0]
  assert (cfg.use_bias, cfg.has_qkv_bias, cfg.kv_heads, cfg.tie_embeddings) == (False, True, 4, True)
  cfg = hf.load_pretrained(FIXTURES / 'gpt2')[0]
  assert (cfg.positions, cfg.max_seq_len, cfg.vocab_size, cfg.ff_dim) == ('learned', 32, 96, 48)


def test_logits_match_transformers(family):
  golden = _golden(family)
  cfg, graphdef, params, _ = hf.load_pretrained(FIXTURES / family)
  ids = np.asarray(golden['token_ids'], np.int32)
  logits = np.asarray(nnx.merge(graphdef, params)(ids, np.ones_like(ids)))
  expected = np.asarray(golden['logits'], np.float32)
  assert logits.shape == expected.shape
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
  assert expected.std() > 0.5  # far from uniform: a wrong weight would not hide under 1e-4


def test_greedy_decode_matches_transformers(family):
  golden = _golden(family)
  _, graphdef, params, _ = hf.load_pretrained(FIXTURES / family)
  prompts = np.asarray(golden['greedy_prompts'], np.int32)
  cfg = SamplingConfig(max_new_tokens=golden['greedy_new_tokens'], temperature=0.0, eos_id=-1)
  out = sample(graphdef, params, prompts, np.ones_like(prompts), jax.random.key(0), cfg)
  assert np.asarray(out.tokens[:, prompts.shape[1]:]).tolist() == golden['greedy_continuation']
  # Each step's log-prob too: a random GPT-2 repeats one token, so tokens alone check little.
  np.testing.assert_allclose(np.asarray(out.logprobs[:, prompts.shape[1]:]),
                             np.asarray(golden['greedy_logprobs']), atol=1e-4, rtol=0)


def test_round_trip_is_bitwise(family, tmp_path):
  cfg, graphdef, params, tok = hf.load_pretrained(FIXTURES / family)
  hf.save_pretrained(tmp_path / 'out', cfg, graphdef, params, tok)
  cfg2, _, params2, tok2 = hf.load_pretrained(tmp_path / 'out')
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  # The exported tensors are the bytes transformers wrote, name for name.
  original, exported = (_tensors(d / 'model.safetensors') for d in (FIXTURES / family, tmp_path / 'out'))
  assert set(original) == set(exported)
  for name, value in original.items():
    assert value.dtype == exported[name].dtype and value.tobytes() == exported[name].tobytes(), name
  assert (tok2.eos_id, tok2.bos_id, tok2.pad_id, tok2.vocab_size) == (
      tok.eos_id, tok.bos_id, tok.pad_id, tok.vocab_size)
  text = 'the film was great'
  assert tok2.encode(text) == tok.encode(text) and tok.decode(tok.encode(text)) == text


def test_bf16_params_round_trip_and_mesh(tmp_path):
  cfg, graphdef, params, tok = hf.load_pretrained(FIXTURES / 'llama', param_dtype='bfloat16')
  assert cfg.param_dtype == cfg.dtype == 'bfloat16'
  assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(params))
  hf.save_pretrained(tmp_path / 'bf16', cfg, graphdef, params, tok)
  assert json.loads((tmp_path / 'bf16' / 'config.json').read_text())['torch_dtype'] == 'bfloat16'
  cfg2, _, params2, _ = hf.load_pretrained(tmp_path / 'bf16')  # the stored dtype by default
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  # Compute in bf16 with fp32 parameters, placed on a mesh in their declared shardings.
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  cfg3, graphdef3, params3, _ = hf.load_pretrained(FIXTURES / 'llama', dtype='bfloat16',
                                                   param_dtype='float32', mesh=mesh)
  assert (cfg3.dtype, cfg3.param_dtype) == ('bfloat16', 'float32')
  embed = params3['backbone']['embed']
  assert embed.dtype == np.float32 and embed.sharding.mesh.shape == mesh.shape
  golden = _golden('llama')
  ids = np.asarray(golden['token_ids'], np.int32)
  logits = np.asarray(nnx.merge(graphdef3, params3)(ids, np.ones_like(ids)))
  np.testing.assert_allclose(logits, np.asarray(golden['logits']), atol=0.2)


def test_export_of_an_alignlab_model_reimports(tmp_path):
  """A model alignlab built (GQA, untied, RoPE) exports and imports to the same logits."""
  cfg = ModelConfig(vocab_size=53, max_seq_len=16, d_model=24, n_layers=2, n_heads=6,
                    n_kv_heads=3, d_ff=40, positions='rope', norm='rmsnorm', mlp='swiglu',
                    use_bias=False, tie_embeddings=False, masked_output_ids=(0,), init_std=0.3)
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(cfg, rngs=r), mesh, jax.random.key(0))
  hf.save_pretrained(tmp_path / 'm', cfg, graphdef, params)
  config = json.loads((tmp_path / 'm' / 'config.json').read_text())
  assert config['model_type'] == 'llama' and config['num_key_value_heads'] == 3
  cfg2, graphdef2, params2, tok = hf.load_pretrained(tmp_path / 'm')
  assert tok is None and cfg2 == cfg
  ids = np.arange(10, dtype=np.int32)[None] % 53
  np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, params)(ids, np.ones_like(ids))),
                                np.asarray(nnx.merge(graphdef2, params2)(ids, np.ones_like(ids))))


def _reward_model(family, seed=0):
  """A ScalarModel on a fixture's backbone with a random head, gain and offsets (none of them
  0 or 1, so a dropped term shows)."""
  cfg, _, lm_params, tok = hf.load_pretrained(FIXTURES / family)
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: ScalarModel(cfg, rngs=r), mesh,
                                          jax.random.key(seed))
  params = {**embedding_from_lm(lm_params, params), 'b_head': np.float32(0.3),
            'gain': np.float32(1.7), 'bias': np.float32(0.45)}
  return cfg, graphdef, jax.tree.map(jax.numpy.asarray, params), tok


def _scores(graphdef, params, tokens, mask):
  return np.asarray(last_token_value(nnx.merge(graphdef, params)(tokens, mask), mask))


def test_reward_model_export_round_trips(family, tmp_path):
  """A ScalarModel exports as a one-label *ForSequenceClassification (score = head × gain,
  the constant in alignlab_score_offset), imports back to the same scores, and a second
  export writes the first one's bytes; the backbone's tensors are the fixture's."""
  cfg, graphdef, params, tok = _reward_model(family)
  hf.save_pretrained(tmp_path / 'rm', cfg, graphdef, params, tok)
  config = json.loads((tmp_path / 'rm' / 'config.json').read_text())
  assert config['architectures'][0].endswith('ForSequenceClassification')
  assert config['id2label'] == {'0': 'LABEL_0'}
  np.testing.assert_allclose(config['alignlab_score_offset'], 0.3 * 1.7 + 0.45, rtol=1e-6)
  exported = _tensors(tmp_path / 'rm' / 'model.safetensors')
  assert exported['score.weight'].shape == (1, cfg.d_model) and 'lm_head.weight' not in exported
  np.testing.assert_array_equal(exported['score.weight'][0],
                                np.asarray(params['w_head']) * np.float32(1.7))
  for name, value in _tensors(FIXTURES / family / 'model.safetensors').items():
    if name != 'lm_head.weight':
      assert value.tobytes() == exported[name].tobytes(), name
  cfg2, graphdef2, params2, _ = hf.load_pretrained(tmp_path / 'rm')
  assert cfg2 == cfg and set(params2) == set(params)
  tokens, mask, _ = shared_prompt_rows(cfg.vocab_size, 4, 5)
  expected = _scores(graphdef, params, tokens, mask)
  assert np.abs(expected).min() > 1e-3
  np.testing.assert_allclose(_scores(graphdef2, params2, tokens, mask), expected, atol=1e-5, rtol=0)
  hf.save_pretrained(tmp_path / 'rm2', cfg2, graphdef2, params2, tok)
  again = _tensors(tmp_path / 'rm2' / 'model.safetensors')
  assert set(again) == set(exported)
  assert all(again[n].tobytes() == exported[n].tobytes() for n in exported)
  assert json.loads((tmp_path / 'rm2' / 'config.json').read_text()) == config


def test_reward_model_fixtures_match_transformers(tmp_path):
  """tests/fixtures/hf/<family>_reward/: one-label sequence classifiers transformers wrote,
  with its scores on padded rows (golden.json); alignlab reads the same scores."""
  for family in ('gpt2', 'llama'):
    directory = FIXTURES / f'{family}_reward'
    golden = json.loads((directory / 'golden.json').read_text())
    _, graphdef, params, _ = hf.load_pretrained(directory)
    assert 'w_head' in params
    tokens = np.asarray(golden['token_ids'], np.int32)
    mask = (tokens != golden['pad_token_id']).astype(np.int32)
    scores = _scores(graphdef, params, tokens, mask)
    np.testing.assert_allclose(scores, np.asarray(golden['scores']), atol=1e-4, rtol=0)
    assert np.ptp(np.asarray(golden['scores'])) > 0.1  # rows differ: a misread row would show


def test_sharded_checkpoint_and_missing_shard(tmp_path):
  directory = _copy('llama', tmp_path)
  tensors = _tensors(directory / 'model.safetensors')
  (directory / 'model.safetensors').unlink()
  names = sorted(tensors)
  shards = {'model-00001-of-00002.safetensors': names[:10],
            'model-00002-of-00002.safetensors': names[10:]}
  for shard, members in shards.items():
    save_file({n: tensors[n] for n in members}, str(directory / shard), metadata={'format': 'pt'})
  index = {'metadata': {}, 'weight_map': {n: s for s, ms in shards.items() for n in ms}}
  (directory / 'model.safetensors.index.json').write_text(json.dumps(index))
  assert _logits_error(directory, 'llama') <= 1e-4
  (directory / 'model-00002-of-00002.safetensors').unlink()
  with pytest.raises(hf.HFFormatError, match=r"model.safetensors.index.json: weight_map\['.*'\] "
                     r"names shard 'model-00002-of-00002.safetensors', which is missing"):
    hf.load_pretrained(directory)


@pytest.mark.parametrize('family_, changes, message', [
    ('gpt2', {'model_type': 'gpt_neox'}, "config.json: model_type='gpt_neox' is not supported"),
    ('llama', {'hidden_act': 'gelu'}, "config.json: hidden_act='gelu' is not supported"),
    ('llama', {'attention_bias': True}, "config.json: attention_bias=True is not supported"),
    ('llama', {'head_dim': 16}, "config.json: head_dim=16 is not supported"),
    ('llama', {'rope_parameters': {'rope_type': 'yarn', 'factor': 4.0}},
     "config.json: rope_parameters.rope_type='yarn' is not supported"),
    ('qwen2', {'use_sliding_window': True}, "config.json: use_sliding_window=True is not supported"),
    ('gpt2', {'activation_function': 'relu'}, "config.json: activation_function='relu'"),
    ('gpt2', {'n_embd': None}, "config.json: required field 'n_embd' is missing"),
    ('gpt2', {'n_layer': 3}, "tensor 'transformer.h.2.ln_1.weight' is missing"),
    ('llama', {'intermediate_size': 40}, "model.safetensors: tensor 'model.layers.0.mlp.gate_proj"
     r"\.weight' has shape \(48, 32\); config.json implies \(40, 32\)"),
])
def test_bad_configs_are_one_line_errors(family_, changes, message, tmp_path):
  directory = _copy(family_, tmp_path)
  _edit_config(directory, **changes)
  with pytest.raises(hf.HFFormatError, match=message) as info:
    hf.load_pretrained(directory)
  assert '\n' not in str(info.value)


def test_bad_files_are_one_line_errors(tmp_path):
  directory = _copy('qwen2', tmp_path)
  tensors = _tensors(directory / 'model.safetensors')
  missing = 'model.layers.1.self_attn.k_proj.bias'
  save_file({n: v for n, v in tensors.items() if n != missing}, str(directory / 'model.safetensors'),
            metadata={'format': 'pt'})
  with pytest.raises(hf.HFFormatError, match=f"tensor '{missing}' is missing"):
    hf.load_pretrained(directory)
  save_file({**tensors, 'model.layers.0.extra.weight': tensors[missing]},
            str(directory / 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(hf.HFFormatError, match="tensor 'model.layers.0.extra.weight' has no place"):
    hf.load_pretrained(directory)
  (directory / 'model.safetensors').unlink()
  with pytest.raises(hf.HFFormatError, match='neither model.safetensors nor'):
    hf.load_pretrained(directory)
  (directory / 'config.json').write_text('{')
  with pytest.raises(hf.HFFormatError, match='config.json: not valid JSON'):
    hf.load_pretrained(directory)


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path):
  cfg, graphdef, params, tok = hf.load_pretrained(FIXTURES / 'gpt2')
  small = dataclasses.replace(cfg, vocab_size=80)
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(small, rngs=r), mesh, jax.random.key(0))
  with pytest.raises(hf.HFFormatError, match='the tokenizer has 85 tokens, more than the '
                     "model's vocab_size=80"):
    hf.save_pretrained(tmp_path / 'm', small, graphdef, params, tok)
  hf.save_pretrained(tmp_path / 'm', small, graphdef, params)
  tok.save(tmp_path / 'm')
  with pytest.raises(hf.HFFormatError, match=r'tokenizer.json: vocabulary of 85 tokens exceeds '
                     r'config.json vocab_size=80'):
    hf.load_pretrained(tmp_path / 'm')


def test_tokenizers_find_special_tokens_by_name():
  gpt2 = Tokenizer.load(FIXTURES / 'gpt2')  # one special token, the last id: eos = bos, no pad
  end = gpt2._tok.token_to_id('<|endoftext|>')
  assert end == gpt2.vocab_size - 1 != 1
  assert (gpt2.eos_id, gpt2.bos_id, gpt2.pad_id, gpt2.has_pad) == (end, end, end, False)
  assert gpt2.decode(gpt2.encode('a film') + [end, end]) == 'a film<|endoftext|><|endoftext|>'
  assert gpt2.encode('<|endoftext|>') != [end]  # text stays text
  qwen = Tokenizer.load(FIXTURES / 'qwen2')  # names from tokenizer_config.json
  assert qwen.eos_id == qwen._tok.token_to_id('<|im_end|>')
  assert qwen.pad_id == qwen._tok.token_to_id('<|endoftext|>') and qwen.has_pad
  assert qwen.decode(qwen.encode('a film') + [qwen.pad_id]) == 'a film'
  llama = Tokenizer.load(FIXTURES / 'llama')
  assert llama.bos_id == llama._tok.token_to_id('<s>') and llama.eos_id == llama._tok.token_to_id('</s>')


def test_tokenizer_without_eos_is_an_error(tmp_path):
  directory = tmp_path / 'tok'
  directory.mkdir()
  shutil.copy(FIXTURES / 'llama' / 'tokenizer.json', directory)
  (directory / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<|nope|>'}))
  with pytest.raises(ValueError, match="tokenizer_config.json: eos_token '<|nope|>' is not in"):
    Tokenizer.load(directory)


SHARDED_LOAD = r"""
import os, sys, json
os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
import jax, numpy as np
from flax import nnx
from alignlab import cli, hf, sharding
mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
cfg, graphdef, params, _ = hf.load_pretrained(sys.argv[1], mesh=mesh)
golden = json.loads(open(os.path.join(sys.argv[1], 'golden.json')).read())
ids = np.asarray(golden['token_ids'], np.int32)
with sharding.use_mesh(mesh):
  logits = jax.jit(lambda p: nnx.merge(graphdef, p)(ids, np.ones_like(ids)))(params)
w_kv = params['backbone']['blocks'][0]['attn']['w_kv']
print(json.dumps({'err': float(np.abs(np.asarray(logits) - np.asarray(golden['logits'])).max()),
                  'w_kv': [list(w_kv.shape), list(w_kv.addressable_shards[0].data.shape)],
                  'embed': list(params['backbone']['embed'].addressable_shards[0].data.shape)}))
"""


def test_load_onto_a_mesh_of_8_devices():
  """Each parameter lands in its declared sharding (here fsdp 2 × tensor 2) and the sharded
  model still matches transformers."""
  proc = subprocess.run([sys.executable, '-c', SHARDED_LOAD, str(FIXTURES / 'llama')],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['err'] <= 1e-4
  assert report['w_kv'] == [[32, 2, 2, 8], [16, 2, 1, 8]]  # D over fsdp, key/value heads over tensor
  assert report['embed'] == [48, 16]  # V over tensor, D over fsdp


def test_config_and_naming_variants_load_the_same_model(tmp_path):
  # Mistral is Llama without biases; a sliding window caps the context at the window.
  mistral = _copy('llama', tmp_path / 'm')
  config = json.loads((mistral / 'config.json').read_text())
  for key in ('attention_bias', 'mlp_bias', 'pretraining_tp'):
    config.pop(key)
  (mistral / 'config.json').write_text(json.dumps({**config, 'model_type': 'mistral',
                                                   'sliding_window': 20}))
  assert hf.load_pretrained(mistral)[0].max_seq_len == 20
  assert _logits_error(mistral, 'llama') <= 1e-4
  # transformers < 5 wrote rope_theta + rope_scaling instead of rope_parameters.
  old = _copy('llama', tmp_path / 'o')
  config = json.loads((old / 'config.json').read_text())
  rope = config.pop('rope_parameters')
  config.update(rope_theta=rope.pop('rope_theta'), rope_scaling=rope)
  (old / 'config.json').write_text(json.dumps(config))
  assert hf.load_pretrained(old)[0] == hf.load_pretrained(FIXTURES / 'llama')[0]
  # The original GPT-2 upload names tensors without 'transformer.' and stores the causal-mask
  # buffers 'h.N.attn.bias'.
  legacy = _copy('gpt2', tmp_path / 'g')
  tensors = _tensors(legacy / 'model.safetensors')
  renamed = {name.removeprefix('transformer.'): value for name, value in tensors.items()}
  renamed['h.0.attn.bias'] = np.tril(np.ones((1, 1, 32, 32), np.float32))
  save_file(renamed, str(legacy / 'model.safetensors'), metadata={'format': 'pt'})
  assert _logits_error(legacy, 'gpt2') <= 1e-4


def _cli_error(capsys, argv) -> str:
  assert cli.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('alignlab: error: '), lines
  return lines[0]


@pytest.mark.parametrize('fixture', ['qwen2', 'llama_reward'])
def test_convert_from_hf_and_back_is_bitwise(fixture, tmp_path, capsys):
  """`alignlab convert --from-hf` writes an alignlab model dir (orbax params, model.json,
  tokenizer) that `hf.load_model_dir` reads as `load_pretrained` does; `--to-hf` of it writes
  the tensors transformers wrote, byte for byte."""
  model_dir, out = tmp_path / 'model', tmp_path / 'hf'
  assert cli.main(['convert', '--from-hf', str(FIXTURES / fixture), '--out', str(model_dir)]) == 0
  assert str(model_dir) in capsys.readouterr().out
  assert hf.is_model_dir(model_dir) and (model_dir / 'params').is_dir()
  cfg, graphdef, params, tok = hf.load_pretrained(FIXTURES / fixture)
  cfg2, graphdef2, params2, tok2 = hf.load_model_dir(model_dir)
  assert cfg2 == cfg and (tok2 is None) == (tok is None)
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  assert cli.main(['convert', '--to-hf', str(model_dir), '--out', str(out)]) == 0
  original, exported = (_tensors(d / 'model.safetensors') for d in (FIXTURES / fixture, out))
  assert set(original) == set(exported)
  assert all(original[n].tobytes() == exported[n].tobytes() for n in original)


def test_convert_bad_paths_are_one_line_errors(tmp_path, capsys):
  assert 'is not a directory' in _cli_error(
      capsys, ['convert', '--from-hf', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')])
  assert '--from-hf --to-hf is required' in _cli_error(capsys, ['convert', '--out', str(tmp_path)])
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('')
  assert 'already exists and is not empty' in _cli_error(
      capsys, ['convert', '--from-hf', str(FIXTURES / 'gpt2'), '--out', str(tmp_path / 'full')])
  assert 'neither a run dir' in _cli_error(
      capsys, ['convert', '--to-hf', str(FIXTURES), '--out', str(tmp_path / 'o')])
  line = _cli_error(capsys, ['convert', '--from-hf', str(tmp_path / 'full'), '--out',
                             str(tmp_path / 'o')])
  assert 'config.json: file not found' in line
  assert not (tmp_path / 'o').exists()


@pytest.mark.slow
def test_convert_a_run_dir_to_hf(tmp_path, capsys):
  """`--to-hf RUN_DIR` exports the checkpoint's policy (the params `restore_policy` reads, bit
  for bit); a Best-of-N run is refused; `--reward-model` exports the experiment's reward model
  as a sequence classifier with the same scores."""
  from alignlab import methods, pipeline
  out = tmp_path / 'runs'
  overrides = ['--set', "methods=['dpo','best_of_n']", '--set', 'sweeps.dpo=[0.5]',
               '--set', 'sweeps.best_of_n=[4]']
  assert cli.main(['run', 'exact_frontier', '--variant', 'tiny', '--out', str(out), '--quiet']
                  + overrides) == 0
  run_dir = out / 'dpo-beta0.5-seed0'
  assert cli.main(['convert', '--to-hf', str(run_dir), '--out', str(tmp_path / 'dpo')]) == 0
  assert 'GPT2LMHeadModel of the policy of dpo-beta0.5-seed0 at step' in capsys.readouterr().out
  cfg = pipeline.make_config(pipeline.load_experiment('exact_frontier'), 'tiny', overrides[1::2])
  _, env = pipeline.setup(cfg, progress=False)
  _, expected = methods.restore_policy(env, 'dpo', run_dir, cfg)
  cfg2, _, params, tok = hf.load_pretrained(tmp_path / 'dpo')
  assert cfg2 == env['model_cfg'] and tok is None  # the exact task has no text tokenizer
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(params)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert not all(np.array_equal(np.asarray(a), np.asarray(b))  # trained: not π_ref's
                 for a, b in zip(jax.tree.leaves(env['ref_params']), jax.tree.leaves(params)))
  assert 'Best-of-N run' in _cli_error(capsys, ['convert', '--to-hf', str(out / 'best_of_n-n4-seed0'),
                                                '--out', str(tmp_path / 'bon')])
  assert cli.main(['convert', '--to-hf', str(out), '--reward-model', '--out',
                   str(tmp_path / 'rm')]) == 0
  rm = env['reward_model']()
  _, graphdef, rm_params, _ = hf.load_pretrained(tmp_path / 'rm')
  tokens = np.asarray([[1, 2, 3, 4], [0, 4, 3, 2]], np.int32) % cfg2.vocab_size
  mask = np.ones_like(tokens)
  np.testing.assert_allclose(_scores(graphdef, rm_params, tokens, mask),
                             _scores(rm.graphdef, rm.params, tokens, mask), atol=1e-5, rtol=0)
