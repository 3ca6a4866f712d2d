"""Data parallel training on the CPU (gloo): the averaged gradient of 2 processes equals the one-process
gradient of the whole batch, and a torchrun run writes its files once, from rank 0."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flowrl
import parallel
from model import GPT, GPTConfig
from rollout import generate, sequence_logprobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G = 4


def setup():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, n_layer=2, n_head=2, n_kv_head=1, n_embd=16, block_size=32))
    head = flowrl.LogZHead(16, dropout=0.0)
    ro = generate(model, [[1, 2, 3], [4, 5], [6, 7, 8, 9], [3, 3]], num_samples=G, max_new_tokens=6, eos_id=11,
                  generator=torch.Generator().manual_seed(0))
    rewards = (torch.arange(ro.mask.shape[0]) % 3 == 0).float()
    return model, head, ro, rewards


def grads(model, head, ro, rewards, rows):
    """Gradients of FlowRL + GRPO losses on the given rows (whole groups)."""
    mb = ro.select(rows)
    lp, _, h = sequence_logprobs(model, mb, return_hidden=True)
    r_hat = flowrl.group_normalize(rewards[rows], G)
    log_z = head(h[:, :mb.prompt.shape[1]], mb.prompt_mask)
    loss = flowrl.flowrl_loss(lp, mb.logprobs, mb.logprobs - 0.1, mb.mask, r_hat, log_z)[0] \
        + flowrl.grpo_loss(lp, mb.logprobs, mb.logprobs - 0.1, mb.mask, r_hat, kl_coef=0.1)[0]
    params = list(model.parameters()) + list(head.parameters())
    for p in params:
        p.grad = None
    loss.backward()
    return params


def worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, head, ro, rewards = setup()
    n = ro.mask.shape[0] // world
    params = grads(model, head, ro, rewards, torch.arange(rank * n, (rank + 1) * n))
    parallel.allreduce_grads(params, world)
    if rank == 0:
        torch.save([p.grad for p in params], out)
    dist.destroy_process_group()


def test_allreduced_gradient_equals_single_process(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    model, head, ro, rewards = setup()
    full = [p.grad for p in grads(model, head, ro, rewards, torch.arange(ro.mask.shape[0]))]
    two = torch.load(out, weights_only=True)
    worst = max((a - b).abs().max().item() for a, b in zip(full, two))
    scale = max(a.abs().max().item() for a in full)
    print(f"\nlargest |grad(1 process) - grad(2 processes)| = {worst:.2e} (largest gradient entry {scale:.2e})")
    assert scale > 1e-3 and worst < 1e-6


@pytest.mark.slow
def test_torchrun_two_processes_rank0_writes(tmp_path):
    out = str(tmp_path / "o")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--algo", "flowrl", "--steps", "3", "--warm_steps", "30",
           "--batch_prompts", "4", "--group_size", "4", "--eval_every", "3", "--eval_k", "4", "--n_layer", "1",
           "--n_embd", "32", "--n_head", "2",
           "--n_kv_head", "1", "--out_dir", out, "--device", "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(out, "flowrl", "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]           # written once, by rank 0
    assert sorted(os.listdir(os.path.join(out, "flowrl"))) == ["ckpt.pt", "hf", "metrics.jsonl", "samples.jsonl"]
    assert os.path.exists(os.path.join(out, "summary.json")) and os.path.exists(os.path.join(out, "compare.png"))
    assert p.stdout.count("final eval") == 1
