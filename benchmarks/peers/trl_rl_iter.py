"""Time iterations of TRL's RLOOTrainer / GRPOTrainer (trl 1.16) on the alignlab RL benchmark protocol.

Protocol (one iteration = one generation round + one optimizer step):
  * policy: the random GPT-2-shaped model of common.py (fp32, dropout 0, 2 threads); reference model = a frozen
    copy of the initial policy, built by TRL itself (beta > 0). TRL builds it with `from_pretrained` on the policy's
    `config._name_or_path`, so the initial policy is first saved to a temporary directory and `_name_or_path` points
    there (checked: the reference starts with exactly the policy's weights).
  * 16 prompts per iteration, each exactly 8 tokens (8 words that each map to one token), 4 completions per
    prompt -> 64 sequences; generation batch = train batch = 64 (per_device_train_batch_size=64,
    steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1): one optimizer step per iteration.
  * exactly 64 new tokens per completion: max_completion_length=64 and generation_kwargs={"min_new_tokens": 64}
    (EOS suppressed until the 64th token, so no completion ends early); ancestral sampling, temperature 1,
    top_k 0, top_p 1, no min_p, no repetition penalty, KV cache on (transformers `generate`, no vLLM, no
    continuous batching). Prompt and completion lengths are checked on every iteration (fails loudly).
  * reward: r(completion_ids) = mean(id % 2 == 0) over the 64 completion token ids (plain Python; TRL passes
    `completion_ids` to reward functions as a keyword argument).
  * beta 0.05; AdamW (`adamw_torch_fused`), constant lr 1e-6, no warmup, weight decay 0, grad-norm clip 1.0;
    no gradient checkpointing; bf16/fp16 off; logging/saving/eval off.

Buckets (time.perf_counter), per iteration = TrainerCallback.on_step_begin -> on_step_end:
  generate_s  the policy's `generate` call (instance wrapper on the unwrapped policy; exactly one call per
              iteration, checked).
  score_s     `_generate_and_score_completions` minus generate_s: prompt tokenization, left-padding, EOS masking,
              completion decoding (TRL decodes the texts for the reward-function API), completion-length metrics,
              the old-policy log-prob forward (RLOO only; GRPO skips it when generation and optimization are
              aligned), the reference log-prob forward, the reward function, the KL-in-reward (RLOO) and the
              advantage computation, TRL's metric bookkeeping.
  update_s    from the start of `compute_loss` to on_step_end: loss forward (fused LM head, log-probs + entropy),
              backward, grad-norm clip, optimizer.step, lr-scheduler step, zero_grad. Sub-parts are reported:
              loss_forward_s (compute_loss), optimizer_step_s (on_pre_optimizer_step -> on_optimizer_step), and
              backward_clip_s (end of compute_loss -> on_pre_optimizer_step: backward + clip).
  other_s     total - the three: model.train()/optimizer.train() before `_prepare_inputs`, and the shuffle/split
              of the generated batch between scoring and the loss (should be ~0).
The first --warmup iterations are dropped.

Prints one JSON line to stdout; everything else goes to stderr.

    benchmarks/peers/.venv/bin/python benchmarks/peers/trl_rl_iter.py --algo rloo --iters 10 --warmup 2
    benchmarks/peers/.venv/bin/python benchmarks/peers/trl_rl_iter.py --algo grpo --iters 10 --warmup 2
"""

from __future__ import annotations

import argparse
import contextlib
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
    p.add_argument("--algo", choices=["rloo", "grpo"], required=True)
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--prompts", type=int, default=16, help="prompts per iteration")
    p.add_argument("--group", type=int, default=4, help="completions per prompt")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--optim", default="adamw_torch_fused", help="transformers OptimizerNames value")
    p.add_argument("--grpo-loss-type", default="dapo",
                   help="GRPOConfig.loss_type (TRL 1.16 default 'dapo'; with every completion exactly --new-tokens "
                        "long, 'grpo', 'bnpo' and 'dapo' give the same loss)")
    p.add_argument("--threads", type=int, default=common.NUM_THREADS)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def even_token_reward(completion_ids, **kwargs):
    """r = fraction of even token ids among the completion ids (the same plain function on the alignlab side)."""
    return [sum(1 for t in ids if t % 2 == 0) / len(ids) for ids in completion_ids]


def make_prompts(tokenizer, n: int, prompt_len: int, seed: int) -> list[str]:
    """n texts of prompt_len words, each ' word' being exactly one token, so each prompt is exactly prompt_len ids."""
    words = [w for w, _ in common.single_token_words(tokenizer)]
    rng = random.Random(seed)
    prompts = ["".join(" " + rng.choice(words) for _ in range(prompt_len)) for _ in range(n)]
    lens = {len(ids) for ids in tokenizer(prompts)["input_ids"]}  # how TRL tokenizes them (no special tokens added)
    if lens != {prompt_len}:
        raise AssertionError(f"prompt token lengths {sorted(lens)}, expected exactly {prompt_len}")
    return prompts


class Recorder:
    """Per-iteration timestamps; one dict per optimizer step, opened by on_step_begin."""

    def __init__(self):
        self.steps = []

    @property
    def cur(self):
        if not self.steps:
            raise RuntimeError("trainer work outside on_step_begin/on_step_end")
        return self.steps[-1]

    def open(self):
        self.steps.append({"begin": time.perf_counter(), "generate": [], "score": [], "loss": [], "opt": [],
                           "logps": [], "reward": []})

    def add(self, key, t0, t1, **extra):
        self.cur[key].append((t0, t1, extra) if extra else (t0, t1))


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)

    from datasets import Dataset
    from transformers import TrainerCallback

    if args.algo == "rloo":
        from trl import RLOOConfig as Config, RLOOTrainer as Base
    else:
        from trl import GRPOConfig as Config, GRPOTrainer as Base
    import trl

    rec = Recorder()
    n_seq = args.prompts * args.group
    want_prompt = (n_seq, args.prompt_len)
    want_completion = (n_seq, args.new_tokens)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.checkpointing_seen = None

        def on_step_begin(self, targs, state, control, **kw):
            if self.checkpointing_seen is None and kw.get("model") is not None:
                m = kw["model"]
                self.checkpointing_seen = bool(getattr(m, "is_activation_checkpointing", None)
                                               if hasattr(type(m), "is_activation_checkpointing")
                                               else m.is_gradient_checkpointing)
            rec.open()

        def on_pre_optimizer_step(self, targs, state, control, **kw):
            rec.cur["opt_begin"] = time.perf_counter()

        def on_optimizer_step(self, targs, state, control, **kw):
            rec.add("opt", rec.cur.pop("opt_begin"), time.perf_counter())

        def on_step_end(self, targs, state, control, **kw):
            rec.cur["end"] = time.perf_counter()

    class Timed(Base):
        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            rec.add("score", t0, time.perf_counter())
            # Exact shapes, no padding, every completion exactly new_tokens long (fail loudly otherwise).
            checks = {
                "prompt_ids": tuple(out["prompt_ids"].shape) == want_prompt,
                "prompt_mask all ones": bool(out["prompt_mask"].all()),
                "completion_ids": tuple(out["completion_ids"].shape) == want_completion,
                "completion_mask all ones": bool(out["completion_mask"].all()),
                "no EOS in completions": not bool((out["completion_ids"] == self._tokenizer.eos_token_id).any()),
            }
            bad = [k for k, ok in checks.items() if not ok]
            if bad:
                raise AssertionError(
                    f"iteration {len(rec.steps)}: {bad}; prompt_ids {tuple(out['prompt_ids'].shape)}, "
                    f"completion_ids {tuple(out['completion_ids'].shape)}, completion lengths "
                    f"{sorted(set(out['completion_mask'].sum(1).tolist()))}"
                )
            if self.beta != 0.0 and args.algo == "grpo" and "ref_per_token_logps" not in out:
                raise AssertionError("GRPO: no reference log-probs in the scored batch")
            return out

        def _get_per_token_logps_and_entropies(self, model, *a, **kw):
            t0 = time.perf_counter()
            out = super()._get_per_token_logps_and_entropies(model, *a, **kw)
            role = "ref" if model is self.ref_model else ("policy_grad" if torch.is_grad_enabled() else "policy_nograd")
            rec.add("logps", t0, time.perf_counter(), role=role)
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            t0 = time.perf_counter()
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            rec.add("loss", t0, time.perf_counter())
            return out

    def reward_fn(completion_ids, **kwargs):
        t0 = time.perf_counter()
        out = even_token_reward(completion_ids)
        rec.add("reward", t0, time.perf_counter())
        return out

    reward_fn.__name__ = "even_token_fraction"

    tokenizer = common.build_tokenizer(seed=args.seed)
    model = common.build_model(tokenizer, seed=args.seed)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}

    tmp = tempfile.mkdtemp(prefix=f"trl_{args.algo}_bench_")
    policy_dir = os.path.join(tmp, "initial_policy")
    model.save_pretrained(policy_dir)
    model.config._name_or_path = policy_dir  # TRL loads the reference model from here (beta > 0)

    total_steps = args.warmup + args.iters
    dataset = Dataset.from_dict({"prompt": make_prompts(tokenizer, total_steps * args.prompts, args.prompt_len,
                                                        args.seed)})

    common_kwargs = dict(
        output_dir=os.path.join(tmp, "out"),
        per_device_train_batch_size=n_seq,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=args.group,
        num_iterations=1,
        max_steps=total_steps,
        max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=None,
        repetition_penalty=1.0,
        beta=args.beta,
        mask_truncated_completions=False,  # every completion hits the length limit; keep them all
        max_grad_norm=args.max_grad_norm,
        activation_checkpointing=False,  # TRL's _BaseConfig defaults gradient_checkpointing to True
        disable_dropout=True,
        use_vllm=False,
        log_completions=False,
        **common.plain_training_args(args),
    )
    if args.algo == "grpo":
        common_kwargs.update(loss_type=args.grpo_loss_type)
    config = Config(**common_kwargs)

    timer = StepTimer()
    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        trainer = Timed(model=model, reward_funcs=[reward_fn], args=config, train_dataset=dataset,
                        processing_class=tokenizer, callbacks=[timer])
        init_time_s = time.perf_counter() - t0

        if trainer.ref_model is None:
            raise AssertionError("TRL built no reference model (beta must be > 0)")
        ref_state = trainer.accelerator.unwrap_model(trainer.ref_model).state_dict()
        mismatch = [k for k, v in init_state.items() if k not in ref_state or not torch.equal(ref_state[k], v)]
        if mismatch:
            raise AssertionError(f"reference model differs from the initial policy: {mismatch[:5]}")
        ref_dtype = str(next(trainer.ref_model.parameters()).dtype)

        policy = trainer.accelerator.unwrap_model(trainer.model)
        original_generate = policy.generate

        def timed_generate(*a, **kw):
            t0 = time.perf_counter()
            out = original_generate(*a, **kw)
            rec.add("generate", t0, time.perf_counter())
            want = (n_seq, args.prompt_len + args.new_tokens)
            if tuple(out.shape) != want:
                raise AssertionError(f"generate returned {tuple(out.shape)}, expected {want}")
            return out

        policy.generate = timed_generate
        t0 = time.perf_counter()
        trainer.train()
        train_time_s = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)

    if len(rec.steps) != total_steps or any("end" not in s for s in rec.steps):
        raise RuntimeError(f"expected {total_steps} complete steps, saw {len(rec.steps)}")

    def dur(spans):
        return sum(s[1] - s[0] for s in spans)

    rows = []
    for i, s in enumerate(rec.steps):
        counts = {k: len(s[k]) for k in ("generate", "score", "loss", "opt", "reward")}
        if counts != {"generate": 1, "score": 1, "loss": 1, "opt": 1, "reward": 1}:
            raise AssertionError(f"iteration {i}: unexpected call counts {counts}")
        roles = sorted(e[2]["role"] for e in s["logps"])
        total = s["end"] - s["begin"]
        gen = dur(s["generate"])
        score = dur(s["score"]) - gen
        loss_t0, loss_t1 = s["loss"][0]
        opt_t0, opt_t1 = s["opt"][0]
        update = s["end"] - loss_t0
        logps = {r: sum(e[1] - e[0] for e in s["logps"] if e[2]["role"] == r) for r in set(roles)}
        rows.append({
            "total_s": total, "generate_s": gen, "score_s": score, "update_s": update,
            "other_s": total - gen - score - update,
            "ref_forward_s": logps.get("ref", 0.0),
            "old_policy_forward_s": logps.get("policy_nograd", 0.0),
            "reward_fn_s": dur(s["reward"]),
            "loss_forward_s": loss_t1 - loss_t0,
            "backward_clip_s": opt_t0 - loss_t1,
            "optimizer_step_s": opt_t1 - opt_t0,
            "logps_calls": roles,
        })
    timed = rows[args.warmup:]
    if not timed:
        raise RuntimeError("no timed iterations (--iters 0?)")
    roles = timed[0]["logps_calls"]
    keys = ["total_s", "generate_s", "score_s", "update_s", "other_s", "ref_forward_s", "old_policy_forward_s",
            "reward_fn_s", "loss_forward_s", "backward_clip_s", "optimizer_step_s"]

    if args.algo == "rloo":
        algo_settings = {
            "loss": "sequence-level PPO-clip: ratio = exp(sum_t logp - sum_t old_logp) per sequence, "
                    "-min(ratio*A, clip(ratio, 1-eps, 1+eps)*A), mean over the 64 sequences",
            "epsilon_low": trainer.epsilon_low, "epsilon_high": trainer.epsilon_high,
            "kl_placement": "reward: r_i <- r_i - beta * sum_t (old_logp_t - ref_logp_t), before the baseline",
            "kl_estimator": "k1 (log pi_old - log pi_ref per token, summed over the completion; can be negative)",
            "kl_logps_from": "old-policy forward (= current policy before the update), no_grad",
            "advantage": "leave-one-out: A_i = r_i - mean_{j != i in group} r_j (KL-penalized rewards)",
            "advantage_normalization": bool(config.normalize_advantages),
            "reward_clip_range": config.reward_clip_range,
            "old_policy_forward": True,
        }
    else:
        algo_settings = {
            "loss_type": config.loss_type,
            "loss": "token-level PPO-clip -min(ratio_t*A, clip(ratio_t, 1-eps, 1+eps)*A) + beta*kl_t, "
                    + {"dapo": "sum over tokens / number of completion tokens in the batch",
                       "grpo": "mean over tokens per sequence, then mean over sequences",
                       "bnpo": "sum over tokens / number of completion tokens in the micro-batch"}.get(
                           config.loss_type, config.loss_type),
            "epsilon_low": trainer.epsilon_low, "epsilon_high": trainer.epsilon_high,
            "importance_sampling_level": config.importance_sampling_level,
            "kl_placement": "loss (per token, added to the per-token policy loss with weight beta)",
            "kl_estimator": "k3: exp(ref_logp - logp) - (ref_logp - logp) - 1, logp with grad",
            "use_bias_correction_kl": bool(config.use_bias_correction_kl),
            "kl_bias_correction": "per-token kl multiplied by ratio_t = exp(logp - old_logp) (== 1 in value here)"
                                  if config.use_bias_correction_kl else None,
            "advantage": "group-normalized: A_i = (r_i - mean_group r) / (std_group r + 1e-4), "
                         "std with Bessel correction",
            "scale_rewards": config.scale_rewards,
            "multi_objective_aggregation": config.multi_objective_aggregation,
            "old_policy_forward": "policy_nograd" in roles,
            "old_logps_note": "TRL skips the old-policy forward when gradient_accumulation_steps % "
                              "(steps_per_generation * num_iterations) == 0 and uses logp.detach() (ratio == 1)",
            "entropy_coef": config.entropy_coef,
            "top_entropy_quantile": config.top_entropy_quantile,
        }

    settings = {
        "prompts_per_iter": args.prompts,
        "completions_per_prompt": args.group,
        "sequences_per_iter": n_seq,
        "prompt_tokens": args.prompt_len,
        "new_tokens": args.new_tokens,
        "prompt_source": "random words from the tokenizer's single-token vocabulary (8 ids each, no BOS/padding)",
        "dataset_prompts": len(dataset),
        "early_stop": "none: min_new_tokens == max_new_tokens == new_tokens (EOS suppressed); checked each iteration",
        "sampling": {"temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
                     "min_p": config.min_p, "repetition_penalty": config.repetition_penalty, "do_sample": True,
                     "use_cache": True, "backend": "transformers generate (no vLLM, no continuous batching)"},
        "reward": "mean(id % 2 == 0) over the completion ids (plain Python, completion_ids kwarg)",
        "beta": args.beta,
        **algo_settings,
        "ref_model": "built by TRL (create_model_from_path on the saved initial policy), identical initial "
                     "weights (checked), forward under torch.no_grad",
        "ref_forward": "ref" in roles,
        "logps_forward_calls_per_iter": roles,
        "fused_lm_head": "TRL add_fused_lm_head: log-probs (and entropy for the policy) computed in tiles "
                         "over completion positions only, full logits never materialized",
        "loss_forward_computes_entropy": True,
        "generation_batch_size": config.generation_batch_size,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "steps_per_generation": config.steps_per_generation,
        "num_iterations": config.num_iterations,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "optimizer_steps_per_iter": 1,
        "optimizer": f"{type(trainer.optimizer).__name__}({args.optim})",
        "lr": args.lr,
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999],
        "adam_eps": 1e-8,
        "max_grad_norm": args.max_grad_norm,
        "gradient_checkpointing": timer.checkpointing_seen,
        "dtype": str(next(model.parameters()).dtype),
        "ref_dtype": ref_dtype,
        "attn_implementation": model.config._attn_implementation,
        "mask_truncated_completions": False,
        "shuffle_dataset": config.shuffle_dataset,
        "vllm": False,
        "logging": "logging_strategy=no, save_strategy=no, eval_strategy=no, report_to=none, log_completions=False",
        "n_params": common.n_params(model),
        "threads": torch.get_num_threads(),
    }

    common.emit_iterations(trl.__version__, args.algo, args, timed, keys, init_time_s, train_time_s, settings)


if __name__ == "__main__":
    main()
