"""
The real-model experiment's report: SmolLM2-135M-Instruct (its GGUF file), cold-started on worked make_n
demonstrations in its own chat format, then trained with flowrl, grpo and grpo_kl (grpo with the KL term
of the paper's GRPO) from that start on the same prompts, as `python train.py --preset smollm2` does.

    python train.py --preset smollm2 --out_dir out_smollm2      # the runs (about 90 minutes on 2 CPU cores)
    python -m experiments.realmodel --run_dir out_smollm2     # docs/smollm2/{report.json, report.md, curves.png}

Reads the runs' metrics.jsonl and timing.json only; writes the before/after table (the start is each
run's step-0 evaluation, the same model), at T = 1 and at the paper's evaluation setting (T = 0.6,
top-p 0.95), and the training table and curves (response length, token entropy, importance-weight
spread). `--aggregate_only` rebuilds report.md and curves.png from the committed report.json.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from plot import smooth, style  # noqa: E402

EVAL_KEYS = ("accuracy", "distinct_correct", "effective_correct", "entropy", "format", "length")   # and every pass@j
TRAIN_KEYS = ("accuracy", "entropy", "completions/mean_length", "is_ratio/seq_std", "is_ratio/token_std",
              "clip_frac", "kl_ref", "frac_reward_zero_std", "delta/beta_reward_abs", "delta/logp_minus_ref",
              "log_z/mean", "time/step_s")


def read_run(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pick = lambda r, keys: {k: r[k] for k in keys if k in r}
    evals = [r for r in rows if r["kind"] == "eval"]
    paper = [r for r in rows if r["kind"] == "eval_paper"]
    train = [pick(r, ("step",) + TRAIN_KEYS) for r in rows if r["kind"] == "train" and "accuracy" in r]
    pick_eval = lambda r: {**pick(r, ("step", "k") + EVAL_KEYS + tuple(k for k in r if k.startswith("pass@"))),
                           "prompts": len(r["correct_counts"])}
    return {"evals": [pick_eval(r) for r in evals], "paper": [pick_eval(r) for r in paper], "train": train}


def collect(run_dir):
    """The runs train.py made in run_dir (timing.json names them, in order), and its timing."""
    with open(os.path.join(run_dir, "timing.json")) as f:
        timing = json.load(f)
    return {"runs": {name: read_run(os.path.join(run_dir, name)) for name in timing["runs"]}, "timing": timing}


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def report_md(data):
    """The before/after table and the training table, as markdown."""
    runs, names = data["runs"], data["timing"]["runs"]
    start, start_paper = runs[names[0]]["evals"][0], runs[names[0]]["paper"][0]
    k = start["k"]
    n = len(runs[names[0]]["train"])
    t = data["timing"]
    head = [f"python train.py --preset smollm2: {t['total_wall_time_s']:.0f} s in all on {t['device']} "
            f"({t['threads']} threads), of which {t['start_s']:.0f} s loading the GGUF file and the cold start; "
            f"seed {t['seed']}, one run each; evals: {start['prompts']} prompts x {k} samples", ""]
    j = min(4, k)
    lines = head + [f"| model | accuracy (T=1) | pass@{j} | pass@{k} | distinct correct | effective correct "
             f"| token entropy | format | length | accuracy (T=0.6, top-p 0.95) | pass@{k} (T=0.6) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("cold start (step 0)", start, start_paper)] + [
        (f"{name} (step {runs[name]['evals'][-1]['step']})", runs[name]["evals"][-1], runs[name]["paper"][-1])
        for name in names]
    for label, e, p in rows:
        lines.append(f"| {label} | {e['accuracy']:.3f} | {e[f'pass@{j}']:.3f} | {e[f'pass@{k}']:.3f} | "
                     f"{e['distinct_correct']:.2f} | {e['effective_correct']:.2f} | {e['entropy']:.3f} | "
                     f"{e['format']:.3f} | {e['length']:.1f} | {p['accuracy']:.3f} | {p[f'pass@{k}']:.3f} |")
    w = max(1, n // 5)
    lines += ["", f"| run | train accuracy, first / last {w} steps | response length (tokens), first / last {w} | "
              f"token entropy, first / last {w} | KL to π_ref (per token), last {w} | "
              f"importance ratio spread (seq std) | "
              f"clipped share | groups with all-equal rewards, first / last {w} | "
              f"mean \\|β·r̂\\| / mean ℓ_θ − ℓ_ref, "
              f"first {w} | s per step |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        t = runs[name]["train"]
        first, last = t[:w], t[-w:]
        f = lambda rows, key: mean([r.get(key) for r in rows])
        lines.append(f"| {name} | {f(first, 'accuracy'):.3f} / {f(last, 'accuracy'):.3f} | "
                     f"{f(first, 'completions/mean_length'):.1f} / {f(last, 'completions/mean_length'):.1f} | "
                     f"{f(first, 'entropy'):.3f} / {f(last, 'entropy'):.3f} | {f(last, 'kl_ref'):.3f} | "
                     f"{f(t, 'is_ratio/seq_std'):.3f} | "
                     f"{f(t, 'clip_frac'):.3f} | "
                     f"{f(first, 'frac_reward_zero_std'):.2f} / {f(last, 'frac_reward_zero_std'):.2f} | "
                     + (f"{f(first, 'delta/beta_reward_abs'):.2f} / {f(first, 'delta/logp_minus_ref'):.2f} | "
                        if "delta/beta_reward_abs" in t[0] else " | ")
                     + f"{f(t, 'time/step_s'):.1f} |")
    return "\n".join(lines)


def curves(data, path):
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    names = data["timing"]["runs"]
    for name in names:
        r = data["runs"][name]
        s = [x["step"] for x in r["train"]]
        kw = style(name)
        axes[0, 0].plot([e["step"] for e in r["evals"]], [e["accuracy"] for e in r["evals"]], marker="o", label=name,
                        **kw)
        axes[0, 1].plot([e["step"] for e in r["evals"]], [e["effective_correct"] for e in r["evals"]], marker="o",
                        label=name, **kw)
        axes[0, 2].plot([e["step"] for e in r["evals"]], [e["distinct_correct"] for e in r["evals"]], marker="o",
                        label=name, **kw)
        axes[1, 0].plot(s, smooth([x["entropy"] for x in r["train"]], 5), label=name, **kw)
        axes[1, 1].plot(s, smooth([x["completions/mean_length"] for x in r["train"]], 5), label=name, **kw)
        axes[1, 2].plot(s, smooth([x.get("is_ratio/seq_std") for x in r["train"]], 5), label=name, **kw)
    k = data["runs"][names[0]]["evals"][0]["k"]
    n = data["runs"][names[0]]["evals"][0]["prompts"]
    axes[0, 0].set(title=f"eval accuracy ({n} prompts x {k} samples, T=1)", xlabel="RL step", ylabel="accuracy")
    axes[0, 1].set(title=f"effective correct answers per prompt\n(exp entropy of the {k} samples' correct answers)",
                   xlabel="RL step", ylabel="answers")
    axes[0, 2].set(title=f"distinct correct answers per prompt (of {k} samples)", xlabel="RL step", ylabel="answers")
    axes[1, 0].set(title="token entropy (train rollouts, smoothed)", xlabel="RL step", ylabel="nats per token")
    axes[1, 1].set(title="response length (train rollouts, smoothed)", xlabel="RL step", ylabel="tokens")
    axes[1, 2].set(title="importance ratio spread π_θ/π_old (std over sequences)", xlabel="RL step", ylabel="std")
    for a in axes.flat:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct on make_n: `python train.py --preset smollm2` (2-core CPU, one seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--run_dir", default="out_smollm2", help="the --out_dir of `python train.py --preset smollm2`")
    p.add_argument("--out", default="docs/smollm2", help="where report.json, report.md and curves.png go")
    p.add_argument("--aggregate_only", action="store_true", help="rebuild report.md and curves.png from report.json")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if a.aggregate_only:
        with open(os.path.join(a.out, "report.json")) as f:
            data = json.load(f)
    else:
        data = collect(a.run_dir)
        with open(os.path.join(a.out, "report.json"), "w") as f:
            json.dump(data, f, indent=1)
    md = report_md(data)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(md + "\n")
    curves(data, os.path.join(a.out, "curves.png"))
    print(md)


if __name__ == "__main__":
    main()
