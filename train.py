"""
The main job: warm-start a small GPT on a multi-answer task, then train it with FlowRL and with
reward-maximizing baselines from the same start, evaluate each, and draw the comparison.

    python train.py                         # flowrl, flowrl_exact and grpo on make_n (CPU: minutes)
    python train.py --algo flowrl grpo --steps 800 --kl_coef 0.04
    python train.py --help

One RL step (PAPER.md §3, §6): sample prompts -> rollout.generate G answers each -> rewards ->
group-normalized rewards -> reference log-probs (a frozen copy of the warm start) -> one or more
AdamW updates over minibatches of whole groups, with importance weights against the rollout
policy -> metrics. Where we differ from the paper: a toy task and a tiny model; the same
optimizer group for trunk and policy, and the log Z head in its own group with its own lr
(GFlowNet practice, PAPER.md §4); flowrl_exact (raw reward, summed log-probs) is ours, added
because it is the form for which Proposition 1 holds (PAPER.md §5).

Outputs: out/<algo>/metrics.jsonl, out/<algo>/ckpt.pt, out/summary.json, out/compare.png.
"""

import argparse
import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict

import torch
import torch.distributed as dist

import flowrl
from model import GPT, CheckpointError, GPTConfig, Tokenizer, from_pretrained
from rewards import ALPHABET, TASKS, get_task
from rollout import enumerate_responses, from_tokens, generate, left_pad, sequence_logprobs

ALGOS = ("flowrl", "flowrl_exact", "grpo", "reinforce_pp", "ppo")
MAX_NEW_TOKENS = {"make_n": 6, "add": 5, "countdown": 16}   # per-task default response budget
PRESETS = {
    # the default: about 7 minutes on 2 CPU cores for warm start + 3 algorithms (seconds on a GPU)
    "small": dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=4, steps=400, batch_prompts=16, group_size=8,
                  warm_steps=1500, lr=3e-4),
    # a larger run for one GPU: a 6-layer, 384-wide model, more prompts per step, longer training
    "large": dict(n_layer=6, n_embd=384, n_head=6, n_kv_head=2, steps=1000, batch_prompts=64, group_size=8,
                  warm_steps=4000, lr=1e-4),
}


class UserError(Exception):
    """A user's mistake: reported as one line on stderr with exit code 2, never a traceback."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def build_parser():
    p = Parser(description=__doc__.split("\n\n")[0].strip(),
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--algo", nargs="+", default=["flowrl", "flowrl_exact", "grpo"], choices=ALGOS, help="algorithms to train, one after another")
    a("--task", default="make_n", choices=sorted(TASKS), help="the task (rewards.py)")
    a("--preset", default="small", choices=sorted(PRESETS), help="model size and run length; flags below override it")
    a("--steps", type=int, default=None, help="RL steps per algorithm (preset: small 400, large 1000)")
    a("--batch_prompts", type=int, default=None, help="prompts per RL step (preset: 16 / 64)")
    a("--group_size", type=int, default=None, help="samples per prompt, G (preset: 8)")
    a("--max_new_tokens", type=int, default=None, help="response budget (per task: make_n 6, add 5, countdown 16)")
    a("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    a("--lr", type=float, default=None, help="policy learning rate, AdamW (preset: 3e-4 / 1e-4)")
    a("--logz_lr", type=float, default=0.1, help="learning rate of the log Z head (FlowRL)")
    a("--value_lr", type=float, default=1e-3, help="learning rate of the value head (PPO)")
    a("--weight_decay", type=float, default=0.0, help="AdamW weight decay of the policy")
    a("--reward_beta", type=float, default=15.0, help="FlowRL's reward inverse temperature β (not a KL coefficient)")
    a("--kl_coef", type=float, default=0.0, help="KL-to-reference coefficient of grpo (k3 in the loss), reinforce_pp and ppo (in the reward)")
    a("--clip", default="0.8,1.2", help="FlowRL importance-weight bounds 'lo,hi', or 'none'")
    a("--clip_eps", type=float, default=0.2, help="the PPO ratio clip ε of grpo, reinforce_pp and ppo")
    a("--length_norm", action=argparse.BooleanOptionalAction, default=None,
      help="FlowRL's length-normalized log-probs (default: on for flowrl, off for flowrl_exact)")
    a("--logz", default="head", choices=["head", "table", "group"],
      help="FlowRL's log Z: the paper's MLP head, one free value per prompt (make_n only), or no learned Z: "
           "each group's own estimate mean_g(β·r + ℓ_ref − ℓ_θ), detached")
    a("--tag", default="", help="suffix of the run directory: out_dir/<algo><tag> (to keep variants apart)")
    a("--no_ref", action="store_true", help="ablation: drop the π_ref term (log π_ref := 0 in every loss and in kl_ref)")
    a("--grad_clip", type=float, default=1.0, help="gradient-norm clip; 0 turns it off")
    a("--epochs", type=int, default=1, help="passes over each rollout batch")
    a("--minibatches", type=int, default=1, help="minibatches (of whole groups) per pass")
    a("--n_layer", type=int, default=None, help="model depth (preset: 2 / 6)")
    a("--n_embd", type=int, default=None, help="model width (preset: 64 / 384)")
    a("--n_head", type=int, default=None, help="attention heads (preset: 4 / 6)")
    a("--n_kv_head", type=int, default=None, help="key/value heads (preset: 4 / 2)")
    a("--warm_steps", type=int, default=None, help="supervised warm-start steps (preset: 1500 / 4000)")
    a("--warm_noise", type=float, default=0.5, help="fraction of random (mostly wrong) answers in the warm-start data")
    a("--warm_lr", type=float, default=1e-3, help="warm-start learning rate")
    a("--eval_every", type=int, default=50, help="RL steps between evaluations")
    a("--eval_k", type=int, default=16, help="samples per eval prompt (pass@k, avg@k)")
    a("--eval_prompts", type=int, default=32, help="held-out eval prompts (make_n: all of its targets)")
    a("--log_every", type=int, default=25, help="RL steps between progress lines")
    a("--ckpt_every", type=int, default=100, help="RL steps between checkpoints (and at the end)")
    a("--seed", type=int, default=0, help="seed of the model, the prompt order and the sampler")
    a("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    a("--out_dir", default="out", help="where runs are written")
    a("--resume", action="store_true", help="continue each algorithm from out_dir/<algo>/ckpt.pt")
    a("--init_from", default=None, help="a local Hugging Face checkpoint directory (GPT-2, Qwen2/Qwen2.5, Llama) to "
      "start from instead of the warm start; its tokenizer too (instruct models get the instruct prompts)")
    a("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on CUDA (ignored on CPU)")
    a("--grad_checkpoint", action="store_true", help="activation checkpointing: less memory for one more forward")
    a("--no_plot", action="store_true", help="skip the comparison figure")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.max_new_tokens is None:
        args.max_new_tokens = MAX_NEW_TOKENS[args.task] if args.init_from is None else 256
    if args.init_from is not None and not os.path.isdir(args.init_from):
        raise UserError(f"--init_from: {args.init_from} is not a directory (a local Hugging Face checkpoint: "
                        f"config.json, model.safetensors, tokenizer files)")
    checks = [
        (args.steps >= 1, "--steps must be >= 1"),
        (args.batch_prompts >= 1, "--batch_prompts must be >= 1"),
        (args.group_size >= 2, "--group_size must be >= 2 (rewards are normalized within a group)"),
        (args.max_new_tokens >= 1, "--max_new_tokens must be >= 1"),
        (args.temperature > 0, "--temperature must be > 0 for training (rollouts are sampled)"),
        (args.lr > 0, "--lr must be > 0"),
        (args.logz_lr > 0, "--logz_lr must be > 0"),
        (args.value_lr > 0, "--value_lr must be > 0"),
        (args.warm_lr > 0, "--warm_lr must be > 0"),
        (args.weight_decay >= 0, "--weight_decay must be >= 0"),
        (args.kl_coef >= 0, "--kl_coef must be >= 0"),
        (0 < args.clip_eps < 1, "--clip_eps must be in (0, 1)"),
        (args.grad_clip >= 0, "--grad_clip must be >= 0 (0: off)"),
        (args.epochs >= 1 and args.minibatches >= 1, "--epochs and --minibatches must be >= 1"),
        (args.batch_prompts % args.minibatches == 0, "--minibatches must divide --batch_prompts"),
        (args.warm_steps >= 0, "--warm_steps must be >= 0"),
        (0 <= args.warm_noise <= 1, "--warm_noise must be in [0, 1]"),
        (args.eval_every >= 1 and args.log_every >= 1 and args.ckpt_every >= 1, "--eval_every, --log_every and --ckpt_every must be >= 1"),
        (args.eval_k >= 1 and args.eval_prompts >= 1, "--eval_k and --eval_prompts must be >= 1"),
        (min(args.n_layer, args.n_embd, args.n_head, args.n_kv_head) >= 1, "--n_layer, --n_embd, --n_head, --n_kv_head must be >= 1"),
        (args.n_embd % args.n_head == 0 and args.n_head % args.n_kv_head == 0, "--n_head must divide --n_embd and --n_kv_head must divide --n_head"),
        (args.logz != "table" or args.task == "make_n", "--logz table needs a task with a fixed prompt set: --task make_n"),
        (all(c.isalnum() or c in "_-.=" for c in args.tag), "--tag may hold letters, digits and _-.= only"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if args.clip.strip().lower() == "none":
        args.clip_bounds = None
    else:
        try:
            lo, hi = (float(x) for x in args.clip.split(","))
        except ValueError:
            raise UserError(f"--clip must be 'lo,hi' (e.g. 0.8,1.2) or 'none', got {args.clip!r}")
        if not 0 <= lo <= hi:
            raise UserError(f"--clip needs 0 <= lo <= hi, got {args.clip!r}")
        args.clip_bounds = (lo, hi)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device: unknown device {args.device!r}; use auto, cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return args


# ---------------------------------------------------------------------------------------------
# data parallel (torchrun): each rank samples its share of the prompts; gradients are averaged

def setup_distributed(args):
    """(rank, world size). Under torchrun (WORLD_SIZE > 1): one process per device, NCCL on CUDA,
    gloo on the CPU. Plain `python train.py` stays a single process with no distributed setup."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if args.batch_prompts % world:
        raise UserError(f"--batch_prompts={args.batch_prompts} must be divisible by the {world} processes")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if args.device.startswith("cuda"):
        args.device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if args.device.startswith("cuda") else "gloo")
    return rank, world


def allreduce_grads(params, world):
    """Average the gradients over the ranks. Each rank's loss is a mean over its own sequences (the
    same number on every rank), so the average of the ranks' gradients is the gradient of the
    mean over the whole batch: what one process would compute. (Token-mean losses, REINFORCE++
    and PPO, are averaged per rank, then over ranks: exact only when ranks hold equal token counts.)"""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def gather_rows(x, world):
    """Concatenate a (n, ...) tensor over the ranks, in rank order (every rank holds n rows)."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# files

def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}")


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# warm start: supervised training on the task's demonstrations

def model_config(args, tok):
    block = 64 if args.task != "countdown" else 96
    return GPTConfig(vocab_size=tok.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                     n_embd=args.n_embd, block_size=block)


def warm_start(args, task, tok, device):
    """Train the start policy by next-token prediction on (prompt, answer) demonstrations, the answer
    uniform over the correct ones or, with probability --warm_noise, a random well-formed answer.
    Saved to out_dir/warmstart.pt and reused while its settings match."""
    path = os.path.join(args.out_dir, "warmstart.pt")
    key = {"task": args.task, "seed": args.seed, "warm_steps": args.warm_steps, "warm_noise": args.warm_noise,
           "warm_lr": args.warm_lr, "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head,
           "n_kv_head": args.n_kv_head}
    cfg = model_config(args, tok)
    if os.path.exists(path):
        ck = load_checkpoint(path)
        if ck.get("key") == key:
            model = GPT(GPTConfig(**ck["model_config"])).to(device)
            model.load_state_dict(ck["model"])
            print(f"warm start: reusing {path}")
            return model
        print(f"warm start: {path} was made with other settings; training a new one")
    torch.manual_seed(args.seed)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.warm_lr, weight_decay=0.0)
    rng = random.Random(args.seed + 12345)
    t0 = time.time()
    for step in range(args.warm_steps):
        pairs = [task.demo(rng, noise=args.warm_noise) for _ in range(64)]
        prompts = [tok.encode(p) for p, _ in pairs]
        answers = [tok.encode(a) + [tok.eos_id] for _, a in pairs]
        batch = from_tokens(prompts, answers, tok.eos_id, device)
        logprobs, _ = sequence_logprobs(model, batch)                                 # (B, T)
        loss = -(logprobs.sum() / batch.mask.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = args.warm_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.warm_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        if step % 500 == 0 or step == args.warm_steps - 1:
            print(f"warm start {step:5d}/{args.warm_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    os.makedirs(args.out_dir, exist_ok=True)
    save_atomic({"model": model.state_dict(), "model_config": asdict(cfg), "key": key}, path)
    return model


# ---------------------------------------------------------------------------------------------
# evaluation

def amp(device, args):
    """bf16 autocast on CUDA (weights and optimizer stay fp32); nothing on the CPU."""
    if device.type == "cuda" and args.bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rows_per_chunk(args):
    """Rows per forward pass: a minibatch's worth (G x batch_prompts / minibatches)."""
    return args.group_size * max(1, args.batch_prompts // args.minibatches)


@torch.no_grad()
def chunked_logprobs(model, ro, temperature, rows):
    """sequence_logprobs without gradients, `rows` rows at a time: bounds the (rows, T, vocab) logits,
    which for a 150k vocabulary are what fills a GPU first."""
    parts = [sequence_logprobs(model, ro.select(slice(s, s + rows)), temperature)
             for s in range(0, ro.mask.shape[0], rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def enumerable(task, tok):
    """Exact metrics need a task whose answers can be listed, in the raw style of a character
    tokenizer (one tokenization per answer)."""
    return hasattr(task, "all_answers") and tok.alphabet is not None and task.style == "raw"


def encode_prompt(tok, problem):
    return tok.encode(tok.prompt(problem.prompt))


def pass_at_k(n, c, k):
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) (Chen et al. 2021), from n samples of which c are correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def decode_responses(tok, rollout):
    """The text of each response, up to (not including) its EOS."""
    out = []
    for row, m in zip(rollout.response.tolist(), rollout.mask.tolist()):
        ids = [t for t, keep in zip(row, m) if keep and t != tok.eos_id]
        out.append(tok.decode(ids))
    return out


@torch.no_grad()
def exact_correct_probs(model, tok, task, problems):
    """For enumerable tasks: the policy's exact probability of each correct answer (answer + EOS),
    by teacher forcing. Returns one tensor of probabilities per problem."""
    prompts, answers, owner = [], [], []
    for i, p in enumerate(problems):
        for s in task.solutions(p):
            prompts.append(encode_prompt(tok, p))
            answers.append(tok.encode(s) + [tok.eos_id])
            owner.append(i)
    batch = from_tokens(prompts, answers, tok.eos_id, next(model.parameters()).device)
    logp = sequence_logprobs(model, batch)[0].sum(-1).exp().cpu()                    # (M,)
    owner = torch.tensor(owner)
    return [logp[owner == i] for i in range(len(problems))]


@torch.no_grad()
def exact_target_metrics(model, ref, tok, task, problems, beta, max_new_tokens, min_prob=1e-6, max_frontier=1000):
    """Exact distances to the target p* ∝ π_ref·exp(β·r) with the raw 0/1 reward (PAPER.md §1), per
    prompt, averaged: KL(π‖p*) over π's enumerated responses (enumerate_responses; `pruned_mass`
    is what was left unexpanded), KL(p*‖π) (the correct answers exactly, the wrong ones lumped
    into one bucket: a lower bound on their part, which is below e^-β), and the true log Z."""
    out = {"kl_to_target": [], "kl_from_target": [], "log_z_true": [], "pruned_mass": []}
    pi_c = exact_correct_probs(model, tok, task, problems)
    ref_c = exact_correct_probs(ref, tok, task, problems)
    device = next(model.parameters()).device
    for p, pc, rc in zip(problems, pi_c, ref_c):
        prompt = encode_prompt(tok, p)
        resp, log_pi, pruned = enumerate_responses(model, prompt, eos_id=tok.eos_id, max_new_tokens=max_new_tokens,
                                                   min_prob=min_prob, max_frontier=max_frontier)
        texts = [tok.decode([t for t in y if t != tok.eos_id]) for y in resp]
        r = torch.tensor([task.reward(p, t) for t in texts], dtype=torch.float64)
        batch = from_tokens([prompt] * len(resp), [list(y) for y in resp], tok.eos_id, device)
        log_ref = sequence_logprobs(ref, batch)[0].sum(-1).double().cpu()
        log_z = flowrl.binary_log_partition(rc.double().sum(), beta)
        log_pstar_c = rc.double().log() + beta - log_z
        P, Q = (1 - rc.double().sum()) / log_z.exp(), (1 - pc.double().sum()).clamp(min=1e-300)
        rev = (log_pstar_c.exp() * (log_pstar_c - pc.double().log())).sum() + P * (P / Q).log()
        out["kl_to_target"].append(flowrl.kl_to_target(log_pi, log_ref, r, beta, log_z).item())
        out["kl_from_target"].append(rev.item())
        out["log_z_true"].append(log_z.item())
        out["pruned_mass"].append(pruned)
    return {k: sum(v) / len(v) for k, v in out.items()}, out["log_z_true"]


def evaluate(model, tok, task, problems, args, step, ref=None, learned_log_z=None):
    """avg@k, pass@k, distinct correct answers among k samples, the effective number of correct
    answers exp(H(π restricted to correct answers)) (exact where the task's answers can be
    enumerated, else from the samples), and the mean token entropy of the samples."""
    with amp(next(model.parameters()).device, args):
        return _evaluate(model, tok, task, problems, args, step, ref, learned_log_z)


def _evaluate(model, tok, task, problems, args, step, ref, learned_log_z):
    k = args.eval_k
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed * 1000003 + step)
    prompts = [encode_prompt(tok, p) for p in problems]
    ro = generate(model, prompts, num_samples=k, max_new_tokens=args.max_new_tokens, temperature=1.0,
                  eos_id=tok.eos_id, generator=gen)
    with torch.no_grad():
        _, ent = chunked_logprobs(model, ro, 1.0, rows_per_chunk(args))
    texts = decode_responses(tok, ro)
    ks = sorted({1, min(4, k), k})
    acc, passes, distinct, eff, ans_h = [], {j: [] for j in ks}, [], [], []
    for i, p in enumerate(problems):
        scores = [task.score(p, t) for t in texts[i * k:(i + 1) * k]]
        c = sum(s["correct"] for s in scores)
        acc.append(c / k)
        for j in ks:
            passes[j].append(pass_at_k(k, c, j))
        correct = Counter(s["answer"] for s in scores if s["correct"])
        distinct.append(len(correct))
        if not enumerable(task, tok):           # not enumerable: the empirical distribution
            n = sum(correct.values())
            h = -sum(v / n * math.log(v / n) for v in correct.values()) if n else 0.0
            ans_h.append(h)
            eff.append(math.exp(h) if n else 0.0)
    out = {"kind": "eval", "step": step, f"avg@{k}": sum(acc) / len(acc), "accuracy": sum(acc) / len(acc)}
    for j in ks:
        out[f"pass@{j}"] = sum(passes[j]) / len(passes[j])
    out["pass@k"], out["k"] = out[f"pass@{k}"], k
    out[f"distinct_correct@{k}"] = out["distinct_correct"] = sum(distinct) / len(distinct)
    if enumerable(task, tok):                   # exact, from the policy's probabilities
        exact_acc, ans_h, eff = [], [], []
        for probs in exact_correct_probs(model, tok, task, problems):
            m = probs.sum().item()
            q = probs / probs.sum()
            h = -(q * q.clamp(min=1e-30).log()).sum().item()
            exact_acc.append(m)
            ans_h.append(h)
            eff.append(math.exp(h))
        out["correct_mass"] = sum(exact_acc) / len(exact_acc)
    out["effective_correct"] = sum(eff) / len(eff)
    out["answer_entropy"] = sum(ans_h) / len(ans_h)
    out["entropy"] = (ent.sum() / ro.mask.sum()).item()
    if enumerable(task, tok) and ref is not None:   # exact distances to p* (Figure 1)
        exact, true_z = exact_target_metrics(model, ref, tok, task, problems, args.reward_beta, args.max_new_tokens)
        out.update(exact)
        if learned_log_z is not None:
            lz = learned_log_z(problems).double().cpu()
            out["log_z/learned"] = lz.mean().item()
            out["log_z_abs_err"] = (lz - torch.tensor(true_z)).abs().mean().item()
    return out


def eval_problems(args, task):
    if args.task == "make_n":   # the whole (small) prompt set
        return [task.problem({"n": n}) for n in task.targets]
    rng = random.Random(10 ** 6 + args.seed)   # a held-out stream: training prompts use another seed
    return [task.sample(rng) for _ in range(args.eval_prompts)]


# ---------------------------------------------------------------------------------------------
# RL

def algo_settings(args, algo):
    """The FlowRL form each name stands for (PAPER.md §3, §5)."""
    if algo == "flowrl":        # the paper's practical form
        return {"length_norm": True if args.length_norm is None else args.length_norm, "group_norm": True}
    if algo == "flowrl_exact":  # raw reward, summed log-probs: Proposition 1's form
        return {"length_norm": False if args.length_norm is None else args.length_norm, "group_norm": False}
    return {}


def prompt_key(task, problem):
    """make_n prompts index the log Z table by target."""
    return task.targets.index(problem.data["n"])


def train_algo(args, algo, warm, tok, task, device, rank=0, world=1):
    run_dir = os.path.join(args.out_dir, algo + args.tag)
    is_main = rank == 0                                       # rank 0 alone writes files
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    settings = algo_settings(args, algo)

    policy = copy.deepcopy(warm).train()
    ref = copy.deepcopy(warm).eval().requires_grad_(False)     # π_ref: the frozen warm start
    if device.type == "cuda" and args.bf16:
        ref = ref.to(torch.bfloat16)                           # it is only ever run under bf16 autocast
    torch.manual_seed(args.seed)
    head = None
    if algo.startswith("flowrl") and args.logz != "group":
        head = (flowrl.LogZHead(warm.config.n_embd) if args.logz == "head"
                else flowrl.LogZTable(len(task.targets))).to(device)
        head_lr = args.logz_lr
    elif algo == "ppo":
        head, head_lr = flowrl.ValueHead(warm.config.n_embd).to(device), args.value_lr
    groups = [{"params": list(policy.parameters()), "lr": args.lr, "weight_decay": args.weight_decay}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": head_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    params = [p for g in groups for p in g["params"]]        # what the gradient clip and all-reduce see

    prompt_rng = random.Random(args.seed)                    # the same prompt order for every algorithm
    gen = torch.Generator(device=device).manual_seed(args.seed + rank)
    start, skipped = 0, 0
    if args.resume:
        ck = load_checkpoint(ckpt_path)
        if ck["algo"] != algo:
            raise UserError(f"--resume: {ckpt_path} holds a {ck['algo']} run, not {algo}")
        policy.load_state_dict(ck["model"])
        if head is not None:
            head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optimizer"])
        prompt_rng.setstate((ck["rng"]["python"][0], tuple(ck["rng"]["python"][1]), ck["rng"]["python"][2]))
        if rank == 0:                                        # other ranks: a fresh stream (not bit-exact)
            gen.set_state(ck["rng"]["sampler"])
        else:
            gen.manual_seed(args.seed + rank + 7919 * ck["step"])
        torch.set_rng_state(ck["rng"]["torch"])
        start, skipped = ck["step"], ck["skipped"]
        keep = []                                            # drop records written after the checkpoint
        if is_main and os.path.exists(metrics_path):
            with open(metrics_path) as f:
                keep = [line for line in f if json.loads(line)["step"] <= start]
        if is_main:
            with open(metrics_path, "w") as f:
                f.writelines(keep)
        print(f"{algo}: resumed from {ckpt_path} at step {start}")
    elif is_main:
        open(metrics_path, "w").close()

    def checkpoint(step):
        if not is_main:
            return
        save_atomic({"algo": algo, "step": step, "skipped": skipped, "model": policy.state_dict(),
                     "head": head.state_dict() if head is not None else None, "optimizer": opt.state_dict(),
                     "rng": {"python": [list(x) if isinstance(x, tuple) else x for x in prompt_rng.getstate()],
                             "sampler": gen.get_state(), "torch": torch.get_rng_state()},
                     "config": {k: v for k, v in vars(args).items() if k != "clip_bounds"},
                     "model_config": asdict(policy.config)}, ckpt_path)

    problems_eval = eval_problems(args, task)

    @torch.no_grad()
    def learned_log_z(problems):
        """The learned log Z_φ(x) of the eval prompts (dropout off)."""
        if args.logz == "table":
            return head(torch.tensor([prompt_key(task, p) for p in problems], device=device))
        ids, valid = left_pad([encode_prompt(tok, p) for p in problems], tok.eos_id, device)
        was = head.training
        head.eval()
        _, h = policy(ids, valid=valid, return_hidden=True)
        z = head(h, valid)
        head.train(was)
        return z

    log_z_fn = learned_log_z if algo.startswith("flowrl") and head is not None else None
    if start == 0 and is_main:
        rec = evaluate(policy, tok, task, problems_eval, args, 0, ref, log_z_fn)
        append_jsonl(metrics_path, {"algo": algo, **rec})
    P = args.batch_prompts // world                           # this rank's prompts
    G = args.group_size
    t_run = time.time()
    for step in range(start, args.steps):
        t0 = time.time()
        with amp(device, args):                               # bf16 autocast on CUDA
            problems = [task.sample(prompt_rng) for _ in range(args.batch_prompts)][rank * P:(rank + 1) * P]
            ro = generate(policy, [encode_prompt(tok, p) for p in problems], num_samples=G,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, eos_id=tok.eos_id,
                          generator=gen)
            texts = decode_responses(tok, ro)
            scores = [task.score(problems[i // G], t) for i, t in enumerate(texts)]
            rewards = torch.tensor([s["reward"] for s in scores], device=device)          # (N,)
            with torch.no_grad():
                ref_logprobs, _ = chunked_logprobs(ref, ro, args.temperature, rows_per_chunk(args))  # (N, T)
            if args.no_ref:
                ref_logprobs = torch.zeros_like(ref_logprobs)
            r_hat = flowrl.group_normalize(rewards, G)                                     # (N,)

            # per-algorithm targets computed once over the whole batch
            if algo == "flowrl_exact" and step == 0 and head is not None:   # log Z starts at log E_ref[exp(β r)] (EXPERIMENTS.md)
                everyone = gather_rows(rewards, world)
                init = flowrl.log_partition_init(everyone, len(everyone), args.reward_beta).item()  # pooled over the batch
                with torch.no_grad():
                    (head.out.bias if args.logz == "head" else head.table).fill_(init)
            if algo == "reinforce_pp":
                adv_tok = flowrl.reinforce_pp_advantages(rewards, ro.logprobs, ref_logprobs, ro.mask, args.kl_coef)
            if algo == "ppo":
                with torch.no_grad():
                    _, _, h = sequence_logprobs(policy, ro, temperature=args.temperature, return_hidden=True)
                    old_values = head(h[:, ro.prompt.shape[1] - 1:-1])                     # (N, T)
                    kl_reward = -args.kl_coef * (ro.logprobs - ref_logprobs) * ro.mask    # KL in the reward
                    adv_tok, returns = flowrl.gae(rewards, old_values, ro.mask, token_rewards=kl_reward)
            keys = torch.tensor([prompt_key(task, problems[i // G]) for i in range(len(texts))], device=device) \
                if args.logz == "table" and head is not None and algo.startswith("flowrl") else None

            stats_acc, ent_first, grad_norms, step_skipped = {}, None, [], False
            n_mb = args.minibatches
            for epoch in range(args.epochs):
                order = torch.randperm(P, generator=torch.Generator().manual_seed(step * 31 + epoch)) \
                    if n_mb > 1 else torch.arange(P)
                for chunk in order.chunk(n_mb):
                    rows = (chunk[:, None] * G + torch.arange(G)).reshape(-1).to(device)   # whole groups
                    mb = ro.select(rows)
                    logprobs, entropy, h = sequence_logprobs(policy, mb, temperature=args.temperature, return_hidden=True)
                    if ent_first is None:
                        ent_first = (entropy.sum() / mb.mask.sum()).item()
                    Tp = mb.prompt.shape[1]
                    if algo.startswith("flowrl"):
                        r_in = r_hat[rows] if settings["group_norm"] else rewards[rows]
                        if args.logz == "group":   # no learned Z: the group's minimizer of Σ δ², detached
                            pool = flowrl.masked_mean if settings["length_norm"] else flowrl.masked_sum
                            m = mb.mask.to(logprobs.dtype)
                            est = args.reward_beta * r_in + pool(ref_logprobs[rows], m) - pool(logprobs.detach(), m)
                            log_z = est.view(-1, G).mean(1).repeat_interleave(G)
                        elif keys is None:
                            log_z = head(h[:, :Tp], mb.prompt_mask)
                        else:
                            log_z = head(keys[rows])
                        loss, st = flowrl.flowrl_loss(logprobs, mb.logprobs, ref_logprobs[rows], mb.mask, r_in, log_z,
                                                      beta=args.reward_beta, clip=args.clip_bounds,
                                                      length_norm=settings["length_norm"])
                    elif algo == "grpo":
                        loss, st = flowrl.grpo_loss(logprobs, mb.logprobs, ref_logprobs[rows], mb.mask, r_hat[rows],
                                                    clip_eps=args.clip_eps, kl_coef=args.kl_coef)
                    elif algo == "reinforce_pp":
                        loss, st = flowrl.reinforce_pp_loss(logprobs, mb.logprobs, mb.mask, adv_tok[rows], clip_eps=args.clip_eps)
                    else:  # ppo
                        values = head(h[:, Tp - 1:-1])
                        loss, st = flowrl.ppo_loss(logprobs, mb.logprobs, mb.mask, adv_tok[rows], values, returns[rows],
                                                   clip_eps=args.clip_eps)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if world > 1:
                        allreduce_grads(params, world)
                    gn = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
                    if not (torch.isfinite(loss) and torch.isfinite(gn)):
                        opt.zero_grad(set_to_none=True)                 # never written into the weights
                        step_skipped = True
                        continue
                    opt.step()
                    grad_norms.append(gn.item())
                    for k, v in st.items():
                        stats_acc.setdefault(k, []).append(v)
        skipped += step_skipped
        dt = time.time() - t0

        # metrics (names as TRL / veRL users know them)
        with torch.no_grad():
            lengths = ro.mask.sum(-1).float()
            kl_ref = (flowrl.k3_kl(ro.logprobs, ref_logprobs) * ro.mask).sum() / ro.mask.sum()
        rg = rewards.view(-1, G)
        distinct = [len({s["answer"] for s in scores[i * G:(i + 1) * G] if s["correct"]}) for i in range(len(problems))]
        rec = {"kind": "train", "step": step + 1, "algo": algo,
               "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
               "accuracy": sum(s["correct"] for s in scores) / len(scores),
               "format": sum(s["format"] for s in scores) / len(scores),
               "frac_reward_zero_std": (rg.std(1) == 0).float().mean().item(),
               "entropy": ent_first, "kl_ref": kl_ref.item(),
               "completions/mean_length": lengths.mean().item(),
               "completions/clipped_ratio": (~ro.finished).float().mean().item(),
               "distinct_correct": sum(distinct) / len(distinct),
               "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
               "lr": args.lr, "skipped_steps": skipped,
               "time/step_s": dt, "tokens_per_s": ro.mask.sum().item() / dt}
        mean = lambda k: sum(stats_acc[k]) / len(stats_acc[k]) if stats_acc.get(k) else float("nan")
        if algo.startswith("flowrl"):
            rec.update({"log_z/mean": mean("log_z"), "tb_residual/mean": mean("tb_residual"),
                        "is_weight/mean": mean("is_weight")})
        rec["clip_frac"] = mean("clip_frac")
        if algo == "ppo":
            rec["value_loss"] = mean("value_loss")
        if world > 1:   # every rank's share: means over ranks (equal shares), the batch's reward std, summed speed
            everyone = gather_rows(rewards, world)
            keys = [k for k, v in rec.items() if isinstance(v, float) and k not in ("lr", "time/step_s")]
            vals = torch.tensor([rec[k] for k in keys], dtype=torch.float64, device=device)
            dist.all_reduce(vals)
            rec.update({k: v / world for k, v in zip(keys, vals.tolist())})
            rec["tokens_per_s"] *= world
            rec["reward/mean"], rec["reward/std"] = everyone.mean().item(), everyone.std().item()
        if is_main:
            append_jsonl(metrics_path, rec)

        s = step + 1
        if s % args.log_every == 0 or s == args.steps:
            eta = (time.time() - t_run) / (s - start) * (args.steps - s)
            lz = f" logZ {rec['log_z/mean']:7.3f}" if "log_z/mean" in rec else ""
            print(f"{algo:12s} step {s:5d}/{args.steps} reward {rec['reward/mean']:.3f} acc {rec['accuracy']:.3f} "
                  f"entropy {rec['entropy']:.3f} distinct {rec['distinct_correct']:.2f}{lz} "
                  f"{dt:.3f}s/step eta {eta:.0f}s", flush=True)
        if is_main and (s % args.eval_every == 0 or s == args.steps):
            append_jsonl(metrics_path, {"algo": algo, **evaluate(policy, tok, task, problems_eval, args, s, ref, log_z_fn)})
        if s % args.ckpt_every == 0 or s == args.steps:
            checkpoint(s)
    return run_dir


def summarize(run_dir, algo):
    """Final eval metrics, and the same at the first eval with accuracy >= 0.9 (matched accuracy) or None."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["kind"] == "eval"]
    keys = ("step", "accuracy", "pass@1", "pass@k", "k", "distinct_correct", "effective_correct", "entropy",
            "answer_entropy", "correct_mass")
    pick = lambda r: {k: r[k] for k in keys if k in r}
    matched = next((r for r in evals if r["accuracy"] >= 0.9), None)
    return {**pick(evals[-1]), "matched_accuracy": pick(matched) if matched else None}


def main(argv=None):
    args = parse_args(argv)
    rank, world = setup_distributed(args)
    device = torch.device(args.device)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")      # one voice: rank 0 prints, writes metrics, checkpoints, figures
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    if args.init_from is None:
        tok = Tokenizer.for_chars(ALPHABET)
        task = get_task(args.task)
        if rank != 0:
            dist.barrier()                      # rank 0 makes (or checks) the warm start; the others load it
        warm = warm_start(args, task, tok, device)
        if world > 1 and rank == 0:
            dist.barrier()
    else:                           # a Hugging Face checkpoint is the start (and the reference)
        try:
            warm = from_pretrained(args.init_from).to(device)
            tok = Tokenizer.from_pretrained(args.init_from)
        except CheckpointError as e:
            raise UserError(f"--init_from: {e}")
        task = get_task(args.task, style="instruct" if tok.chat else "raw")
        print(f"loaded {args.init_from}: {warm.config.n_layer} layers, {warm.config.n_embd} wide, "
              f"prompts in the {task.style} style{' (ChatML)' if tok.chat else ''}")
    warm.grad_checkpointing = args.grad_checkpoint
    print(f"model: {warm.num_params() / 1e6:.2f}M parameters on {device}")
    summary = {}
    for algo in args.algo:
        run_dir = train_algo(args, algo, warm, tok, task, device, rank, world)
        if world > 1:
            dist.barrier()
        if rank == 0:
            summary[algo + args.tag] = summarize(run_dir, algo)
    if world > 1:
        dist.destroy_process_group()
        if rank != 0:
            return None
    summary_path = os.path.join(args.out_dir, "summary.json")
    old = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            old = json.load(f)
    with open(summary_path + ".tmp", "w") as f:
        json.dump({**old, **summary}, f, indent=2)
    os.replace(summary_path + ".tmp", summary_path)

    k = args.eval_k
    print(f"\nfinal eval ({len(eval_problems(args, task))} prompts x {k} samples; grad clip {args.grad_clip}):")
    print(f"{'algo':14s} {'accuracy':>9s} {'pass@1':>7s} {'pass@' + str(k):>8s} {'distinct':>9s} {'effective':>10s} {'entropy':>8s}")
    for algo, s in summary.items():
        print(f"{algo:14s} {s['accuracy']:9.3f} {s['pass@1']:7.3f} {s['pass@k']:8.3f} {s['distinct_correct']:9.2f} "
              f"{s['effective_correct']:10.2f} {s['entropy']:8.3f}")
    if not args.no_plot:
        import plot
        fig = os.path.join(args.out_dir, "compare.png")
        plot.plot_runs([os.path.join(args.out_dir, a + args.tag) for a in args.algo], fig)
        print(f"figure: {fig}")
    print(f"total wall time {time.time() - t0:.0f}s")
    return summary


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
