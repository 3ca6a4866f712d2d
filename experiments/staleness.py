"""
Off-policy FlowRL, isolated (docs/method.md M4.3, M4.5): each step trains on rollouts K optimizer steps
stale (--stale K), K = 0, 1, 2, 4, 8, in the main job's setting (make_n, small preset, grad clip 1.0).
Which factor breaks FlowRL when rollouts are stale: the importance weight (clipped, raw, or none:
"_wfree", "_w1"), the log Z term (the head, the group's estimate "_group", none "_logz0"), or the step
size (at K = 4 the policy's and the head's learning rates divided by 3 and 10, "_lr3", "_lr10", beside
the same rates on-policy). The authors' later objective with π_old in place of π_ref and no log Z
("_old", verl_FlowRL's compute_flowrl_old_policy_no_log_z) runs at K = 0 and 4; grpo and dr_grpo beside.

    python -m experiments.staleness    # every variant below x 3 seeds, 500 steps, 2 at a time: 348 runs
    python -m experiments.staleness --seeds 0 --steps 100 --ks 0 4 --names flowrl flowrl_w1 grpo

Writes <out_dir>/K<k>/seed<S>/<variant>/..., <out_dir>/staleness.{json,md,png}.
"""

import json
import os
import time

from experiments import common, offpolicy
from experiments.common import experiment_parser, read_evals, run_all, wall_record, write_results

KS = [0, 1, 2, 4, 8]
LOGZ = {"": [], "_group": ["--logz", "group"], "_logz0": ["--logz", "none"]}
WEIGHT = {"": [], "_wfree": ["--clip", "none"], "_w1": ["--weight", "one"]}
LR = {"_lr3": 3, "_lr10": 10}                    # divisors of the small preset's lr 3e-4 and the head's 0.1
SWEEP = {f + z + w: (f, LOGZ[z] + WEIGHT[w]) for f in ("flowrl", "flowrl_exact") for z in LOGZ for w in WEIGHT}
SWEEP |= {"grpo": ("grpo", []), "dr_grpo": ("dr_grpo", [])}
OLD = {f + "_old": (f, ["--prior", "old", "--logz", "none"]) for f in ("flowrl", "flowrl_exact")}
STEP = {f + s: (f, ["--lr", f"{3e-4 / d:.6g}", "--logz_lr", f"{0.1 / d:.6g}"])
        for f in ("flowrl", "flowrl_exact", "grpo") for s, d in LR.items()}
common.VARIANTS.update(SWEEP | OLD | STEP)   # module level: the spawned workers import it too
FINAL, TRAIN, HEAD = offpolicy.FINAL, offpolicy.TRAIN, offpolicy.HEAD
SEED_KEYS = ["accuracy", "format", "correct_mass", "effective_correct", "kl_to_target", "log_z/learned",
             "log_z_true"]


def names_at(k, names=None):
    """The variants run at staleness k: the whole sweep at every K; π_old as the prior at K = 0 and 4;
    the smaller learning rates at K = 4 and, as their reference, at K = 0. names: a subset to keep."""
    out = list(SWEEP) + (list(OLD) + list(STEP) if k in (0, 4) else [])
    return [n for n in out if names is None or n in names]


def aggregate(out_dir, ks, seeds, names):
    """{"K<k>/<variant>": {metric: (mean, std, n)}}: offpolicy.aggregate over the K<k> directories (the
    final eval's metrics; the ratio spread and clip fraction over the last 100 training steps)."""
    settings = [f"K{k}" for k in ks]
    return offpolicy.aggregate(out_dir, settings, seeds, {f"K{k}": names_at(k, names) for k in ks})


def seed_finals(out_dir, ks, seeds, names, last=100):
    """{"K<k>/<variant>": {metric: [one value per seed]}}: each seed's final eval (SEED_KEYS; None where a
    run does not log the metric, e.g. the learned log Z of a run without one) and "tb_residual", FlowRL's
    mean δ² over the last `last` training steps."""
    out = {}
    for k in ks:
        for n in names_at(k, names):
            runs = [os.path.join(out_dir, f"K{k}", f"seed{s}", n) for s in seeds]
            final = [read_evals(r)[-1] for r in runs]
            out[f"K{k}/{n}"] = {m: [r.get(m) for r in final] for m in SEED_KEYS}
            trains = [[t["tb_residual/mean"] for t in read_evals(r, kind="train") if "tb_residual/mean" in t][-last:]
                      for r in runs]
            out[f"K{k}/{n}"]["tb_residual"] = [sum(t) / len(t) if t else None for t in trains]
    return out


def wide_cells(table, finals, seeds):
    """A markdown table of each seed's final eval for the cells whose KL(π‖p*) std exceeds its mean: where
    the mean ± std hides one seed that left the answer format."""
    fmt = lambda v: "-" if v is None else f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}"
    lines = [f"Each seed's final eval where KL(π‖p*)'s std exceeds its mean (seeds {seeds}):", "",
             "| K/variant | seed | accuracy | format | correct mass | effective # correct | KL(π‖p*) "
             "| learned log Z | true log Z | mean δ², last 100 steps |", "|---" * 10 + "|"]
    for key, cell in table.items():
        kl = cell.get("kl_to_target")
        if kl is None or kl[1] <= kl[0]:
            continue
        for i, s in enumerate(seeds):
            cells = [fmt(finals[key][m][i]) for m in SEED_KEYS + ["tb_residual"]]
            lines.append(f"| {key} | {s} | " + " | ".join(cells) + " |")
    return lines + [""]


def against_k(table, ks, names, metric, title):
    """One markdown table of `metric` against K: a row per variant (every K's, in first-seen order), a
    column per K, "mean ± std" per cell and "-" where the variant did not run at that K."""
    rows = list(dict.fromkeys(n for k in ks for n in names_at(k, names)))
    fmt = lambda v: "-" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"
    lines = [title, "", "| variant | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for n in rows:
        lines.append(f"| {n} | " + " | ".join(fmt(table.get(f"K{k}/{n}", {}).get(metric)) for k in ks) + " |")
    return lines + [""]


def markdown(table, ks, names, steps, seeds, finals):
    """staleness.md: KL(π‖p*) and accuracy against K, the seeds behind the widest cells, then one table per
    K (offpolicy.markdown's layout); from staleness.json's table and seed_finals alone."""
    settings = [f"K{k}" for k in ks]
    head = (against_k(table, ks, names, "kl_to_target", f"KL(π‖p*) in nats against K, the rollouts' staleness in "
                      f"optimizer steps (final eval after {steps} steps; mean ± std over seeds {seeds}):")
            + against_k(table, ks, names, "accuracy", "Accuracy (T=1) against K:") + wide_cells(table, finals, seeds))
    what = {f"K{k}": f"rollouts {k} optimizer steps stale" for k in ks}
    legend = ("Variants: FlowRL's practical form (flowrl) and exact form (flowrl_exact); log Z from the head (no "
              "suffix), the group's estimate (_group) or none (_logz0); the importance weight clipped to [0.8, 1.2] "
              "(no suffix), raw (_wfree) or none (_w1, w = 1); _old: π_old in δ in place of π_ref, no log Z; "
              "_lr3, _lr10: the policy's and the head's learning rates divided by 3 and 10. Effective # correct: "
              "exp H(π(·|correct)), π's shape over the correct answers however little mass it puts there (a run "
              "that left the answer format keeps one: see its correct mass above). " + offpolicy.LEGEND[
                  offpolicy.LEGEND.index("Ratio spread"):])
    per_k = offpolicy.markdown(table, settings, {f"K{k}": names_at(k, names) for k in ks}, steps, seeds, what, legend)
    return "\n".join(head) + "\n" + per_k


def draw(table, ks, seeds, path, finals):
    """Small multiples: one panel per form (practical, exact) and log Z source (head, group estimate, none),
    KL(π‖p*) (log scale) and accuracy against K. In each panel the three weights (clipped solid, raw
    dashed, w = 1 dotted) and GRPO (gray, the same in every panel); lines: the mean over seeds; dots: each
    seed (from finals, seed_finals' values); accuracy also with ± std bars (a log axis takes none)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colour = {"": "tab:blue", "_wfree": "tab:red", "_w1": "tab:orange"}
    line = {"": "-", "_wfree": "--", "_w1": ":"}
    logz_name = {"": "log Z head", "_group": "group log Z", "_logz0": "no log Z"}
    weight_name = {"": "clipped w", "_wfree": "raw w", "_w1": "w = 1"}
    form_name = {"flowrl": "practical FlowRL", "flowrl_exact": "exact FlowRL"}
    metrics = (("kl_to_target", "KL(π‖p*), nats"), ("accuracy", "accuracy (T=1)"))
    fig, axes = plt.subplots(4, 3, figsize=(15, 14), sharex=True, sharey="row")     # one scale per row
    for f, form in enumerate(("flowrl", "flowrl_exact")):
        for m, (metric, label) in enumerate(metrics):
            for c, z in enumerate(LOGZ):
                ax = axes[2 * f + m, c]
                series = [(form + z + w, dict(color=colour[w], ls=line[w], label=weight_name[w])) for w in WEIGHT]
                for n, kw in series + [("grpo", dict(color="gray", ls="-", label="grpo", alpha=0.7))]:
                    pts = [(k, table[f"K{k}/{n}"][metric]) for k in ks
                           if f"K{k}/{n}" in table and table[f"K{k}/{n}"][metric] is not None]
                    dots = [(k, v) for k, _ in pts for v in finals[f"K{k}/{n}"][metric] if v is not None]
                    ax.plot([k for k, _ in dots], [v for _, v in dots], ".", color=kw["color"], alpha=0.45, ms=5)
                    if metric == "accuracy":
                        ax.errorbar([k for k, _ in pts], [v[0] for _, v in pts], yerr=[v[1] for _, v in pts],
                                    marker="o", ms=3, capsize=2, **kw)
                    else:
                        ax.plot([k for k, _ in pts], [v[0] for _, v in pts], marker="o", ms=3, **kw)
                if metric == "kl_to_target":
                    ax.set_yscale("log")
                ax.set(title=f"{form_name[form]}, {logz_name[z]}", ylabel=label, xticks=list(ks))
                ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("rollouts K optimizer steps stale")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=10, frameon=False)
    fig.suptitle(f"FlowRL with stale rollouts (make_n, 500 steps): lines the mean over seeds {seeds}, dots each "
                 f"seed; python -m experiments.staleness")
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def redraw(json_path, png_path):
    """The figure again from a staleness.json this script wrote (its table and seed finals)."""
    with open(json_path) as f:
        d = json.load(f)
    draw(d["table"], d["ks"], d["seeds"], png_path, d["seed_finals"])


def main():
    p = experiment_parser(__doc__, None, 500, "out_staleness")
    p.add_argument("--ks", type=int, nargs="+", default=KS, help="staleness values K (--stale K)")
    p.add_argument("--redraw", metavar="JSON", help="only redraw the figure from a staleness.json, beside it")
    args = p.parse_args()
    if args.redraw:
        return redraw(args.redraw, os.path.splitext(args.redraw)[0] + ".png")
    t0 = time.time()
    common = lambda k, seed: ["--steps", str(args.steps), "--seed", str(seed), "--eval_every", "100",
                              "--stale", str(k), "--out_dir", os.path.join(args.out_dir, f"K{k}", f"seed{seed}")]
    wall = None
    if not args.aggregate_only:
        jobs = [(n, common(k, s)) for k in args.ks for s in args.seeds for n in names_at(k, args.names)]
        wall = wall_record(run_all(jobs, args.workers), t0, args.out_dir)
    table = aggregate(args.out_dir, args.ks, args.seeds, args.names)
    finals = seed_finals(args.out_dir, args.ks, args.seeds, args.names)
    write_results(args.out_dir, "staleness", {"ks": args.ks, "seeds": args.seeds, "steps": args.steps,
                                              "names": args.names, "table": table, "seed_finals": finals,
                                              "wall": wall},
                  markdown(table, args.ks, args.names, args.steps, args.seeds, finals))
    draw(table, args.ks, args.seeds, os.path.join(args.out_dir, "staleness.png"), finals)
    print(f"\ntotal wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
