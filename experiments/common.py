"""
The runner shared by the experiment scripts (experiments/figure1.py, experiments/table.py): named variants of train.py's
flags, the warm start made once per seed before anything runs in parallel, a pool of runs side by
side (one thread each), and one reader of a run's metrics. Runs side by side write only their own
run directory (--no_summary: never the shared summary.json).
"""

import argparse
import json
import math
import os
import sys
import time
from multiprocessing import get_context

import torch

# name -> (algo, extra train.py flags). The run directory is out_dir/<name> (= algo + tag).
VARIANTS = {
    "flowrl_exact": ("flowrl_exact", []),
    "flowrl": ("flowrl", []),
    "grpo": ("grpo", []),
    "grpo_kl0.01": ("grpo", ["--kl_coef", "0.01"]),
    "grpo_kl0.04": ("grpo", ["--kl_coef", "0.04"]),
    "grpo_kl0.1": ("grpo", ["--kl_coef", "0.1"]),
    "reinforce_pp": ("reinforce_pp", ["--kl_coef", "0.01"]),
    "dr_grpo": ("dr_grpo", []),
    "dapo": ("dapo", []),
    "gspo": ("gspo", []),
    "ppo": ("ppo", []),
    "flowrl_nolen": ("flowrl", ["--no-length_norm"]),
    # ablations the paper's reviewers asked about
    "flowrl_exact_no_ref": ("flowrl_exact", ["--no_ref"]),
    "flowrl_no_ref": ("flowrl", ["--no_ref"]),
    "flowrl_exact_beta5": ("flowrl_exact", ["--reward_beta", "5"]),
    "flowrl_exact_beta2": ("flowrl_exact", ["--reward_beta", "2"]),
    "flowrl_beta5": ("flowrl", ["--reward_beta", "5"]),
    "flowrl_beta2": ("flowrl", ["--reward_beta", "2"]),
    "flowrl_exact_noclip": ("flowrl_exact", ["--grad_clip", "0"]),
    "flowrl_noclip": ("flowrl", ["--grad_clip", "0"]),
    "flowrl_exact_table": ("flowrl_exact", ["--logz", "table"]),
    "flowrl_exact_group": ("flowrl_exact", ["--logz", "group"]),
    # the causal test of the recovery mechanism: the all-equal-reward groups removed (DAPO's dynamic sampling)
    "flowrl_dyn": ("flowrl", ["--drop_flat_groups"]),
    "flowrl_exact_dyn": ("flowrl_exact", ["--drop_flat_groups"]),
    "grpo_kl0.04_dyn": ("grpo", ["--kl_coef", "0.04", "--drop_flat_groups"]),
    # off-policy (experiments/offpolicy.py): log Z learned by the head (the names above), the group's estimate, or none;
    # the importance weight clipped (the names above) or not ("_wfree")
    "flowrl_group": ("flowrl", ["--logz", "group"]),
    "flowrl_logz0": ("flowrl", ["--logz", "none"]),
    "flowrl_exact_logz0": ("flowrl_exact", ["--logz", "none"]),
    "flowrl_wfree": ("flowrl", ["--clip", "none"]),
    "flowrl_group_wfree": ("flowrl", ["--logz", "group", "--clip", "none"]),
    "flowrl_logz0_wfree": ("flowrl", ["--logz", "none", "--clip", "none"]),
    "flowrl_exact_wfree": ("flowrl_exact", ["--clip", "none"]),
    "flowrl_exact_group_wfree": ("flowrl_exact", ["--logz", "group", "--clip", "none"]),
    "flowrl_exact_logz0_wfree": ("flowrl_exact", ["--logz", "none", "--clip", "none"]),
    # after the paper (docs/method.md M10): GFlowRL as read (filtering on by default, or off; the gap clip
    # off) and the authors' token-level objectives
    "gflowrl": ("gflowrl", []),
    "gflowrl_nofilter": ("gflowrl", ["--no-drop_flat_groups"]),
    "gflowrl_noclip": ("gflowrl", ["--gap_clip", "none"]),
    "flowrl_token_old": ("flowrl_token_old", []),
    "flowrl_token": ("flowrl_token", []),
}


def run_variant(job):
    """One run of train.py in this process: job = (variant name, common flags). Returns (name, seconds)."""
    name, common = job
    torch.set_num_threads(1)                     # runs side by side, one core each
    import train
    algo, extra = VARIANTS[name]
    t0 = time.time()
    train.main(common + ["--algo", algo, "--tag", name[len(algo):], "--no_plot", "--no_summary"] + extra)
    return name, time.time() - t0


def make_warm_start(common):
    """The warm start of these flags, made once (train.py reuses out_dir/warmstart.pt while it matches)."""
    torch.set_num_threads(1)                     # warm starts side by side, one core each
    import starts
    import train
    from rewards import ALPHABET, get_task
    from tokenizer import Tokenizer
    args = train.parse_args(common)
    os.makedirs(args.out_dir, exist_ok=True)
    starts.warm_start(args, get_task(args.task), Tokenizer.for_chars(ALPHABET), torch.device(args.device))


def run_all(jobs, workers):
    """Every (name, common flags) job, `workers` at a time, after the warm start of each distinct
    out_dir is made (also `workers` at a time, before any run, so that runs never race to write it).
    Returns {(name, out_dir): seconds}."""
    firsts = {}
    for name, common in jobs:
        firsts.setdefault(common[common.index("--out_dir") + 1], common)
    with get_context("spawn").Pool(workers) as pool:
        pool.map(make_warm_start, list(firsts.values()), chunksize=1)
        times = pool.map(run_variant, jobs, chunksize=1)
    return {(name, common[common.index("--out_dir") + 1]): t for (name, common), (_, t) in zip(jobs, times)}


def read_evals(run_dir, kind="eval"):
    """The eval (or, with kind="train", the train) records of a run's metrics.jsonl, in step order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def experiment_parser(doc, names, steps, out_dir):
    """The flags every experiment script shares: seeds, steps, variants, workers, out_dir, aggregate_only."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0].strip())
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (each its own warm start)")
    p.add_argument("--steps", type=int, default=steps, help="RL steps per run")
    p.add_argument("--names", nargs="+", default=names, choices=sorted(VARIANTS), help="variants (VARIANTS)")
    p.add_argument("--workers", type=int, default=2, help="runs side by side (one thread each)")
    p.add_argument("--out_dir", default=out_dir, help="where runs, tables and figures go")
    p.add_argument("--aggregate_only", action="store_true", help="only rebuild tables and figures from finished runs")
    return p


def wall_record(times, t0, root):
    """The wall time of an experiment's runs, for its json: the total since t0, each run's (run_all's
    {(name, out_dir): seconds}, keyed "<out_dir relative to root>/<name>") and the command that ran them."""
    module = "experiments." + os.path.splitext(os.path.basename(sys.argv[0]))[0]      # run as python -m <module>
    from precision import cpu_description
    return {"total_s": round(time.time() - t0, 1), "command": " ".join(["python", "-m", module] + sys.argv[1:]),
            "cpu": cpu_description(),
            "runs_s": {f"{os.path.relpath(d, root)}/{n}": round(t, 1) for (n, d), t in times.items()}}


def merge_walls(previous, new):
    """The wall record of an out_dir filled in parts (some seeds or settings per command): the parts of the
    previous record that this command did not rerun, then this command's; runs_s merged, total_s the
    parts' sum, each part with the CPU it ran on. A record without parts counts as one part."""
    parts = [] if previous is None else previous.get("parts") or [
        {"command": previous.get("command"), "total_s": previous["total_s"], "runs": sorted(previous["runs_s"])}]
    kept = [p for p in parts if not set(p["runs"]) & set(new["runs_s"])]
    runs = {k: v for k, v in (previous or {}).get("runs_s", {}).items() if any(k in p["runs"] for p in kept)}
    parts = kept + [{"command": new.get("command"), "total_s": new["total_s"], "runs": sorted(new["runs_s"])}
                    | ({"cpu": new["cpu"]} if "cpu" in new else {})]
    return {"total_s": round(sum(p["total_s"] for p in parts), 1), "runs_s": runs | new["runs_s"], "parts": parts}


def previous_wall(path):
    """The wall record of an earlier json at path (an --aggregate_only rebuild keeps the runs' timing)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("wall")


def write_results(out_dir, stem, data, md):
    """<out_dir>/<stem>.json (data) and <stem>.md (md, the table the docs show), and md printed. The wall
    record: the previous json's (--aggregate_only), or merged with it (merge_walls: runs in parts)."""
    previous = previous_wall(os.path.join(out_dir, stem + ".json"))
    data["wall"] = previous if data.get("wall") is None else merge_walls(previous, data["wall"])
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write(md + "\n")
    print(md)


def mean_std(xs):
    """(mean, sample std, count) of the values that are not None; None if there are none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s, len(xs)
