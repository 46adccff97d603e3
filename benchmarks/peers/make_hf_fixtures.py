"""Writes the golden Hugging Face fixtures of tests/test_hf.py, with `transformers` itself, and
checks that `transformers` loads alignlab's exports.

Run in the peers' environment (torch + transformers + tokenizers + safetensors; never a
dependency of alignlab; `benchmarks/peers/setup.sh` creates it):

    bash benchmarks/peers/setup.sh
    HF_HUB_OFFLINE=1 benchmarks/peers/.venv/bin/python benchmarks/peers/make_hf_fixtures.py

For each family it builds a tiny seeded random model (GPT-2; Llama with grouped-query attention,
an untied head and Llama-3 RoPE scaling; Qwen2 with q/k/v biases and a tied head), randomizes
the norm weights and biases too (transformers initializes them to 1 and 0, which would hide a
misplaced bias or norm), and `save_pretrained`s it into tests/fixtures/hf/<family>/ with a tiny
tokenizer trained here, plus golden.json: the model's float32 logits on fixed token ids and its
greedy continuation of fixed prompts. For GPT-2 and Llama it also writes <family>_reward/: the
same architecture as a one-label `*ForSequenceClassification` (a reward model) with its scores
on padded rows (pad id 0; explicit position ids, which transformers otherwise counts from the
first column even past left padding).

Then, with alignlab's own environment (`--alignlab-python`, default .venv/bin/python), it
imports each fixture and exports it again, and exports a model alignlab initialized itself;
`transformers` must load both exports and reproduce the logits (≤ 1e-4). Likewise for reward
models: the reward fixtures re-exported, and a `ScalarModel` alignlab built on each fixture's
backbone (random head, gain and offsets), whose transformers scores plus the exported
`alignlab_score_offset` must equal alignlab's (≤ 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "hf"
VOCAB = 96
TEXT = ("the movie was good and the acting was great but the plot was thin; "
        "a bad film with a fine cast. i loved it, i hated it, what a film! ") * 20

# (special tokens in id order at the end of the vocabulary, tokenizer_config names)
TOKENIZERS = {
    "gpt2": (["<|endoftext|>"], {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}),
    "llama": (["<unk>", "<s>", "</s>"], {"eos_token": "</s>", "bos_token": "<s>",
                                         "unk_token": "<unk>"}),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
}


def configs():
    common = dict(vocab_size=VOCAB, initializer_range=0.2)
    return {
        "gpt2": transformers.GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **common),
        "llama": transformers.LlamaConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16},
            bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, **common),
        "qwen2": transformers.Qwen2Config(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            eos_token_id=VOCAB - 1, **common),
    }


def make_tokenizer(specials, names):
    tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = sorted(set(pre_tokenizers.ByteLevel.alphabet()) & set(
        "".join(w for w, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(TEXT))))
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(specials), initial_alphabet=alphabet,
                                  min_frequency=1, show_progress=False)
    tok.train_from_iterator([TEXT], trainer=trainer)
    tok.add_special_tokens(specials)  # after training: the special tokens take the last ids
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)


REWARD_FAMILIES = ("gpt2", "llama")
PAD = 0  # the reward fixtures' pad id; their real tokens are drawn from [1, VOCAB)


def padded_rows(seed):
    """(ids, attention mask, position ids) of 3 rows of 10: full, right-padded by 3, left-padded
    by 2 and right-padded by 1."""
    ids = np.random.default_rng(seed).integers(1, VOCAB, (3, 10))
    ids[1, 7:] = PAD
    ids[2, :2] = PAD
    ids[2, 9:] = PAD
    mask = (ids != PAD).astype(np.int64)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    return ids, mask, positions


def scores_of(model, seed):
    ids, mask, positions = (torch.tensor(a) for a in padded_rows(seed))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, 0].float().numpy()


def write_reward_fixture(family, cfg, seed):
    cfg = cfg.__class__.from_dict({**cfg.to_dict(), "num_labels": 1, "pad_token_id": PAD})
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg).eval().float()
    randomize_norms_and_biases(model, seed)
    directory = OUT / f"{family}_reward"
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    golden = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
              "pad_token_id": PAD, "token_ids": padded_rows(seed)[0].tolist(),
              "scores": [float(f"{x:.9g}") for x in scores_of(model, seed)]}
    (directory / "golden.json").write_text(json.dumps(golden) + "\n")
    size = sum(p.stat().st_size for p in directory.iterdir())
    print(f"{family}_reward: {directory.relative_to(REPO)} {size / 1024:.0f} KB", file=sys.stderr)
    assert size < 200 * 1024, size


def randomize_norms_and_biases(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def greedy(model, prompts, n):
    """(tokens, their log-probs) of n greedy steps with the KV cache. The log-probs check every
    decode step even where a random model's continuation repeats one token."""
    model.generation_config.eos_token_id = None  # run exactly n steps: no early stop
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(torch.tensor(prompts), attention_mask=torch.ones(len(prompts), len(prompts[0]),
                             dtype=torch.long), max_new_tokens=n, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[:, len(prompts[0]):]
    logps = torch.stack([torch.log_softmax(x.float(), -1) for x in out.logits], dim=1)
    chosen = torch.gather(logps, -1, tokens[..., None])[..., 0]
    return tokens.tolist(), [[float(f"{x:.9g}") for x in row] for row in chosen.tolist()]


def write_fixture(family, cfg, seed):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval().float()
    randomize_norms_and_biases(model, seed)
    directory = OUT / family
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    specials, names = TOKENIZERS[family]
    make_tokenizer(specials, names).save_pretrained(directory)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (2, 8)).tolist()
    prompts = rng.integers(0, VOCAB, (2, 5)).tolist()
    continuation, logprobs = greedy(model, prompts, 8)
    golden = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
              "token_ids": ids, "logits": [[[float(f"{x:.9g}") for x in row] for row in seq]
                                            for seq in logits_of(model, ids)],
              "greedy_prompts": prompts, "greedy_new_tokens": 8,
              "greedy_continuation": continuation, "greedy_logprobs": logprobs}
    (directory / "golden.json").write_text(json.dumps(golden) + "\n")
    size = sum(p.stat().st_size for p in directory.iterdir())
    print(f"{family}: {directory.relative_to(REPO)} {size / 1024:.0f} KB", file=sys.stderr)
    assert size < 200 * 1024, size


# Run in alignlab's environment: re-export each fixture, and export a model alignlab built.
ALIGNLAB_EXPORT = r"""
import dataclasses, json, sys
from pathlib import Path
import jax, numpy as np
from flax import nnx
from alignlab import hf, sharding
from alignlab.heads import CausalLM
fixtures, out = Path(sys.argv[1]), Path(sys.argv[2])
for family in sys.argv[3:]:
  cfg, graphdef, params, tok = hf.load_pretrained(fixtures / family)
  hf.save_pretrained(out / f'{family}-roundtrip', cfg, graphdef, params, tok)
  native = dataclasses.replace(cfg, init_std=0.2)
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: CausalLM(native, rngs=r), mesh, jax.random.key(1))
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape, x.dtype),
                        params)  # nonzero biases, norms off 1
  hf.save_pretrained(out / f'{family}-native', native, graphdef, params, tok)
  ids = np.asarray(json.loads((fixtures / family / 'golden.json').read_text())['token_ids'])
  logits = nnx.merge(graphdef, params)(ids, np.ones_like(ids))
  np.save(out / f'{family}-native' / 'alignlab_logits.npy', np.asarray(logits))
from alignlab.heads import ScalarModel, embedding_from_lm, last_token_value
for family in ('gpt2', 'llama'):
  cfg, graphdef, params, tok = hf.load_pretrained(fixtures / f'{family}_reward')
  hf.save_pretrained(out / f'{family}_reward-roundtrip', cfg, graphdef, params, tok)
  cfg, _, lm_params, tok = hf.load_pretrained(fixtures / family)
  mesh = sharding.make_mesh(sharding.MeshConfig.single(), jax.devices()[:1])
  graphdef, params = sharding.init_params(lambda r: ScalarModel(cfg, rngs=r), mesh, jax.random.key(3))
  params = {**embedding_from_lm(lm_params, params), 'b_head': jax.numpy.float32(0.3),
            'gain': jax.numpy.float32(1.7), 'bias': jax.numpy.float32(0.45)}
  hf.save_pretrained(out / f'{family}_reward-native', cfg, graphdef, params, tok)
  golden = json.loads((fixtures / f'{family}_reward' / 'golden.json').read_text())
  ids = np.asarray(golden['token_ids'])
  mask = (ids != golden['pad_token_id']).astype(np.int32)
  scores = last_token_value(nnx.merge(graphdef, params)(ids, mask), mask)
  np.save(out / f'{family}_reward-native' / 'alignlab_scores.npy', np.asarray(scores))
"""


def check_exports(alignlab_python, families):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([alignlab_python, "-c", ALIGNLAB_EXPORT, str(OUT), tmp, *families],
                       check=True, cwd=REPO)
        for family in families:
            golden = json.loads((OUT / family / "golden.json").read_text())
            ids = golden["token_ids"]
            for kind, expected in (("roundtrip", np.asarray(golden["logits"])),
                                   ("native", None)):
                directory = Path(tmp) / f"{family}-{kind}"
                model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
                transformers.AutoTokenizer.from_pretrained(directory)
                if expected is None:
                    expected = np.load(directory / "alignlab_logits.npy")
                err = np.abs(logits_of(model, ids) - expected).max()
                print(f"{family} {kind} export: transformers loads it, max |Δlogits| = {err:.2e}",
                      file=sys.stderr)
                assert err <= 1e-4, (family, kind, err)
        for seed, family in enumerate(REWARD_FAMILIES):
            golden = json.loads((OUT / f"{family}_reward" / "golden.json").read_text())
            for kind in ("roundtrip", "native"):
                directory = Path(tmp) / f"{family}_reward-{kind}"
                config = json.loads((directory / "config.json").read_text())
                model = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
                assert model.num_labels == 1, model.num_labels
                # Which id pads the rows is the caller's to say (the native export has the
                # fixture tokenizer's pad token, or none).
                model.config.pad_token_id = golden["pad_token_id"]
                expected = (np.asarray(golden["scores"]) if kind == "roundtrip"
                            else np.load(directory / "alignlab_scores.npy"))
                offset = config.get("alignlab_score_offset", 0.0)
                err = np.abs(scores_of(model, seed) + offset - expected).max()
                print(f"{family} reward {kind} export: transformers loads it "
                      f"({config['architectures'][0]}, offset {offset:.4g}), "
                      f"max |Δscore| = {err:.2e}", file=sys.stderr)
                assert err <= 1e-4, (family, kind, err)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alignlab-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--skip-export-check", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for seed, (family, cfg) in enumerate(configs().items()):
        write_fixture(family, cfg, seed)
    for seed, family in enumerate(REWARD_FAMILIES):
        write_reward_fixture(family, configs()[family], seed)
    if not args.skip_export_check:
        check_exports(args.alignlab_python, list(TOKENIZERS))


if __name__ == "__main__":
    main()
