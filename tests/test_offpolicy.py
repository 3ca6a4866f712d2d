"""Dynamic sampling (--drop_flat_groups) and stale rollouts (--stale K): which batches reach the update,
what π_old is, and that a run with them resumes exactly."""
import copy
import json
import os
import random

import pytest
import torch

import config
import flowrl
import train
from checkpoint import new_run
from model import GPT, GPTConfig
from rewards import ALPHABET, get_task
from rollout import concat_rollouts, generate, sequence_logprobs
from tokenizer import Tokenizer

TINY = ["--warm_steps", "150", "--steps", "4", "--batch_prompts", "4", "--group_size", "4", "--eval_every", "2",
        "--eval_k", "4", "--log_every", "2", "--ckpt_every", "2", "--n_layer", "1", "--n_embd", "32",
        "--n_head", "2", "--n_kv_head", "1", "--no_plot", "--warm_noise", "0.3"]


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def tiny_run(algo, flags=()):
    args = config.parse_args(TINY + ["--algo", algo, "--device", "cpu"] + list(flags))
    tok, task = Tokenizer.for_chars(ALPHABET), get_task("make_n")
    torch.manual_seed(0)
    warm = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, block_size=64))
    return args, tok, task, new_run(args, algo, warm, task, torch.device("cpu"), 0, 1)


def test_concatenated_rollouts_keep_every_row():
    tok = Tokenizer.for_chars(ALPHABET)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, block_size=64))
    gen = torch.Generator().manual_seed(0)
    a = generate(model, [tok.encode_prompt("N=07:")], num_samples=3, max_new_tokens=4, eos_id=tok.eos_id, generator=gen)
    b = generate(model, [tok.encode_prompt("3,5,7=22:")], num_samples=2, max_new_tokens=7, eos_id=tok.eos_id,
                 generator=gen)
    c = concat_rollouts([a, b])
    assert c.prompt.shape == (5, b.prompt.shape[1]) and c.response.shape == (5, max(a.response.shape[1],
                                                                                   b.response.shape[1]))
    for part, rows in ((a, slice(0, 3)), (b, slice(3, 5))):
        sub = c.select(rows)
        assert torch.equal(sub.mask.sum(-1), part.mask.sum(-1))
        assert torch.equal(sub.prompt[sub.prompt_mask], part.prompt[part.prompt_mask])
        assert torch.equal(sub.response[sub.mask], part.response[part.mask])
        # the same log-probs of the same tokens, whatever the padding
        lp_c, _ = sequence_logprobs(model, sub)
        lp_p, _ = sequence_logprobs(model, part)
        assert torch.allclose(lp_c[sub.mask], lp_p[part.mask], atol=1e-5)
    assert c.finished.tolist() == a.finished.tolist() + b.finished.tolist()


def scripted_scores(monkeypatch, task, mixed_targets):
    """task.score made to give all-equal rewards (0) to every target outside mixed_targets and rewards
    1, 0, 1, 0, ... within a group to the others; "answer" stays the decoded completion."""
    real = task.score

    def score(problem, completion):
        s = real(problem, completion)
        score.i += 1
        r = float(problem.data["n"] in mixed_targets and score.i % 2 == 0)
        return {**s, "reward": r, "correct": bool(r), "answer": completion}
    score.i = 0
    monkeypatch.setattr(task, "score", score)


@pytest.mark.parametrize("rounds", [0, 3, 50])
def test_dynamic_sampling_keeps_only_mixed_groups_and_refills(monkeypatch, rounds):
    args, tok, task, run = tiny_run("flowrl", ["--drop_flat_groups", "--refill_rounds", str(rounds)])
    scripted_scores(monkeypatch, task, mixed_targets={6, 9})
    rng_copy = random.Random()
    rng_copy.setstate(run.prompt_rng.getstate())
    s = train.sample_groups(args, run, task, tok, 0, 1)
    G, P = args.group_size, args.batch_prompts
    drawn = [task.sample(rng_copy) for _ in range(s.drawn)]        # the prompts every round drew, in order
    mixed = [p for p in drawn if p.data["n"] in (6, 9)]
    assert s.drawn % P == 0 and s.drawn <= P * (1 + rounds)
    assert s.flat == sum(p.data["n"] not in (6, 9) for p in drawn)
    assert [p.data for p in s.problems] == [p.data for p in mixed][:P]      # kept in the order drawn, at most P
    assert len(s.problems) == P or s.drawn == P * (1 + rounds)              # full, or the rounds ran out
    if s.drawn < P * (1 + rounds):                                          # stopped early: it was full,
        assert sum(p.data["n"] in (6, 9) for p in drawn[:-P]) < P           # and not one round earlier
    if s.problems:
        rewards = torch.tensor([x["reward"] for x in s.scores])
        assert not flowrl.equal_reward_rows(rewards, G).any()
        texts = train.decode_responses(tok, s.ro)
        assert texts == [x["answer"] for x in s.scores]                    # rows and scores stay aligned
        assert s.ro.response.shape[0] == len(s.problems) * G
    assert s.first_rewards.shape == (P * G,)
    # what the policy sampled, every group of the first round: the mixed prompts' groups are half correct
    first_round = drawn[:P]
    assert s.first_accuracy == pytest.approx(sum(p.data["n"] in (6, 9) for p in first_round) * (G // 2) / (P * G))
    assert train.dynamic_record(s)["dynamic/sampled_accuracy"] == s.first_accuracy


def test_a_step_that_keeps_no_group_makes_no_update(monkeypatch, tmp_path):
    out = str(tmp_path)
    real_score = get_task("make_n").__class__.score
    monkeypatch.setattr(get_task("make_n").__class__, "score",
                        lambda self, p, c: {**real_score(self, p, c), "reward": 0.0, "correct": False})
    train.main(TINY + ["--algo", "grpo", "--drop_flat_groups", "--refill_rounds", "1", "--steps", "2",
                       "--out_dir", out])
    recs = [r for r in read(os.path.join(out, "grpo", "metrics.jsonl")) if r["kind"] == "train"]
    assert [(r["dynamic/prompts_drawn"], r["dynamic/kept_groups"], r["dynamic/flat_share"]) for r in recs] == \
        [(8, 0, 1.0)] * 2
    warm = torch.load(os.path.join(out, "warmstart.pt"), weights_only=True)["model"]
    ck = torch.load(os.path.join(out, "grpo", "ckpt.pt"), weights_only=True)
    assert all(torch.equal(v, warm[k]) for k, v in ck["model"].items())     # never updated


def test_dapo_samples_dynamically_by_default_and_flowrl_on_request(tmp_path):
    args = config.parse_args(TINY)
    assert config.drops_flat_groups(args, "dapo") and not config.drops_flat_groups(args, "flowrl")
    args = config.parse_args(TINY + ["--no-drop_flat_groups"])
    assert not config.drops_flat_groups(args, "dapo")
    args = config.parse_args(TINY + ["--drop_flat_groups"])
    assert config.drops_flat_groups(args, "flowrl") and config.drops_flat_groups(args, "grpo")
    out = str(tmp_path)
    train.main(TINY + ["--algo", "dapo", "flowrl", "--drop_flat_groups", "--out_dir", out])
    for algo in ("dapo", "flowrl"):
        recs = [r for r in read(os.path.join(out, algo, "metrics.jsonl")) if r["kind"] == "train"]
        assert len(recs) == 4 and all("dynamic/prompts_drawn" in r for r in recs)        # one per step
        kept = [r for r in recs if "accuracy" in r]
        assert kept and all(r["frac_reward_zero_std"] == 0 for r in kept)


def test_stale_k_trains_on_the_batch_sampled_k_steps_earlier_with_its_samplers_log_probs(monkeypatch):
    K = 2
    args, tok, task, run = tiny_run("flowrl", ["--stale", str(K)])
    real, made = train.sample_groups, []

    def tagged(*a, **kw):                       # each batch with the policy that sampled it
        s = real(*a, **kw)
        made.append((s, copy.deepcopy(run.policy.state_dict())))
        return s
    monkeypatch.setattr(train, "sample_groups", tagged)
    for step in range(5):
        b = train.collect(args, run, task, tok, step, 0, 1)
        # step s trains on batch s (0-based; K start-policy batches sampled before step 0 come first)
        s, state = made[step]
        assert run.last_sample is s and len(made) == step + K + 1 and len(run.pending) == K
        sampler = copy.deepcopy(run.policy)
        sampler.load_state_dict(state)
        old, _ = sequence_logprobs(sampler, b.ro)
        assert torch.allclose(b.old_logprobs, old, atol=1e-6)            # π_old: the policy that sampled it
        stats, _ = train.update(args, run, b, step, 1)
        spread = stats["ratio_seq_std"][0]
        assert (spread == 0) == (step == 0)     # the first K + 1 batches come from π at step 0: w = 1 at step 0 only
    assert made[0][1].keys() == run.policy.state_dict().keys()


def test_stale_zero_and_on_policy_give_ratio_one(tmp_path):
    out = str(tmp_path)
    train.main(TINY + ["--algo", "flowrl", "gspo", "--stale", "0", "--out_dir", out])
    for algo in ("flowrl", "gspo"):
        recs = [r for r in read(os.path.join(out, algo, "metrics.jsonl")) if r["kind"] == "train"]
        assert all(r["is_ratio/seq_std"] == 0 and r["clip_frac"] == 0 for r in recs)


def test_resume_with_stale_and_dynamic_sampling_gives_the_same_metrics(tmp_path):
    """Exact equality by construction, as in test_train's resume test: one process, one CPU, every random
    stream and the queue of stale batches restored from the checkpoint."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = TINY + ["--algo", "flowrl", "--stale", "2", "--drop_flat_groups", "--refill_rounds", "4",
                   "--warm_steps", "400"]
    train.main(args + ["--out_dir", a])
    train.main(args + ["--steps", "2", "--out_dir", b])                      # 2 steps, then resume to 4
    train.main(args + ["--out_dir", b, "--resume"])
    drop = {"time/step_s", "tokens_per_s"}
    ra = [{k: v for k, v in r.items() if k not in drop} for r in read(os.path.join(a, "flowrl", "metrics.jsonl"))]
    rb = [{k: v for k, v in r.items() if k not in drop} for r in read(os.path.join(b, "flowrl", "metrics.jsonl"))]
    assert len(ra) == len(rb) and ra == rb
    assert any(r.get("is_ratio/seq_std", 0) > 0 for r in ra)          # stale batches were trained on


def test_stale_and_dynamic_sampling_refuse_torchrun(monkeypatch):
    monkeypatch.setattr(train, "setup_distributed", lambda device, batch, fsdp: (0, 2, "cpu"))
    for flags in (["--algo", "flowrl", "--stale", "1"], ["--algo", "dapo"], ["--algo", "grpo", "--drop_flat_groups"]):
        with pytest.raises(train.UserError, match="one process only"):
            train.main(TINY + flags)
