"""
The paper's accuracy claim at toy scale, on countdown (use each given number once to reach the
target; far from saturated at this size): unbiased pass@k for k = 1 ... n on held-out prompts, of
the warm start and of each method after training, over seeds; the question of "Does RL really
incentivize reasoning capacity beyond the base model?" (Yue et al., 2025): does a reward maximizer
raise pass@1 but fall below the warm start at large k, and does FlowRL keep the large-k coverage?
Beside it, answer length over training (flowrl with and without --length_norm, beside grpo).

    python -m experiments.passk              # 7 variants x 3 seeds, 2 at a time (2-core CPU: about 33 minutes)
    python -m experiments.passk --seeds 0 --steps 100    # a quick look

Writes out_passk/seed<S>/<variant>/..., out_passk/passk.json, out_passk/passk.md, out_passk/passk.png.
"""

import json
import os
import time

from config import drops_flat_groups, parse_args
from evaluate import pass_at_k
from experiments.common import VARIANTS, experiment_parser, mean_std, previous_wall, read_evals, run_all, wall_record
from plot import smooth

NAMES = ["flowrl", "flowrl_nolen", "flowrl_exact", "grpo", "dr_grpo", "dapo", "gspo"]
START = "warm start"


def pass_curve(record):
    """Unbiased pass@k for k = 1 ... n of one eval record, averaged over its prompts (n = the record's k)."""
    n = record["k"]
    return [sum(pass_at_k(n, c, k) for c in record["correct_counts"]) / len(record["correct_counts"])
            for k in range(1, n + 1)]


def collect(out_dir, seeds, names):
    """Per method, per seed: the pass@k curve of the final eval (the warm start's: the step-0 eval, the
    same in every run of a seed) and the training series of accuracy and answer length."""
    curves, series = {START: []}, {}
    for s in seeds:
        for i, name in enumerate(names):
            evals = read_evals(os.path.join(out_dir, f"seed{s}", name))
            if i == 0:
                curves[START].append(pass_curve(evals[0]))
            curves.setdefault(name, []).append(pass_curve(evals[-1]))
            train = read_evals(os.path.join(out_dir, f"seed{s}", name), kind="train")
            train = [r for r in train if "accuracy" in r]     # dapo: a step that kept no group made no update
            rec = {k: [r[k] for r in train] for k in ("step", "completions/mean_length", "completions/clipped_ratio")}
            # the accuracy of what the policy sampled: dynamic sampling's records also count the kept groups
            # alone ("accuracy"), which excludes the all-correct ones; its first round is every group sampled
            rec["sampled_accuracy"] = [r.get("dynamic/sampled_accuracy", r["accuracy"]) for r in train]
            series.setdefault(name, []).append(rec)
    return curves, series


def tails(series, last=100):
    """Per method, per seed: the mean answer length and the share of answers cut at the budget over the
    last `last` training steps (what passk.json keeps of the series)."""
    mean = lambda xs: sum(xs[-last:]) / len(xs[-last:])
    return {name: {key: [mean(s[f"completions/{key}"]) for s in ss] for key in ("mean_length", "clipped_ratio")}
            for name, ss in series.items()}


def markdown(curves, tail, steps, seeds, n, n_prompts):
    """passk.md, from passk.json's curves and tails alone."""
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    fmt = lambda xs: "{:.3f} ± {:.3f}".format(*mean_std(xs)[:2])
    lines = [f"countdown, held-out prompts: pass@k (unbiased, from {n} samples per prompt, {n_prompts} prompts, "
             f"T=1), after {steps} steps; mean ± std over seeds {seeds}:", "",
             "| method | " + " | ".join(f"pass@{k}" for k in ks) + " | mean length, last 100 steps | "
             "cut answers, last 100 steps |", "|---" * (len(ks) + 3) + "|"]
    for name, cs in curves.items():
        cells = [fmt([c[k - 1] for c in cs]) for k in ks]
        cells += [fmt(tail[name]["mean_length"]), fmt(tail[name]["clipped_ratio"])] if name in tail else ["-", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def band(ax, xs, ys_per_seed, name, label=None):
    """The mean over seeds as a line, the seeds' range as a band, in the method's colour; label: the
    legend's text (default: name)."""
    from plot import style
    m = [sum(v) / len(v) for v in zip(*ys_per_seed)]
    line, = ax.plot(xs, m, label=name if label is None else label, **style(name))
    ax.fill_between(xs, [min(v) for v in zip(*ys_per_seed)], [max(v) for v in zip(*ys_per_seed)],
                    color=line.get_color(), alpha=0.15)


def draw(curves, series, seeds, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for name, cs in curves.items():
        band(axes[0], list(range(1, len(cs[0]) + 1)), cs, name)
    axes[0].set(xscale="log", xlabel="k", ylabel="pass@k", title="pass@k on held-out prompts, final eval")
    axes[0].set_xticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
    for name, ss in series.items():
        # dynamic sampling (dapo's default) trains on the mixed groups it kept: its lengths describe those
        algo, flags = VARIANTS[name]
        dynamic = drops_flat_groups(parse_args(["--algo", algo] + flags), algo)
        band(axes[1], ss[0]["step"], [smooth(s["sampled_accuracy"], 25) for s in ss], name)
        band(axes[2], ss[0]["step"], [smooth(s["completions/mean_length"], 25) for s in ss], name,
             name + " (kept groups only)" if dynamic else name)
    axes[1].set(title="accuracy of the sampled answers, every group (train; trailing mean of 25 steps)",
                xlabel="RL step", ylabel="fraction of samples correct")
    axes[2].set(title="mean answer length (trailing mean of 25 steps)", xlabel="RL step",
                ylabel="tokens per answer, incl. EOS")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"countdown: does training keep the warm start's large-k coverage? "
                 f"(lines: mean over seeds {seeds}; bands: their range; python -m experiments.passk)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = experiment_parser(__doc__, NAMES, 1000, "out_passk")
    p.add_argument("--n", type=int, default=64, help="samples per held-out prompt (pass@k for k <= n)")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts")
    args = p.parse_args()
    t0 = time.time()
    common = lambda seed: ["--task", "countdown", "--steps", str(args.steps), "--seed", str(seed),
                           "--eval_k", str(args.n), "--eval_prompts", str(args.prompts),
                           "--eval_every", str(max(1, args.steps // 4)), "--log_every", "100",
                           "--ckpt_every", str(args.steps), "--out_dir", os.path.join(args.out_dir, f"seed{seed}")]
    wall = None
    if not args.aggregate_only:
        jobs = [(n, common(s)) for s in args.seeds for n in args.names]
        wall = wall_record(run_all(jobs, args.workers), t0, args.out_dir)
    else:                                       # a rebuild keeps the timing of the runs themselves
        wall = previous_wall(os.path.join(args.out_dir, "passk.json"))
    curves, series = collect(args.out_dir, args.seeds, args.names)
    tail = tails(series)
    md = markdown(curves, tail, args.steps, args.seeds, args.n, args.prompts)
    with open(os.path.join(args.out_dir, "passk.json"), "w") as f:
        json.dump({"seeds": args.seeds, "steps": args.steps, "n": args.n, "prompts": args.prompts,
                   "curves": curves, "tails": tail, "wall": wall}, f)
    with open(os.path.join(args.out_dir, "passk.md"), "w") as f:
        f.write(md + "\n")
    draw(curves, series, args.seeds, os.path.join(args.out_dir, "passk.png"))
    print(md)
    print(f"\nfigure: {os.path.join(args.out_dir, 'passk.png')}; total wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
