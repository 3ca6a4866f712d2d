"""
The real model (docs/performance.md, "A real model on the CPU"): SmolLM2-135M-Instruct's rollout against
transformers' generate, and where one RL step of train.py's time goes (rl_step_profile, also a part of
--gpu_suite). `python -m benchmarks.bench --smollm2` runs it.
"""

import contextlib
import io
import os
import statistics
import tempfile
import time

import torch

from benchmarks.common import peak_mb, timed
from model import autocast
from precision import bf16_twin, cpu_description
from rollout import chunked_logprobs, generate


def rl_step_profile(args, path, steps=4, argv=None, what=None):
    """Where one real-scale RL step's time goes: train.py's own step (collect, then update) on the
    --init_from checkpoint at path, with each part timed around train's own functions: the rollout
    (rollout.generate), the reference forward (chunked_logprobs in prepare), π_old's forward for the
    minibatches after the first (rollout_policy_pass), the update (forward, backward, AdamW) and an
    evaluation; per step, so that a slow first or last step shows. Prints a table; returns the per-step
    times ({part: seconds} per step)."""
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
    with contextlib.redirect_stdout(io.StringIO()):
        warm, tok, task = starts.load_start(a, 0, 1, device)
    run = train.new_run(a, "flowrl", warm, task, device, 0, 1)
    times = []
    originals = {name: getattr(train, name) for name in ("generate", "chunked_logprobs", "rollout_policy_pass")}

    def part(name, fn):
        def timed_fn(*xs, **kw):
            t, out = timed(lambda: fn(*xs, **kw), device)
            times[-1][name] = times[-1].get(name, 0.0) + t
            return out
        return timed_fn
    train.generate, train.chunked_logprobs = part("rollout", train.generate), part("reference", train.chunked_logprobs)
    train.rollout_policy_pass = part("old", train.rollout_policy_pass)
    try:
        problems = train.eval_problems(task, a.eval_prompts, a.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(steps):
            times.append({"old": 0.0})
            t0 = time.perf_counter()
            with autocast(device, a.bf16):
                b = train.collect(a, run, task, tok, step, 0, 1)
                times[-1]["update"], _ = timed(lambda: train.update(a, run, b, step, 1), device)
            times[-1]["step"] = time.perf_counter() - t0
            times[-1]["tokens"] = int(b.ro.mask.sum())
            times[-1]["positions"] = b.ro.response.numel() + len(b.problems) * b.ro.prompt.shape[1]   # N·T + P·Tp
        t_eval, _ = timed(lambda: train.run_eval(a, run, tok, task, problems, steps, device, out_dir, None,
                                                 write=False), device)
    finally:
        for name, fn in originals.items():
            setattr(train, name, fn)
    precision = "bf16 weights, fp32 master" if a.bf16 and device.type == "cpu" else ("bf16" if a.bf16 else "fp32")
    what = (what or f"train.py --init_from (flowrl, countdown, {P} prompts x 8 samples x up to {T} new tokens") + \
        f", {precision})"
    print(f"\nOne RL step of {what}, per step; an evaluation ({len(problems)} prompts x {a.eval_k} samples) took "
          f"{t_eval:.2f} s; peak memory {peak_mb(device):,.0f} MB\n")
    print("| step | rollout (s) | reference (s) | π_old, minibatches after the first (s) | update (s) | "
          "rest of the step (s) | step (s) | tokens generated | generated tokens/s (rollout) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, t in enumerate(times):
        t["rest"] = t["step"] - t["rollout"] - t["reference"] - t["old"] - t["update"]
        print(f"| {i + 1} | {t['rollout']:.3f} | {t['reference']:.3f} | {t['old']:.3f} | {t['update']:.3f} | "
              f"{t['rest']:.3f} | {t['step']:.3f} | {t['tokens']:,} | {t['tokens'] / t['rollout']:.1f} |")
    return times


def bench_smollm2(args):
    """The real model (python train.py --preset smollm2, on make_n as the preset ran it when this benchmark was
    written: its 9 prompts, at most 48 new tokens): SmolLM2-135M-Instruct from its GGUF file, cold-started
    (--run_dir's coldstart.pt where it was made, else made there). First the numerics of bf16 against
    fp32 on the cold start's own responses (bf16_numerics); then, in fp32 and in bf16 (our bf16 twin, transformers
    loaded in bf16), our rollout against transformers' generate on the same weights (saved as a Hugging Face
    directory), the same chat prompts (the 9 make_n eval prompts x --samples), sampling (T = 1, no top-k or top-p)
    and stopping (its end-of-turn token, at most --new_tokens), each credited with the tokens it generated (up to
    and including the stop token), medians of --reps interleaved repetitions; then where one RL step's time goes,
    as train.py --preset smollm2 runs it, in fp32 and in bf16; last, the two side by side."""
    import config
    import starts
    import train
    from hf import save_pretrained
    device = torch.device(args.device)
    argv = ["--preset", "smollm2", "--task", "make_n", "--heldout", "0", "--max_new_tokens", "48", "--algo", "flowrl",
            "--out_dir", args.run_dir, "--device", args.device]
    a = config.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        warm, tok, task = starts.load_start(a, 0, 1, device)
    warm.eval()
    problems = train.eval_problems(task, a.eval_prompts, a.seed)
    prompts = [tok.encode_prompt(p.prompt) for p in problems]
    print(f"SmolLM2-135M-Instruct, the cold start of {a.out_dir}; {cpu_description()}, torch {torch.__version__}, "
          f"{args.device}; run alone on the machine")
    bf16_numerics(warm, tok, prompts, args, device)
    tps = {}
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(warm, d, "LlamaForCausalLM", tok.stop_ids)
        import transformers
        for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            theirs = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype).to(device).eval()
            ours = warm if dtype == torch.float32 else bf16_twin(warm).eval()
            tps[name] = rollout_vs_transformers(ours, theirs, tok, prompts, args, device, name)
            del theirs, ours
    profiles = {}
    for name in ("fp32", "bf16"):
        profiles[name] = rl_step_profile(
            args, args.run_dir, steps=args.reps,
            argv=argv + ["--no-paper_eval", "--bf16" if name == "bf16" else "--no-bf16"],
            what=f"train.py --preset smollm2 (flowrl, make_n, {a.batch_prompts} prompts x {a.group_size} samples x up "
                 f"to {a.max_new_tokens} new tokens, {a.minibatches} minibatches")
    print(f"\nfp32 against bf16, medians over the {args.reps} steps above (the rollout's rate: generated tokens per "
          f"second, so that the two runs' different lengths do not count)\n")
    print("| part | fp32 (s) | bf16 (s) | fp32 / bf16 |")
    print("|---|---|---|---|")
    med = lambda name, part: statistics.median(t[part] for t in profiles[name])
    for part in ("reference", "old", "update", "rest", "step"):
        label = {"old": "π_old (minibatches after the first)", "rest": "rest of the step"}.get(part, part)
        f, b = med("fp32", part), med("bf16", part)
        print(f"| {label} | {f:.2f} | {b:.2f} | {f / b:.2f}x |" if b > 0 else f"| {label} | {f:.2f} | {b:.2f} | |")
    rate = lambda name: statistics.median(t["tokens"] / t["rollout"] for t in profiles[name])
    f, b = rate("fp32"), rate("bf16")
    print(f"| rollout (generated tokens/s) | {f:.1f} | {b:.1f} | {b / f:.2f}x |")
    print(f"\nour rollout / transformers' generate, generated tokens per second: fp32 {tps['fp32']:.2f}x, "
          f"bf16 {tps['bf16']:.2f}x")
    matmul_bound(warm, profiles["bf16"], a.minibatches, a.batch_prompts * a.group_size // a.minibatches)


def matmul_bound(model, steps, minibatches, rows):
    """What the bf16 step would take if it did nothing but its matmuls at this CPU's bf16 rate: each step's
    matmul FLOPs (2 per weight of every linear layer, the tied LM head included, per position computed: the
    reference once, π_old for minibatches − 1 of them, the update's forward and backward 3 times, the rollout
    once per generated token and prompt position), over the rate measured at the training forward's shape
    (a minibatch's rows x 45 positions, 576 -> 1536) and at the LM head's. Prints a table."""
    W = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    rate = {}
    for name, (M, K, N) in {"block (576 -> 1536)": (rows * 45, 576, 1536), "LM head (576 -> 49,152)": (rows * 45, 576,
                                                                                                     49152)}.items():
        for dtype in (torch.float32, torch.bfloat16):
            x, w = torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype)
            torch.nn.functional.linear(x, w)
            t, _ = timed(lambda: [torch.nn.functional.linear(x, w) for _ in range(10)], torch.device("cpu"))
            rate[name, dtype] = 2 * M * K * N * 10 / t
    print(f"\nThe matmul rate here ({rows} rows x 45 positions), GFLOP/s:\n")
    print("| shape | fp32 | bf16 | bf16 / fp32 |")
    print("|---|---|---|---|")
    for name in ("block (576 -> 1536)", "LM head (576 -> 49,152)"):
        f, b = rate[name, torch.float32] / 1e9, rate[name, torch.bfloat16] / 1e9
        print(f"| {name} | {f:.0f} | {b:.0f} | {b / f:.2f}x |")
    r = rate["block (576 -> 1536)", torch.bfloat16]
    pos = statistics.median(t["positions"] for t in steps)
    gen = statistics.median(t["tokens"] for t in steps)
    flops = 2 * W * (pos + pos * (minibatches - 1) / minibatches + 3 * pos + gen)
    step = statistics.median(t["step"] for t in steps)
    print(f"\nThe bf16 step's matmuls: {W / 1e6:.1f}M weights x 2 FLOPs x the positions computed (median {pos:,.0f} "
          f"per pass, {gen:,.0f} generated) = {flops / 1e12:.2f} TFLOP, {flops / r:.1f} s at the bf16 block rate; "
          f"the bf16 step took {step:.1f} s (median)")


@torch.no_grad()
def bf16_numerics(warm, tok, prompts, args, device):
    """bf16 against fp32 on the cold start's own responses (the eval prompts x --samples, sampled by the fp32 model
    at T = 1): per-token log-prob difference of the bf16 twin from the fp32 model (mean and max over the response
    tokens), the length-normalized sequence log-prob ℓ = (1/|y|)·log π(y|x) (FlowRL's ℓ_θ and ℓ_ref), and the
    token-mean k3 KL estimate between the policy and π_ref at step 0: both bf16 (train.py's CPU bf16 path) and
    an fp32 policy against a bf16 π_ref. Prints a table."""
    import flowrl
    ro = generate(warm, prompts, num_samples=args.samples, max_new_tokens=args.new_tokens, eos_id=tok.eos_id,
                  stop_ids=tok.stop_ids, generator=torch.Generator(device=device).manual_seed(0))
    twin = bf16_twin(warm).eval()
    rows = len(prompts)
    lp32, _ = chunked_logprobs(warm, ro, 1.0, rows, with_entropy=False)                     # (N, T)
    lp16, _ = chunked_logprobs(twin, ro, 1.0, rows, with_entropy=False)
    m, n = ro.mask, ro.mask.sum(-1)                                                         # (N, T), (N,)
    d = (lp16 - lp32).abs()[m]
    ell = lambda lp: lp.sum(-1) / n                                                         # (N,)
    k3 = lambda pol, ref: ((flowrl.k3_kl(pol, ref) * m).sum() / m.sum()).item()
    print(f"\nbf16 against fp32 on the cold start's responses ({ro.mask.shape[0]} responses of {len(prompts)} "
          f"prompts, {int(m.sum()):,} tokens, sampled in fp32 at T = 1)\n")
    print("| quantity | mean | max |")
    print("|---|---|---|")
    print(f"| per-token log-prob, bf16 − fp32 (abs) | {d.mean():.4f} | {d.max():.4f} |")
    print(f"| ℓ = (1/|y|)·log π(y), bf16 − fp32 (abs) | {(ell(lp16) - ell(lp32)).abs().mean():.4f} | "
          f"{(ell(lp16) - ell(lp32)).abs().max():.4f} |")
    print(f"| k3 KL(π ‖ π_ref) at step 0, token mean: bf16 policy, bf16 π_ref | {k3(lp16, lp16):.2e} | |")
    print(f"| the same, fp32 policy, bf16 π_ref | {k3(lp32, lp16):.2e} | |")


def rollout_vs_transformers(ours, theirs, tok, prompts, args, device, name):
    """Our generate against transformers' on the same weights and prompts, medians of --reps interleaved
    repetitions after one warm-up each. Prints a table; returns our generated tokens per second over theirs."""
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
        for who, fn in (("ours", run_ours), ("transformers", run_theirs)):
            rows[who].append(timed(fn, device))
    print(f"\nRollout, {name} on both sides: {len(prompts)} chat prompts x {args.samples} samples, T = 1, up to "
          f"{args.new_tokens} new tokens, stopping at its end-of-turn token; medians of {args.reps} interleaved "
          f"repetitions\n")
    print("| sampler | tokens generated (median) | time (s, median) | generated tokens/s (median) |")
    print("|---|---|---|---|")
    tps = {}
    for who, r in rows.items():
        tps[who] = statistics.median(n / t for t, n in r)
        print(f"| {who} ({name}) | {statistics.median(n for _, n in r):,.0f} | "
              f"{statistics.median(t for t, _ in r):.2f} | {tps[who]:.1f} |")
    return tps["ours"] / tps["transformers"]
