"""The README and docs show what the commands wrote: every results table is preceded by a marker
naming the file its command wrote (`<!-- generated: docs/x.md -->`) and equals a table of that file
verbatim; those files equal what their scripts compute from the committed json; the paper-to-code
table names functions and tests that exist."""

import importlib
import json
import os
import re

import pytest

import evaluate
from experiments import figure1, offpolicy, passk, realmodel, table
from rewards import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", "docs/results.md", "docs/performance.md", "docs/scaling.md", "docs/testing.md"]
MARKER = re.compile(r"<!-- generated: (\S+) -->")


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def tables(text):
    """Every markdown table of a text: (line index of its first row, the table's lines joined)."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((i, "\n".join(lines[i:j])))
            i = j
        else:
            i += 1
    return out


def marked_blocks(text):
    """(source path, the table or code block right after each marker)."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        m = MARKER.search(line)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if lines[j].startswith("```"):
            k = lines.index("```", j + 1)
            out.append((m.group(1), "\n".join(lines[j + 1:k])))
        else:
            k = j
            while k < len(lines) and lines[k].startswith("|"):
                k += 1
            out.append((m.group(1), "\n".join(lines[j:k])))
    return out


@pytest.mark.parametrize("page", PAGES)
def test_every_marked_table_is_its_files_table(page):
    blocks = marked_blocks(read(page))
    assert blocks, f"{page} shows no generated table"
    for source, block in blocks:
        assert block, (page, source)
        if source == "docs/main/summary.json":                   # the main job's printed table
            summary = json.loads(read(source))
            n_prompts = len(evaluate.eval_problems(get_task("make_n"), 32, 0))
            k = next(iter(summary.values()))["k"]
            assert block == evaluate.final_table(summary, k, n_prompts, 1.0).strip("\n"), page
        else:
            assert block in read(source), (page, source, block.splitlines()[0])


@pytest.mark.parametrize("page", PAGES[1:])
def test_no_numeric_table_in_docs_is_hand_copied(page):
    """A docs table holding decimal numbers must be a generated one (a marker right before it)."""
    text = read(page)
    lines = text.splitlines()
    for i, tab in tables(text):
        if not re.search(r"\d\.\d", tab):
            continue
        before = [l for l in lines[max(0, i - 3):i] if l.strip()]
        assert before and MARKER.search(before[-1]), (page, tab.splitlines()[0])


def test_results_files_equal_what_their_scripts_compute_from_the_json():
    for name in ("table", "skew", "successors"):
        d = json.loads(read(f"docs/{name}.json"))
        names = list(d["table"])
        assert read(f"docs/{name}.md") == table.markdown(d["table"], names, d["steps"], d["seeds"],
                                                          d["warm_skew"]) + "\n", name
    d = json.loads(read("docs/passk.json"))
    assert read("docs/passk.md") == passk.markdown(d["curves"], d["tails"], d["steps"], d["seeds"], d["n"],
                                                   d["prompts"]) + "\n"
    # what passk.png is redrawn from (python -m experiments.passk --redraw docs/passk.json): every method's
    # training accuracy, one series per seed, to the last step
    assert set(d["train_accuracy"]) == set(d["tails"]) == set(d["curves"]) - {passk.START}
    for acc in d["train_accuracy"].values():
        assert len(acc["seeds"]) == len(d["seeds"]) and acc["step"][-1] > d["steps"] - 5
        assert all(len(s) == len(acc["step"]) for s in acc["seeds"])
    d = json.loads(read("docs/figure1.json"))
    assert read("docs/figure1.md") == figure1.markdown(d["summary"], d["steps"]) + "\n"
    d = json.loads(read("docs/offpolicy.json"))
    assert read("docs/offpolicy.md") == offpolicy.markdown(d["table"], d["settings"], d["names"], d["steps"],
                                                           d["seeds"]) + "\n"
    d = json.loads(read("docs/smollm2/report.json"))
    assert read("docs/smollm2/report.md") == realmodel.report_md(d) + "\n"
    assert all({"algo", "seed", "step", "eval_prompts"} <= set(r) for r in d["runs"])
    records = {}                                  # the report's finished runs are the committed records
    for name in sorted(os.listdir(os.path.join(ROOT, "docs/smollm2/runs"))):
        rec = json.loads(read(f"docs/smollm2/runs/{name}"))
        records[name.removesuffix(".json")] = {k: rec[k] for k in realmodel.ENTRY_KEYS}
    finished = {realmodel.run_name(r["algo"], r["seed"]): r for r in d["runs"] if r["step"] == d["steps"]}
    assert finished == records and set(d["missing"]).isdisjoint(records)
    assert len(records) + len(d["missing"]) == len(d["seeds"]) * len(d["algos"])
    d = json.loads(read("docs/smollm2/pilot_tasks.json"))
    assert read("docs/smollm2/pilot_tasks.md") == realmodel.pilot_tasks_md(d["tasks"]) + "\n"
    d = json.loads(read("docs/smollm2/pilot_lr.json"))
    assert read("docs/smollm2/pilot_lr.md") == realmodel.pilot_lr_md(d["rows"], d["steps"]) + "\n"
    import config                                 # the sweep runs at the rates the pilot chose
    chosen = realmodel.chosen_lrs(d["rows"])
    assert config.PRESETS["smollm2"]["lr"] == chosen["flowrl"] == chosen["grpo"]
    assert float(realmodel.SWEEP_LR["gflowrl"]) == chosen["gflowrl"]
    from benchmarks import precision_run
    d = json.loads(read("docs/bf16_vs_fp32.json"))
    assert read("docs/bf16_vs_fp32.md") == precision_run.table(d) + "\n"
    mutation = load_mutation()
    for name in ("mutation", "mutation_before"):
        d = json.loads(read(f"docs/{name}.json"))
        assert read(f"docs/{name}.md") == mutation.markdown(d) + "\n", name
        assert mutation.summary(status_of(d), d["survivors"]) == d["files"], name       # the counts add up


def load_mutation():
    """tests/mutation.py (a script, not a test module)."""
    spec = importlib.util.spec_from_file_location("mutation", os.path.join(ROOT, "tests", "mutation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def status_of(d):
    """A status per mutant consistent with a mutation json: its survivors as listed, the rest killed."""
    out = {s["mutant"]: s["status"] for s in d["survivors"]}
    for f, counts in d["files"].items():
        mod = f[:-3]
        for k in range(counts["killed"]):
            out[f"{mod}.killed_{k}"] = "killed"
    return out


def test_mutation_scores_count_and_explain_as_documented():
    """tests/mutation.py's arithmetic on a made-up result: the score counts the unreached mutants against the
    file, and a survivor is explained only when both its name and its edit match an EXPLAINED entry."""
    m = load_mutation()
    status = {"flowrl.x_a__mutmut_1": "killed", "flowrl.x_a__mutmut_2": "survived", "flowrl.x_b__mutmut_1": "no tests",
              "flowrl.x_b__mutmut_2": "timeout", "rewards.x_in_heldout__mutmut_3": "survived"}
    survivors = [{"mutant": "flowrl.x_a__mutmut_2", "status": "survived",
                  "reason": m.explain("flowrl.x_a__mutmut_2", "x.flip(+1)")},
                 {"mutant": "flowrl.x_b__mutmut_1", "status": "no tests", "reason": None},
                 {"mutant": "rewards.x_in_heldout__mutmut_3", "status": "survived",
                  "reason": m.explain("rewards.x_in_heldout__mutmut_3", "x <= share * 2 ** 64")}]
    files = m.summary(status, survivors)
    assert files["flowrl.py"] == {"mutants": 4, "killed": 2, "survived": 1, "no_tests": 1, "score": 0.5,
                                  "explained": 1, "unexplained": 1}
    assert files["rewards.py"]["explained"] == 1 and files["rewards.py"]["score"] == 0.0
    assert m.explain("flowrl.x_gae__mutmut_9", "x <= share * 2 ** 64") is None          # another function


def test_paper_to_code_table_names_functions_and_tests_that_exist():
    readme = read("README.md")
    start = readme.index("## The paper in the code")
    rows = [t for _, t in tables(readme[start:])][0].splitlines()[2:]
    assert len(rows) >= 11
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip()[1:-1])]          # "\|" is a pipe in a cell
        place, functions = cells[1], re.findall(r"`(\w+)\.(\w+)`", cells[2])
        tests = re.findall(r"`(tests/\w+\.py)::(\w+)`", cells[4])
        assert functions and tests and re.search(r"M\d", cells[3]), row
        assert re.search(r"Eq\. \d|Proposition \d|Appendix [A-Z]|method section", place), row
        for module, fn in functions:
            assert hasattr(importlib.import_module(module), fn), (module, fn)
        for path, test in tests:
            assert f"def {test}(" in read(path), (path, test)
        for section in re.findall(r"M\d(?:\.\d)?", cells[3]):
            assert f"## {section} " in read("docs/method.md") or f"**{section} " in read("docs/method.md"), section


# ---------------------------------------------------------------------------------------------
# numbers in prose: each is read from a committed file that a marker names

NUMBERS = re.compile(r"<!-- numbers: (.+?) -->")
# settings and constants, not results: hyperparameters the commands set (the KL coefficients, clip
# ranges, the paper's sampling setting, learning rates) and the paper's own reported numbers
SETTINGS = {"0.01", "0.04", "0.1", "0.2", "0.8", "1.2", "1.28", "0.28", "0.6", "0.95", "0.5", "0.3", "1.0", "0.9",
            "0.11", "8.68"}
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d\.)(?!\.\d)(?![\w])")
PERCENT = re.compile(r"(?<![\w.])(\d+)%")
SECONDS = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+) s\b")


def file_numbers(paths):
    """What the named files hold: every decimal as written (md) or as rounded to 0-4 places (json and md),
    as whole percents, and as whole seconds."""
    decimals, percents, whole = set(), set(), set()
    for path in paths:
        text = read(path)
        values = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?|-?\d+", text.replace(",", ""))]
        decimals |= set(re.findall(r"\d+\.\d+", text))
        for v in values:
            decimals |= {f"{abs(v):.{d}f}" for d in range(5)}
            percents.add(round(100 * abs(v)))
            whole.add(round(abs(v)))
    return decimals, percents, whole


def prose_sections(text):
    """(the files a numbers marker names or None, the prose lines up to the next marker or heading),
    code blocks, tables and comments left out."""
    out, files, lines, in_code = [], None, [], False
    for line in text.splitlines() + ["# end"]:
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code or line.startswith("|"):
            continue
        m = NUMBERS.search(line)
        if m or line.startswith("#") or MARKER.search(line):
            out.append((files, lines))
            files, lines = (m.group(1).split() if m else None), []
            continue
        lines.append(line)
    return out


@pytest.mark.parametrize("page", PAGES + ["docs/method.md"])
def test_every_number_in_prose_comes_from_a_named_file(page):
    """A decimal, a percent or a wall time in a page's prose must sit under a numbers marker and be
    found in one of the files it names (settings and the paper's own numbers aside)."""
    for files, lines in prose_sections(read(page)):
        prose = "\n".join(lines)
        # inline code, arXiv ids, versions, speed-ups
        prose = re.sub(r"`[^`]*`|arXiv \d+\.\d+|v\d+(\.\d+)+|\d+\.\d+\.\d+|\d+\.\d+x\b", "", prose)
        prose = re.sub(r"(?i)\b(transformers|trl|torch|python) \d+(\.\d+)+", "", prose)                # versions
        decimals = [d for d in DECIMAL.findall(prose) if d not in SETTINGS]
        percents, seconds = PERCENT.findall(prose), SECONDS.findall(prose)
        if not (decimals or percents or seconds):
            continue
        assert files, f"{page}: numbers {decimals + percents + seconds} with no numbers marker: {prose[:120]!r}"
        have_dec, have_pct, have_s = file_numbers(files)
        for d in decimals:
            assert d in have_dec, f"{page}: {d} is in none of {files}: {prose[:120]!r}"
        for p in percents:
            assert int(p) in have_pct, f"{page}: {p}% is in none of {files}"
        for s in seconds:
            assert int(s.replace(",", "")) in have_s, f"{page}: {s} s is in none of {files}"


def test_the_experiments_tables_wall_times_come_from_the_files_they_name():
    """README's Experiments table: a wall time in a row's last cell is in the file that cell names
    ("as above, `x.json`": the docs/ file of that name)."""
    section = read("README.md").split("## Experiments", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[-2] for line in section.splitlines() if line.startswith("| `")]
    timed = 0
    for cell in rows:
        numbers = [d for d in DECIMAL.findall(cell)] + SECONDS.findall(cell)
        paths = re.findall(r"`([\w/.]+\.json)`", cell)
        if not numbers or not paths:
            continue
        assert len(paths) == 1, cell
        path = paths[0] if "/" in paths[0] else "docs/" + paths[0]
        have_dec, _, have_s = file_numbers([path])
        for d in DECIMAL.findall(cell):
            assert d in have_dec, f"README Experiments table: {d} is not in {path}"
        for s in SECONDS.findall(cell):
            assert int(s.replace(",", "")) in have_s, f"README Experiments table: {s} s is not in {path}"
        timed += 1
    assert timed >= 5                      # the main job, successors, staleness, figure1, passk, mutation
