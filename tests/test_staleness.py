"""experiments/staleness.py, the sweep of issue 32: which variants run at which K, that each parses as train.py flags,
and the table it writes from finished runs (fake metrics here: the sweep itself takes hours)."""

import json
import os

import pytest

import config
from experiments import common as experiments, staleness


def test_the_sweep_runs_every_factor_at_every_k_and_the_rest_where_asked():
    for k in staleness.KS:
        names = staleness.names_at(k)
        for f in ("flowrl", "flowrl_exact"):                  # weight x log Z, both forms, at every K
            for z in ("", "_group", "_logz0"):
                assert {f + z, f + z + "_wfree", f + z + "_w1"} <= set(names)
        assert {"grpo", "dr_grpo"} <= set(names)
        assert ("flowrl_old" in names) == (k in (0, 4)) and ("flowrl_lr10" in names) == (k in (0, 4))
    assert staleness.names_at(4, ["flowrl_w1", "grpo_lr3"]) == ["flowrl_w1", "grpo_lr3"]


def meaning(name):
    """What a variant's name says, read from the name alone: (algo, logz, clip bounds, weight, prior, lr divisor)."""
    algo = next(a for a in ("flowrl_exact", "flowrl", "dr_grpo", "grpo") if name.startswith(a))
    rest = name[len(algo):]
    logz = "group" if "_group" in rest else "none" if ("_logz0" in rest or "_old" in rest) else "head"
    clip = None if "_wfree" in rest else (0.8, 1.2)
    weight = "one" if "_w1" in rest else "ratio"
    prior = "old" if "_old" in rest else "ref"
    div = 10 if rest.endswith("_lr10") else 3 if rest.endswith("_lr3") else 1
    return algo, logz, clip, weight, prior, div


@pytest.mark.parametrize("name", sorted(set(staleness.SWEEP) | set(staleness.OLD) | set(staleness.STEP)))
def test_every_variant_is_the_train_command_its_name_says(name):
    """Every flag a variant's name stands for, checked on the parsed train.py arguments: the form, the log Z
    source, the clip bounds (none for _wfree), the weight, the prior, and the policy's and head's rates."""
    algo, flags = experiments.VARIANTS[name]
    args = config.parse_args(["--algo", algo, "--stale", "4"] + flags)
    want_algo, logz, clip, weight, prior, div = meaning(name)
    assert args.stale == 4 and algo == want_algo
    assert (args.logz, args.clip_bounds, args.weight, args.prior) == (logz, clip, weight, prior)
    assert args.lr == pytest.approx(3e-4 / div) and args.logz_lr == pytest.approx(0.1 / div)


def test_table_and_figure_from_finished_runs(tmp_path):
    out = str(tmp_path)
    for k in (0, 4):
        for s in (0, 1):
            for n, acc in (("flowrl_w1", 0.5 + s / 10), ("grpo", 0.9)):
                d = os.path.join(out, f"K{k}", f"seed{s}", n)
                os.makedirs(d)
                recs = [{"kind": "eval", "step": 0, "accuracy": 0.1, "k": 16},
                        {"kind": "train", "step": 1, "accuracy": 0.2, "is_ratio/seq_std": 0.1 * k, "clip_frac": 0.0,
                         **({"tb_residual/mean": 3.0 + s} if n == "flowrl_w1" else {})},
                        {"kind": "eval", "step": 2, "accuracy": acc, "k": 16, "effective_correct": 2.0,
                         "kl_to_target": 1.0 + k}]
                with open(os.path.join(d, "metrics.jsonl"), "w") as f:
                    f.write("\n".join(json.dumps(r) for r in recs))
    table = staleness.aggregate(out, [0, 4], [0, 1], ["flowrl_w1", "grpo"])
    assert table["K4/flowrl_w1"]["accuracy"][:2] == pytest.approx((0.55, 0.0707106), rel=1e-4)
    assert table["K4/flowrl_w1"]["is_ratio/seq_std"][0] == pytest.approx(0.4)
    finals = staleness.seed_finals(out, [0, 4], [0, 1], ["flowrl_w1", "grpo"])
    assert finals["K4/flowrl_w1"]["accuracy"] == [0.5, 0.6] and finals["K4/grpo"]["log_z/learned"] == [None, None]
    assert finals["K4/flowrl_w1"]["tb_residual"] == [3.0, 4.0] and finals["K4/grpo"]["tb_residual"] == [None, None]
    md = staleness.markdown(table, [0, 4], ["flowrl_w1", "grpo"], 2, [0, 1], finals)
    assert "| flowrl_w1 | 0.55 ± 0.07 | 2.00 ± 0.00 | 5.00 ± 0.00 | 0.40 ± 0.00 | 0.00 ± 0.00 |" in md
    assert "| variant | K = 0 | K = 4 |" in md
    assert "| flowrl_w1 | 1.00 ± 0.00 | 5.00 ± 0.00 |" in md          # KL(π‖p*) against K: 1 + k
    assert "| flowrl_w1 | 0.55 ± 0.07 | 0.55 ± 0.07 |" in md          # accuracy against K
    assert md.index("KL(π‖p*) in nats against K") < md.index("K0: rollouts 0")
    assert "| K4/flowrl_w1 |" not in md                              # no cell with std above its mean here
    table["K4/flowrl_w1"]["kl_to_target"] = (5.0, 7.0, 2)
    wide = "\n".join(staleness.wide_cells(table, finals, [0, 1]))
    assert "| K4/flowrl_w1 | 1 | 0.60 | - | - | 2.00 | 5.00 | - | - | 4.00 |" in wide and "| K4/grpo |" not in wide
    rest = {key: c for key, c in table.items() if key != "K0/grpo"}  # a variant not run at a K shows "-"
    assert "| grpo | - | 5.00 ± 0.00 |" in staleness.against_k(rest, [0, 4], ["flowrl_w1", "grpo"], "kl_to_target", "")
    staleness.draw(table, [0, 4], [0, 1], os.path.join(out, "s.png"), finals)
    assert os.path.getsize(os.path.join(out, "s.png")) > 10000


def test_a_sweep_run_in_parts_keeps_each_commands_wall_time(tmp_path):
    """experiments.merge_walls through write_results: seeds run by separate commands into one out_dir add
    up; a command that reruns a part's runs replaces that part; --aggregate_only (no wall) keeps it all."""
    out = str(tmp_path)
    wall = lambda total, runs, cmd: {"total_s": total, "command": cmd, "runs_s": dict.fromkeys(runs, 1.0)}
    read = lambda: json.load(open(os.path.join(out, "s.json")))["wall"]
    experiments.write_results(out, "s", {"wall": wall(10.0, ["K0/seed0/a", "K0/seed0/b"], "python s.py --seeds 0")}, "")
    experiments.write_results(out, "s", {"wall": wall(7.5, ["K0/seed1/a"], "python s.py --seeds 1")}, "")
    w = read()
    assert w["total_s"] == 17.5 and sorted(w["runs_s"]) == ["K0/seed0/a", "K0/seed0/b", "K0/seed1/a"]
    assert [p["command"] for p in w["parts"]] == ["python s.py --seeds 0", "python s.py --seeds 1"]
    experiments.write_results(out, "s", {"wall": None}, "")                      # --aggregate_only
    assert read() == w
    experiments.write_results(out, "s", {"wall": wall(4.0, ["K0/seed0/a"], "python s.py --seeds 0 --names a")}, "")
    w = read()                                                                   # seed 0's part was rerun in part
    assert w["total_s"] == 11.5 and sorted(w["runs_s"]) == ["K0/seed0/a", "K0/seed1/a"]
    old = {"total_s": 3.0, "runs_s": {"x": 3.0}}                                 # a record from before parts
    assert experiments.merge_walls(old, wall(2.0, ["y"], "c"))["parts"][0] == {"command": None, "total_s": 3.0,
                                                                                "runs": ["x"]}
