"""
The real model (docs/performance.md, "A real model on the CPU"): SmolLM2-135M-Instruct's rollout against
transformers' generate, and where one RL step of train.py's time goes (rl_step_profile, also a part of
--gpu_suite). `python bench.py --smollm2` runs it.
"""

import contextlib
import io
import os
import statistics
import tempfile
import time

import torch

from bench import peak_mb, timed
from model import autocast
from rollout import generate


def rl_step_profile(args, path, steps=4, argv=None, what=None):
    """Where one real-scale RL step's time goes: train.py's own step (collect, then update) on the
    --init_from checkpoint at path, with each part timed around train's own functions: the rollout
    (rollout.generate), the reference forward (chunked_logprobs in prepare), the update (forward,
    backward, AdamW) and an evaluation; per step, so that a slow first or last step shows. Prints a table."""
    import config
    import starts
    import train
    device = torch.device(args.device)
    P, T = (2, 8) if args.tiny else (8, 256)
    out_dir = os.path.join(path, "profile_run")               # inside the suite's temporary checkpoint folder
    a = config.parse_args(argv or [
        "--init_from", path, "--task", "countdown", "--algo", "flowrl", "--batch_prompts", str(P), "--group_size", "8",
        "--max_new_tokens", str(T), "--lr", "1e-6", "--logz_lr", "1e-4", "--eval_prompts", str(P), "--eval_k", "4",
        "--device", args.device, "--out_dir", out_dir, "--bf16" if args.dtype == "bf16" else "--no-bf16"])
    P, T = a.batch_prompts, a.max_new_tokens
    warm, tok, task = starts.load_start(a, 0, 1, device)
    run = train.new_run(a, "flowrl", warm, task, device, 0, 1)
    times, originals = [], {name: getattr(train, name) for name in ("generate", "chunked_logprobs")}

    def part(name, fn):
        def timed_fn(*xs, **kw):
            t, out = timed(lambda: fn(*xs, **kw), device)
            times[-1][name] = times[-1].get(name, 0.0) + t
            return out
        return timed_fn
    train.generate, train.chunked_logprobs = part("rollout", train.generate), part("reference", train.chunked_logprobs)
    try:
        problems = train.eval_problems(task, a.eval_prompts, a.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(steps):
            times.append({})
            t0 = time.perf_counter()
            with autocast(device, a.bf16):
                b = train.collect(a, run, task, tok, step, 0, 1)
                times[-1]["update"], _ = timed(lambda: train.update(a, run, b, step, 1), device)
            times[-1]["step"] = time.perf_counter() - t0
            times[-1]["tokens"] = int(b.ro.mask.sum())
        t_eval, _ = timed(lambda: train.run_eval(a, run, tok, task, problems, steps, device, out_dir, None,
                                                 write=False), device)
    finally:
        for name, fn in originals.items():
            setattr(train, name, fn)
    what = what or (f"train.py --init_from (flowrl, countdown, {P} prompts x 8 samples x up to {T} new tokens, "
                    f"{args.dtype})")
    print(f"\nOne RL step of {what}, per step; an evaluation ({len(problems)} prompts x {a.eval_k} samples) took "
          f"{t_eval:.2f} s; peak memory {peak_mb(device):,.0f} MB\n")
    print("| step | rollout (s) | reference (s) | update (s) | rest of the step (s) | step (s) | tokens generated | "
          "generated tokens/s (rollout) |")
    print("|---|---|---|---|---|---|---|---|")
    for i, t in enumerate(times):
        rest = t["step"] - t["rollout"] - t["reference"] - t["update"]
        print(f"| {i + 1} | {t['rollout']:.3f} | {t['reference']:.3f} | {t['update']:.3f} | {rest:.3f} | "
              f"{t['step']:.3f} | {t['tokens']:,} | {t['tokens'] / t['rollout']:.1f} |")


def bench_smollm2(args):
    """The real model (python train.py --preset smollm2): SmolLM2-135M-Instruct from its GGUF file, cold-started
    (out_smollm2/coldstart.pt where the experiment made it, else made here). Our rollout against transformers'
    generate on the same weights (saved as a Hugging Face directory), the same chat prompts (the 9 make_n eval
    prompts x --samples), sampling (T = 1, no top-k or top-p) and stopping (its end-of-turn token, at most
    --new_tokens), each credited with the tokens it generated (up to and including the stop token), medians of
    --reps interleaved repetitions; then where one RL step's time goes, as train.py --preset smollm2 runs it."""
    import config
    import starts
    import train
    from hf import save_pretrained
    device = torch.device(args.device)
    argv = ["--preset", "smollm2", "--algo", "flowrl", "--out_dir", args.run_dir, "--device", args.device]
    a = config.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        warm, tok, task = starts.load_start(a, 0, 1, device)
    problems = train.eval_problems(task, a.eval_prompts, a.seed)
    prompts = [tok.encode_prompt(p.prompt) for p in problems]
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(warm, d, "LlamaForCausalLM", tok.stop_ids)
        import transformers
        theirs = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(device).eval()
    ours = warm.eval()
    L = max(map(len, prompts))
    ids = torch.tensor([[tok.eos_id] * (L - len(p)) + p for p in prompts], device=device)      # left-padded
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    stops = set(tok.stop_ids)

    def run_ours():
        r = generate(ours, prompts, num_samples=args.samples, max_new_tokens=args.new_tokens, eos_id=tok.eos_id,
                     stop_ids=tok.stop_ids, generator=gen)
        return int(r.mask.sum())

    def run_theirs():
        with torch.inference_mode():
            out = theirs.generate(ids, attention_mask=attn, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                  num_return_sequences=args.samples, max_new_tokens=args.new_tokens,
                                  eos_token_id=list(tok.stop_ids), pad_token_id=tok.eos_id)
        n = 0
        for row in out[:, L:].tolist():            # tokens up to and including the first stop token
            n += next((i + 1 for i, x in enumerate(row) if x in stops), len(row))
        return n

    run_ours(), run_theirs()                                                  # warm-up
    rows = {"ours": [], "transformers": []}
    for _ in range(args.reps):                                                # interleaved
        for name, fn in (("ours", run_ours), ("transformers", run_theirs)):
            t, n = timed(fn, device)
            rows[name].append((t, n))
    print(f"\nSmolLM2-135M-Instruct (cold start of {a.out_dir}), {len(prompts)} chat prompts x {args.samples} samples, "
          f"T = 1, up to {args.new_tokens} new tokens, stopping at its end-of-turn token, fp32, {args.device}, "
          f"{torch.get_num_threads()} threads; medians of {args.reps} interleaved repetitions\n")
    print("| sampler | tokens generated (median) | time (s, median) | generated tokens/s (median) |")
    print("|---|---|---|---|")
    tps = {}
    for name, r in rows.items():
        tps[name] = statistics.median(n / t for t, n in r)
        print(f"| {name} | {statistics.median(n for _, n in r):,.0f} | {statistics.median(t for t, _ in r):.2f} | "
              f"{tps[name]:.1f} |")
    print(f"\nours / transformers, generated tokens per second: {tps['ours'] / tps['transformers']:.2f}x")
    rl_step_profile(args, args.run_dir, steps=args.reps, argv=argv + ["--no-paper_eval"],
                    what=f"train.py --preset smollm2 (flowrl, make_n, {a.batch_prompts} prompts x {a.group_size} "
                         f"samples x up to {a.max_new_tokens} new tokens, {a.minibatches} minibatches, fp32)")
