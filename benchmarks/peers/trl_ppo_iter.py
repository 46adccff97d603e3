"""Time iterations of TRL 1.0's PPO trainer (`trl.experimental.ppo.PPOTrainer`) on the alignlab RL benchmark protocol.

Runs in its own environment (benchmarks/peers/.venv-trl10, made by setup_trl10.sh: trl 1.0.0 + transformers
5.4.0 + CPU torch 2.13.0): the PPO trainer is no longer in the trl 1.16 of the main peer env.

Protocol (one iteration = one rollout + one optimizer step):
  * policy: the random GPT-2-shaped model of common.py (fp32, dropout 0, 2 threads); reference = TRL's own frozen
    deepcopy of the initial policy (`ref_model=None` -> `create_reference_model`); value model and reward model:
    GPT-2-shaped `AutoModelForSequenceClassification` (num_labels=1, same backbone shape as common.py), seeded
    random weights (seed+1 and seed+2). The reward is the reward model's score at the last response token.
  * 64 prompts x 1 completion = 64 sequences per iteration: TRL's PPO trainer has no "several completions per
    prompt" option (one generation per dataset row, no grouping), so the 16 x 4 of the GRPO/RLOO runs becomes 64
    distinct prompts. Each prompt is exactly 8 tokens (8 words that each map to one token; no padding).
  * exactly 64 new tokens: response_length=64, stop_token=None (TRL sets the policy's generation eos_token_id to
    None, so nothing stops early). TRL's PPO treats the first *pad* token of a response as its end, so the
    generation config TRL builds is given `suppress_tokens=[eos_id, pad_id]` (the pad id would otherwise be sampled
    now and then by a random model and cut the response; EOS is suppressed as in the GRPO/RLOO runs). Checked on
    every iteration: generate returns [64, 8 + 64], no pad/EOS in the responses, and the reward model scores every
    sequence at its last position (TRL's sequence_lengths all = 8 + 64 - 1).
  * sampling as TRL's PPO hard-codes it: do_sample, temperature = args.temperature + 1e-7 = 1.0000001, top_k 0,
    top_p 1, KV cache; `output_scores=True`, and the old-policy log-probs are taken from those generation scores
    (no separate old-policy forward).
  * kl_coef 0.05 (k1 estimator in the per-token reward, TRL's default), num_ppo_epochs 1, num_mini_batches 1,
    gradient_accumulation_steps 1, per_device_train_batch_size 64, local_rollout_forward_batch_size 64 (one
    generate call and one batch-64 forward per model); AdamW (`adamw_torch_fused`) over policy + value params,
    constant lr 1e-6, weight decay 0; TRL's PPO loop does not clip gradients. No gradient checkpointing, fp32,
    no sample generations, logging/saving/eval off.

Buckets (time.perf_counter), per iteration = on_step_end of the previous iteration (on_train_begin for the first)
-> this iteration's on_step_end (TRL's PPO loop calls no on_step_begin):
  generate_s  the policy's `generate` call (instance wrapper on the policy; one call per iteration, checked).
  score_s     end of generate -> start of the update forward: stacking the generation scores, old log-probs from
              them, the reference forward, the value-model forward (`get_reward` on the value model), the
              reward-model forward, masks, per-token KL reward, GAE, advantage whitening. Sub-parts reported:
              ref_forward_s, value_forward_s, reward_forward_s.
  update_s    start of the update forward (PolicyAndValueWrapper: policy + value backbone) -> end of
              optimizer.zero_grad(): forward, PPO-clip + clipped value loss, backward, optimizer.step.
              optimizer_step_s is reported apart.
  other_s     total - the three: TRL's post-step no-grad statistics (softmax entropy over the full logits, clip
              fractions), metric gathering and `self.log`, lr-scheduler step (all reported as post_update_s),
              plus the dataloader fetch, `unwrap_model_for_generation`, and the previous iteration's
              `gc.collect()`/`del` after its on_step_end.
The first --warmup iterations are dropped.

Prints one JSON line to stdout; everything else goes to stderr.

    benchmarks/peers/.venv-trl10/bin/python benchmarks/peers/trl_ppo_iter.py --iters 10 --warmup 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import common  # noqa: E402  (sets the offline environment variables before HF imports)

import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--batch", type=int, default=64, help="prompts (= sequences) per iteration")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--kl-estimator", choices=["k1", "k3"], default="k1", help="TRL PPOConfig default: k1")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--optim", default="adamw_torch_fused", help="transformers OptimizerNames value")
    p.add_argument("--threads", type=int, default=common.NUM_THREADS)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_prompt_ids(tokenizer, n: int, prompt_len: int, seed: int) -> list[list[int]]:
    words = [w for w, _ in common.single_token_words(tokenizer)]
    rng = random.Random(seed)
    texts = ["".join(" " + rng.choice(words) for _ in range(prompt_len)) for _ in range(n)]
    ids = tokenizer(texts)["input_ids"]
    lens = {len(x) for x in ids}
    if lens != {prompt_len}:
        raise AssertionError(f"prompt token lengths {sorted(lens)}, expected exactly {prompt_len}")
    return ids


def build_score_model(tokenizer, seed: int):
    """GPT-2-shaped AutoModelForSequenceClassification (num_labels=1), seeded random weights, fp32, dropout 0."""
    from transformers import AutoModelForSequenceClassification

    cfg = common.gpt2_config(tokenizer)
    cfg.num_labels = 1
    torch.manual_seed(seed)
    m = AutoModelForSequenceClassification.from_config(cfg).to(torch.float32)
    m.eval()
    return m


class Recorder:
    def __init__(self):
        self.iters = []

    @property
    def cur(self):
        return self.iters[-1]

    def open(self, t):
        self.iters.append({"begin": t, "generate": [], "ref": [], "value": [], "reward": [], "update_fwd": [],
                           "opt_step": [], "zero_grad": []})

    def add(self, key, t0, t1):
        self.cur[key].append((t0, t1))


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)

    from datasets import Dataset
    from transformers import TrainerCallback

    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    rec = Recorder()
    total_iters = args.warmup + args.iters
    n = args.batch
    seq_len = args.prompt_len + args.new_tokens

    tokenizer = common.build_tokenizer(seed=args.seed)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    policy = common.build_model(tokenizer, seed=args.seed)
    value_model = build_score_model(tokenizer, seed=args.seed + 1)
    reward_model = build_score_model(tokenizer, seed=args.seed + 2)
    init_state = {k: v.clone() for k, v in policy.state_dict().items()}

    prompt_ids = make_prompt_ids(tokenizer, total_iters * n, args.prompt_len, args.seed)
    train_dataset = Dataset.from_dict({"input_ids": prompt_ids})
    eval_dataset = Dataset.from_dict({"input_ids": prompt_ids[:n]})  # never used (no eval, no sample generations)

    tmp = tempfile.mkdtemp(prefix="trl_ppo_bench_")
    config = PPOConfig(
        output_dir=os.path.join(tmp, "out"),
        per_device_train_batch_size=n,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        local_rollout_forward_batch_size=n,
        total_episodes=total_iters * n,
        response_length=args.new_tokens,
        stop_token=None,
        stop_token_id=None,
        missing_eos_penalty=None,
        temperature=1.0,
        kl_coef=args.kl_coef,
        kl_estimator=args.kl_estimator,
        whiten_rewards=False,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        num_sample_generations=0,
        gradient_checkpointing=False,  # TRL's _BaseConfig defaults it to True
        **common.plain_training_args(args),
    )

    class IterTimer(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            rec.open(time.perf_counter())

        def on_step_end(self, targs, state, control, **kw):
            t = time.perf_counter()
            rec.cur["end"] = t
            if len(rec.iters) < total_iters:
                rec.open(t)

    suppress = sorted({eos_id, pad_id})
    orig_batch_generation = ppo_mod.batch_generation
    orig_forward = ppo_mod.forward
    orig_get_reward = ppo_mod.get_reward
    holder = {}

    def batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
        if tuple(queries.shape) != (n, args.prompt_len) or bool((queries == pad_token_id).any()):
            raise AssertionError(f"queries {tuple(queries.shape)} (expected {(n, args.prompt_len)}, no padding)")
        gc_ = copy.deepcopy(generation_config)
        gc_.suppress_tokens = suppress
        out = orig_batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, gc_)
        qr = out[0]
        resp = qr[:, args.prompt_len:]
        if tuple(qr.shape) != (n, seq_len):
            raise AssertionError(f"iteration {len(rec.iters) - 1}: query_responses {tuple(qr.shape)}, "
                                 f"expected {(n, seq_len)}")
        if bool(torch.isin(resp, torch.tensor(suppress)).any()):
            raise AssertionError("a response contains the pad or EOS id (would end it early)")
        return out

    def forward(model, query_responses, pad_token_id):
        t0 = time.perf_counter()
        out = orig_forward(model, query_responses, pad_token_id)
        key = "ref" if model is holder["ref"] else "update_fwd"
        rec.add(key, t0, time.perf_counter())
        return out

    def get_reward(model, query_responses, pad_token_id, context_length):
        t0 = time.perf_counter()
        out = orig_get_reward(model, query_responses, pad_token_id, context_length)
        key = "reward" if model is holder["reward"] else "value"
        rec.add(key, t0, time.perf_counter())
        if key == "reward" and not bool((out[2] == seq_len - 1).all()):
            raise AssertionError(f"reward-model sequence lengths {sorted(set(out[2].tolist()))}, "
                                 f"expected all {seq_len - 1} (every response exactly {args.new_tokens} tokens)")
        return out

    ppo_mod.batch_generation = batch_generation
    ppo_mod.forward = forward
    ppo_mod.get_reward = get_reward

    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,
            reward_model=reward_model,
            train_dataset=train_dataset,
            value_model=value_model,
            eval_dataset=eval_dataset,
            callbacks=[IterTimer()],
        )
        init_time_s = time.perf_counter() - t0
        holder["ref"] = trainer.ref_model
        holder["reward"] = trainer.reward_model
        ref_state = trainer.ref_model.state_dict()
        if [k for k, v in init_state.items() if not torch.equal(ref_state[k], v)]:
            raise AssertionError("reference model differs from the initial policy")
        ref_frozen = not any(p.requires_grad for p in trainer.ref_model.parameters())

        original_generate = policy.generate

        def timed_generate(*a, **kw):
            t0 = time.perf_counter()
            out = original_generate(*a, **kw)
            rec.add("generate", t0, time.perf_counter())
            return out

        policy.generate = timed_generate

        opt = trainer.optimizer
        original_step, original_zero_grad = opt.step, opt.zero_grad

        def timed_step(*a, **kw):
            t0 = time.perf_counter()
            out = original_step(*a, **kw)
            rec.add("opt_step", t0, time.perf_counter())
            return out

        def timed_zero_grad(*a, **kw):
            t0 = time.perf_counter()
            out = original_zero_grad(*a, **kw)
            rec.add("zero_grad", t0, time.perf_counter())
            return out

        opt.step, opt.zero_grad = timed_step, timed_zero_grad
        n_opt_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
        t0 = time.perf_counter()
        trainer.train()
        train_time_s = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)

    if len(rec.iters) != total_iters or any("end" not in it for it in rec.iters):
        raise RuntimeError(f"expected {total_iters} complete iterations, saw {len(rec.iters)}")

    def dur(spans):
        return sum(b - a for a, b in spans)

    rows = []
    for i, it in enumerate(rec.iters):
        counts = {k: len(it[k]) for k in ("generate", "ref", "value", "reward", "update_fwd", "opt_step", "zero_grad")}
        if counts != {k: 1 for k in counts}:
            raise AssertionError(f"iteration {i}: unexpected call counts {counts}")
        total = it["end"] - it["begin"]
        g0, g1 = it["generate"][0]
        u0 = it["update_fwd"][0][0]
        u1 = it["zero_grad"][0][1]
        gen, score, update = g1 - g0, u0 - g1, u1 - u0
        rows.append({
            "total_s": total, "generate_s": gen, "score_s": score, "update_s": update,
            "other_s": total - gen - score - update,
            "ref_forward_s": dur(it["ref"]), "value_forward_s": dur(it["value"]),
            "reward_forward_s": dur(it["reward"]),
            "optimizer_step_s": dur(it["opt_step"]),
            "post_update_s": it["end"] - u1,
        })
    timed = rows[args.warmup:]
    if not timed:
        raise RuntimeError("no timed iterations (--iters 0?)")
    keys = list(timed[0])

    settings = {
        "sequences_per_iter": n,
        "prompts_per_iter": n,
        "completions_per_prompt": 1,
        "completions_per_prompt_note": "TRL's PPOTrainer generates one completion per dataset row (no groups); "
                                       "64 distinct prompts x 1 instead of 16 x 4",
        "prompt_tokens": args.prompt_len,
        "new_tokens": args.new_tokens,
        "early_stop": "none: stop_token=None (generation eos_token_id=None), suppress_tokens=[eos, pad] added to "
                      "TRL's generation config; responses checked every iteration",
        "sampling": {"temperature": 1.0 + 1e-7, "top_k": 0, "top_p": 1.0, "do_sample": True, "use_cache": True,
                     "suppress_tokens": suppress, "output_scores": True},
        "old_logprobs_from": "generation scores (log_softmax of the processed sampling logits), no extra forward",
        "old_policy_forward": False,
        "ref_forward": True,
        "ref_model": "TRL create_reference_model: deepcopy of the initial policy, requires_grad False, eval",
        "ref_frozen": ref_frozen,
        "value_model": "GPT2ForSequenceClassification(num_labels=1), common.py shape, seed+1, separate backbone",
        "reward_model": "GPT2ForSequenceClassification(num_labels=1), common.py shape, seed+2; score at the last "
                        "response token",
        "value_forward_in_scoring": True,
        "kl_coef": args.kl_coef,
        "kl_placement": "reward, per token: r_t = -kl_coef * kl_t, plus the reward-model score at the last token",
        "kl_estimator": args.kl_estimator + (" (log pi_old - log pi_ref per token; can be negative)"
                                             if args.kl_estimator == "k1" else
                                             " ((ratio - 1) - log ratio, ratio = pi_ref/pi_old)"),
        "whiten_rewards": False,
        "advantage": "GAE over the 64 response tokens (gamma 1.0, lambda 0.95) with the value model; "
                     "returns = advantages + values; advantages whitened over the batch (mean 0, unit var)",
        "gamma": 1.0,
        "lam": 0.95,
        "policy_loss": "token-level PPO-clip (cliprange 0.2), masked mean over all response tokens",
        "value_loss": "0.5 * masked mean of max((v - R)^2, (clip(v, v_old +- 0.2) - R)^2), weight vf_coef 0.1",
        "update_forward": "PolicyAndValueWrapper: value backbone + score head, and policy forward "
                          "(full [64, 72, 8192] logits)",
        "num_ppo_epochs": 1,
        "num_mini_batches": 1,
        "gradient_accumulation_steps": 1,
        "per_device_train_batch_size": n,
        "local_rollout_forward_batch_size": n,
        "optimizer_steps_per_iter": 1,
        "optimizer": f"{type(opt).__name__}({args.optim}) over policy + value parameters",
        "optimizer_params": n_opt_params,
        "lr": args.lr,
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999],
        "adam_eps": 1e-8,
        "grad_clip": None,
        "grad_clip_note": "TRL's PPO train loop calls optimizer.step() without clipping (max_grad_norm unused)",
        "gradient_checkpointing": bool(policy.is_gradient_checkpointing),
        "dtype": str(next(policy.parameters()).dtype),
        "attn_implementation": policy.config._attn_implementation,
        "logging": "logging_strategy=no, save_strategy=no, eval_strategy=no, report_to=none, "
                   "num_sample_generations=0 (TRL still computes its metrics and calls self.log every iteration)",
        "n_params_policy": common.n_params(policy),
        "n_params_value": common.n_params(value_model),
        "n_params_reward": common.n_params(reward_model),
        "threads": torch.get_num_threads(),
    }

    common.emit_iterations(trl.__version__, "ppo", args, timed, keys, init_time_s, train_time_s, settings)


if __name__ == "__main__":
    main()
