"""
The README's results table: the main job's settings (make_n, the small preset, grad clip 1.0),
every algorithm, several seeds; mean ± std of the final eval and of the eval at matched accuracy
(the first eval with accuracy >= 0.9).

    python table.py                          # 6 runs x 3 seeds, 2 at a time (CPU: about 8 minutes)
    python table.py --seeds 0 --steps 200

Writes out_table/seed<S>/<variant>/..., out_table/table.json and out_table/table.md.
"""

import argparse
import json
import math
import os
import time

from evaluate import summarize
from experiments import run_all

NAMES = ["flowrl", "flowrl_exact", "grpo", "grpo_kl", "reinforce_pp", "ppo"]
METRICS = ["accuracy", "pass@k", "distinct_correct", "effective_correct", "entropy"]


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s, len(xs)


def aggregate(out_dir, seeds):
    """Mean ± std over seeds of each variant's final and matched-accuracy metrics (summarize)."""
    table = {}
    for n in NAMES:
        sums = [summarize(os.path.join(out_dir, f"seed{s}", n)) for s in seeds]
        matched = [x["matched_accuracy"] for x in sums]
        table[n] = {"final": {m: mean_std([x[m] for x in sums]) for m in METRICS},
                    "matched": {m: mean_std([x[m] if x else None for x in matched]) for m in METRICS + ["step"]},
                    "k": sums[0]["k"]}
    return table


def markdown(table, steps, seeds):
    fmt = lambda v: ("n/a" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"
                     + ("" if v[2] == len(seeds) else f" ({v[2]} seeds)"))
    k = table[NAMES[0]]["k"]
    head = ["accuracy (= pass@1)", f"pass@{k}", f"distinct correct @{k}", "effective # correct", "token entropy"]
    lines = [f"Final eval after {steps} steps (9 prompts x {k} samples, T=1; grad clip 1.0; "
             f"mean ± std over seeds {seeds}):", "",
             "| algo | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for n in NAMES:
        lines.append(f"| {n} | " + " | ".join(fmt(table[n]["final"][m]) for m in METRICS) + " |")
    lines += ["", "At matched accuracy (the first eval with accuracy >= 0.9):", "",
              "| algo | step | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for n in NAMES:
        st = table[n]["matched"]["step"]
        lines.append(f"| {n} | {'n/a' if st is None else f'{st[0]:.0f} ± {st[1]:.0f}'} | " +
                     " | ".join(fmt(table[n]["matched"][m]) for m in METRICS) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (each its own warm start)")
    p.add_argument("--steps", type=int, default=400, help="RL steps per run (the main job's default)")
    p.add_argument("--workers", type=int, default=2, help="runs side by side (one thread each)")
    p.add_argument("--out_dir", default="out_table", help="where runs and the table go")
    p.add_argument("--aggregate_only", action="store_true", help="only rebuild the table from finished runs")
    args = p.parse_args()
    t0 = time.time()
    common = lambda seed: ["--steps", str(args.steps), "--seed", str(seed),
                           "--out_dir", os.path.join(args.out_dir, f"seed{seed}")]
    if not args.aggregate_only:
        run_all([(n, common(s)) for s in args.seeds for n in NAMES], args.workers)
    table = aggregate(args.out_dir, args.seeds)
    with open(os.path.join(args.out_dir, "table.json"), "w") as f:
        json.dump({"seeds": args.seeds, "steps": args.steps, "grad_clip": 1.0, "table": table}, f, indent=2)
    md = markdown(table, args.steps, args.seeds)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"\ntotal wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
