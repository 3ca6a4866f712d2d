"""
Overlay training runs: eval accuracy, the effective number of correct answers, token entropy,
distinct correct answers per group, and the mechanism: the share of groups whose rewards are all equal
(where GRPO has no gradient and practical FlowRL's δ is a pure pull toward π_ref, docs/method.md M5)
and the size of each term of FlowRL's δ.

    python plot.py out/flowrl out/grpo -o fig.png
    python plot.py out/flowrl out/grpo --windows 100 400 1000 2000   # the mechanism as a table instead

Reads each run's metrics.jsonl only (no imports from the rest of the project).
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "eval"]


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


def error_rate(evals):
    """1 − accuracy of each eval, floored at half a sample (0.5 / samples) so that a log axis can show an
    eval without any wrong sample; returns (rates, floor)."""
    n = evals[0]["k"] * len(evals[0]["correct_counts"])
    return [max(1 - r["accuracy"], 0.5 / n) for r in evals], 0.5 / n


def plot_runs(run_dirs, out_path, title=None):
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    ax = dict(zip(["acc", "eff", "ent", "distinct", "flat", "delta"], axes.flat))
    floor = None
    for d in run_dirs:
        train, evals = load(d)
        train = [r for r in train if "accuracy" in r]      # a --drop_flat_groups step that kept no group: no update
        name = os.path.basename(os.path.normpath(d))
        steps = [r["step"] for r in train]
        es = [r["step"] for r in evals]
        err, floor = error_rate(evals)
        line, = ax["acc"].plot(es, err, marker="o", ms=3, label=name, **style(name))
        c = line.get_color()
        ax["eff"].plot(es, [r["effective_correct"] for r in evals], marker="o", ms=3, color=c, label=name)
        ax["ent"].plot(steps, smooth([r["entropy"] for r in train]), color=c, label=name)
        ax["distinct"].plot(steps, smooth([r["distinct_correct"] for r in train]), color=c, label=name)
        ax["flat"].plot(steps, smooth([r["frac_reward_zero_std"] for r in train], 50), color=c,
                        label=f"{name}: groups")
        if train and "flat_groups/grad_share" in train[0]:
            ax["flat"].plot(steps, smooth(finite([r["flat_groups/grad_share"] for r in train]), 50), color=c, ls="--",
                            label=f"{name}: share of Σw|δ|")
        if train and "delta/logp_minus_ref" in train[0] and train[0].get("algo") == "flowrl":
            for key, ls, what in [("log_z/mean", ":", "log Z"), ("delta/logp_minus_ref", "-", "ℓ_θ − ℓ_ref"),
                                  ("delta/beta_reward_abs", "--", "|β·r̂|"),
                                  ("flat_groups/delta_abs", "-.", "|δ| in equal-reward groups: the pull")]:
                ax["delta"].plot(steps, smooth(finite([r[key] for r in train]), 50), color=c, ls=ls,
                                 label=f"{name}: {what}")
    ax["acc"].axhline(floor, color="gray", lw=0.8, ls=":", label="no wrong sample in the eval")
    ax["acc"].set(title="eval error rate, 1 − accuracy (T=1; log scale)", xlabel="RL step",
                  ylabel="fraction of samples wrong", yscale="log")
    ax["eff"].set(title="effective number of correct answers (eval, exact)", xlabel="RL step",
                  ylabel="exp(entropy over correct)")
    ax["ent"].set(title="token entropy of the policy (train, smoothed)", xlabel="RL step", ylabel="nats per token")
    ax["distinct"].set(title="distinct correct answers per group of G (train)", xlabel="RL step", ylabel="answers")
    ax["flat"].set(title="share of groups with all-equal rewards (solid; GRPO's gradient\n"
                   "is 0 there) and of FlowRL's gradient weight w·|δ| from them (dashed)", xlabel="RL step",
                   ylabel="fraction", ylim=(0, 1.02))
    ax["delta"].set(title="practical FlowRL: the terms of δ = log Z + ℓ_θ − ℓ_ref − β·r̂\n"
                    "(batch means; symlog axis)",
                    xlabel="RL step", ylabel="nats (token means)", yscale="symlog")
    for a in axes.flat:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
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
    of the train records' all-equal-group share, FlowRL's gradient weight from those groups, |β·r̂|,
    ℓ_θ − ℓ_ref and the token KL to π_ref (FlowRL's columns are blank for other algorithms), and the
    effective number of correct answers at the last eval inside the window."""
    train, evals = load(run_dir)
    keys = ["frac_reward_zero_std", "flat_groups/grad_share", "delta/beta_reward_abs", "delta/logp_minus_ref",
            "kl_ref"]
    head = (r"| steps | groups with all-equal rewards | FlowRL's Σw·\|δ\| from them | mean \|β·r̂\| "
            "| mean ℓ_θ − ℓ_ref | token KL to π_ref")
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
        args.out = plot_runs(args.runs, args.out or "compare.png", args.title)
    except FileNotFoundError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(args.out)


if __name__ == "__main__":
    main()
