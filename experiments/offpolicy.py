"""
The off-policy regime, where FlowRL's learned log Z, its importance-weight clip and GSPO's sequence ratio
can matter (on-policy, one update per batch, w = 1 and a constant log Z only shifts a baseline:
docs/method.md M5). Two settings of the main job (make_n, small preset, grad clip 1.0), and the same
runs on-policy as the reference they are read against:

    updates:  each batch trained on in 4 minibatches x 2 epochs (8 optimizer steps per batch)
    stale:    each step trains on the rollouts sampled 4 optimizer steps earlier (--stale 4)
    onpolicy: one update per batch, as the main job (w = 1, the clip never acts)

In updates: flowrl and flowrl_exact with log Z from the head (the paper's), from each group's own
estimate (--logz group) and without log Z (--logz none), each with the importance weight clipped to
[0.8, 1.2] and unclipped ("_wfree"); grpo, dapo and gspo beside them. In stale: the clipped ones,
grpo and gspo; onpolicy runs the stale setting's variants. Reported at the final eval: accuracy,
effective # correct, KL(π‖p*) (exact, over the answer tree, p* ∝ π_ref·exp(15·r)), and over the last
100 training steps the spread of the importance ratio (std over rows of π_θ(y)/π_old(y)) and the clip
fraction (of weights, tokens or sequences, each algorithm's own).

    python -m experiments.offpolicy            # 15 + 8 + 8 variants x 3 seeds, 500 steps, 2 at a time: 72 min
    python -m experiments.offpolicy --setting updates --seeds 0 --steps 200 --names flowrl flowrl_logz0 grpo

Writes <out_dir>/<setting>/seed<S>/<variant>/..., <out_dir>/offpolicy.json and <out_dir>/offpolicy.md.
"""

import os
import time

from evaluate import summarize
from experiments.common import experiment_parser, mean_std, read_evals, run_all, wall_record, write_results

SETTINGS = {"updates": ["--minibatches", "4", "--epochs", "2"], "stale": ["--stale", "4"], "onpolicy": []}
WHAT = {"updates": "4 minibatches x 2 epochs per batch", "stale": "rollouts 4 optimizer steps stale",
        "onpolicy": "on-policy reference, one update per batch"}
NAMES = [f + z + w for f in ("flowrl", "flowrl_exact") for w in ("", "_wfree") for z in ("", "_group", "_logz0")] + [
    "grpo", "dapo", "gspo"]
# the stale setting runs the log Z question with the clip on, beside grpo and gspo (time: 2-core CPU)
STALE_NAMES = [f + z for f in ("flowrl", "flowrl_exact") for z in ("", "_group", "_logz0")] + ["grpo", "gspo"]
FINAL = ["accuracy", "effective_correct", "kl_to_target"]
TRAIN = ["is_ratio/seq_std", "clip_frac"]      # means over the last 100 training steps
HEAD = ["accuracy", "effective # correct", "KL(π‖p*)", "ratio spread", "clip fraction"]


def aggregate(out_dir, settings, seeds, names, last=100):
    """names: {setting: variants}."""
    table = {}
    for setting in settings:
        for n in names[setting]:
            runs = [os.path.join(out_dir, setting, f"seed{s}", n) for s in seeds]
            finals = [summarize(r) for r in runs]
            trains = [[r for r in read_evals(d, kind="train") if "accuracy" in r][-last:] for d in runs]
            cell = {m: mean_std([f.get(m) for f in finals]) for m in FINAL}
            for m in TRAIN:
                cell[m] = mean_std([sum(r[m] for r in t) / len(t) if t else None for t in trains])
            table[f"{setting}/{n}"] = cell
    return table


LEGEND = ("Variants: log Z from the head (no suffix), the group's estimate (_group) or none (_logz0); the "
          "importance weight clipped to [0.8, 1.2] or not (_wfree). Ratio spread: std over rows of "
          "π_θ(y)/π_old(y) per minibatch, mean over the last 100 steps; clip fraction: FlowRL's clipped "
          "weights, grpo's and dapo's clipped tokens, gspo's clipped sequences.")


def markdown(table, settings, names, steps, seeds, what=WHAT, legend=LEGEND):
    """One table per setting (what: its description), then the legend; from the json's table alone."""
    fmt = lambda v: "n/a" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}" + ("" if v[2] == len(seeds) else f" ({v[2]})")
    lines = []
    for setting in settings:
        lines += [f"{setting}: {what[setting]}; final eval after {steps} steps (9 prompts x 16 samples, T=1; "
                  f"grad clip 1.0; mean ± std over seeds {seeds}):", "",
                  "| variant | " + " | ".join(HEAD) + " |", "|---" * (len(HEAD) + 1) + "|"]
        for n in names[setting]:
            c = table[f"{setting}/{n}"]
            lines.append(f"| {n} | " + " | ".join(fmt(c[m]) for m in FINAL + TRAIN) + " |")
        lines.append("")
    lines.append(legend)
    return "\n".join(lines)


def main():
    p = experiment_parser(__doc__, None, 500, "out_offpolicy")
    p.add_argument("--setting", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="which settings")
    args = p.parse_args()
    # onpolicy runs the stale setting's names
    names = {st: args.names or (NAMES if st == "updates" else STALE_NAMES) for st in args.setting}
    t0 = time.time()
    common = lambda setting, seed: ["--steps", str(args.steps), "--seed", str(seed), "--eval_every", "100",
                                    "--out_dir", os.path.join(args.out_dir, setting, f"seed{seed}")] + SETTINGS[setting]
    wall = None
    if not args.aggregate_only:
        jobs = [(n, common(st, s)) for st in args.setting for s in args.seeds for n in names[st]]
        wall = wall_record(run_all(jobs, args.workers), t0, args.out_dir)
    table = aggregate(args.out_dir, args.setting, args.seeds, names)
    write_results(args.out_dir, "offpolicy", {"settings": args.setting, "seeds": args.seeds, "steps": args.steps,
                                              "names": names, "table": table, "wall": wall},
                  markdown(table, args.setting, names, args.steps, args.seeds))
    print(f"\ntotal wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
