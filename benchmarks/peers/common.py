"""Shared pieces of the PyTorch peer benchmarks: a random GPT-2-shaped model and a tiny local tokenizer.

Nothing here downloads anything: the model is built from a config with seeded random weights and the
tokenizer is trained in memory with the `tokenizers` library on synthetic sentences. The shapes match
alignlab's default `ModelConfig` (4 layers, d_model 256, 4 heads, vocab 8192, 256 positions, learned
positions, LayerNorm, GELU, tied embeddings), fp32, dropout off.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import random
import statistics
import sys

import torch

NUM_THREADS = 2
VOCAB_SIZE = 8192
N_POSITIONS = 256
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

_WORDS = (
    "the a one some every small large quick slow bright dark happy sad old young red blue green "
    "cat dog bird fish horse river mountain city forest garden house road tree cloud storm sun moon "
    "runs jumps sings reads writes sees finds builds opens closes walks swims flies grows falls "
    "over under near behind beside across through around into onto and but while because after "
    "before today tomorrow yesterday quietly loudly gently quickly slowly carefully together alone "
    "movie film story actor scene plot music ending review great terrible boring wonderful"
).split()


def set_threads(n: int = NUM_THREADS) -> None:
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def synthetic_sentences(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 14))) + "." for _ in range(n)]


def build_tokenizer(seed: int = 0):
    """A byte-level BPE tokenizer trained here on synthetic sentences, wrapped for transformers.

    It learns far fewer than 8192 tokens; the model's vocabulary stays 8192 regardless (ids from this
    tokenizer are all < 8192, the rest of the embedding rows are simply never used by text).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_sentences(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, bos_token=EOS_TOKEN
    )
    fast.padding_side = "left"
    assert len(fast) <= VOCAB_SIZE, len(fast)
    return fast


def single_token_words(tokenizer) -> list[tuple[str, int]]:
    """Words w such that ' w' encodes to exactly one token, whatever precedes it.

    The byte-level pre-tokenizer splits ' w1 w2 w3' into ' w1', ' w2', ' w3' before BPE, so a text made
    of such words has exactly one token per word; texts built from them have exact token counts.
    """
    out = []
    for token, idx in tokenizer.get_vocab().items():
        if not token.startswith("\u0120"):  # 'Ġ' = byte-level space
            continue
        word = token[1:]
        if not word.isalpha():
            continue
        if tokenizer.encode(" " + word, add_special_tokens=False) == [idx]:
            out.append((word, idx))
    out.sort(key=lambda p: p[1])
    return out


def gpt2_config(tokenizer=None):
    from transformers import GPT2Config

    eos_id = tokenizer.eos_token_id if tokenizer is not None else 0
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 1
    return GPT2Config(
        n_layer=4,
        n_embd=256,
        n_head=4,
        vocab_size=VOCAB_SIZE,
        n_positions=N_POSITIONS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )


def build_model(tokenizer=None, seed: int = 0):
    """GPT2LMHeadModel with seeded random weights, fp32, dropout 0, train mode off."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(tokenizer)).to(torch.float32)
    model.eval()
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def versions() -> dict:
    import tokenizers
    import transformers

    out = {
        "python": sys.version.split()[0],
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import trl

        out["trl_version"] = trl.__version__
    except ImportError:
        pass
    return out


def median(xs) -> float:
    return float(statistics.median(xs))


def emit_iterations(trl_version: str, algo: str, args, timed: list[dict], keys: list[str],
                    init_time_s: float, train_time_s: float, settings: dict) -> None:
    """Prints the one JSON line of an RL iteration benchmark: per-iteration lists and medians
    of each bucket in `keys`, the share of the total the three buckets cover, the settings."""
    import json
    result = {"impl": "trl", "trl_version": trl_version,
              **{k: v for k, v in versions().items() if k != "trl_version"},
              "algo": algo, "iters": args.iters, "warmup": args.warmup}
    for k in keys:
        result[k] = [round(r[k], 6) for r in timed]
    for k in keys:
        result["median_" + k] = round(median([r[k] for r in timed]), 6)
    result["median_iter_s"] = result["median_total_s"]
    result["bucket_sum_over_total"] = round(
        sum(r["generate_s"] + r["score_s"] + r["update_s"] for r in timed)
        / sum(r["total_s"] for r in timed), 6)
    result["trainer_init_s"] = round(init_time_s, 4)
    result["train_total_s"] = round(train_time_s, 4)
    result["settings"] = settings
    print(json.dumps(result), flush=True)


def plain_training_args(args) -> dict:
    """The `transformers.TrainingArguments` settings every RL peer shares: constant AdamW at
    `args.lr` (`args.optim`), fp32 on the CPU, seeded, no data-loader workers, and no logging,
    saving, evaluation or progress bar, so an iteration times the algorithm alone."""
    return dict(learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                optim=args.optim, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
                adam_epsilon=1e-8, bf16=False, fp16=False, use_cpu=True, seed=args.seed,
                dataloader_num_workers=0, dataloader_pin_memory=False, logging_strategy="no",
                logging_steps=10**9, save_strategy="no", eval_strategy="no", report_to="none",
                disable_tqdm=True)
