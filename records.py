"""
The metrics of one RL step (train.py's train_record), under the names TRL and veRL users know, and the
spread of the importance ratio that a minibatch's records carry.
"""

import torch

import flowrl
from config import drops_flat_groups
from parallel import gather_rows, mean_over_ranks


def ratio_spread(logprobs, old_logprobs, mask):
    """How far π_θ is from π_old on a minibatch (0 on-policy): the std over tokens of the token ratio
    π_θ/π_old, and the std over rows of the sequence ratio π_θ(y)/π_old(y). (n, T) -> scalars."""
    m = mask.to(logprobs.dtype)
    log_r = (logprobs - old_logprobs) * m                                              # (n, T)
    token = log_r.exp()[mask]
    seq = log_r.sum(-1).exp()                                                          # (n,)
    return {"ratio_token_std": token.std().item() if token.numel() > 1 else 0.0,
            "ratio_seq_std": seq.std().item() if seq.numel() > 1 else 0.0}


def train_record(args, run, b, upd, dt, world, device):
    """The metrics of one step (TRL / veRL names), averaged over the ranks under torchrun."""
    stats, grad_norms = upd
    ro, G = b.ro, args.group_size
    mean = lambda k: sum(stats[k]) / len(stats[k]) if stats.get(k) else float("nan")    # over minibatches
    distinct = [len({s["answer"] for s in b.scores[i * G:(i + 1) * G] if s["correct"]}) for i in range(len(b.problems))]
    kl_ref = (flowrl.k3_kl(b.old_logprobs, b.ref_logprobs) * ro.mask).sum() / ro.mask.sum()
    gap = ((ro.logprobs - b.old_logprobs).abs() * ro.mask).max()      # sampler vs training forward, per token
    rec = {"kind": "train", "algo": run.algo,
           "reward/mean": b.rewards.mean().item(), "reward/std": b.rewards.std().item(),
           "accuracy": sum(s["correct"] for s in b.scores) / len(b.scores),
           "format": sum(s["format"] for s in b.scores) / len(b.scores),
           "frac_reward_zero_std": flowrl.equal_reward_rows(b.rewards, G).float().mean().item(),
           "entropy": (b.entropy.sum() / ro.mask.sum()).item(), "kl_ref": kl_ref.item(),
           "logprob_gap/max": gap.item(),
           "completions/mean_length": ro.mask.sum(-1).float().mean().item(),
           "completions/clipped_ratio": (~ro.finished).float().mean().item(),
           "distinct_correct": sum(distinct) / len(distinct),
           "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
           "lr": args.lr, "skipped_steps": run.skipped,
           "time/step_s": dt, "tokens_per_s": ro.mask.sum().item() / dt}
    if device.type == "cuda":                   # the step's peak, then reset for the next step
        rec["memory/peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        torch.cuda.reset_peak_memory_stats(device)
    if run.algo in flowrl.FORMS:
        rec.update({"log_z/mean": mean("log_z"), "tb_residual/mean": mean("tb_residual"),
                    "is_weight/mean": mean("is_weight"),       # δ's terms and the equal-reward groups' part
                    "delta/logp_minus_ref": mean("logp_minus_ref"), "delta/beta_reward_abs": mean("beta_reward"),
                    "flat_groups/grad_share": mean("flat_grad_share"),
                    "flat_groups/delta_abs": mean("flat_delta_abs")})
    if run.algo == "gflowrl":
        rec.update({"log_z/mean": mean("log_z"), "tb_residual/mean": mean("tb_residual"),
                    "is_weight/mean": mean("is_weight"), "gflowrl/gap_abs": mean("gap_abs"),
                    "gflowrl/gap_clip_frac": mean("gap_clip_frac")})
    if run.algo in ("flowrl_token_old", "flowrl_token"):
        rec.update({"is_weight/mean": mean("is_weight"), "token/residual": mean("residual")})
    rec["clip_frac"] = mean("clip_frac")
    rec["is_ratio/token_std"], rec["is_ratio/seq_std"] = mean("ratio_token_std"), mean("ratio_seq_std")
    if drops_flat_groups(args, run.algo):
        rec.update(dynamic_record(run.last_sample))
    if run.algo == "ppo":
        rec["value_loss"] = mean("value_loss")
    if world > 1:   # means over ranks (equal shares), the whole batch's reward statistics, summed speed
        rec = mean_over_ranks(rec, world, device, skip=("lr", "time/step_s"))
        everyone = gather_rows(b.rewards, world)
        rec.update({"tokens_per_s": rec["tokens_per_s"] * world, "reward/mean": everyone.mean().item(),
                    "reward/std": everyone.std().item()})
    return rec


def dynamic_record(s):
    """--drop_flat_groups: prompts sampled this step (every refill round), the share of their groups that
    were flat, the groups kept, and the accuracy of what the policy sampled (the first round, every group;
    the record's "accuracy" counts the kept groups only, which exclude the all-correct ones)."""
    return {"dynamic/prompts_drawn": s.drawn, "dynamic/flat_share": s.flat / s.drawn,
            "dynamic/kept_groups": len(s.problems), "dynamic/sampled_accuracy": s.first_accuracy}
