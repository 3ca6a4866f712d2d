"""The branches and refusals no other test reaches: resume refusing another algorithm, another process
count, a warm start made with other settings or a corrupt file; the log truncated after a stop between checkpoints; the no-gradient scorer in
chunks; the exact enumeration past one batch (KVCache.concat); top-p at T != 1 against a nucleus built by
hand; the gradient clip as the optimizer sees it; minibatches of whole groups; a GGUF file's second stop id."""
import argparse
import json
import math
import os
import shutil

import pytest
import torch

import checkpoint
import train
from model import GPT, GPTConfig
from rollout import chunked_logprobs, enumerate_responses, generate, sample_token, sequence_logprobs

TINY = ["--warm_steps", "20", "--steps", "2", "--batch_prompts", "2", "--group_size", "4", "--eval_every", "2",
        "--eval_k", "4", "--log_every", "2", "--ckpt_every", "1", "--n_layer", "1", "--n_embd", "32", "--n_head",
        "2", "--n_kv_head", "1", "--no_plot", "--no_summary"]


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step flowrl run (checkpoint at each step) to copy from."""
    d = str(tmp_path_factory.mktemp("run"))
    train.main(TINY + ["--algo", "flowrl", "--out_dir", d])
    return d


def test_resume_refuses_another_algorithm(finished, tmp_path):
    out = str(tmp_path / "o")
    shutil.copytree(finished, out)
    os.rename(os.path.join(out, "flowrl"), os.path.join(out, "grpo"))
    with pytest.raises(train.UserError, match="holds a flowrl run, not grpo"):
        train.main(TINY + ["--algo", "grpo", "--out_dir", out, "--resume"])


def test_resume_refuses_a_warm_start_made_with_other_settings(finished, tmp_path):
    """The resumed run's π_ref is the saved warm start: under --resume it is not silently remade."""
    out = str(tmp_path / "o")
    shutil.copytree(finished, out)
    saved = open(os.path.join(out, "warmstart.pt"), "rb").read()
    argv = [a if a != "20" else "21" for a in TINY]                     # --warm_steps 21
    with pytest.raises(train.UserError, match=r"warmstart.pt was made with other settings \(warm_steps\)"):
        train.main(argv + ["--algo", "flowrl", "--out_dir", out, "--resume"])
    assert open(os.path.join(out, "warmstart.pt"), "rb").read() == saved


def test_resume_refuses_another_process_count(finished, tmp_path):
    out = str(tmp_path / "o")
    shutil.copytree(finished, out)
    path = os.path.join(out, "flowrl", "ckpt.pt")
    ck = torch.load(path, weights_only=True)
    ck["rng"]["samplers"] = ck["rng"]["samplers"] * 2                 # as two processes would have written it
    torch.save(ck, path)
    with pytest.raises(train.UserError, match="written by 2 processes, this run has 1"):
        train.main(TINY + ["--algo", "flowrl", "--out_dir", out, "--resume"])


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_resume_refuses_a_corrupt_checkpoint_in_one_line(finished, tmp_path, damage):
    out = str(tmp_path / "o")
    shutil.copytree(finished, out)
    path = os.path.join(out, "flowrl", "ckpt.pt")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2] if damage == "truncated" else b"\x00junk" * 100)
    with pytest.raises(train.UserError, match=f"cannot read checkpoint {path}") as e:
        train.main(TINY + ["--algo", "flowrl", "--out_dir", out, "--resume"])
    assert "\n" not in str(e.value)


@pytest.fixture
def out(finished, tmp_path):
    """An empty out_dir holding the finished run's warm start (reused: its settings match)."""
    shutil.copy(os.path.join(finished, "warmstart.pt"), tmp_path / "warmstart.pt")
    return str(tmp_path)


def test_a_stop_between_checkpoints_leaves_each_step_logged_once(out, monkeypatch):
    """Checkpoints every 2 steps; the run stops after logging step 3 (its eval never happens). Resumed, it
    restarts at step 2: the records of step 3 written before the stop are dropped, not duplicated."""
    argv = TINY + ["--algo", "grpo", "--steps", "3", "--ckpt_every", "2", "--eval_every", "3", "--out_dir", out]
    real = train.run_eval

    def stop_at_3(args, run, tok, task, problems, step, *a, **k):
        if step == 3:
            raise KeyboardInterrupt
        return real(args, run, tok, task, problems, step, *a, **k)
    monkeypatch.setattr(train, "run_eval", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    rows = read(os.path.join(out, "grpo", "metrics.jsonl"))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]      # step 3 logged, not checkpointed
    monkeypatch.setattr(train, "run_eval", real)
    train.main(argv + ["--resume"])
    rows = read(os.path.join(out, "grpo", "metrics.jsonl"))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 3]


def tiny(seed=0, vocab=11, block=40):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, n_kv_head=1, n_embd=16, block_size=block)).eval()


def test_chunked_scoring_equals_one_pass():
    model = tiny()
    ro = generate(model, [[1, 2, 3], [4, 5]], num_samples=5, max_new_tokens=9, eos_id=10,
                  generator=torch.Generator().manual_seed(0))
    assert ro.mask.shape[0] == 10 and len(set(ro.mask.sum(1).tolist())) > 1        # rows of different lengths
    with torch.no_grad():
        whole, ent = sequence_logprobs(model, ro, 1.0, with_entropy=True)
    for rows in (1, 3, 4, 10):                                       # 10 chunks, uneven ones, one chunk
        lp, e = chunked_logprobs(model, ro, 1.0, rows)
        assert torch.allclose(lp, whole, atol=1e-5) and torch.allclose(e, ent, atol=1e-5)
        assert chunked_logprobs(model, ro, 1.0, rows, with_entropy=False)[1] is None


def test_enumeration_past_one_batch_equals_one_batch():
    """With batch_size smaller than the frontier, children are scored in several forwards and the caches
    concatenated (KVCache.concat): the same responses with the same probabilities, summing to 1."""
    model = tiny(vocab=5)
    one = enumerate_responses(model, [1, 2], eos_id=4, max_new_tokens=4, min_prob=0.0, max_frontier=None)
    many = enumerate_responses(model, [1, 2], eos_id=4, max_new_tokens=4, min_prob=0.0, max_frontier=None,
                               batch_size=7)
    # 4 tokens besides EOS: EOS after 0..3 of them (1 + 4 + 16 + 64) and 256 responses cut at 4 tokens
    assert len(one[0]) == 85 + 256 and one[0] == many[0]
    assert torch.allclose(one[1], many[1], atol=1e-9)
    assert abs(many[1].exp().sum().item() - 1.0) < 1e-9


@pytest.mark.parametrize("temperature,top_p", [(0.5, 0.8), (2.0, 0.6), (0.7, 1.0)])
def test_top_p_at_any_temperature_samples_the_nucleus_built_by_hand(temperature, top_p):
    """The nucleus by hand: sort softmax(logits / T) in plain Python, keep the most likely tokens until their
    mass reaches top_p; samples fall only there, with frequencies ∝ their probabilities; the returned
    log-prob is log softmax(logits / T) of the token, before truncation."""
    logits = torch.tensor([1.0, 2.5, 0.3, 2.0, -1.0, 1.7])
    z = [math.exp(x / temperature) for x in logits.tolist()]
    p = [v / sum(z) for v in z]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    nucleus, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        nucleus.append(i)
        mass += p[i]
    n = 40000
    tok, lp = sample_token(logits.repeat(n, 1), temperature, top_p, torch.Generator().manual_seed(1))
    assert set(tok.tolist()) == set(nucleus)
    for i in nucleus:
        freq = (tok == i).double().mean().item()
        assert abs(freq - p[i] / mass) < 4 * math.sqrt(p[i] / mass / n) + 1e-3
    assert torch.allclose(lp, torch.tensor([math.log(p[t]) for t in tok.tolist()]), atol=1e-5)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_the_optimizer_steps_on_clipped_gradients(out, monkeypatch, clip):
    """--grad_clip c: when AdamW steps, the policy's and the head's gradients together have norm <= c (the
    clip reached them); --grad_clip 0: the raw norm, above that bound here."""
    norms, in_update = [], []
    real_step, real_update = torch.optim.AdamW.step, train.update

    def step(opt, *a, **k):                               # the RL update's steps (not the warm start's)
        if in_update:
            gs = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in gs])).item())
        return real_step(opt, *a, **k)

    def update(*a, **k):
        in_update.append(1)
        try:
            return real_update(*a, **k)
        finally:
            in_update.clear()
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(train, "update", update)
    train.main(TINY + ["--algo", "flowrl", "--steps", "1", "--grad_clip", str(clip), "--out_dir", out])
    assert norms
    if clip:
        assert max(norms) <= clip * (1 + 1e-4)
    else:
        assert min(norms) > 1e-3


def test_minibatches_hold_whole_groups_in_a_fresh_order():
    G, P = 4, 6
    args = argparse.Namespace(group_size=G, minibatches=3)
    seen = []
    for step in range(3):
        mbs = train.minibatches(args, P, step, 0, torch.device("cpu"))
        rows = torch.cat(mbs).tolist()
        assert sorted(rows) == list(range(P * G)) and all(len(m) == P * G // 3 for m in mbs)
        for m in mbs:                                     # each minibatch: whole groups, G rows of one prompt each
            prompts = sorted({r // G for r in m.tolist()})
            assert sorted(m.tolist()) == [p * G + j for p in prompts for j in range(G)]
        seen.append(rows)
    assert len({tuple(s) for s in seen}) > 1              # the prompt order changes from step to step
    one = train.minibatches(argparse.Namespace(group_size=G, minibatches=1), P, 5, 0, torch.device("cpu"))
    assert [m.tolist() for m in one] == [list(range(P * G))]


def test_a_gguf_files_end_of_turn_token_is_a_second_stop_id(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from test_gguf import bpe, hf_model, write_gguf
    from gguf_io import load_gguf
    tok, tokens, merges = bpe()
    eot = tokens.index("<|endoftext|>")
    path = write_gguf(str(tmp_path / "m.gguf"), hf_model("llama", 64, True), "llama",
                      edit=lambda w: w.add_eot_token_id(eot))
    _, ours = load_gguf(path)
    assert ours.stop_ids == (tokens.index("<|im_end|>"), eot)
    _, plain = load_gguf(write_gguf(str(tmp_path / "p.gguf"), hf_model("llama", 64, True), "llama"))
    assert plain.stop_ids == (tokens.index("<|im_end|>"),)
