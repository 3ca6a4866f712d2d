"""
Overlay training runs: accuracy, token entropy, distinct correct answers, log Z, and pass@k at the end.

    python plot.py out/flowrl out/grpo -o fig.png

Reads each run's metrics.jsonl only (no imports from the rest of the project).
"""

import argparse
import json
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


def smooth(xs, n=10):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        acc = acc[-n:]
        out.append(sum(acc) / len(acc))
    return out


def plot_runs(run_dirs, out_path, title=None):
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    ax = dict(zip(["acc", "ent", "distinct", "eff", "logz", "pass"], axes.flat))
    finals = {}
    for d in run_dirs:
        train, evals = load(d)
        name = os.path.basename(os.path.normpath(d))
        steps = [r["step"] for r in train]
        es = [r["step"] for r in evals]
        line, = ax["acc"].plot(es, [r["accuracy"] for r in evals], marker="o", ms=3, label=name)
        c = line.get_color()
        ax["ent"].plot(steps, smooth([r["entropy"] for r in train]), color=c, label=name)
        ax["distinct"].plot(steps, smooth([r["distinct_correct"] for r in train]), color=c, label=name)
        ax["eff"].plot(es, [r["effective_correct"] for r in evals], marker="o", ms=3, color=c, label=name)
        if train and "log_z/mean" in train[0]:
            ax["logz"].plot(steps, [r["log_z/mean"] for r in train], color=c, label=name)
        if evals:   # pass@1, pass@4, ..., pass@k of the last eval
            ks = sorted(int(x[5:]) for x in evals[-1] if x.startswith("pass@") and x != "pass@k")
            finals[name] = (c, [evals[-1][f"pass@{k}"] for k in ks], ks)
    ax["acc"].set(title="eval accuracy (avg@k, T=1)", xlabel="RL step", ylabel="fraction correct", ylim=(0, 1.02))
    ax["ent"].set(title="token entropy of the policy (train, smoothed)", xlabel="RL step", ylabel="nats per token")
    ax["distinct"].set(title="distinct correct answers per group of G", xlabel="RL step", ylabel="answers")
    ax["eff"].set(title="effective number of correct answers (eval)", xlabel="RL step",
                  ylabel="exp(entropy over correct)")
    ax["logz"].set(title="learned log Z (FlowRL)", xlabel="RL step", ylabel="log Z (nats)")
    width = 0.8 / max(1, len(finals))
    for i, (name, (c, vals, ks)) in enumerate(finals.items()):
        ax["pass"].bar([j + i * width for j in range(len(ks))], vals, width=width, color=c, label=name)
        ax["pass"].set_xticks([j + width * (len(finals) - 1) / 2 for j in range(len(ks))], [f"pass@{k}" for k in ks])
    ax["pass"].set(title="pass@k at the end (unbiased)", ylabel="probability", ylim=(0, 1.02))
    for a in axes.flat:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.suptitle(title or "FlowRL vs reward maximization")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main():
    p = argparse.ArgumentParser(description="Overlay training runs (directories holding metrics.jsonl).")
    p.add_argument("runs", nargs="+", help="run directories, e.g. out/flowrl out/grpo")
    p.add_argument("-o", "--out", default="compare.png", help="output image")
    p.add_argument("--title", default=None, help="figure title")
    args = p.parse_args()
    try:
        plot_runs(args.runs, args.out, args.title)
    except FileNotFoundError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(args.out)


if __name__ == "__main__":
    main()
