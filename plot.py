"""
Overlay training runs: eval accuracy (T=1 and the paper's T=0.6), the effective number of correct answers,
token entropy, and the mechanism: the share of groups whose rewards are all equal
(where GRPO has no gradient and practical FlowRL's δ is a pure pull toward π_ref, docs/method.md M5)
and the size of each term of FlowRL's δ.

    python plot.py out/flowrl out/grpo -o fig.png
    python plot.py out/flowrl out/flowrl_exact out/grpo_kl out/grpo --seeds_table docs/table.json -o compare.png
    python plot.py out/flowrl out/grpo --windows 100 400 1000 2000   # the mechanism as a table instead

Reads each run's metrics.jsonl (and experiments.table's table.json where given); no imports from the rest of
the project.
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(run_dir, kinds=("train", "eval")):
    """A run's metrics.jsonl records, one list per kind asked for (train, eval, eval_paper)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return tuple([r for r in rows if r["kind"] == kind] for kind in kinds)


# One colour and line style per algorithm (a variant name of experiments.VARIANTS, or "warm start"), the
# same in every figure: compare.png, figure1.png, passk.png.
STYLE = {
    "flowrl": ("tab:blue", "-"), "flowrl_exact": ("tab:orange", "-"), "grpo": ("tab:green", "-"),
    "grpo_kl0.01": ("tab:olive", "-"), "grpo_kl0.04": ("tab:red", "-"), "grpo_kl0.1": ("tab:pink", "-"),
    "grpo_kl": ("tab:red", "-"),
    "reinforce_pp": ("tab:purple", "-"), "ppo": ("tab:brown", "-"), "flowrl_nolen": ("tab:cyan", "-"),
    "flowrl_no_ref": ("navy", "--"), "flowrl_exact_no_ref": ("darkgoldenrod", "--"),
    "flowrl_beta5": ("deepskyblue", "-."), "flowrl_beta2": ("slateblue", ":"),
    "flowrl_exact_beta5": ("gold", "-."), "flowrl_exact_beta2": ("peru", ":"),
    "flowrl_noclip": ("teal", "--"), "flowrl_exact_noclip": ("orangered", "--"),
    "flowrl_exact_table": ("black", "-."), "flowrl_exact_group": ("gray", "-."),
    "dr_grpo": ("yellowgreen", "-"), "dapo": ("crimson", "-"), "gspo": ("darkcyan", "-"),
    "flowrl_dyn": ("tab:blue", ":"), "flowrl_exact_dyn": ("tab:orange", ":"), "grpo_kl0.04_dyn": ("tab:red", ":"),
    "warm start": ("black", "--"),
}


def style(name):
    """matplotlib keywords for a run's line: its STYLE entry; another name gets matplotlib's next colour."""
    color, ls = STYLE.get(name, (None, "-"))
    return {"color": color, "ls": ls} if color else {"ls": ls}


def smooth(xs, n=10):
    """Trailing mean over n steps; None or NaN entries (no such group that step) are skipped."""
    out, acc = [], []
    for x in xs:
        acc = (acc + [x])[-n:]
        ok = [v for v in acc if v is not None and not math.isnan(v)]
        out.append(sum(ok) / len(ok) if ok else float("nan"))
    return out


def finite(xs):
    """None or NaN (no such group in that step) as a gap in the line, not a zero."""
    return [x if x is not None and not math.isnan(x) else float("nan") for x in xs]


# a run directory's row in experiments.table's 3-seed table where the names differ (the main job's grpo_kl: KL 0.04)
SEED_ROWS = {"grpo_kl": "grpo_kl0.04"}


def seed_bars(path):
    """{variant: (step, mean, sample std, seeds)} of the final effective number of correct answers in
    experiments/table.py's table.json (the main job's setting, several seeds), drawn as error bars beside the curves."""
    with open(path) as f:
        d = json.load(f)
    return {n: (d["steps"], *row["final"]["effective_correct"]) for n, row in d["table"].items()}


def label_panels(ax, n_samples, seeds_table):
    """plot_runs' panel titles and axis labels; n_samples: (prompts, samples per prompt) of the evals."""
    count = f"{n_samples[0]} prompts x {n_samples[1]} samples" if n_samples else ""
    ax["acc"].set(title=f"eval error rate, 1 − accuracy ({count})\n"
                  "T=1: lines; the paper's T=0.6, top-p 0.95: squares", xlabel="RL step",
                  ylabel="fraction of samples wrong (log)", yscale="log")
    ax["eff"].set(title="effective number of correct answers (eval, exact)" + (
                  f"\ndiamonds: the final eval's mean ± std over seeds ({seeds_table})" if seeds_table else ""),
                  xlabel="RL step", ylabel="exp(entropy over correct)")
    ax["ent"].set(title="token entropy of the policy (train, smoothed)", xlabel="RL step", ylabel="nats per token")
    ax["flat"].set(title="share of groups with all-equal rewards (solid; GRPO's gradient\n"
                   "is 0 there) and of FlowRL's gradient weight w·|δ| from them (dashed)", xlabel="RL step",
                   ylabel="fraction", ylim=(0, 1.02))
    ax["big"].set(title="practical FlowRL's δ = log Z + ℓ_θ − ℓ_ref − β·r̂: its large terms"
                        "\n(batch means)",
                  xlabel="RL step", ylabel="nats (token means)")
    ax["small"].set(title="... and its small ones: ℓ_θ − ℓ_ref, and |δ| where r̂ = 0\n(batch means)",
                    xlabel="RL step", ylabel="nats (token means)")


def error_rate(evals, n_samples):
    """1 - accuracy of each eval record, for a log axis: near accuracy 1 runs differ by a few samples of
    prompts x samples (n_samples); an eval with no wrong sample is drawn at half of one sample's share."""
    floor = 0.5 / (n_samples[0] * n_samples[1])
    return [max(1 - r["accuracy"], floor) for r in evals]


def plot_runs(run_dirs, out_path, title=None, seeds_table=None):
    """Six panels: eval accuracy at T=1 and at the paper's T=0.6 (top-p 0.95); the effective number of
    correct answers (with the 3-seed spread of table.json at the end, where given); token entropy; the
    mechanism (all-equal-reward groups and FlowRL's gradient weight from them); and practical FlowRL's δ,
    its large terms (log Z, |β·r̂|) and its small ones (ℓ_θ − ℓ_ref, |δ| in all-equal groups) on two axes."""
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    ax = dict(zip(["acc", "eff", "ent", "flat", "big", "small"], axes.flat))
    bars = seed_bars(seeds_table) if seeds_table else {}
    n_samples = None
    for i, d in enumerate(run_dirs):
        train, evals, paper = load(d, ("train", "eval", "eval_paper"))
        train = [r for r in train if "accuracy" in r]      # a --drop_flat_groups step that kept no group: no update
        name = os.path.basename(os.path.normpath(d))
        steps = [r["step"] for r in train]
        es = [r["step"] for r in evals]
        n_samples = (len(evals[0]["correct_counts"]), evals[0]["k"])
        line, = ax["acc"].plot(es, error_rate(evals, n_samples), marker="o", ms=3, label=name, **style(name))
        c = line.get_color()
        if paper:
            shift = 25 * (i - (len(run_dirs) - 1) / 2)       # side by side: the runs often tie at T=0.6
            ax["acc"].plot([r["step"] + shift for r in paper], error_rate(paper, n_samples), marker="s", ms=7,
                           ls="none", mfc="none", color=c)
        ax["eff"].plot(es, [r["effective_correct"] for r in evals], marker="o", ms=3, label=name, **style(name))
        row = SEED_ROWS.get(name, name)
        if row in bars:
            step, m, sd, n = bars[row]
            ax["eff"].errorbar([step * (1.02 + 0.015 * i)], [m], yerr=[sd], color=c, capsize=4,
                               marker="D", ms=5, label=f"{row}: {n} seeds")
        ax["ent"].plot(steps, smooth([r["entropy"] for r in train]), color=c, label=name)
        ax["flat"].plot(steps, smooth([r["frac_reward_zero_std"] for r in train], 50), color=c,
                        label=f"{name}: groups")
        if train and "flat_groups/grad_share" in train[0]:
            ax["flat"].plot(steps, smooth(finite([r["flat_groups/grad_share"] for r in train]), 50), color=c, ls="--",
                            label=f"{name}: share of Σw|δ|")
        if train and "delta/logp_minus_ref" in train[0] and train[0].get("algo") == "flowrl":
            for panel, key, ls, what in [("big", "log_z/mean", ":", "learned log Z"),
                                         ("big", "delta/beta_reward_abs", "--", "|β·r̂|"),
                                         ("small", "delta/logp_minus_ref", "-", "ℓ_θ − ℓ_ref"),
                                         ("small", "flat_groups/delta_abs", "-.",
                                          "|δ| in all-equal groups: the pull")]:
                ax[panel].plot(steps, smooth(finite([r[key] for r in train]), 50), color=c, ls=ls,
                               label=f"{name}: {what}")
    if n_samples:
        ax["acc"].axhline(error_rate([{"accuracy": 1.0}], n_samples)[0], color="gray", lw=0.8, ls=":",
                          label="no wrong sample")
        ax["acc"].plot([], [], marker="s", ms=7, ls="none", mfc="none", color="gray",
                       label="T=0.6, top-p 0.95 (start, end)")
    if evals and "target_effective_correct" in evals[-1]:
        ax["eff"].axhline(evals[-1]["target_effective_correct"], color="gray", lw=0.8, ls=":",
                          label="p* (= π_ref's shape)")
    label_panels(ax, n_samples, seeds_table if bars else None)
    lo, hi = ax["eff"].get_ylim()
    ax["eff"].set_ylim(lo, hi + 0.6 * (hi - lo))          # room above the curves for the legend
    for a in axes.flat:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, **({"ncol": 2, "loc": "upper left"} if a is ax["eff"] else {}))
    fig.suptitle(title or "FlowRL vs reward maximization")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def mean(xs):
    ok = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(ok) / len(ok) if ok else float("nan")


def window_table(run_dir, ends):
    """The mechanism over step windows (1..ends[0], ends[0]+1..ends[1], ...) of one run, as markdown: means
    of the train records' all-equal-group share, FlowRL's gradient weight from those groups and its |δ|
    there, |β·r̂|,
    ℓ_θ − ℓ_ref and the token KL to π_ref (FlowRL's columns are blank for other algorithms), and the
    effective number of correct answers at the last eval inside the window."""
    train, evals = load(run_dir)
    keys = ["frac_reward_zero_std", "flat_groups/grad_share", "flat_groups/delta_abs", "delta/beta_reward_abs",
            "delta/logp_minus_ref", "kl_ref"]
    head = (r"| steps | groups with all-equal rewards | FlowRL's Σw·\|δ\| from them | mean \|δ\| in them "
            r"| mean \|β·r̂\| | mean ℓ_θ − ℓ_ref | token KL to π_ref (k3 estimate, token mean)")
    if any("dynamic/prompts_drawn" in r for r in train):     # --drop_flat_groups: what the filter saw
        keys += ["dynamic/flat_share", "dynamic/prompts_drawn", "dynamic/kept_groups"]
        head += " | all-equal share of the groups drawn | prompts drawn per step | groups kept per step"
    lines = [f"{os.path.basename(os.path.normpath(run_dir))}:", head + " | effective # at the window's end |",
             "|---" * (len(keys) + 2) + "|"]
    lo = 0
    for hi in ends:
        rows = [r for r in train if lo < r["step"] <= hi]
        cells = [mean([r.get(k) for r in rows]) for k in keys]
        eff = [r["effective_correct"] for r in evals if r["step"] <= hi]
        cells.append(eff[-1] if eff else float("nan"))
        cells = ["" if math.isnan(c) else f"{c:.2f}" for c in cells]
        lines.append(f"| {lo + 1:,}-{hi:,} | " + " | ".join(cells) + " |")
        lo = hi
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description="Overlay training runs (directories holding metrics.jsonl).")
    p.add_argument("runs", nargs="+", help="run directories, e.g. out/flowrl out/grpo")
    p.add_argument("-o", "--out", default=None, help="output image (default: compare.png); with --windows, a "
                   "markdown file to write the table to (default: print only)")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--seeds_table", default=None, metavar="TABLE_JSON",
                   help="experiments.table's table.json: draw each run's 3-seed final effective number as an error bar")
    p.add_argument("--windows", type=int, nargs="+", default=None, metavar="END",
                   help="instead of a figure: print the mechanism's means over the step windows ending at each END")
    args = p.parse_args()
    try:
        if args.windows:
            md = "\n\n".join(window_table(d, args.windows) for d in args.runs)
            print(md)
            if args.out:
                with open(args.out, "w") as f:
                    f.write(md + "\n")
            return
        args.out = plot_runs(args.runs, args.out or "compare.png", args.title, args.seeds_table)
    except FileNotFoundError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(args.out)


if __name__ == "__main__":
    main()
