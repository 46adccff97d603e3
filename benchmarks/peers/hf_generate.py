"""Time `transformers` `model.generate` (KV cache, ancestral sampling) on the alignlab sampling shapes.

Random GPT-2-shaped model (common.py), fp32, 2 threads. B prompts of exactly --prompt-len random token ids
(no padding, attention mask all ones), exactly --new-tokens new tokens each (min_new_tokens ==
max_new_tokens, so EOS cannot end a sequence early), do_sample=True, temperature 1.0, top_k 0, top_p 1.0,
use_cache=True. One warmup call (untimed), then --repeats timed calls; new tokens/s = B * new_tokens / time.

Prints one JSON line to stdout.

    benchmarks/peers/.venv/bin/python benchmarks/peers/hf_generate.py --batch 64 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402  (sets the offline environment variables before HF imports)

import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="sequences per generate call (64 or 8)")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed generate calls")
    p.add_argument("--warmup", type=int, default=1, help="untimed generate calls first")
    p.add_argument("--threads", type=int, default=common.NUM_THREADS)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)

    tokenizer = common.build_tokenizer(seed=args.seed)
    model = common.build_model(tokenizer, seed=args.seed)  # eval mode, fp32
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    gen = torch.Generator().manual_seed(args.seed)
    # Random prompt ids over the model's vocabulary, avoiding the two special ids.
    low = max(eos_id, pad_id) + 1
    input_ids = torch.randint(low, common.VOCAB_SIZE, (args.batch, args.prompt_len), generator=gen)
    attention_mask = torch.ones_like(input_ids)

    gen_kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        use_cache=True,
        min_new_tokens=args.new_tokens,
        max_new_tokens=args.new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )

    def run(seed):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
        dt = time.perf_counter() - t0
        want = (args.batch, args.prompt_len + args.new_tokens)
        if tuple(out.shape) != want:
            raise AssertionError(f"generate returned shape {tuple(out.shape)}, expected {want}")
        if not torch.equal(out[:, : args.prompt_len], input_ids):
            raise AssertionError("prompt not preserved at the start of the output")
        return dt, out

    for i in range(args.warmup):
        run(args.seed + 1000 + i)
    times = []
    eos_in_new = 0
    for i in range(args.repeats):
        dt, out = run(args.seed + i)
        times.append(dt)
        eos_in_new += int((out[:, args.prompt_len:] == eos_id).sum())

    new_tokens = args.batch * args.new_tokens
    tps = [new_tokens / t for t in times]
    result = {
        "peer": "hf_generate",
        **common.versions(),
        "batch": args.batch,
        "prompt_tokens": args.prompt_len,
        "new_tokens_per_seq": args.new_tokens,
        "new_tokens_per_call": new_tokens,
        "warmup_calls": args.warmup,
        "times_s": [round(t, 6) for t in times],
        "new_tokens_per_s": [round(x, 2) for x in tps],
        "median_new_tokens_per_s": round(common.median(tps), 2),
        "eos_in_generated": eos_in_new,
        "sampling": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "use_cache": True},
        "n_params": common.n_params(model),
        "attn_implementation": model.config._attn_implementation,
        "dtype": str(next(model.parameters()).dtype),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
