"""Time TRL's DPOTrainer optimizer step on the alignlab DPO benchmark shapes.

Shapes: 8 preference pairs per step, prompt exactly 64 tokens, chosen and rejected exactly 64 tokens
each (63 random words + the EOS that TRL appends), so every step runs the policy on a [16, 128] batch
(chosen and rejected concatenated) and, in per-batch mode, the frozen reference on the same batch.
Model: random GPT-2-shaped (common.py), fp32, 2 threads, no gradient checkpointing, dropout off.
Optimizer: AdamW (TRL default `adamw_torch_fused`), constant lr 1e-6, no weight decay, grad-norm clip 1.0
(the same as alignlab's OptimizerConfig defaults apart from the lr), beta 0.1, sigmoid loss.

Modes:
  per_batch    the reference log-probs are computed with the reference model inside every step.
  precomputed  `DPOConfig(precompute_ref_log_probs=True)`: TRL runs the reference model over the whole
               dataset once, in `DPOTrainer.__init__`, and stores `ref_chosen_logps`/`ref_rejected_logps`
               columns; that pass is timed apart (precompute_time_s) and not counted in step times.

Step time = time.perf_counter() between TrainerCallback.on_step_begin and on_step_end (forward, backward,
clip, optimizer step); the first --warmup steps are dropped. `interval_times_s` (on_step_end to the next
on_step_end, which includes fetching and collating the next batch and Trainer bookkeeping) is reported too.

Prints one JSON line to stdout; everything else goes to stderr.

    benchmarks/peers/.venv/bin/python benchmarks/peers/trl_dpo_step.py --mode per_batch --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402  (sets the offline environment variables before HF imports)

import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["per_batch", "precomputed"], default="per_batch")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    p.add_argument("--batch", type=int, default=8, help="preference pairs per optimizer step")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=64, help="chosen/rejected tokens, EOS included")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--optim", default="adamw_torch_fused", help="transformers OptimizerNames value")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="TRL 1.16 turns it on by default; off here to match a model without remat")
    p.add_argument("--threads", type=int, default=common.NUM_THREADS)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_dataset(tokenizer, n_examples: int, prompt_len: int, response_len: int, seed: int):
    """Text examples whose tokenization has exactly the requested lengths.

    TRL 1.16 always tokenizes the text columns itself (there is no pre-tokenized input path: it calls
    `tokenizer(prompt)` and `tokenizer(prompt + chosen)` and splits at their common prefix), so exact
    lengths come from the text: every word is one that the byte-level tokenizer maps to a single token
    (' word' -> 1 id), each word carries its leading space, so `prompt + chosen` splits exactly at the
    boundary. The chosen/rejected texts have response_len - 1 words; TRL appends the EOS token.
    """
    from datasets import Dataset

    words = [w for w, _ in common.single_token_words(tokenizer)]
    rng = random.Random(seed)

    def text(n):
        return "".join(" " + rng.choice(words) for _ in range(n))

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n_examples):
        rows["prompt"].append(text(prompt_len))
        rows["chosen"].append(text(response_len - 1))
        rows["rejected"].append(text(response_len - 1))
    return Dataset.from_dict(rows)


def check_lengths(dataset, prompt_len: int, response_len: int) -> None:
    for col, want in (("prompt_ids", prompt_len), ("chosen_ids", response_len), ("rejected_ids", response_len)):
        lens = {len(x) for x in dataset[col]}
        if lens != {want}:
            raise AssertionError(f"{col}: token lengths {sorted(lens)}, expected exactly {want}")


class ShapeCheckingCollator:
    """Wraps TRL's collator; fails loudly if a batch is not [2B, P+R] with R completion tokens per row."""

    def __init__(self, inner, batch: int, prompt_len: int, response_len: int):
        self.inner, self.batch, self.prompt_len, self.response_len = inner, batch, prompt_len, response_len
        self.checked = 0

    def __call__(self, examples):
        out = self.inner(examples)
        want = (2 * self.batch, self.prompt_len + self.response_len)
        if tuple(out["input_ids"].shape) != want:
            raise AssertionError(f"input_ids shape {tuple(out['input_ids'].shape)}, expected {want}")
        if not bool((out["completion_mask"].sum(dim=1) == self.response_len).all()):
            raise AssertionError("completion_mask does not mark exactly response_len tokens per row")
        if not bool(out["attention_mask"].all()):
            raise AssertionError("unexpected padding in the batch")
        self.checked += 1
        return out


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)

    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.end = [], []
            self.checkpointing_seen = None

        def on_step_begin(self, args, state, control, **kw):
            if self.checkpointing_seen is None and kw.get("model") is not None:
                self.checkpointing_seen = bool(kw["model"].is_activation_checkpointing)
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.end.append(time.perf_counter())

    class TimedDPOTrainer(DPOTrainer):
        precompute_time_s = 0.0

        def _precompute_ref_logps(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **kw)
            TimedDPOTrainer.precompute_time_s += time.perf_counter() - t0
            return out

    tokenizer = common.build_tokenizer(seed=args.seed)
    model = common.build_model(tokenizer, seed=args.seed)
    ref_model = copy.deepcopy(model).eval()
    ref_model.requires_grad_(False)

    total_steps = args.warmup + args.steps
    dataset = make_dataset(tokenizer, total_steps * args.batch, args.prompt_len, args.response_len, args.seed)
    seq_len = args.prompt_len + args.response_len

    out_dir = tempfile.mkdtemp(prefix="trl_dpo_bench_")
    config = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=total_steps,
        num_train_epochs=1,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim=args.optim,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=args.max_grad_norm,
        beta=args.beta,
        loss_type=["sigmoid"],
        # Exact lengths: nothing is truncated (max_length == prompt + response) and nothing is padded
        # (all rows have the same length; pad_to_multiple_of=None).
        max_length=seq_len,
        truncation_mode="keep_start",
        pad_to_multiple_of=None,
        padding_free=False,
        precompute_ref_log_probs=(args.mode == "precomputed"),
        precompute_ref_batch_size=args.batch,
        activation_checkpointing=args.gradient_checkpointing,  # new name of gradient_checkpointing
        bf16=False,
        fp16=False,
        use_cpu=True,
        disable_dropout=True,
        use_cache=False,
        seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )

    timer = StepTimer()
    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        trainer = TimedDPOTrainer(
            model=model,
            ref_model=ref_model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
        init_time_s = time.perf_counter() - t0
        check_lengths(trainer.train_dataset, args.prompt_len, args.response_len)
        if args.mode == "precomputed":
            assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
        collator = ShapeCheckingCollator(trainer.data_collator, args.batch, args.prompt_len, args.response_len)
        trainer.data_collator = collator
        t0 = time.perf_counter()
        trainer.train()
        train_time_s = time.perf_counter() - t0
    shutil.rmtree(out_dir, ignore_errors=True)  # nothing is saved (save_strategy='no'); drop the empty dir

    if len(timer.begin) != total_steps or len(timer.end) != total_steps:
        raise RuntimeError(f"expected {total_steps} steps, saw {len(timer.begin)} begins / {len(timer.end)} ends")
    if collator.checked < total_steps:
        raise RuntimeError(f"only {collator.checked} batches went through the shape check")
    step_times = [e - b for b, e in zip(timer.begin, timer.end)][args.warmup:]
    intervals = [b - a for a, b in zip(timer.end, timer.end[1:])][max(args.warmup - 1, 0):]
    med = common.median(step_times)
    opt = trainer.optimizer
    result = {
        "peer": "trl",
        **common.versions(),
        "mode": args.mode,
        "step_times_s": [round(t, 6) for t in step_times],
        "median_step_s": round(med, 6),
        "median_steps_per_s": round(1.0 / med, 4),
        "interval_times_s": [round(t, 6) for t in intervals],
        "median_interval_steps_per_s": round(1.0 / common.median(intervals), 4) if intervals else None,
        "precompute_time_s": round(TimedDPOTrainer.precompute_time_s, 4) if args.mode == "precomputed" else None,
        "precompute_examples": len(dataset) if args.mode == "precomputed" else None,
        "precompute_batch_size": args.batch if args.mode == "precomputed" else None,
        "trainer_init_s": round(init_time_s, 4),
        "train_total_s": round(train_time_s, 4),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "pairs_per_step": args.batch,
        "prompt_tokens": args.prompt_len,
        "response_tokens": args.response_len,
        "batch_shape": [2 * args.batch, seq_len],
        "n_params": common.n_params(model),
        "attn_implementation": model.config._attn_implementation,
        "dtype": str(next(model.parameters()).dtype),
        "optimizer": f"{type(opt).__name__}({args.optim})",
        "lr": args.lr,
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": args.max_grad_norm,
        "beta": args.beta,
        "loss_type": "sigmoid",
        "gradient_checkpointing": timer.checkpointing_seen,
        "ref_model": "explicit frozen deepcopy of the initial policy",
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
