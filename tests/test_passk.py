"""experiments/passk.py from finished runs (fake metrics here: the experiment takes half an hour): what passk.json
keeps of each run, and that passk.png is redrawn from that json alone."""

import json
import os
import sys

import pytest

from experiments import passk


def fake_runs(root, seeds=(0, 1), names=("flowrl", "dapo"), steps=60):
    """metrics.jsonl for each seed and name: two evals with per-prompt counts, `steps` train records whose
    accuracy and length are known functions of step, seed and name."""
    for s in seeds:
        for j, name in enumerate(names):
            d = os.path.join(root, f"seed{s}", name)
            os.makedirs(d)
            recs = [{"kind": "eval", "step": 0, "k": 4, "correct_counts": [1, 0, 4]},
                    {"kind": "eval", "step": steps, "k": 4, "correct_counts": [2 + s, 4, 0]}]
            for t in range(1, steps + 1):
                r = {"kind": "train", "step": t, "accuracy": (t % 7) / 10 + s / 100,
                     "completions/mean_length": 6.0 + j + s + t / 100, "completions/clipped_ratio": 0.0}
                if name == "dapo":                       # dynamic sampling: its sampled accuracy is logged apart
                    r["dynamic/sampled_accuracy"] = r["accuracy"] / 2
                recs.append(r)
            with open(os.path.join(d, "metrics.jsonl"), "w") as f:
                f.write("\n".join(json.dumps(r) for r in recs) + "\n")


def test_passk_json_keeps_what_its_figure_needs_and_redraws_from_it(tmp_path, monkeypatch):
    root = str(tmp_path)
    fake_runs(root)
    curves, series = passk.collect(root, [0, 1], ["flowrl", "dapo"])
    # pass@1 of the final eval, seed 1: counts 3, 4, 0 of 4 -> (3/4 + 1 + 0) / 3
    assert curves["dapo"][1][0] == pytest.approx((0.75 + 1 + 0) / 3)
    assert curves[passk.START][0][3] == pytest.approx(2 / 3)          # pass@4 of the warm start: 2 of 3 prompts
    tail = passk.tails(series)
    # the last 100 steps of 60: every step; length 6 + j + s + t/100, mean of t = 30.5
    assert tail["dapo"]["mean_length"] == pytest.approx([7.305, 8.305])
    assert tail["flowrl"]["start_length"] == pytest.approx([6.01, 7.01])
    acc = passk.accuracy_series(series, window=25, every=5)
    assert acc["flowrl"]["step"] == list(range(1, 61, 5))
    # step 56 (index 11): the trailing mean of steps 32..56 of (t % 7) / 10, seed 0
    want = sum((t % 7) / 10 for t in range(32, 57)) / 25
    assert acc["flowrl"]["seeds"][0][11] == pytest.approx(want, abs=1e-4)
    assert acc["dapo"]["seeds"][0][11] == pytest.approx(want / 2, abs=1e-4)      # dapo: the sampled accuracy
    data = {"seeds": [0, 1], "steps": 60, "n": 4, "prompts": 3, "curves": curves, "tails": tail,
            "train_accuracy": acc, "wall": None}
    os.makedirs(os.path.join(root, "docs"))
    path = os.path.join(root, "docs", "passk.json")
    with open(path, "w") as f:
        json.dump(data, f)
    monkeypatch.setattr(sys, "argv", ["passk.py", "--redraw", path])
    passk.main()
    assert os.path.getsize(os.path.join(root, "docs", "passk.png")) > 10000


def test_redraw_refuses_a_missing_file_or_one_without_the_series(tmp_path, monkeypatch, capsys):
    old = tmp_path / "passk.json"
    old.write_text(json.dumps({"curves": {}, "tails": {}}))
    for arg, says in ((str(tmp_path / "none.json"), "no such file"), (str(old), "no training series")):
        monkeypatch.setattr(sys, "argv", ["passk.py", "--redraw", arg])
        with pytest.raises(SystemExit):
            passk.main()
        assert says in capsys.readouterr().err
    assert not (tmp_path / "passk.png").exists()
