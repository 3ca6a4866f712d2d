"""benchmarks/bench.py's GPU suite runs end to end on the CPU with tiny shapes (so that on a GPU it runs the first
time), writing each part's table to its own file; the real-lengths checkpoint stops at many lengths."""

import os
import subprocess
import sys
import tempfile

import pytest
import torch

from benchmarks import bench
from hf import from_pretrained
from rollout import generate
from conftest import HANG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stopping_checkpoint_gives_a_spread_of_lengths():
    eos = bench.STOPPING[1]["vocab_size"] - 1
    with tempfile.TemporaryDirectory() as d:
        bench.save_stopping(d, eos)
        model = from_pretrained(d).eval()
    prompts = torch.randint(0, eos, (4, 64), generator=torch.Generator().manual_seed(0)).tolist()
    r = generate(model, prompts, num_samples=8, max_new_tokens=128, eos_id=eos,
                 generator=torch.Generator().manual_seed(0))
    lengths = r.mask.sum(-1).float()
    assert r.finished.float().mean() > 0.9                              # almost every row ends at EOS ...
    assert lengths.min() <= 5 and lengths.max() >= 60                   # ... after very different numbers of tokens
    assert 15 < lengths.mean() < 60


@pytest.mark.slow
def test_gpu_suite_smoke_run_on_the_cpu(tmp_path):
    out = str(tmp_path / "suite")
    p = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--gpu_suite", "--tiny", "--out", out],
                       capture_output=True, text=True, timeout=HANG, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    for part in ("rollout_05b", "real_lengths", "rl_step", "trl_step"):
        text = open(os.path.join(out, part + ".md")).read()
        assert text.strip() and ("|---" in text or "skipped: trl is not installed" in text), part
        assert f"| {part} | {part}.md |" in open(os.path.join(out, "suite.md")).read()
    steps = [line for line in open(os.path.join(out, "rl_step.md")) if line.startswith("| ") and line[2].isdigit()]
    assert len(steps) == 4                                               # the profile of every step
    assert "CPU" in open(os.path.join(out, "suite.md")).readline()       # the machine is named
