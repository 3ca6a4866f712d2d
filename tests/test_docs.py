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
import figure1
import offpolicy
import passk
import realmodel
import table
from rewards import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", "docs/results.md", "docs/performance.md", "docs/scaling.md"]
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
    for name in ("table", "skew"):
        d = json.loads(read(f"docs/{name}.json"))
        names = list(d["table"])
        assert read(f"docs/{name}.md") == table.markdown(d["table"], names, d["steps"], d["seeds"],
                                                          d["warm_skew"]) + "\n", name
    d = json.loads(read("docs/passk.json"))
    assert read("docs/passk.md") == passk.markdown(d["curves"], d["tails"], d["steps"], d["seeds"], d["n"],
                                                   d["prompts"]) + "\n"
    d = json.loads(read("docs/figure1.json"))
    assert read("docs/figure1.md") == figure1.markdown(d["summary"], d["steps"]) + "\n"
    d = json.loads(read("docs/offpolicy.json"))
    assert read("docs/offpolicy.md") == offpolicy.markdown(d["table"], d["settings"], d["names"], d["steps"],
                                                           d["seeds"]) + "\n"
    d = json.loads(read("docs/smollm2/report.json"))
    assert read("docs/smollm2/report.md") == realmodel.report_md(d) + "\n"


def test_paper_to_code_table_names_functions_and_tests_that_exist():
    readme = read("README.md")
    start = readme.index("## The paper in the code")
    rows = [t for _, t in tables(readme[start:])][0].splitlines()[2:]
    assert len(rows) >= 11
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip()[1:-1])]          # "\|" is a pipe in a cell
        functions = re.findall(r"`(\w+)\.(\w+)`", cells[1])
        tests = re.findall(r"`(tests/\w+\.py)::(\w+)`", cells[3])
        assert functions and tests and re.search(r"M\d", cells[2]), row
        for module, fn in functions:
            assert hasattr(importlib.import_module(module), fn), (module, fn)
        for path, test in tests:
            assert f"def {test}(" in read(path), (path, test)
        for section in re.findall(r"M\d(?:\.\d)?", cells[2]):
            assert f"## {section} " in read("docs/method.md") or f"**{section} " in read("docs/method.md"), section
