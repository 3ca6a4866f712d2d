"""
The README's results table: the main job's settings (make_n, the small preset: 2,000 steps, grad clip
1.0), FlowRL's two forms against GRPO with and without a KL term, Dr. GRPO, DAPO, GSPO, REINFORCE++ and PPO,
and the causal test of FlowRL's recovery (the "_dyn" rows: the all-equal-reward groups dropped), several seeds;
mean ± std of the final eval and of the eval at matched accuracy (the first eval with accuracy >= 0.9).

    python -m experiments.table                          # 15 runs x 3 seeds, 2 at a time (2-core CPU: about 70 minutes)
    python -m experiments.table --seeds 0 --steps 200
    python -m experiments.table --warm_skew 2 --names flowrl flowrl_exact grpo grpo_kl0.04 --out_dir out_skew

Writes <out_dir>/seed<S>/<variant>/..., <out_dir>/table.json and <out_dir>/table.md.
"""

import os
import time

from evaluate import summarize
from experiments.common import experiment_parser, mean_std, read_evals, run_all, wall_record, write_results

NAMES = ["flowrl", "flowrl_exact", "grpo", "grpo_kl0.01", "grpo_kl0.04", "grpo_kl0.1", "dr_grpo", "dapo", "gspo",
         "reinforce_pp", "ppo", "flowrl_no_ref", "flowrl_dyn", "flowrl_exact_dyn", "grpo_kl0.04_dyn"]
# pass@16 is 1.00 for every method on make_n: the columns are the ones that differ
METRICS = ["accuracy", "distinct_correct", "effective_correct", "entropy", "kl_shape_to_target"]
HEAD = ["accuracy (= pass@1)", "distinct correct @{k}", "effective # correct", "token entropy", "shape KL"]


# the second table: distance to p*, log Z, and how much each clip binds (over the last TAIL train steps)
TAIL = 100
EXTRA = ["kl_to_target", "log_z_run", "log_z_true", "clip_frac", "gap_clip_frac"]
EXTRA_HEAD = ["KL(π‖p*)", "log Z: learned (head) or estimated (Eq. 4)", "true log Z", "weight / ratio clipped",
              "flow gap clipped"]


def tail_mean(records, key, last=TAIL):
    """The mean of key over the last `last` train records that hold a number for it; None if none do."""
    xs = [r[key] for r in records[-last:] if isinstance(r.get(key), (int, float))]
    return sum(xs) / len(xs) if xs else None


def extra_metrics(run_dir):
    """One run's second-table values: the final eval's KL(π‖p*) and true log Z; the learned log Z of the final
    eval (a head) or, without a head, the mean over the last TAIL train steps of the log Z in the loss (gflowrl's
    Eq. 4 estimate, over token-mean log-probs); the share of rows (or tokens) whose weight was clipped and of
    flow gaps clipped, over the last TAIL train steps."""
    last, train = read_evals(run_dir)[-1], read_evals(run_dir, "train")
    return {"kl_to_target": last.get("kl_to_target"), "log_z_true": last.get("log_z_true"),
            "log_z_run": last.get("log_z/learned", tail_mean(train, "log_z/mean")),
            "clip_frac": tail_mean(train, "clip_frac"), "gap_clip_frac": tail_mean(train, "gflowrl/gap_clip_frac")}


def aggregate(out_dir, seeds, names):
    """Mean ± std over seeds of each variant's final and matched-accuracy metrics (summarize), and the second
    table's (extra_metrics)."""
    table = {}
    for n in names:
        dirs = [os.path.join(out_dir, f"seed{s}", n) for s in seeds]
        sums, extras = [summarize(d) for d in dirs], [extra_metrics(d) for d in dirs]
        matched = [x["matched_accuracy"] for x in sums]
        table[n] = {"final": {m: mean_std([x.get(m) for x in sums]) for m in METRICS},
                    "matched": {m: mean_std([x.get(m) if x else None for x in matched]) for m in METRICS + ["step"]},
                    "target_effective_correct": mean_std([x.get("target_effective_correct") for x in sums]),
                    "extra": {m: mean_std([x[m] for x in extras]) for m in EXTRA},
                    "k": sums[0]["k"]}
    return table


def markdown(table, names, steps, seeds, warm_skew):
    fmt = lambda v: ("n/a" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"
                     + ("" if v[2] == len(seeds) else f" ({v[2]} seeds)"))
    k = table[names[0]]["k"]
    head = [h.format(k=k) for h in HEAD]
    target = table[names[0]]["target_effective_correct"]
    lines = [f"Final eval after {steps} steps (9 prompts x {k} samples, T=1; grad clip 1.0; warm_skew {warm_skew}; "
             f"mean ± std over seeds {seeds}; p*'s effective # correct = π_ref's: {fmt(target)}):", "",
             "| algo | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(fmt(table[n]["final"][m]) for m in METRICS) + " |")
    lines += ["", "At matched accuracy (the first eval with accuracy >= 0.9):", "",
              "| algo | step | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for n in names:
        st = table[n]["matched"]["step"]
        lines.append(f"| {n} | {'n/a' if st is None else f'{st[0]:.0f} ± {st[1]:.0f}'} | " +
                     " | ".join(fmt(table[n]["matched"][m]) for m in METRICS) + " |")
    if all("extra" in table[n] for n in names):     # tables written before the second table existed have none
        lines += ["", f"Distance to p* and log Z at the end; clipped shares over the last {TAIL} steps (n/a: the "
                  "run has no such term):", "", "| algo | " + " | ".join(EXTRA_HEAD) + " |",
                  "|---" * (len(EXTRA) + 1) + "|"]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(fmt(table[n]["extra"][m]) for m in EXTRA) + " |")
    lines += ["", "Correct = every response the reward accepts; shape KL = KL(π(·|correct) ‖ p*(·|correct)), "
              "p*(·|correct) being π_ref(·|correct) (docs/method.md M8)."]
    if any(n.endswith("_dyn") or n == "dapo" for n in names):
        lines[-1] += (" The _dyn rows and dapo drop every group whose rewards are all equal and refill the batch "
                      "from new prompts (--drop_flat_groups, at most 10 extra sampling rounds a step).")
    if any(n.startswith("gflowrl") for n in names):
        lines[-1] += (" gflowrl and gflowrl_noclip drop the all-equal groups too (GFlowRL's group filtering); "
                      "gflowrl_nofilter keeps them. Their log Z is Eq. 4's group estimate over token-mean "
                      "log-probs, on another scale than the true log Z of the summed form (docs/method.md M10).")
    if any("no_ref" in n for n in names):
        lines[-1] += (" The no_ref rows drop π_ref from their loss, so they fit another target; their shape KL is "
                      "still measured against p*, which has π_ref.")
    return "\n".join(lines)


def main():
    p = experiment_parser(__doc__, NAMES, 2000, "out_table")
    p.add_argument("--warm_skew", type=float, default=0.0, help="train.py's --warm_skew for every run")
    args = p.parse_args()
    t0 = time.time()
    common = lambda seed: ["--steps", str(args.steps), "--seed", str(seed), "--warm_skew", str(args.warm_skew),
                           "--out_dir", os.path.join(args.out_dir, f"seed{seed}")]
    wall = None
    if not args.aggregate_only:
        jobs = [(n, common(s)) for s in args.seeds for n in args.names]
        wall = wall_record(run_all(jobs, args.workers), t0, args.out_dir)
    table = aggregate(args.out_dir, args.seeds, args.names)
    write_results(args.out_dir, "table", {"seeds": args.seeds, "steps": args.steps, "grad_clip": 1.0,
                                          "warm_skew": args.warm_skew, "table": table, "wall": wall},
                  markdown(table, args.names, args.steps, args.seeds, args.warm_skew))
    print(f"\ntotal wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
