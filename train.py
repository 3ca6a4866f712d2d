"""
The main job: warm-start a small GPT on a multi-answer task (starts.py), then train it with FlowRL and
with reward-maximizing baselines from the same start, evaluate each, and draw the comparison.

    python train.py                         # flowrl, flowrl_exact, grpo_kl, grpo on make_n (CUDA: preset large)
    python train.py --algo flowrl grpo --steps 800 --kl_coef 0.04
    python train.py --preset smollm2        # SmolLM2-135M-Instruct (GGUF): cold start, then flowrl, grpo, grpo_kl
    python train.py --help

One RL step (docs/method.md M4, M7) reads as named steps:
    collect      prompts -> rollout.generate G answers each -> rewards, then
    prepare      π_old's and π_ref's log-probs, group-normalized rewards r̂, and what one algorithm
                 needs once per batch (log Z's start, REINFORCE++'s and PPO's advantages)
    update       epochs x minibatches of whole groups, gradient clip, the non-finite skip; each
                 minibatch's loss from
    algo_loss    the one place where the algorithms differ: a short branch each, calling flowrl.py
    train_record the metrics record (names as TRL / veRL users know them)
Where we differ from the paper: a toy task and a tiny model; the log Z head in its own optimizer
group with its own lr (GFlowNet practice, docs/method.md M4.4); flowrl_exact (raw reward, summed
log-probs) is ours, the form Proposition 1 is stated for (docs/method.md M6).

Outputs: out/<algo>/{metrics.jsonl, samples.jsonl, ckpt.pt, hf/}, out/summary.json, out/timing.json,
out/compare.png; a warm start out/warmstart.pt, or a checkpoint's cold start out/coldstart.pt.
"""

import copy
import gc
import json
import os
import sys
import time
from dataclasses import dataclass

import torch

import flowrl
from checkpoint import (Sampled, append_jsonl, log_record, new_run, open_wandb, resume, save_checkpoint, truncate_log,
                        write_summary)
from config import UserError, drops_flat_groups, parse_args, runs
from evaluate import decode_responses, enumerable, eval_problems, evaluate, final_table, summarize
from model import GPT, autocast
from parallel import (all_sum, full_states, gather_objects, gather_rows, gathered,
                      setup_distributed)
from precision import cpu_description
from records import dynamic_record, ratio_spread, train_record
from rollout import Rollout, chunked_logprobs, concat_rollouts, generate, left_pad, sequence_logprobs
from starts import export, load_start

# ---------------------------------------------------------------------------------------------
# one RL step: collect -> algo_loss (per minibatch, inside update) -> update -> train_record

@dataclass
class Batch:
    problems: list
    ro: Rollout                # N = prompts x G rows, prompt-major
    scores: list               # task.score per row: reward, correct, format, answer
    rewards: torch.Tensor      # (N,) raw rewards r
    r_hat: torch.Tensor        # (N,) group-normalized rewards r̂ (docs/method.md M4.1)
    ref_logprobs: torch.Tensor  # (N, T) under π_ref (zeros with --no_ref)
    old_logprobs: torch.Tensor  # (N, T) under π_old, the policy before this step's updates (None: update sets it)
    entropy: torch.Tensor      # (N, T) token entropy of π_old (a metric; None: update sets it)
    old_from_update: bool      # the first minibatch's π_old (and entropy) is the first update's own forward
    adv: torch.Tensor = None   # (N, T) per-token advantages (reinforce_pp, ppo)
    returns: torch.Tensor = None  # (N, T) value targets (ppo)
    keys: torch.Tensor = None  # (N,) prompt keys of the log Z table (--logz table)


def prompt_key(task, problem):
    """make_n prompts index the log Z table by target."""
    return task.targets.index(problem.data["n"])


def minibatches(args, n_prompts, step, epoch, device):
    """The rows of each minibatch of one pass: --minibatches groups of whole prompts (all G samples),
    in a random prompt order from the second minibatch count on."""
    G = args.group_size
    order = (torch.randperm(n_prompts, generator=torch.Generator().manual_seed(step * 31 + epoch))
             if args.minibatches > 1 else torch.arange(n_prompts))
    return [(chunk[:, None] * G + torch.arange(G)).reshape(-1).to(device) for chunk in order.chunk(args.minibatches)]


@torch.no_grad()
def rollout_policy_pass(args, run, ro, row_sets):
    """π_old as the training forward computes it (docs/method.md M4.3): the log-probs the importance
    weights divide by, recomputed without gradients before any update, minibatch by minibatch as the
    first epoch will run them, so that on-policy w = 1 exactly (the sampler's cached decode differs
    in rounding, in bf16 by far more). Also the token entropy (a metric) and PPO's old values, on the
    rows of row_sets (zeros elsewhere). Needed for the minibatches after the first where a batch gets
    more than one update, and for every row where a target needs π_old before the update (REINFORCE++'s
    KL reward, PPO's values); the first update's own forward is π_old for its rows."""
    old, entropy = torch.zeros_like(ro.logprobs), torch.zeros_like(ro.logprobs)          # (N, T)
    values = torch.zeros_like(ro.logprobs) if run.algo == "ppo" else None
    for rows in row_sets:
        mb = ro.select(rows)
        old[rows], entropy[rows], h = sequence_logprobs(run.policy, mb, args.temperature, return_hidden=True)
        if values is not None:
            values[rows] = run.head(h[:, mb.prompt.shape[1] - 1:-1])
    return old, entropy, values


def sample_groups(args, run, task, tok, rank, world):
    """This rank's share of the step's prompts, G answers each, scored. With --drop_flat_groups (DAPO's
    dynamic sampling, docs/method.md M7): the groups whose G rewards are all equal (r̂ = 0) are dropped
    and a new batch of prompts is sampled, up to --refill_rounds more times, until --batch_prompts groups
    are kept; kept groups beyond a full batch are dropped, and the batch stays short (even empty) when
    the rounds run out."""
    P, G = args.batch_prompts // world, args.group_size
    parts, problems, scores, drawn, flat, first = [], [], [], 0, 0, None
    drop = drops_flat_groups(args, run.algo)
    for _ in range(1 + (args.refill_rounds if drop else 0)):
        batch = [task.sample(run.prompt_rng) for _ in range(args.batch_prompts)][rank * P:(rank + 1) * P]
        with gathered(run.policy):              # FSDP: parameters gathered once for the whole rollout
            ro = generate(run.policy, [tok.encode_prompt(p.prompt) for p in batch], num_samples=G,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, eos_id=tok.eos_id,
                          stop_ids=tok.stop_ids, generator=run.gen, compile=args.compile)
        sc = [task.score(batch[i // G], t) for i, t in enumerate(decode_responses(tok, ro))]
        drawn += P
        r = torch.tensor([x["reward"] for x in sc])                                         # (P x G,)
        if not drop:
            return Sampled(batch, ro, sc, drawn, 0, r)
        if first is None:
            first, first_acc = r, sum(x["correct"] for x in sc) / len(sc)
        is_flat = flowrl.equal_reward_rows(r, G)[::G]                                       # (P,)
        flat += int(is_flat.sum())
        keep = [i for i in range(P) if not is_flat[i]][:P - len(problems)]
        if keep:
            rows = (torch.tensor(keep)[:, None] * G + torch.arange(G)).reshape(-1)            # (kept x G,)
            parts.append(ro.select(rows.to(ro.mask.device)))
            problems += [batch[i] for i in keep]
            scores += [sc[j] for j in rows.tolist()]
        if len(problems) == P:
            break
    return Sampled(problems, concat_rollouts(parts) if parts else None, scores, drawn, flat, first,
                   first_accuracy=first_acc)


def collect(args, run, task, tok, step, rank, world):
    """Sample this rank's share of the step's prompts, G answers each, score them, then prepare. With
    --stale K the batch trained on is the one sampled K steps earlier (π_old: the policy that sampled it,
    its log-probs taken then); the first K steps train on batches the start policy sampled before step 1.
    Returns None when --drop_flat_groups kept no group (the step makes no update)."""
    fresh = lambda: sample_groups(args, run, task, tok, rank, world)
    if args.stale:
        while len(run.pending) < args.stale:                # before the first step: the start policy's batches
            run.pending.append(behaviour_pass(args, run, fresh(), step + len(run.pending)))
        run.pending.append(behaviour_pass(args, run, fresh(), step + args.stale))
        s = run.pending.pop(0)
    else:
        s = fresh()
    run.last_sample = s
    if not s.problems:
        return None
    return prepare(args, run, task, s.problems, s.ro, s.scores, step, world, s.old, s.first_rewards)


def behaviour_pass(args, run, s, train_step):
    """--stale: π_old's log-probs (and entropy, PPO values) taken now, from the policy that sampled s,
    which trains at train_step."""
    if s.problems:
        rows = minibatches(args, len(s.problems), train_step, 0, s.ro.mask.device)
        s.old = rollout_policy_pass(args, run, s.ro, rows)
    return s


def prepare(args, run, task, problems, ro, scores, step, world, behaviour=None, init_rewards=None):
    """What the losses need once per batch (collect's second half): π_old's and π_ref's log-probs,
    r̂, and each algorithm's own targets; statistics that span the batch span every process's share.
    behaviour: π_old's (log-probs, entropy, values) when taken at sampling time (--stale); init_rewards:
    the rewards log Z starts from (every group sampled, before --drop_flat_groups; None: rewards)."""
    P, G = len(problems), args.group_size
    rewards = torch.tensor([s["reward"] for s in scores], device=ro.mask.device)          # (N,)
    old = entropy = old_values = None           # one on-policy update: update() takes π_old from its own forward
    from_update = behaviour is None
    sets = minibatches(args, P, step, 0, ro.mask.device)                                  # the first epoch's
    if behaviour is not None:
        old, entropy, old_values = behaviour
    elif run.algo in ("reinforce_pp", "ppo"):   # their targets need every row's π_old before the update
        old, entropy, old_values = rollout_policy_pass(args, run, ro, sets)
        from_update = False
    elif args.epochs > 1 or args.minibatches > 1:   # the later minibatches' π_old, taken before any update
        old, entropy, old_values = rollout_policy_pass(args, run, ro, sets[1:])
    ref_logprobs, _ = chunked_logprobs(run.ref, ro, args.temperature, rows_per_chunk(args, world),
                                       with_entropy=False)                                        # (N, T)
    if args.no_ref:
        ref_logprobs = torch.zeros_like(ref_logprobs)
    b = Batch(problems, ro, scores, rewards, flowrl.group_normalize(rewards, G), ref_logprobs, old, entropy,
              from_update)
    if run.algo in flowrl.FORMS and flowrl.FORMS[run.algo]["init_log_z"] and step == 0 and run.head is not None:
        everyone = gather_rows(rewards if init_rewards is None else init_rewards.to(rewards.device), world)
        # log Z starts at log E_ref[exp(β·r)], docs/method.md M6
        init = flowrl.log_partition_init(everyone, len(everyone), args.reward_beta).item()
        with torch.no_grad():
            (run.head.out.bias if args.logz == "head" else run.head.table).fill_(init)
    if run.algo == "reinforce_pp":
        b.adv = flowrl.reinforce_pp_advantages(rewards, old, ref_logprobs, ro.mask, args.kl_coef,
                                               all_sum=all_sum if world > 1 else None)
    if run.algo == "ppo":
        kl_reward = -args.kl_coef * (old - ref_logprobs) * ro.mask                        # KL in the reward
        b.adv, b.returns = flowrl.gae(rewards, old_values, ro.mask, token_rewards=kl_reward)
    if run.algo in flowrl.FORMS and args.logz == "table":
        b.keys = torch.tensor([prompt_key(task, problems[i // G]) for i in range(len(scores))], device=rewards.device)
    return b


def algo_loss(args, run, b, rows, mb, logprobs, h):
    """The loss of one minibatch (the rows of b in mb), where the algorithms differ
    (docs/method.md M4, M6, M7). logprobs: (n, T) under π_θ with gradients; h: (n, Tp + T, C)."""
    Tp, G = mb.prompt.shape[1], args.group_size
    if run.algo in flowrl.FORMS:
        form = flowrl.flowrl_form(run.algo, args.length_norm)
        r = b.r_hat[rows] if form["reward"] == "group_normalized" else b.rewards[rows]
        prior = (b.old_logprobs if args.prior == "old" else b.ref_logprobs)[rows]      # (n, T): π_old or π_ref
        if args.logz == "group":
            log_z = flowrl.group_log_z(logprobs, prior, mb.mask, r, args.reward_beta, G, form["length_norm"])
        elif args.logz == "table":
            log_z = run.train_head(b.keys[rows])
        elif args.logz == "none":               # δ without a log Z term (docs/method.md M4.4)
            log_z = torch.zeros(len(rows), device=logprobs.device)
        else:
            log_z = run.train_head(h[:, :Tp], mb.prompt_mask)
        return flowrl.flowrl_loss(logprobs, b.old_logprobs[rows], prior, mb.mask, r, log_z,
                                  beta=args.reward_beta, clip=args.clip_bounds, length_norm=form["length_norm"],
                                  flat=flowrl.equal_reward_rows(b.rewards[rows], G), weight=args.weight)
    if run.algo == "grpo":
        return flowrl.grpo_loss(logprobs, b.old_logprobs[rows], b.ref_logprobs[rows], mb.mask, b.r_hat[rows],
                                clip_eps=args.clip_eps, kl_coef=args.kl_coef)
    if run.algo == "dr_grpo":                   # the budget: the longest response the sampler may write
        return flowrl.dr_grpo_loss(logprobs, b.old_logprobs[rows], b.ref_logprobs[rows], mb.mask,
                                   flowrl.group_center(b.rewards[rows], G), budget=args.max_new_tokens,
                                   clip_eps=args.clip_eps, kl_coef=args.kl_coef)
    if run.algo == "gspo":
        return flowrl.gspo_loss(logprobs, b.old_logprobs[rows], mb.mask, b.r_hat[rows], clip_low=args.gspo_bounds[0],
                                clip_high=args.gspo_bounds[1])
    count, total = None, None                   # token means and whitening over the global batch
    if run.world > 1:
        count, total = all_sum(mb.mask.sum()) / run.world, all_sum
    if run.algo == "gflowrl":                   # docs/method.md M10: Eq. 4, 6, 7, 8 as read
        return flowrl.gflowrl_loss(logprobs, b.old_logprobs[rows], b.ref_logprobs[rows], mb.mask, b.rewards[rows],
                                   group_size=G, beta=args.gflowrl_beta, gap_clip=args.gap_bounds,
                                   weight_cap=args.weight_cap, z_length_norm=args.gflowrl_z == "mean",
                                   ratio=args.gflowrl_ratio)
    if run.algo in ("flowrl_token_old", "flowrl_token"):   # the authors' token-level objectives (M10)
        advantages = flowrl.group_center(b.rewards[rows], G)
        return flowrl.flowrl_token_loss(logprobs, b.old_logprobs[rows], mb.mask, advantages,
                                        beta=args.reward_beta, clip=(1 - args.clip_eps, 1 + args.clip_eps_high),
                                        old_prior=run.algo == "flowrl_token_old", token_count=count)
    if run.algo == "dapo":
        return flowrl.dapo_loss(logprobs, b.old_logprobs[rows], mb.mask, b.r_hat[rows], clip_eps=args.clip_eps,
                                clip_eps_high=args.clip_eps_high, token_count=count)
    if run.algo == "reinforce_pp":
        return flowrl.reinforce_pp_loss(logprobs, b.old_logprobs[rows], mb.mask, b.adv[rows], clip_eps=args.clip_eps,
                                        token_count=count)
    values = run.train_head(h[:, Tp - 1:-1])                                                   # ppo: (n, T)
    return flowrl.ppo_loss(logprobs, b.old_logprobs[rows], mb.mask, b.adv[rows], values, b.returns[rows],
                           clip_eps=args.clip_eps, token_count=count, all_sum=total)




def update(args, run, b, step, world):
    """--epochs passes over the batch in --minibatches minibatches of whole groups; per minibatch one
    AdamW step after the gradient clip, skipped (and counted) if the loss or gradient is not finite.
    Returns the loss stats of every applied minibatch and their gradient norms."""
    stats, grad_norms, skipped = {}, [], False
    for epoch in range(args.epochs):
        for i, rows in enumerate(minibatches(args, len(b.problems), step, epoch, b.rewards.device)):
            mb = b.ro.select(rows)
            first = b.old_from_update and epoch == 0 and i == 0   # before any update: this forward's π_θ is π_old
            logprobs, entropy, h = sequence_logprobs(run.train_policy, mb, args.temperature, return_hidden=True,
                                                     with_entropy=first)
            if first and b.old_logprobs is None:        # the one update of the step: every row's π_old
                b.old_logprobs, b.entropy = logprobs.detach(), entropy
            elif first:                                 # the first of several: its rows' (prepare took the rest)
                b.old_logprobs[rows], b.entropy[rows] = logprobs.detach(), entropy
            loss, st = algo_loss(args, run, b, rows, mb, logprobs, h)
            st = {**st, **ratio_spread(logprobs.detach(), b.old_logprobs[rows], mb.mask)}
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.after_backward()                        # CPU bf16: the twin's gradients onto the fp32 master
            gn = torch.nn.utils.clip_grad_norm_(run.params, args.grad_clip if args.grad_clip > 0 else float("inf"))
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn                   # FSDP: a DTensor
            if not (torch.isfinite(loss) and torch.isfinite(gn)):
                run.opt.zero_grad(set_to_none=True)                   # never written into the weights
                skipped = True
                continue
            run.opt.step()
            run.after_step()                            # CPU bf16: the twin refreshed, one cast per weight
            grad_norms.append(gn.item())
            for k, v in st.items():
                stats.setdefault(k, []).append(v)
    run.skipped += skipped
    return stats, grad_norms


# ---------------------------------------------------------------------------------------------
# the loop

def rows_per_chunk(args, world=1):
    """Rows per forward pass without gradients: one rank's minibatch (G x batch_prompts / world / minibatches)."""
    return args.group_size * max(1, args.batch_prompts // world // args.minibatches)


@torch.no_grad()
def learned_log_z(args, run, tok, task, problems):
    """The learned log Z_φ(x) of the eval prompts (dropout off)."""
    device = next(run.policy.parameters()).device
    if args.logz == "table":
        return run.head(torch.tensor([prompt_key(task, p) for p in problems], device=device))
    ids, valid = left_pad([tok.encode_prompt(p.prompt) for p in problems], tok.eos_id, device)
    run.head.eval()
    _, h = run.policy(ids, valid=valid, return_hidden=True)
    z = run.head(h, valid)
    run.head.train()
    return z


def run_eval(args, run, tok, task, problems, step, device, run_dir, wb, write=True, start_evals=None):
    """Evaluate, append the record to metrics.jsonl and a few prompts' completions to samples.jsonl.
    Under FSDP every process evaluates (its forwards are collective) and rank 0 alone writes.
    start_evals: a dict shared by the algorithms of one train.py command. Their step-0 policies are the
    same start, and an evaluation draws from its own seeded stream, so the first algorithm's step-0
    records are every algorithm's: kept there and reused (not where the record holds a learned log Z)."""
    log_z = None
    if run.algo in flowrl.FORMS and run.head is not None:
        log_z = lambda ps: learned_log_z(args, run, tok, task, ps)
    share = start_evals is not None and step == 0 and not (log_z is not None and enumerable(task, tok))
    if share and "records" in start_evals:
        rec, paper = copy.deepcopy(start_evals["records"])
    else:
        rec, paper = evaluate_now(args, run, tok, task, problems, step, device, log_z)
        if share:
            start_evals["records"] = copy.deepcopy((rec, paper))
    if not write:
        return
    for sample in rec.pop("samples"):
        append_jsonl(os.path.join(run_dir, "samples.jsonl"), sample)
    log_record(os.path.join(run_dir, "metrics.jsonl"), {"algo": run.algo, **rec}, wb)
    if paper is not None:
        log_record(os.path.join(run_dir, "metrics.jsonl"), {"algo": run.algo, **paper}, wb)


def evaluate_now(args, run, tok, task, problems, step, device, log_z):
    """The eval record at T = 1 and, with --paper_eval at the start and the end, the one at the paper's
    setting (T = 0.6, top-p 0.95; else None)."""
    with autocast(device, args.bf16), gathered(run.policy), gathered(run.ref):
        rec = evaluate(run.policy, tok, task, problems, k=args.eval_k, max_new_tokens=args.max_new_tokens,
                       seed=args.seed, step=step, chunk_rows=rows_per_chunk(args), beta=args.reward_beta,
                       ref=run.ref, learned_log_z=log_z, n_logged=4)
    paper = None
    if args.paper_eval and step in (0, args.steps):            # the paper's setting, at the start and the end
        with autocast(device, args.bf16), gathered(run.policy):
            paper = evaluate(run.policy, tok, task, problems, k=args.eval_k, max_new_tokens=args.max_new_tokens,
                             seed=args.seed, step=step, chunk_rows=rows_per_chunk(args), beta=args.reward_beta,
                             temperature=0.6, top_p=0.95)
        paper["kind"] = "eval_paper"
    return rec, paper


def train_algo(args, algo, warm, tok, task, device, rank=0, world=1, start_evals=None):
    run_dir = os.path.join(args.out_dir, algo + args.tag)
    metrics, ckpt = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "ckpt.pt")
    is_main = rank == 0                                       # rank 0 alone writes files
    os.makedirs(run_dir, exist_ok=True)
    run = new_run(args, algo, warm, task, device, rank, world)
    start = 0
    if args.resume and os.path.exists(ckpt):
        start = resume(run, ckpt, args, rank)
        print(f"{algo}: resumed from {ckpt} at step {start}")
    elif args.resume:
        print(f"{algo}: no checkpoint at {ckpt} (it never reached one): starting it from scratch")
    if is_main:
        truncate_log(metrics, start)
        truncate_log(os.path.join(run_dir, "samples.jsonl"), start)
    problems_eval = eval_problems(task, args.eval_prompts, args.seed)
    wb = open_wandb(args, algo + args.tag) if is_main else None
    if start == 0 and (is_main or args.fsdp):
        run_eval(args, run, tok, task, problems_eval, 0, device, run_dir, wb, write=is_main, start_evals=start_evals)
    t_run = time.time()
    for step in range(start, args.steps):
        t0 = time.time()
        with autocast(device, args.bf16):
            b = collect(args, run, task, tok, step, rank, world)
            upd = update(args, run, b, step, world) if b is not None else None
        if b is None:                           # --drop_flat_groups kept no group: no update this step
            rec = {"step": step + 1, "kind": "train", "algo": run.algo, "time/step_s": time.time() - t0,
                   **dynamic_record(run.last_sample)}
        else:
            rec = {"step": step + 1, **train_record(args, run, b, upd, time.time() - t0, world, device)}
        if is_main:
            log_record(metrics, rec, wb)
        s = step + 1
        if s % args.log_every == 0 or s == args.steps:
            eta = (time.time() - t_run) / (s - start) * (args.steps - s)
            lz = f" logZ {rec['log_z/mean']:7.3f}" if "log_z/mean" in rec else ""
            dyn = f" drawn {rec['dynamic/prompts_drawn']}" if "dynamic/prompts_drawn" in rec else ""
            body = (f"reward {rec['reward/mean']:.3f} acc {rec['accuracy']:.3f} entropy {rec['entropy']:.3f} "
                    f"distinct {rec['distinct_correct']:.2f}{lz}" if "accuracy" in rec else "no group kept")
            print(f"{algo:12s} step {s:5d}/{args.steps} {body}{dyn} {rec['time/step_s']:.3f}s/step eta {eta:.0f}s",
                  flush=True)
        if (is_main or args.fsdp) and (s % args.eval_every == 0 or s == args.steps):
            run_eval(args, run, tok, task, problems_eval, s, device, run_dir, wb, write=is_main)
        if s % args.ckpt_every == 0 or s == args.steps:
            samplers = gather_objects(run.gen.get_state(), world)       # every process's sampler stream
            states = full_states(run) if args.fsdp else None            # FSDP: gathered from the shards
            if is_main:
                save_checkpoint(ckpt, run, s, args, samplers, states)
    if is_main:                                 # the trained policy in the format every other tool reads
        policy = run.weights
        if args.fsdp:                           # one process's full copy, from the last checkpoint's state
            policy = GPT(run.policy.config)
            policy.load_state_dict(states[0])
        export(args, policy, tok, os.path.join(run_dir, "hf"))
    if wb is not None:
        wb.finish()
    return run_dir


def main(argv=None):
    args = parse_args(argv)
    try:
        rank, world, args.device = setup_distributed(args.device, args.batch_prompts, args.fsdp)
    except ValueError as e:
        raise UserError(str(e))
    specs = runs(args)                          # (algo, tag, flags) per --algo name (grpo_kl: grpo + KL)
    ckpts = [os.path.join(args.out_dir, a + tag, "ckpt.pt") for a, tag, _ in specs]
    if args.resume and not any(os.path.exists(c) for c in ckpts):
        raise UserError(f"--resume: no checkpoint at {' or '.join(ckpts)}")
    if world > 1 and (args.stale or any(drops_flat_groups(args, a) for a in args.algo)):
        raise UserError("--stale and --drop_flat_groups (dapo's default) run in one process only: the processes "
                        "would hold batches of different sizes; run without torchrun, or with --no-drop_flat_groups")
    if (args.batch_prompts // world) % args.minibatches:
        raise UserError(f"--minibatches={args.minibatches} must divide each process's "
                        f"{args.batch_prompts // world} prompts")
    device = torch.device(args.device)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")      # one voice: rank 0 prints, writes metrics, checkpoints, figures
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    warm, tok, task = load_start(args, rank, world, device)
    t_start = time.time() - t0                  # loading, and the warm or cold start
    warm.grad_checkpointing = args.grad_checkpoint
    print(f"model: {warm.num_params() / 1e6:.2f}M parameters on {device}")
    summary, start_evals = {}, {}
    for algo, tag, run_args in specs:
        run_dir = train_algo(run_args, algo, warm, tok, task, device, rank, world, start_evals)
        if world > 1:
            torch.distributed.barrier()
        summary[algo + tag] = summarize(run_dir)
    if world > 1:           # teardown: the DDP/FSDP wrappers (and their hold on the gloo/NCCL group) are freed
        gc.collect()        # first, then every rank waits for the others, then the group goes: a group
        torch.distributed.barrier()   # destroyed under a live wrapper, or while a peer still talks, can abort
        torch.distributed.destroy_process_group()       # the process at exit (SIGABRT from a joinable thread)
        if rank != 0:
            return None
    if not args.no_summary:
        write_summary(args, summary)
    print(final_table(summary, args.eval_k, len(eval_problems(task, args.eval_prompts, args.seed)), args.grad_clip))
    if not args.no_plot:
        import plot
        fig = os.path.join(args.out_dir, "compare.png")
        plot.plot_runs([os.path.join(args.out_dir, a + tag) for a, tag, _ in specs], fig)
        print(f"figure: {fig}")
        if args.wandb:
            import wandb
            wb = open_wandb(args, "compare" + args.tag)
            wb.log({"compare": wandb.Image(fig)})
            wb.finish()
    wall = time.time() - t0
    if not args.no_summary:                     # beside summary.json (experiments/realmodel.py reads it)
        with open(os.path.join(args.out_dir, "timing.json"), "w") as f:
            json.dump({"total_wall_time_s": wall, "start_s": t_start, "runs": list(summary), "device": str(device),
                       "threads": torch.get_num_threads(), "cpu": cpu_description(), "bf16": args.bf16,
                       "seed": args.seed}, f, indent=2)
    print(f"total wall time {wall:.0f}s")
    return summary


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:                     # a prompt longer than the model takes (rollout.generate)
        if "exceeds the model's block_size" not in str(e):
            raise
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
