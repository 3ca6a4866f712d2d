"""
The start policy of an RL run (docs/method.md M4, "the reference model"): the warm start of a small GPT
trained from scratch on the task's demonstrations, or a pretrained checkpoint (a Hugging Face directory
or a GGUF file) with its supervised cold start; and the trained policy's export as a Hugging Face
directory. train.py calls load_start before its first algorithm and export after each.

    load_start(args, rank, world, device) -> (policy, tokenizer, task)
"""

import math
import os
import random
import time
from dataclasses import asdict

import torch

from checkpoint import file_identity, load_checkpoint, save_atomic
from config import UserError
from gguf_io import ARCHITECTURES as GGUF_ARCHITECTURES
from gguf_io import is_gguf, load_gguf, save_tokenizer
from hf import architecture, from_pretrained, save_pretrained
from model import GPT, GPTConfig, autocast
from precision import bf16_twin, grads_to_master, refresh_twin
from rewards import ALPHABET, get_task
from rollout import from_tokens, sequence_logprobs
from tokenizer import CheckpointError, Tokenizer


def supervised(model, tok, draw, steps, lr, batch, warmup, device, name, cpu_bf16=False):
    """Next-token prediction on the responses of `batch` (prompt text, response text) pairs a step, drawn
    by draw(); the prompt in the model's format (tok.encode_prompt), the response ended by eos; AdamW
    with linear warm-up and cosine decay, gradient norm clipped at 1. cpu_bf16: the forward and backward
    in a bf16 twin of model, which stays the fp32 master AdamW steps (precision.bf16_twin, train.py --bf16)."""
    twin = bf16_twin(model).train() if cpu_bf16 else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True if cpu_bf16 else None)
    t0 = time.time()
    for step in range(steps):
        pairs = [draw() for _ in range(batch)]
        batch_t = from_tokens([tok.encode_prompt(p) for p, _ in pairs],
                              [tok.encode(a) + [tok.eos_id] for _, a in pairs], tok.eos_id, device)
        logprobs, _ = sequence_logprobs(twin, batch_t, with_entropy=False)            # (B, T)
        loss = -(logprobs.sum() / batch_t.mask.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cpu_bf16:
            grads_to_master(twin, model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        if cpu_bf16:
            refresh_twin(model, twin)
        if step % max(1, steps // 4) == 0 or step == steps - 1:
            print(f"{name} {step:5d}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    return model


def start_key(args, names):
    """What a saved start was made with: these flags, its seed (--start_seed) and, where prompts are held out,
    the held-out share (the start's demonstrations come from the training split). A start is reused while
    its key matches."""
    return {**{k: getattr(args, k) for k in names}, "seed": args.start_seed} | (
        {"heldout": args.heldout} if args.heldout else {})


def saved_start(path, key, args, what):
    """The start checkpoint at path if it was made with these settings (key), else None (a new one is made).
    Refused under --resume: the runs being resumed trained from the saved start, which is also their
    π_ref, so a new one would change their reference halfway."""
    if not os.path.exists(path):
        return None
    ck = load_checkpoint(path)
    if ck.get("key") == key:
        print(f"{what}: reusing {path}")
        return ck
    if args.resume:
        old = ck.get("key") or {}
        differ = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
        raise UserError(f"--resume: {path} was made with other settings ({', '.join(differ)}) and the runs "
                        f"being resumed started from it; resume with the flags it was made with, or start anew "
                        f"in another --out_dir")
    print(f"{what}: {path} was made with other settings; training a new one")
    return None


def warm_start(args, task, tok, device):
    """Train the start policy by next-token prediction on (prompt, answer) demonstrations, the answer
    over the correct ones (uniform, or skewed by --warm_skew) or, with probability --warm_noise, a random
    well-formed answer.
    Saved to out_dir/warmstart.pt and reused while its settings match."""
    path = os.path.join(args.out_dir, "warmstart.pt")
    key = start_key(args, ("task", "warm_steps", "warm_noise", "warm_skew", "warm_lr", "n_layer", "n_embd", "n_head",
                           "n_kv_head"))
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                    n_embd=args.n_embd, block_size=96 if args.task.startswith("countdown") else 64)
    ck = saved_start(path, key, args, "warm start")
    if ck is not None:
        model = GPT(GPTConfig(**ck["model_config"])).to(device)
        model.load_state_dict(ck["model"])
        return model
    torch.manual_seed(args.start_seed)
    model = GPT(cfg).to(device)
    rng = random.Random(args.start_seed + 12345)
    draw = lambda: task.demo(rng, noise=args.warm_noise, skew=args.warm_skew)
    supervised(model, tok, draw, args.warm_steps, args.warm_lr, 64, 100, device, "warm start")
    os.makedirs(args.out_dir, exist_ok=True)
    save_atomic({"model": model.state_dict(), "model_config": asdict(cfg), "key": key}, path)
    return model


COLD_BATCH = 16     # demonstrations per cold-start step


def cold_start(args, task, tok, model, device):
    """The cold start of a pretrained checkpoint (R1-style): --warm_steps of supervised training on worked
    demonstrations in its own chat format (a short worked line in one of several phrasings, then the
    tagged answer; with probability --warm_noise a random answer), so that it answers in the task's
    format, with responses of varied length, neither always right nor always wrong.
    Saved to out_dir/coldstart.pt and reused while its settings and the checkpoint file match."""
    path = os.path.join(args.out_dir, "coldstart.pt")
    key = {"init_from": file_identity(args.init_from),         # its contents, not where it lies
           **start_key(args, ("task", "warm_steps", "warm_noise", "warm_lr"))}
    cpu_bf16 = device.type == "cpu" and args.bf16
    if cpu_bf16:                        # made in bf16 (the twin), so not the fp32 cold start of the same settings
        key["precision"] = "bf16"
    ck = saved_start(path, key, args, "cold start")
    if ck is not None:
        model.load_state_dict(ck["model"])
        return model
    torch.manual_seed(args.start_seed)
    rng = random.Random(args.start_seed + 12345)
    draw = lambda: task.worked_demo(rng, noise=args.warm_noise)
    model.train()
    with autocast(device, args.bf16):
        supervised(model, tok, draw, args.warm_steps, args.warm_lr, COLD_BATCH, max(1, args.warm_steps // 8), device,
                   "cold start", cpu_bf16)
    model.eval()
    os.makedirs(args.out_dir, exist_ok=True)
    save_atomic({"model": model.state_dict(), "key": key}, path)
    return model


def export(args, policy, tok, path):
    """The trained policy as a Hugging Face directory: the start checkpoint's architecture and tokenizer
    files (a GGUF start: its tokenizer written out by gguf_io.save_tokenizer); a from-scratch GPT as a Llama."""
    if args.init_from and is_gguf(args.init_from):
        arch = GGUF_ARCHITECTURES[tok.gguf["arch"]]
        save_pretrained(policy, path, arch, tok.stop_ids, then=lambda tmp: save_tokenizer(tok, tmp, arch))
        return
    arch = architecture(args.init_from) if args.init_from else "LlamaForCausalLM"
    save_pretrained(policy, path, arch, tok.stop_ids, args.init_from)


def load_start(args, rank, world, device):
    """The start policy, its tokenizer and the task: the warm start, or a Hugging Face checkpoint or GGUF
    file (then its cold start where --warm_steps asks for one)."""
    if args.init_from is None:
        tok, task = Tokenizer.for_chars(ALPHABET), get_task(args.task)
        task.heldout = args.heldout
        if rank != 0:
            torch.distributed.barrier()          # rank 0 makes (or checks) the warm start; the others load it
        warm = warm_start(args, task, tok, device)
        if world > 1 and rank == 0:
            torch.distributed.barrier()
        return warm, tok, task
    try:
        if is_gguf(args.init_from):
            warm, tok = load_gguf(args.init_from)
        else:
            warm, tok = from_pretrained(args.init_from), Tokenizer.from_pretrained(args.init_from)
    except CheckpointError as e:
        raise UserError(f"--init_from: {e}")
    warm = warm.to(device)
    task = get_task(args.task, style="instruct" if tok.chat else "raw")
    task.heldout = args.heldout
    print(f"loaded {args.init_from}: {warm.config.n_layer} layers, {warm.config.n_embd} wide, "
          f"prompts in the {task.style} style{' (its chat template)' if tok.chat else ''}")
    if args.warm_steps > 0:
        if rank != 0:
            torch.distributed.barrier()
        warm = cold_start(args, task, tok, warm, device)
        if world > 1 and rank == 0:
            torch.distributed.barrier()
    return warm, tok, task
