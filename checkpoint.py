"""
One algorithm's run: its models and optimizer (new_run), checkpoints written atomically (never half a
file) and resume from them, the metrics log (metrics.jsonl, one JSON record a line, mirrored to W&B
with --wandb) and summary.json.
"""

import copy
import functools
import hashlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field, fields

import torch

import flowrl
from config import UserError
from precision import bf16_twin, grads_to_master, refresh_twin
from parallel import data_parallel, load_full_optimizer_state, load_full_state, shard
from rewards import Problem
from rollout import Rollout


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


def file_identity(path):
    """What a start checkpoint (--init_from: a GGUF file or a Hugging Face directory) is, wherever it lies:
    its name, its size in bytes and the sha256 of its contents (a directory: of each file's relative path
    and contents, in sorted order). A cold start and a resumed run are matched to their --init_from by
    this, so that a new virtual environment or machine, which installs the same file elsewhere, reuses them."""
    path = os.path.abspath(path)
    files = [path] if os.path.isfile(path) else sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)
    stamp = tuple((f, os.path.getsize(f), os.path.getmtime(f)) for f in files)
    return dict(_identity(path, stamp))


@functools.lru_cache(maxsize=8)
def _identity(path, stamp):
    """file_identity's work, once per path and set of file sizes and times (a checkpoint is saved many times)."""
    h = hashlib.sha256()
    for f, _, _ in stamp:
        if f != path:                           # a directory's file: its name counts too
            h.update(os.path.relpath(f, path).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return (("name", os.path.basename(path)), ("bytes", sum(n for _, n, _ in stamp)), ("sha256", h.hexdigest()))


def strict_json(x):
    """x with every NaN or infinity (an undefined metric, e.g. a mean over no such group) as None, so that
    the line is strict JSON (null), which jq and every JSON reader accept; bare NaN is not JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")


@dataclass
class Sampled:
    """One step's rollouts as sampled (train.sample_groups), before prepare: what --stale holds back for K
    steps, saved with the checkpoint."""
    problems: list             # the kept prompts (all of them without --drop_flat_groups)
    ro: Rollout                # N = prompts x G rows, prompt-major (None: no group kept)
    scores: list               # task.score per row
    drawn: int                 # prompts sampled for it, over every refill round
    flat: int                  # of those, the groups whose G rewards were all equal
    first_rewards: torch.Tensor = None   # (P x G,) the first round's rewards, every group (log Z's start)
    old: tuple = None          # (old log-probs, entropy, PPO values) of the policy that sampled (--stale)
    first_accuracy: float = None   # accuracy over every group of the first round, before any is dropped


def sampled_state(s):
    """A Sampled as plain tensors, lists and numbers (what torch.load(weights_only=True) reads back)."""
    return {f.name: getattr(s, f.name) for f in fields(s)} | {
        "problems": [(p.prompt, p.data) for p in s.problems],
        "ro": None if s.ro is None else {f.name: getattr(s.ro, f.name) for f in fields(s.ro)}}


def sampled_from_state(d):
    return Sampled(**(d | {"problems": [Problem(p, data) for p, data in d["problems"]],
                           "ro": None if d["ro"] is None else Rollout(**d["ro"]),
                           "old": None if d["old"] is None else tuple(d["old"])}))


@dataclass
class Run:
    """One algorithm's training state: what new_run builds, save_checkpoint writes and resume restores."""
    algo: str
    policy: torch.nn.Module
    ref: torch.nn.Module       # π_ref: the frozen start
    head: torch.nn.Module      # log Z head or table (FlowRL), value head (PPO), or None
    opt: torch.optim.Optimizer
    params: list               # every trained tensor: what the gradient clip sees
    prompt_rng: random.Random  # the same prompt order for every algorithm
    gen: torch.Generator       # the sampler's randomness (one stream per process)
    skipped: int = 0           # steps with a non-finite loss or gradient, never applied
    world: int = 1             # processes (torchrun); the training forwards go through DDP when > 1
    master: torch.nn.Module = None         # CPU bf16: the fp32 weights AdamW steps (policy is their bf16 twin)
    train_policy: torch.nn.Module = None   # policy, or its DistributedDataParallel wrapper
    train_head: torch.nn.Module = None     # head, or its DistributedDataParallel wrapper
    pending: list = field(default_factory=list)   # --stale K: the K batches sampled, not yet trained on
    last_sample: object = None             # the batch the last step trained on, as sampled (its metrics)

    @property
    def weights(self):
        """The policy's weights of record, the ones AdamW steps, checkpoints hold and export writes: the fp32
        master where the policy computes in a bf16 twin, else the policy itself."""
        return self.master if self.master is not None else self.policy

    def after_backward(self):
        """CPU bf16: the twin's gradients onto the fp32 master, which the clip and AdamW then see."""
        if self.master is not None:
            grads_to_master(self.policy, self.master)

    def after_step(self):
        """CPU bf16: the twin takes the master's new weights, cast to bf16 once per optimizer step."""
        if self.master is not None:
            refresh_twin(self.master, self.policy)


def new_run(args, algo, warm, task, device, rank, world=1):
    """The policy and π_ref (copies of the start), the algorithm's head, AdamW (the head in its own group
    with its own lr, docs/method.md M4.4), the prompt and sampler streams; sharded (--fsdp) or wrapped
    in DistributedDataParallel under torchrun."""
    policy = copy.deepcopy(warm).train()
    ref = copy.deepcopy(warm).eval().requires_grad_(False)
    master = None
    if device.type == "cpu" and args.bf16:      # the fp32 master and its bf16 twin (precision.bf16_twin); π_ref in bf16
        master, policy, ref = policy, bf16_twin(policy).train(), ref.to(torch.bfloat16)
    elif device.type == "cuda" and args.bf16 and args.init_from is not None:
        ref = ref.to(torch.bfloat16)    # run under bf16 autocast only (the toy tasks keep fp32 for the exact metrics)
    torch.manual_seed(args.seed)
    head, head_lr = None, None
    if algo in flowrl.FORMS and args.logz in ("head", "table"):
        head = (flowrl.LogZHead(warm.config.n_embd) if args.logz == "head"
                else flowrl.LogZTable(len(task.targets))).to(device)
        head_lr = args.logz_lr
    elif algo == "ppo":
        head, head_lr = flowrl.ValueHead(warm.config.n_embd).to(device), args.value_lr
    if args.fsdp:                               # sharded over the processes before the optimizer sees them
        policy, ref = shard(policy, device, args.bf16), shard(ref, device, args.bf16)
        head = shard(head, device, args.bf16) if head is not None else None
    groups = [{"params": list((master or policy).parameters()), "lr": args.lr, "weight_decay": args.weight_decay}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": head_lr, "weight_decay": 0.0})
    # CPU bf16: torch's fused AdamW, one kernel over every tensor (9x faster than the per-parameter loop on
    # SmolLM2's 135M parameters: docs/performance.md); elsewhere the default loop, which the toy results used
    opt = torch.optim.AdamW(groups, fused=True) if master is not None else torch.optim.AdamW(groups)
    run = Run(algo, policy, ref, head, opt, [p for g in groups for p in g["params"]],
              random.Random(args.seed), torch.Generator(device=device).manual_seed(args.seed + rank), world=world,
              master=master, train_policy=policy, train_head=head)
    if world > 1 and not args.fsdp:             # gradients averaged over the processes (parallel.py)
        run.train_policy = data_parallel(policy, device)
        run.train_head = data_parallel(head, device) if head is not None else None
    return run


# the flags that define an experiment: a resumed run must keep them (--steps may grow, logging may change)
EXPERIMENT_FLAGS = ("task", "heldout", "seed", "start_seed", "preset", "batch_prompts", "group_size",
                    "max_new_tokens", "temperature", "lr",
                    "logz_lr", "value_lr", "weight_decay", "reward_beta", "kl_coef", "clip", "clip_eps",
                    "clip_eps_high", "gspo_clip", "gflowrl_beta", "gap_clip", "weight_cap", "gflowrl_z",
                    "gflowrl_ratio", "weight", "prior", "length_norm", "logz", "drop_flat_groups",
                    "refill_rounds", "stale", "no_ref", "grad_clip", "epochs", "minibatches", "n_layer", "n_embd",
                    "n_head", "n_kv_head", "warm_steps", "warm_noise", "warm_skew", "warm_lr", "init_from", "eval_k",
                    "eval_prompts", "bf16")


PARSED = ("clip_bounds", "gspo_bounds", "gap_bounds")      # flags parsed into tuples: the flags themselves are kept


def save_checkpoint(path, run, step, args, samplers, states=None):
    """states: (model, head, optimizer) state dicts already gathered in full (FSDP); None: run's own."""
    state = lambda m: m.state_dict() if m is not None else None
    model, head, opt = states or (run.weights.state_dict(), state(run.head), run.opt.state_dict())
    python_rng = [list(x) if isinstance(x, tuple) else x for x in run.prompt_rng.getstate()]
    cuda_rng = torch.cuda.get_rng_state(run.gen.device) if run.gen.device.type == "cuda" else None
    save_atomic({"algo": run.algo, "step": step, "skipped": run.skipped, "model": model, "head": head,
                 "optimizer": opt,
                 "rng": {"python": python_rng, "samplers": samplers, "torch": torch.get_rng_state(),
                         "cuda": cuda_rng},
                 "pending": [sampled_state(s) for s in run.pending],       # --stale: batches not yet trained on
                 "config": {k: v for k, v in vars(args).items() if k not in PARSED},
                 "init_from_id": file_identity(args.init_from) if args.init_from else None,
                 "model_config": asdict(run.weights.config)}, path)


def resume(run, path, args, rank):
    """Restore a run from its checkpoint; returns the step it had reached. Refused, with the flag named,
    when the checkpoint was made with other experiment flags (EXPERIMENT_FLAGS)."""
    ck = load_checkpoint(path)
    if ck["algo"] != run.algo:
        raise UserError(f"--resume: {path} holds a {ck['algo']} run, not {run.algo}")
    for k in EXPERIMENT_FLAGS:
        if k == "init_from" and ck["config"].get(k) and args.init_from and ck.get("init_from_id") is not None:
            if ck["init_from_id"] != file_identity(args.init_from):   # the same file may lie elsewhere now
                raise UserError(f"--resume: --init_from {args.init_from} is not the checkpoint {path} started "
                                f"from ({ck['init_from_id']['name']}, {ck['init_from_id']['bytes']} bytes, another "
                                f"sha256); resume from that file, or start a new run in another --out_dir")
            continue
        if k in ck["config"] and ck["config"][k] != getattr(args, k):
            raise UserError(f"--resume: --{k} was {ck['config'][k]!r} in {path}, now {getattr(args, k)!r}; "
                            f"resume with the same --{k}, or start a new run in another --out_dir")
    samplers = ck["rng"]["samplers"]                           # every process's own stream
    if len(samplers) != run.world:
        raise UserError(f"--resume: {path} was written by {len(samplers)} processes, this run has {run.world}")
    load_full_state(run.weights, ck["model"])                  # full states (into shards under --fsdp)
    run.after_step()                                           # CPU bf16: the twin from the restored weights
    if run.head is not None:
        load_full_state(run.head, ck["head"])
    load_full_optimizer_state(run.opt, ck["optimizer"])
    version, state, gauss = ck["rng"]["python"]
    run.prompt_rng.setstate((version, tuple(state), gauss))
    run.gen.set_state(samplers[rank])
    torch.set_rng_state(ck["rng"]["torch"])
    if ck["rng"].get("cuda") is not None and run.gen.device.type == "cuda":
        torch.cuda.set_rng_state(ck["rng"]["cuda"], run.gen.device)
    run.skipped = ck["skipped"]
    run.pending = [sampled_from_state(d) for d in ck.get("pending", [])]
    return ck["step"]


def truncate_log(path, step):
    """Drop the records a crashed run wrote after its last checkpoint (all of them for a new run, step 0),
    and the paper-setting eval that ended a shorter run at that checkpoint (a resumed run evaluates in
    that setting at its own end, as a run never stopped would)."""
    keep = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [(line, json.loads(line)) for line in f]
        keep = [line for line, r in rows if 0 < step and (r["step"] < step or r["step"] == step
                                                          and r.get("kind") != "eval_paper")]
    with open(path, "w") as f:
        f.writelines(keep)


def write_summary(args, summary):
    path = os.path.join(args.out_dir, "summary.json")
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    with open(path + ".tmp", "w") as f:
        json.dump(strict_json({**old, **summary}), f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)


def open_wandb(args, name):
    """A Weights & Biases run mirroring one run's records (--wandb PROJECT), or None without --wandb.
    Offline with WANDB_MODE=offline, as anywhere wandb runs."""
    if not args.wandb:
        return None
    import wandb
    config = {k: v for k, v in vars(args).items() if k not in PARSED}
    return wandb.init(project=args.wandb, name=name, group=os.path.basename(os.path.abspath(args.out_dir)),
                      config=config, dir=args.out_dir, reinit="create_new")


def log_record(path, record, wandb_run=None):
    """Append a metrics record to path (metrics.jsonl) and mirror its numbers to W&B: train records
    under their own names, eval records under eval/."""
    append_jsonl(path, record)
    if wandb_run is not None:
        prefix = "eval/" if record["kind"] == "eval" else ""
        wandb_run.log({prefix + k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                      step=record["step"])
