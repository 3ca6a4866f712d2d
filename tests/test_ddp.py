"""Data parallel on the CPU (gloo, 2 processes): on the same rollouts, the gradients of 2 processes
equal one process's for every algorithm (DistributedDataParallel; global token counts and
whitening); a torchrun run writes its files once, from rank 0; and resume under torchrun reproduces
an uninterrupted run."""
import gc
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import config
import train
from model import GPT, GPTConfig
from rewards import ALPHABET, get_task
from rollout import generate, sequence_logprobs
from tokenizer import Tokenizer
from conftest import HANG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGOS = {"flowrl": [], "flowrl_exact": [], "grpo": ["--kl_coef", "0.1"], "reinforce_pp": ["--kl_coef", "0.1"],
         "ppo": ["--kl_coef", "0.1"]}
G = 4


def gradients(algo, rank, world, fsdp=False):
    """Every trained tensor's gradient after one backward of `algo`'s loss on this process's share of
    one fixed rollout (the same on every process: same weights, same sampler seed)."""
    args = config.parse_args(["--algo", algo, "--batch_prompts", "4", "--group_size", str(G), "--device", "cpu",
                              "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--n_kv_head", "1"] + ALGOS[algo]
                             + (["--fsdp"] if fsdp else []))
    tok, task = Tokenizer.for_chars(ALPHABET), get_task("make_n")
    torch.manual_seed(0)
    warm = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, block_size=64))
    run = train.new_run(args, algo, warm, task, torch.device("cpu"), rank, world)
    if run.head is not None:
        run.head.eval()                         # dropout off: per-process masks cannot equal one process's
    problems = [task.problem({"n": n}) for n in (5, 7, 9, 11)]
    ro = generate(warm, [tok.encode_prompt(p.prompt) for p in problems], num_samples=G, max_new_tokens=6,
                  eos_id=tok.eos_id, generator=torch.Generator().manual_seed(0))
    scores = [{"reward": float(i % 3 == 0 or i % 5 == 1)} for i in range(len(problems) * G)]
    share = len(problems) // world
    mine = slice(rank * share * G, (rank + 1) * share * G)
    b = train.prepare(args, run, task, problems[rank * share:(rank + 1) * share], ro.select(mine), scores[mine],
                      0, world)
    rows = torch.arange(share * G)
    logprobs, _, h = sequence_logprobs(run.train_policy, b.ro, return_hidden=True)
    if b.old_logprobs is None:                  # one on-policy update: π_old is this forward (as update() does)
        b.old_logprobs = logprobs.detach()
    loss, _ = train.algo_loss(args, run, b, rows, b.ro, logprobs, h)
    run.opt.zero_grad()
    loss.backward()
    full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g.clone()      # FSDP: gather the shards
    return [full(p.grad) if p.grad is not None else torch.zeros(p.shape) for p in run.params]


def worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    grads = {(algo, fsdp): gradients(algo, rank, world, fsdp) for algo in ALGOS for fsdp in (False, True)}
    if rank == 0:
        torch.save(grads, out)
    # teardown as train.py does it: the runs' DDP/FSDP wrappers, kept alive by reference cycles, are freed
    # first, then both processes wait for each other; a group destroyed under a live wrapper or while the
    # peer still talks aborts the process at exit ("terminate called without an active exception", SIGABRT)
    del grads
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_give_the_gradients_of_one(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    for (algo, fsdp), grads in two.items():
        one = gradients(algo, 0, 1)
        worst = max((a - b).abs().max().item() for a, b in zip(one, grads))
        scale = max(a.abs().max().item() for a in one)
        print(f"\n{algo}{' --fsdp' if fsdp else ''}: largest |grad(1 process) - grad(2 processes)| = {worst:.1e} "
              f"(largest entry {scale:.1e})")
        assert scale > 1e-4 and worst < 1e-6 * max(1.0, scale), (algo, fsdp)


def torchrun(out, *extra, steps=4):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--algo", "flowrl", "reinforce_pp", "--steps", str(steps),
           "--warm_steps", "30", "--batch_prompts", "4", "--group_size", "4", "--eval_every", "2", "--eval_k", "4",
           "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--n_kv_head", "1", "--out_dir", out,
           "--device", "cpu", "--ckpt_every", "2", "--kl_coef", "0.05", "--no_plot", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def records(path):
    drop = {"time/step_s", "tokens_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in open(path)]


@pytest.mark.slow
def test_torchrun_writes_once_and_resume_equals_an_uninterrupted_run(tmp_path):
    """Exact equality by construction: both are 2-process gloo runs on this CPU, whose all-reduce sums the
    same two gradients in the same order, and the resumed one restores every process's streams."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    p = torchrun(a)
    assert p.stdout.count("final eval") == 1
    rows = records(os.path.join(a, "flowrl", "metrics.jsonl"))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]           # written once, by rank 0
    assert sorted(os.listdir(os.path.join(a, "flowrl"))) == ["ckpt.pt", "hf", "metrics.jsonl", "samples.jsonl"]
    assert len(torch.load(os.path.join(a, "flowrl", "ckpt.pt"), weights_only=True)["rng"]["samplers"]) == 2
    torchrun(b, steps=2)
    torchrun(b, "--resume")
    for algo in ("flowrl", "reinforce_pp"):
        assert records(os.path.join(a, algo, "metrics.jsonl")) == records(os.path.join(b, algo, "metrics.jsonl"))


@pytest.mark.slow
def test_fsdp_run_writes_a_full_checkpoint_and_resumes(tmp_path):
    """Exact equality by construction: both are 2-process gloo runs on this CPU, whose all-reduce sums the
    same two gradients in the same order, and the resumed one restores every process's streams."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    torchrun(a, "--fsdp")
    ck = torch.load(os.path.join(a, "flowrl", "ckpt.pt"), weights_only=True)
    policy = GPT(GPTConfig(**ck["model_config"]))                    # one process loads the full state
    policy.load_state_dict(ck["model"])
    assert ck["head"]["out.weight"].shape == (1, 32)                 # the log Z head in full, not a shard
    exp_avg = ck["optimizer"]["state"][0]["exp_avg"]
    assert exp_avg.shape == next(policy.parameters()).shape          # AdamW state in full too
    assert os.path.exists(os.path.join(a, "flowrl", "hf", "model.safetensors"))
    torchrun(b, "--fsdp", steps=2)
    torchrun(b, "--fsdp", "--resume")
    for algo in ("flowrl", "reinforce_pp"):
        assert records(os.path.join(a, algo, "metrics.jsonl")) == records(os.path.join(b, algo, "metrics.jsonl"))
