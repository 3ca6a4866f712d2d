"""
The same 40-step SmolLM2 run in fp32 and in CPU bf16 (fp32 master weights, a bf16 copy that samples and
trains, π_ref in bf16: precision.py): do the curves tell the same story? Same seed, same cold-start
recipe (each made in its own precision), same prompts; the two differ in every matmul's rounding, so
sampled tokens part ways within the first steps and the comparison is of the story, not of the digits.
Timings are not compared here (the runs shared the machine with other jobs): benchmarks.bench --smollm2 times
the step alone.

    python train.py --preset smollm2 --task make_n --heldout 0 --steps 40 --eval_every 20 --max_new_tokens 48 \\
        --lr 1e-5 --algo flowrl grpo grpo_kl --out_dir out_smollm2_fp32 --no-bf16      # and --bf16, out_smollm2_bf16
    python -m benchmarks.precision_run --fp32 out_smollm2_fp32 --bf16 out_smollm2_bf16

--fp32 and --bf16 each take a run directory or a report.json holding its runs (docs/bf16_vs_fp32.json keeps
both). Writes docs/bf16_vs_fp32.{json,md,png}.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRAIN_KEYS = ("accuracy", "entropy", "completions/mean_length", "kl_ref", "frac_reward_zero_std", "time/step_s")
EVAL_KEYS = ("accuracy", "pass@4", "pass@16", "distinct_correct", "effective_correct", "entropy", "format", "length")
ALGOS = ("flowrl", "grpo", "grpo_kl")


def read_runs(source):
    """{algo: {"evals": [...], "train": [...]}} from a run directory (its <algo>/metrics.jsonl) or from a json
    that already holds them (under "runs")."""
    if os.path.isfile(source):
        with open(source) as f:
            runs = json.load(f)["runs"]
        return {a: {"evals": runs[a]["evals"], "train": runs[a]["train"]} for a in ALGOS}
    out = {}
    for a in ALGOS:
        with open(os.path.join(source, a, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out[a] = {"evals": [{k: r[k] for k in ("step",) + EVAL_KEYS} for r in rows if r["kind"] == "eval"],
                  "train": [{k: r[k] for k in ("step",) + TRAIN_KEYS if k in r} for r in rows
                            if r["kind"] == "train" and "accuracy" in r]}
    return out


def mean(xs):
    return sum(xs) / len(xs)


def table(data):
    """Per algorithm and precision: the evals at each step, and the training means over the last 8 steps."""
    lines = ["| run | precision | " + " | ".join(f"{k} (step {s})" for s in (20, 40) for k in ("accuracy", "pass@16",
             "effective correct")) + " | train accuracy, last 8 | token entropy, last 8 | all-equal groups, last 8 |",
             "|---" * 10 + "|"]
    for a in ALGOS:
        for prec in ("fp32", "bf16"):
            r = data[prec][a]
            ev = {e["step"]: e for e in r["evals"]}
            last = r["train"][-8:]
            cells = [f"{ev[s][k]:.3f}" if k != "effective_correct" else f"{ev[s][k]:.2f}"
                     for s in (20, 40) for k in ("accuracy", "pass@16", "effective_correct")]
            lines.append(f"| {a} | {prec} | " + " | ".join(cells) + f" | {mean([x['accuracy'] for x in last]):.3f} | "
                         f"{mean([x['entropy'] for x in last]):.3f} | "
                         f"{mean([x['frac_reward_zero_std'] for x in last]):.2f} |")
    start = {p: data[p]["flowrl"]["evals"][0] for p in ("fp32", "bf16")}
    lines += ["", "The cold start (step 0), each made in its own precision: " + "; ".join(
        f"{p} accuracy {start[p]['accuracy']:.3f}, pass@16 {start[p]['pass@16']:.3f}, effective correct "
        f"{start[p]['effective_correct']:.2f}, token entropy {start[p]['entropy']:.3f}"
        for p in ("fp32", "bf16")) + "."]
    return "\n".join(lines)


def figure(data, path):
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    colors = dict(flowrl="tab:blue", grpo="tab:red", grpo_kl="tab:orange")
    for a in ALGOS:
        for prec, ls in (("fp32", "-"), ("bf16", "--")):
            r = data[prec][a]
            kw = dict(color=colors[a], ls=ls, label=f"{a} {prec}")
            steps = [x["step"] for x in r["train"]]
            axes[0].plot(steps, [x["accuracy"] for x in r["train"]], **kw)
            axes[1].plot(steps, [x["entropy"] for x in r["train"]], **kw)
            axes[2].plot(steps, [x["frac_reward_zero_std"] for x in r["train"]], **kw)
            axes[3].plot([e["step"] for e in r["evals"]], [e["effective_correct"] for e in r["evals"]], marker="o",
                         **kw)
    for ax, title in zip(axes, ("train accuracy (32 samples a step)", "token entropy (train rollouts)",
                                "share of groups with all-equal rewards", "effective correct answers (eval)")):
        ax.set(title=title, xlabel="RL step")
        ax.grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M-Instruct, 40 steps of make_n, seed 0: fp32 (solid) vs CPU bf16 (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    p.add_argument("--fp32", default="docs/bf16_vs_fp32.json", help="the fp32 run's directory, or a json with it")
    p.add_argument("--bf16", default="docs/bf16_vs_fp32.json", help="the bf16 run's directory, or a json with it")
    p.add_argument("--out", default="docs/bf16_vs_fp32", help="path stem of the .json, .md and .png")
    a = p.parse_args(argv)
    data = {}
    for prec in ("fp32", "bf16"):
        src = getattr(a, prec)
        if os.path.isfile(src) and "fp32" in json.load(open(src)):       # the json this script wrote
            data[prec] = json.load(open(src))[prec]
        else:
            data[prec] = read_runs(src)
    with open(a.out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    md = table(data)
    with open(a.out + ".md", "w") as f:
        f.write(md + "\n")
    figure(data, a.out + ".png")
    print(md)


if __name__ == "__main__":
    main()
