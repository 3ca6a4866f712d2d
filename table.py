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
from multiprocessing import get_context


from figure1 import VARIANTS, run_variant   # the same variants and runner as the Figure 1 experiment

NAMES = ["flowrl", "flowrl_exact", "grpo", "grpo_kl", "reinforce_pp", "ppo"]
METRICS = ["accuracy", "pass@1", "pass@k", "distinct_correct", "effective_correct", "entropy"]


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s, len(xs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (each its own warm start)")
    p.add_argument("--steps", type=int, default=400, help="RL steps per run (the main job's default)")
    p.add_argument("--workers", type=int, default=2, help="runs side by side (one thread each)")
    p.add_argument("--out_dir", default="out_table", help="where runs and the table go")
    p.add_argument("--aggregate_only", action="store_true", help="only rebuild the table from finished runs")
    args = p.parse_args()
    t0 = time.time()
    names = NAMES
    common = lambda seed: ["--steps", str(args.steps), "--seed", str(seed),
                           "--out_dir", os.path.join(args.out_dir, f"seed{seed}")]
    if not args.aggregate_only:
        with get_context("spawn").Pool(args.workers) as pool:
            # first one run per seed (it makes that seed's warm start), then the rest
            pool.map(run_variant, [(names[0], common(s)) for s in args.seeds], chunksize=1)
            pool.map(run_variant, [(n, common(s)) for s in args.seeds for n in names[1:]], chunksize=1)
    import train
    table = {}
    for n in names:
        sums = []
        for s in args.seeds:   # from each run's own metrics (runs side by side share summary.json)
            sums.append(train.summarize(os.path.join(args.out_dir, f"seed{s}", n), VARIANTS[n][0]))
        table[n] = {"final": {m: mean_std([x[m] for x in sums]) for m in METRICS},
                    "matched": {m: mean_std([x["matched_accuracy"][m] if x["matched_accuracy"] else None for x in sums])
                                for m in METRICS + ["step"]},
                    "k": sums[0]["k"]}
    with open(os.path.join(args.out_dir, "table.json"), "w") as f:
        json.dump({"seeds": args.seeds, "steps": args.steps, "grad_clip": 1.0, "table": table}, f, indent=2)
    fmt = lambda v: "n/a" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}" + ("" if v[2] == len(args.seeds) else f" ({v[2]} seeds)")
    k = table[names[0]]["k"]
    head = ["accuracy", "pass@1", f"pass@{k}", "distinct correct @16", "effective # correct", "token entropy"]
    lines = [f"Final eval after {args.steps} steps (9 prompts x {k} samples, T=1; grad clip 1.0; "
             f"mean ± std over seeds {args.seeds}):", "",
             "| algo | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(fmt(table[n]["final"][m]) for m in METRICS) + " |")
    lines += ["", "At matched accuracy (the first eval with accuracy >= 0.9):", "",
              "| algo | step | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for n in names:
        st = table[n]["matched"]["step"]
        lines.append(f"| {n} | {'n/a' if st is None else f'{st[0]:.0f} ± {st[1]:.0f}'} | " +
                     " | ".join(fmt(table[n]["matched"][m]) for m in METRICS) + " |")
    md = "\n".join(lines)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"\ntotal wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
