"""Mutation testing of the loss and reward files (docs/testing.md): mutmut changes flowrl.py and rewards.py
one small edit at a time (an operator, a constant, an argument, a string) and runs, for each edit, the unit
tests that call the edited function; an edit that no test notices survives. The score is the share killed
of every mutant made, those that no selected test reaches counted as survivors.

    pip install mutmut==3.8.1
    python tests/mutation.py            # about an hour on 2 cores; writes docs/mutation.{json,md}

It works on a copy of the repository (--work), where mutmut keeps its results: a second run redoes only what
changed. Each survivor is listed with its edit and, where the edit cannot change what a test can observe
(an equivalent mutant) or changes only a message or a default that nothing here passes, the reason
(EXPLAINED, matched on the edited line). mutmut is not in requirements-test.txt: CI does not run this."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FILES = ("flowrl.py", "rewards.py")
# the unit tests of the two files; the end-to-end training runs in test_successors.py are left out (each
# mutant would rerun a training run: hours on two cores), as is the rest of the suite
TESTS = ("tests/test_flowrl.py", "tests/test_oracles.py", "tests/test_exact.py", "tests/test_successors.py",
         "tests/test_rewards.py")
DESELECT = ("tests/test_successors.py::test_successors_train_on_policy_with_weight_one",
            "tests/test_successors.py::test_gflowrl_filters_flat_groups_by_default_and_the_flag_turns_it_off")
# --tests_from: tests that are slow under mutmut's tracing and that the current suite has made fast (the
# skew test drew 40,000 demonstrations: 2 minutes a run there, for each mutant of the parser it reaches)
DESELECT_OLD = ("tests/test_rewards.py::test_skewed_demonstrations_follow_the_power_law",
                "tests/test_rewards.py::test_demonstrations_spread_over_correct_answers")
MUTMUT = "3.8.1"
TIMEOUT_MULTIPLIER = 3

# why a surviving edit is not a gap: (a regular expression the mutant's name matches, one the mutated line
# matches, the reason). Each was read and checked by hand; a new survivor stays unexplained until it is.
EXPLAINED = [
    (r"", r"\.(sum|flip|cumsum)\(\+1\)", "on these 2-D tensors dimension +1 is dimension −1"),
    (r"in_heldout", r"int\.from_bytes\(digest\[:8\], \)", "int.from_bytes reads big-endian by default "
     "(Python 3.11+)"),
    (r"in_heldout", r"<= share \* 2 \*\* 64", "a tie needs the 64-bit digest prefix to equal share·2^64 exactly "
     "(probability 2^-64 a prompt)"),
    (r"_expressions", r"for mask in range\(2 \*\* n - 1\)", "mask 0 leaves one side empty, and an empty side "
     "yields no expression: the same expressions"),
    (r"_expressions", r"^break$", "'/' is the last operator of the loop, so break and continue stop the same loop"),
    (r"_expressions", r'op in "XX-/XX"', "the mutated string still holds '-' and '/' and no other operator"),
    (r"CountdownTask", r"str\(x\), 4\)", "an atom's precedence only has to exceed every operator's (2): 3 and 4 "
     "parenthesize alike"),
    (r"", r"clipped\.to\(None\)", "clipped stays bool, and a bool tensor times the float mask counts the same"),
    (r"x_gae", r"running = torch\.zeros\(N, (dtype=None, )?device=values\.device\)", "the running sum starts at 0; "
     "float32 zeros are promoted to the values' dtype at the first step, with the same numbers"),
    (r"x_gae", r"running = torch\.zeros\(N, dtype=values\.dtype, (device=None)?\)", "the device: one device (the CPU) "
     "here, where the default is the values' own; tests/test_cuda.py runs these losses on a GPU"),
    (r"x_flowrl_token_loss", r"\.clamp\((None|-21\.0|-20\.0), ?(None|21\.0|20\.0)?\)\.exp\(\)", "the log-ratio's clamp "
     "to ±20 guards exp() against overflow; w is then clamped to [0.8, 1.28], which gives the same w and the same "
     "clip count for any log-ratio past ±20 (or past ±21)"),
    (r"x_gae|x_reinforce_pp_advantages|LogZHeadǁforward",
     r"mask = mask\.to\(None\)|prompt_mask\[\.\.\., None\]\.to\(None\)",
     "the mask holds 0 and 1, exact in any dtype, and every product with it is promoted to the values' (log-probs', "
     "hidden states') dtype: the same numbers (where a loss's result would change dtype, tests/test_oracles.py "
     "kills the edit)"),
    (r"x_reinforce_pp_advantages", r"\.clamp\(min=1\)\.long\(\)", "only a one-token row moves: its reward lands "
     "one place later, in padding, and the return-to-go at its token (a reverse cumulative sum) still holds it"),
    (r"_random_value", r"/ b if b else 1", "unreachable: a division by zero returned None two lines above"),
    (r"SmallCountdownTask", r"super\(\)\.__init__\(style, (lo=1, )?hi=5, max_target=20\)|"
     r"super\(\)\.__init__\(style, n_numbers=3, hi=5, max_target=20\)", "the dropped keyword repeats CountdownTask's "
     "default (n_numbers=3, lo=1)"),
    (r"demo_answer", r"if rng\.random\(\) <= noise:", "differs only when random() returns noise exactly (at noise 0: "
     "probability 2^-53 a draw)"),
    (r"Taskǁscore", r"self\.well_formed\(None, answer\)", "no task's well_formed reads the problem's data (the form "
     "of an answer does not depend on the prompt)"),
    (r"x_safe_eval", r'elif c in "XX\+-\*/\(\)XX":', "an 'X' read as an operator token is rejected by the parser, as "
     "the tokenizer rejected it before: the same None"),
]


def config(deselect=DESELECT, tests=TESTS):
    """setup.cfg's [mutmut] section for the copy."""
    others = sorted(f for f in os.listdir(ROOT) if f.endswith(".py") and f not in FILES)
    lines = ["[mutmut]", "source_paths=" + "\n    ".join(FILES),
             "also_copy=" + "\n    ".join(others + ["pytest.ini", "experiments", "benchmarks"]),
             "pytest_add_cli_args_test_selection=" + "\n    ".join(list(tests) + [f"--deselect={d}" for d in deselect]),
             "process_isolation=forkserver",       # torch's thread pool does not survive a plain fork
             # a mutant that loops forever is killed after 6x its tests' CPU time (+ 6 s), not mutmut's 30x:
             # a plain edit's tests run at their usual pace, and each endless loop would hold a core for minutes
             f"timeout_multiplier={TIMEOUT_MULTIPLIER}"]
    return "\n".join(lines) + "\n"


def prepare(work, tests_from=None, deselect=DESELECT):
    """Copy the code, tests and config into work (mutmut's own results there are kept); tests_from: a git
    revision whose tests/ replaces the working tree's (the score before new tests)."""
    os.makedirs(work, exist_ok=True)
    for name in os.listdir(ROOT):
        src = os.path.join(ROOT, name)
        if name.endswith(".py") or name == "pytest.ini":
            shutil.copy2(src, os.path.join(work, name))
        elif name in ("tests", "experiments", "benchmarks"):
            shutil.copytree(src, os.path.join(work, name), dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
    if tests_from:
        if tests_from.startswith("before:"):          # the revision before the one that added this file
            added = subprocess.run(["git", "log", "-1", "--format=%H", "--diff-filter=A", "--", tests_from[7:]],
                                   cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
            if not added:
                sys.exit(f"--tests_from {tests_from}: git knows no commit that added {tests_from[7:]}")
            tests_from = added + "~1"
        shutil.rmtree(os.path.join(work, "tests"))
        archive = subprocess.run(["git", "archive", tests_from, "tests"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", work], input=archive.stdout, check=True)
    with open(os.path.join(work, "setup.cfg"), "w") as f:
        f.write(config(deselect, [t for t in TESTS if os.path.exists(os.path.join(work, t))]))


def mutmut(work, *args):
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, capture_output=True, text=True)


def explain(name, plus_line):
    for name_pattern, pattern, reason in EXPLAINED:
        if re.search(name_pattern, name) and re.search(pattern, plus_line):
            return reason
    return None


DIFFS = """
import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
names = json.load(sys.stdin)
print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in names}))
"""


def collect(work):
    """Each mutant's status, and each survivor's edit (the - and + lines of its diff) and explanation."""
    out = mutmut(work, "results", "--all", "true").stdout
    status = dict(re.findall(r"^\s*(\S+): (.+)$", out, flags=re.M))
    names = sorted(k for k, st in status.items() if st not in ("killed", "timeout"))
    run = subprocess.run([sys.executable, "-c", DIFFS], cwd=work, input=json.dumps(names), capture_output=True,
                         text=True, check=True)                       # one process for every diff
    diffs = json.loads(run.stdout.strip().splitlines()[-1])
    survivors = []
    for name in names:
        lines = diffs[name].splitlines()
        minus = [ln[1:].strip() for ln in lines if ln.startswith("-") and not ln.startswith("---")]
        plus = [ln[1:].strip() for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
        survivors.append({"mutant": name, "status": status[name], "was": " / ".join(minus), "now": " / ".join(plus),
                          "reason": explain(name, " / ".join(plus))})
    return status, survivors


def summary(status, survivors):
    files = {}
    for f in FILES:
        mod = f[:-3]
        mine = {k: v for k, v in status.items() if k.startswith(mod + ".")}
        killed = sum(v in ("killed", "timeout") for v in mine.values())
        expl = sum(1 for s in survivors if s["mutant"].startswith(mod + ".") and s["reason"])
        files[f] = {"mutants": len(mine), "killed": killed, "survived": sum(v == "survived" for v in mine.values()),
                    "no_tests": sum(v == "no tests" for v in mine.values()),
                    "score": round(killed / max(1, len(mine)), 4),
                    "explained": expl, "unexplained": len(mine) - killed - expl}
    return files


def table(data):
    """The score per file (the markdown docs/testing.md shows)."""
    lines = ["| file | mutants | killed | survived | reached by no selected test | score | survivors explained "
             "| survivors unexplained |", "|---|---|---|---|---|---|---|---|"]
    for f, s in data["files"].items():
        lines.append(f"| {f} | {s['mutants']} | {s['killed']} | {s['survived']} | {s['no_tests']} | "
                     f"{100 * s['score']:.1f}% | {s['explained']} | {s['unexplained']} |")
    return "\n".join(lines)


def markdown(data):
    """OUT.md: the command, the score table, then every survivor with its edit and the reason it is harmless
    (blank: a gap no test closes yet)."""
    cell = lambda t: t.replace("|", "\\|")
    lines = [f"`{data['command']}` (mutmut {data['mutmut']}; tests: {', '.join(data['tests'])}; deselected: "
             f"{', '.join(data['deselected'])})", "", table(data), "",
             "| surviving mutant | was | now | why harmless |",
             "|---|---|---|---|"]
    for s in data["survivors"]:
        lines.append(f"| {s['mutant']} ({s['status']}) | `{cell(s['was'])}` | `{cell(s['now'])}` | "
                     f"{s['reason'] or ''} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/flowrl_mutation", help="the copy mutmut runs in (its results kept)")
    p.add_argument("--max_children", type=int, default=2, help="mutants tested side by side")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "mutation"), help="writes OUT.json and OUT.md")
    p.add_argument("--collect_only", action="store_true", help="only read the results already in --work")
    p.add_argument("--rerun_survivors", action="store_true", help="after tests were added: test this run's survivors "
                   "again (and, as always, every mutant of a function that changed); the rest keep their verdict")
    p.add_argument("--tests_from", help="a git revision, or before:PATH (the revision before the one that added "
                   "PATH): its tests/ instead of the working tree's (the score before tests were added), two of its "
                   "slow tests deselected (DESELECT_OLD)")
    a = p.parse_args(argv)
    try:
        import mutmut as _m  # noqa: F401
    except ImportError:
        sys.exit(f"mutmut is not installed: pip install mutmut=={MUTMUT}")
    deselect = DESELECT + (DESELECT_OLD if a.tests_from else ())
    wall = None
    if not a.collect_only:
        fresh = not os.path.exists(os.path.join(a.work, "mutants"))       # a resumed run's time is not the whole
        prepare(a.work, a.tests_from, deselect)
        t0 = time.time()
        names = []
        if a.rerun_survivors and not fresh:             # mutmut keeps a verdict unless the mutant is named
            names = [x["mutant"] for x in collect(a.work)[1]]
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(a.max_children)]
        run = subprocess.run(cmd + names, cwd=a.work)
        if names and not run.returncode:                # then the mutants of changed functions, not yet tested
            run = subprocess.run(cmd, cwd=a.work)
        if run.returncode:
            sys.exit(f"mutmut run failed (exit {run.returncode}); see its output above")
        wall = round(time.time() - t0, 1) if fresh else None
    status, survivors = collect(a.work)
    if not status:
        sys.exit(f"no mutmut results in {a.work}: run without --collect_only first")
    args = argv if argv is not None else sys.argv[1:]
    args = [x for i, x in enumerate(args)
            if x not in ("--collect_only", "--rerun_survivors") and "--work" not in args[max(0, i - 1):i + 1]]
    data = {"command": " ".join(["python", "tests/mutation.py"] + args),          # the run, not this collection
            "mutmut": MUTMUT, "timeout_multiplier": TIMEOUT_MULTIPLIER,
            "tests": [t for t in TESTS if os.path.exists(os.path.join(a.work, t))], "deselected": list(deselect),
            "files": summary(status, survivors), "survivors": survivors}
    if wall is not None:                    # this command's mutmut run, from an empty --work
        from precision import cpu_description
        data.update(wall_s=wall, cpu=cpu_description())
    elif os.path.exists(a.out + ".json"):   # a rerun or a collection: the full run's time stands
        data.update({k: v for k, v in json.load(open(a.out + ".json")).items() if k in ("wall_s", "cpu")})
    with open(a.out + ".json", "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    with open(a.out + ".md", "w") as f:
        f.write(markdown(data) + "\n")
    print(table(data))


if __name__ == "__main__":
    main()
