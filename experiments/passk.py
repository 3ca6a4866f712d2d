"""
The paper's accuracy claim at toy scale, on countdown (use each given number once to reach the
target; far from saturated at this size): unbiased pass@k for k = 1 ... n on held-out prompts, of
the warm start and of each method after training, over seeds; the question of "Does RL really
incentivize reasoning capacity beyond the base model?" (Yue et al., 2025): does a reward maximizer
raise pass@1 but fall below the warm start at large k, and does FlowRL keep the large-k coverage?
Beside it, answer length over training (flowrl with and without --length_norm, beside grpo).

    python -m experiments.passk              # 7 variants x 3 seeds, 2 at a time (2-core CPU: about 22 minutes)
    python -m experiments.passk --seeds 0 --steps 100    # a quick look
    python -m experiments.passk --redraw docs/passk.json # the figure again, from the json alone

Writes out_passk/seed<S>/<variant>/..., out_passk/passk.json (with the smoothed training series, for --redraw),
out_passk/passk.md, out_passk/passk.png.
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
    last `last` training steps, and the mean length of the first step's answers (sampled from the warm
    start): what passk.json keeps of the length series."""
    mean = lambda xs: sum(xs[-last:]) / len(xs[-last:])
    out = {name: {key: [mean(s[f"completions/{key}"]) for s in ss] for key in ("mean_length", "clipped_ratio")}
           for name, ss in series.items()}
    for name, ss in series.items():
        out[name]["start_length"] = [s["completions/mean_length"][0] for s in ss]
    return out


def accuracy_series(series, window=25, every=5):
    """Per method: the training accuracy's trailing mean of `window` steps, per seed, every `every`-th
    step, rounded to 4 digits: what passk.json keeps so that passk.png can be redrawn without the runs."""
    return {name: {"step": ss[0]["step"][::every],
                   "seeds": [[round(v, 4) for v in smooth(s["sampled_accuracy"], window)[::every]] for s in ss]}
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
    """The mean over seeds as a line, the seeds' range (min to max) as a band, in the method's colour;
    label: the legend's text (default: name)."""
    from plot import style
    m = [sum(v) / len(v) for v in zip(*ys_per_seed)]
    line, = ax.plot(xs, m, label=name if label is None else label, **style(name))
    ax.fill_between(xs, [min(v) for v in zip(*ys_per_seed)], [max(v) for v in zip(*ys_per_seed)],
                    color=line.get_color(), alpha=0.15)


def dynamic(name):
    """Whether the variant trains with dynamic sampling (dapo's default): its training records describe the
    mixed groups it kept."""
    algo, flags = VARIANTS[name]
    return drops_flat_groups(parse_args(["--algo", algo] + flags), algo)


def draw(data, path):
    """passk.png from passk.json's contents alone: pass@k of the final eval, the training accuracy, and the
    answer length at the end of training per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from plot import style
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    for name, cs in data["curves"].items():
        band(axes[0], list(range(1, len(cs[0]) + 1)), cs, name)
    axes[0].set(xscale="log", xlabel="k", ylabel="pass@k", title="pass@k on held-out prompts, final eval")
    axes[0].set_xticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
    for name, acc in data["train_accuracy"].items():
        band(axes[1], acc["step"], acc["seeds"], name)
    axes[1].set(title="accuracy of the sampled answers, every group\n(train; trailing mean of 25 steps)",
                xlabel="RL step", ylabel="fraction of samples correct")
    # answer length: one dot per seed (its last 100 steps), a bar at their mean; the dashed line is the
    # first step's length, sampled from the warm start (mean over every run)
    names = list(data["tails"])
    for i, name in enumerate(names):
        ls = data["tails"][name]["mean_length"]
        c = style(name).get("color")
        axes[2].scatter([i] * len(ls), ls, color=c, s=25, zorder=3)
        axes[2].hlines(sum(ls) / len(ls), i - 0.3, i + 0.3, color=c, lw=2)
    starts = [x for t in data["tails"].values() for x in t["start_length"]]
    axes[2].axhline(sum(starts) / len(starts), color="gray", ls="--", lw=1, label="first step (warm start)")
    axes[2].set_xticks(range(len(names)), [n + " *" if dynamic(n) else n for n in names], rotation=30)
    axes[2].set(title="mean answer length over the last 100 steps\n(dots: the seeds; bars: their mean)",
                ylabel="tokens per answer, incl. EOS", xlabel="* dynamic sampling: the mixed groups it kept")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"countdown: does training keep the warm start's large-k coverage? (lines: mean over seeds "
                 f"{data['seeds']}; bands: min to max over the seeds, where the tables give mean ± std; "
                 f"python -m experiments.passk)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = experiment_parser(__doc__, NAMES, 1000, "out_passk")
    p.add_argument("--n", type=int, default=64, help="samples per held-out prompt (pass@k for k <= n)")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts")
    p.add_argument("--redraw", metavar="JSON", help="redraw passk.png beside this passk.json from its contents "
                   "alone (no runs needed), e.g. --redraw docs/passk.json")
    args = p.parse_args()
    if args.redraw:
        if not os.path.isfile(args.redraw):
            p.error(f"--redraw {args.redraw}: no such file; give a passk.json that python -m experiments.passk wrote")
        with open(args.redraw) as f:
            data = json.load(f)
        if "train_accuracy" not in data:
            p.error(f"--redraw {args.redraw}: it has no training series (written by an older version); "
                    f"rebuild it with --aggregate_only from the run directories")
        path = os.path.join(os.path.dirname(args.redraw), "passk.png")
        draw(data, path)
        print(f"figure: {path}")
        return
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
    data = {"seeds": args.seeds, "steps": args.steps, "n": args.n, "prompts": args.prompts,
            "curves": curves, "tails": tail, "train_accuracy": accuracy_series(series), "wall": wall}
    with open(os.path.join(args.out_dir, "passk.json"), "w") as f:
        json.dump(data, f)
    with open(os.path.join(args.out_dir, "passk.md"), "w") as f:
        f.write(md + "\n")
    draw(data, os.path.join(args.out_dir, "passk.png"))
    print(md)
    print(f"\nfigure: {os.path.join(args.out_dir, 'passk.png')}; total wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
