"""What train.py hands each loss (the wiring that could break silently), the exact evaluation at π = p*
on a hand-built policy, and the sampler on a real model whose rows end at different steps."""
import math
import os
import shutil

import pytest
import torch
import torch.nn as nn

import evaluate
import flowrl
import starts
import train
from model import GPT, GPTConfig, KVCache
from rewards import ALPHABET, MakeNTask, get_task
from rollout import generate, sequence_logprobs
from tokenizer import Tokenizer

TINY = ["--warm_steps", "300", "--steps", "2", "--batch_prompts", "4", "--group_size", "4", "--eval_every", "2",
        "--eval_k", "4", "--log_every", "2", "--ckpt_every", "2", "--n_layer", "1", "--n_embd", "32",
        "--n_head", "2", "--n_kv_head", "1", "--no_plot", "--warm_noise", "0.3"]


@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory):
    """One warm start for every test here (train.py reuses out_dir/warmstart.pt while its settings match)."""
    d = tmp_path_factory.mktemp("warm")
    train.main(TINY + ["--algo", "grpo", "--steps", "1", "--out_dir", str(d), "--no_summary"])
    return str(d / "warmstart.pt")


@pytest.fixture
def out(tmp_path, warm_dir):
    shutil.copy(warm_dir, tmp_path / "warmstart.pt")
    return str(tmp_path)


def record_calls(monkeypatch, name):
    """Wrap flowrl.<name> so that every call's arguments are kept (the wrapped function still runs)."""
    real, calls = getattr(flowrl, name), []

    def wrapped(*a, **kw):
        calls.append((a, kw))
        return real(*a, **kw)
    monkeypatch.setattr(flowrl, name, wrapped)
    return calls


def record_batches(monkeypatch):
    """Wrap train.collect: every batch it returns, with the log Z head's bias right after it."""
    real, batches = train.collect, []

    def wrapped(args, run, *a, **kw):
        b = real(args, run, *a, **kw)
        bias = run.head.out.bias.item() if isinstance(run.head, flowrl.LogZHead) else None
        batches.append((b, bias))
        return b
    monkeypatch.setattr(train, "collect", wrapped)
    return batches


def test_flowrl_gets_group_normalized_rewards_and_token_means(out, monkeypatch):
    calls, batches = record_calls(monkeypatch, "flowrl_loss"), record_batches(monkeypatch)
    train.main(TINY + ["--algo", "flowrl", "--out_dir", out])
    assert len(calls) == len(batches) == 2
    for (a, kw), (b, bias) in zip(calls, batches):
        logprobs, old, ref, mask, rewards, log_z = a
        assert torch.equal(rewards, flowrl.group_normalize(b.rewards, 4)) and kw["length_norm"] is True
        assert torch.equal(ref, b.ref_logprobs) and torch.equal(old, b.old_logprobs) and torch.equal(mask, b.ro.mask)
        assert torch.allclose(b.old_logprobs, b.ro.logprobs, atol=1e-4)   # the training forward's π_old ≈ sampler's
        assert kw["beta"] == 15.0 and kw["clip"] == (0.8, 1.2)
    assert abs(batches[0][1]) < 1e-6                              # the practical form's log Z starts at 0
    assert any(0 < b.rewards.sum() < len(b.rewards) for b, _ in batches)   # groups with a learning signal


def test_flowrl_exact_gets_raw_rewards_sums_and_the_log_z_init(out, monkeypatch):
    calls, batches = record_calls(monkeypatch, "flowrl_loss"), record_batches(monkeypatch)
    train.main(TINY + ["--algo", "flowrl_exact", "--out_dir", out])
    (a, kw), (b, bias) = calls[0], batches[0]
    assert torch.equal(a[4], b.rewards) and kw["length_norm"] is False and 0 < b.rewards.sum() < len(b.rewards)
    k = int(b.rewards.sum())                                       # log(k/N·e^β + 1 − k/N), docs/method.md M6
    n = len(b.rewards)
    assert abs(bias - math.log(k / n * math.exp(15.0) + 1 - k / n)) < 1e-4
    # --length_norm overrides the form's pooling
    calls.clear()
    train.main(TINY + ["--algo", "flowrl_exact", "--length_norm", "--tag", "_ln", "--out_dir", out])
    assert calls[0][1]["length_norm"] is True


def test_baselines_get_their_advantages(out, monkeypatch):
    grpo, rpp, ppo = (record_calls(monkeypatch, n) for n in ("grpo_loss", "reinforce_pp_loss", "ppo_loss"))
    batches = record_batches(monkeypatch)
    train.main(TINY + ["--algo", "grpo", "reinforce_pp", "ppo", "--kl_coef", "0.05", "--out_dir", out])
    (b_g, _), _, (b_r, _), _, (b_p, _), _ = batches
    a, kw = grpo[0]
    assert torch.equal(a[4], flowrl.group_normalize(b_g.rewards, 4)) and kw["kl_coef"] == 0.05
    assert torch.equal(a[2], b_g.ref_logprobs)
    a, kw = rpp[0]
    want = flowrl.reinforce_pp_advantages(b_r.rewards, b_r.old_logprobs, b_r.ref_logprobs, b_r.ro.mask, 0.05)
    assert torch.allclose(a[3], want) and a[3].abs().sum() > 0
    a, kw = ppo[0]
    adv, returns = a[3], a[5]
    values = (returns - adv) * b_p.ro.mask                         # gae: returns = advantages + old values
    kl_r = -0.05 * (b_p.old_logprobs - b_p.ref_logprobs) * b_p.ro.mask
    adv2, ret2 = flowrl.gae(b_p.rewards, values, b_p.ro.mask, token_rewards=kl_r)
    assert torch.allclose(adv, adv2, atol=1e-5) and torch.allclose(returns, ret2, atol=1e-5)


def test_ppo_values_read_the_state_before_each_response_token(out, monkeypatch):
    """PPO's old values by hand: a random (not zero-initialized) value head on the hidden state of each row
    run alone, unpadded, at the position before each response token (the last prompt token for the
    first). They are what gae received: returns − advantages on the response tokens."""
    import copy
    real_init = flowrl.ValueHead.__init__

    def init(self, n_embd):
        real_init(self, n_embd)
        torch.nn.init.normal_(self.out.weight, std=0.5, generator=torch.Generator().manual_seed(0))
        torch.nn.init.constant_(self.out.bias, 0.3)
    monkeypatch.setattr(flowrl.ValueHead, "__init__", init)
    ppo = record_calls(monkeypatch, "ppo_loss")
    real_collect, seen = train.collect, []

    def collect(args, run, *a, **k):
        policy, head = copy.deepcopy(run.policy), copy.deepcopy(run.head)          # as they sample
        seen.append((real_collect(args, run, *a, **k), policy, head))
        return seen[-1][0]
    monkeypatch.setattr(train, "collect", collect)
    train.main(TINY + ["--algo", "ppo", "--steps", "1", "--kl_coef", "0.05", "--out_dir", out])
    b, policy, head = seen[0]
    a, _ = ppo[0]
    old_values = a[5] - a[3]                                       # (N, T): returns − advantages
    with torch.no_grad():
        for i in range(b.ro.mask.shape[0]):
            prompt, resp = b.ro.prompt[i][b.ro.prompt_mask[i]], b.ro.response[i][b.ro.mask[i]]
            _, h = policy(torch.cat([prompt, resp])[None], return_hidden=True)       # (1, Tp + n, H)
            by_hand = head(h[:, len(prompt) - 1:len(prompt) - 1 + len(resp)])[0]     # (n,)
            assert torch.allclose(old_values[i, :len(resp)], by_hand, atol=1e-5), i
    assert old_values.abs().max() > 0.1                            # a head that reads the state, not zeros


def test_modern_reward_maximizers_get_their_advantages_and_clips(out, monkeypatch):
    dr, dapo, gspo = (record_calls(monkeypatch, n) for n in ("dr_grpo_loss", "dapo_loss", "gspo_loss"))
    batches = record_batches(monkeypatch)
    train.main(TINY + ["--algo", "dr_grpo", "dapo", "gspo", "--kl_coef", "0.05", "--out_dir", out])
    (b_d, _), _, (b_a, _), _, (b_s, _), _ = batches
    a, kw = dr[0]
    assert torch.equal(a[4], flowrl.group_center(b_d.rewards, 4)) and kw["kl_coef"] == 0.05
    assert kw["budget"] == 6                                              # make_n's response budget
    a, kw = dapo[0]
    assert torch.equal(a[3], flowrl.group_normalize(b_a.rewards, 4))
    assert (kw["clip_eps"], kw["clip_eps_high"]) == (0.2, 0.28)         # DAPO's clip-higher, no KL argument
    a, kw = gspo[0]
    assert torch.equal(a[3], flowrl.group_normalize(b_s.rewards, 4))
    assert (kw["clip_low"], kw["clip_high"]) == (3e-4, 4e-4)


def test_minibatches_and_epochs_make_importance_weights_differ_from_one(out, monkeypatch):
    calls = record_calls(monkeypatch, "flowrl_loss")
    train.main(TINY + ["--algo", "flowrl", "--steps", "1", "--minibatches", "2", "--epochs", "2",
                       "--lr", "3e-3", "--out_dir", out])
    assert len(calls) == 4                                         # 2 epochs x 2 minibatches of 2 whole groups
    for a, _ in calls:
        assert a[0].shape[0] == 8
    w = lambda a: flowrl.masked_sum(a[0].detach() - a[1], a[3].float()).exp()
    assert torch.allclose(w(calls[0][0]), torch.ones(8), atol=1e-5)       # the first minibatch: on-policy
    assert (w(calls[3][0]) - 1).abs().max() > 1e-3                       # after 3 updates: off-policy


@pytest.mark.parametrize("logz", ["table", "group", "none"])
def test_logz_table_group_and_none(out, monkeypatch, logz):
    calls = record_calls(monkeypatch, "flowrl_loss")
    train.main(TINY + ["--algo", "flowrl_exact", "--logz", logz, "--out_dir", out])
    ck = torch.load(os.path.join(out, "flowrl_exact", "ckpt.pt"), weights_only=True)
    a, kw = calls[0]
    logprobs, _, ref, mask, rewards, log_z = a
    if logz == "table":
        assert ck["head"]["table"].shape == (9,)                   # one log Z per make_n target
        assert log_z.requires_grad
    elif logz == "none":                                          # δ without log Z, no head
        assert ck["head"] is None and torch.equal(log_z, torch.zeros(len(rewards)))
    else:                                                         # each group's minimizer of Σ δ², no head
        assert ck["head"] is None and not log_z.requires_grad
        m = mask.float()
        want = 15.0 * rewards + flowrl.masked_sum(ref, m) - flowrl.masked_sum(logprobs.detach(), m)
        assert torch.allclose(log_z, want.view(-1, 4).mean(1).repeat_interleave(4), atol=1e-5)


def test_no_ref_zeroes_the_reference_in_the_loss(out, monkeypatch):
    calls = record_calls(monkeypatch, "flowrl_loss")
    train.main(TINY + ["--algo", "flowrl", "--no_ref", "--out_dir", out])
    assert len(calls) == 2                                          # one update per step, two steps
    assert all(torch.count_nonzero(a[2]) == 0 for a, _ in calls)


# ---- the exact evaluation at π = p* ----

class PrefixPolicy(nn.Module):
    """A hand-built policy over whole responses: probs maps a response (a tuple of token ids ending
    with EOS) to its probability; next-token probabilities are ratios of prefix masses. The response
    is what follows the prompt's last ':' token. Token ids ride in the KV cache's key slots, so the
    cached sampler and the tree enumeration work as with a GPT; and in a Prefix's keys, so that the
    two-pass sequence_logprobs does too."""

    def __init__(self, probs, vocab_size, colon_id):
        super().__init__()
        self.probs, self.colon = probs, colon_id
        self.config = GPTConfig(vocab_size=vocab_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=2, block_size=64)
        self.anchor = nn.Parameter(torch.zeros(1))                # for the device

    def make_cache(self, batch_size, max_len):
        return KVCache(self.config, batch_size, max_len, "cpu", torch.float64)

    def next_logits(self, seq):
        if self.colon not in seq:                                   # inside the prompt: never scored
            return torch.zeros(self.config.vocab_size)
        last = max(i for i, t in enumerate(seq) if t == self.colon)
        prefix = tuple(seq[last + 1:])
        mass = torch.zeros(self.config.vocab_size, dtype=torch.float64)
        for y, p in self.probs.items():
            if y[:len(prefix)] == prefix and len(y) > len(prefix):
                mass[y[len(prefix)]] += p
        if mass.sum() == 0:
            return torch.zeros(self.config.vocab_size)                # past the end: anything (masked out)
        return mass.clamp(min=1e-300).log().clamp(min=-1e4).float()

    def forward(self, idx, valid=None, cache=None, return_hidden=False, logits_from=0, prefix=None):
        B, T = idx.shape
        valid = torch.ones(B, T, dtype=torch.bool) if valid is None else valid
        if prefix is not None and prefix.recording:
            prefix.k[0] = prefix.v[0] = idx
        if prefix is not None and not prefix.recording:
            t0 = prefix.valid.shape[1]
            ids, ok = torch.cat([prefix.k[0], idx], 1), torch.cat([prefix.valid, valid], 1)
        elif cache is not None:
            t0 = cache.length
            cache.k[0, :, 0, t0:t0 + T, 0] = idx.double()
            cache.valid[:, t0:t0 + T] = valid
            cache.length = t0 + T
            ids, ok = cache.k[0, :, 0, :t0 + T, 0].long(), cache.valid[:, :t0 + T]
        else:
            t0, ids, ok = 0, idx, valid
        logits = torch.stack([torch.stack([self.next_logits([t for t, v in zip(ids[b, :t0 + j + 1].tolist(),
                                                                              ok[b, :t0 + j + 1].tolist()) if v])
                                           for j in range(logits_from, T)]) for b in range(B)])
        return (logits, torch.zeros(B, T, 2)) if return_hidden else logits


def test_exact_metrics_vanish_at_the_target(tmp_path):
    tok, task = Tokenizer.for_chars(ALPHABET), get_task("make_n")
    problem = task.problem({"n": 7})
    beta = 3.0                                                     # small β: p* keeps visible wrong mass
    g = torch.Generator().manual_seed(0)
    answers = [f"{a}+{b}" for a in range(10) for b in range(10)]
    ref_p = torch.rand(len(answers), generator=g, dtype=torch.float64) + 0.05
    ref_p /= ref_p.sum()
    r = torch.tensor([task.reward(problem, s) for s in answers], dtype=torch.float64)
    star = ref_p * (beta * r).exp()
    z = star.sum()
    resp = [tuple(tok.encode(s)) + (tok.eos_id,) for s in answers]
    colon = tok.encode(":")[0]
    ref = PrefixPolicy(dict(zip(resp, ref_p.tolist())), tok.vocab_size, colon)
    pi = PrefixPolicy(dict(zip(resp, (star / z).tolist())), tok.vocab_size, colon)
    out = evaluate.evaluate(pi, tok, task, [problem], k=8, max_new_tokens=6, seed=0, step=0, chunk_rows=64,
                            beta=beta, ref=ref, learned_log_z=lambda ps: torch.full((len(ps),), z.log().item()))
    correct = star[r == 1] / star[r == 1].sum()
    assert abs(out["kl_to_target"]) < 1e-5 and abs(out["kl_from_target"]) < 1e-5
    assert abs(out["log_z_true"] - z.log().item()) < 1e-5 and out["log_z_abs_err"] < 1e-5
    assert abs(out["effective_correct"] - math.exp(-(correct * correct.log()).sum().item())) < 1e-4
    assert abs(out["correct_mass"] - (star[r == 1].sum() / z).item()) < 1e-5
    # p*'s shape over the correct answers is π_ref's: 0 at the target, and for π_ref itself
    assert abs(out["kl_shape_to_target"]) < 1e-5
    assert abs(out["target_effective_correct"] - out["effective_correct"]) < 1e-4
    uniform = PrefixPolicy({y: float(c) / r.sum().item() for y, c in zip(resp, r.tolist())}, tok.vocab_size, colon)
    flat = evaluate.evaluate(uniform, tok, task, [problem], k=8, max_new_tokens=6, seed=0, step=0, chunk_rows=64,
                             beta=beta, ref=ref)
    u = torch.full_like(correct, 1 / len(correct))
    assert abs(flat["kl_shape_to_target"] - (u * (u / correct).log()).sum().item()) < 1e-5
    # the reference itself is not the target: its KL is far from 0
    far = evaluate.evaluate(ref, tok, task, [problem], k=8, max_new_tokens=6, seed=0, step=0, chunk_rows=64,
                            beta=beta, ref=ref)
    assert far["kl_to_target"] > 0.1 and abs(far["kl_shape_to_target"]) < 1e-5


class PaddedMakeN(MakeNTask):
    """make_n whose reward also accepts a trailing "+0", an answer outside its listed solutions."""

    def well_formed(self, d, answer):
        return super().well_formed(d, answer.removesuffix("+0"))


def test_exact_metrics_count_every_response_the_reward_accepts():
    """"3+4+0" is not a listed solution of N=07, but this task's reward accepts it: the exact correct mass,
    the effective number of correct answers and the shape KL count it (one mass per rewarded string)."""
    tok, task = Tokenizer.for_chars(ALPHABET), PaddedMakeN()
    problem = task.problem({"n": 7})
    assert "3+4+0" not in task.solutions(problem) and task.reward(problem, "3+4+0") == 1.0
    enc = lambda s: tuple(tok.encode(s)) + (tok.eos_id,)
    colon = tok.encode(":")[0]
    pi = PrefixPolicy({enc("3+4"): 0.5, enc("3+4+0"): 0.25, enc("1+1"): 0.25}, tok.vocab_size, colon)
    ref = PrefixPolicy({enc("3+4"): 0.2, enc("3+4+0"): 0.2, enc("0+7"): 0.2, enc("9+9"): 0.4}, tok.vocab_size, colon)
    out = evaluate.evaluate(pi, tok, task, [problem], k=8, max_new_tokens=6, seed=0, step=0, chunk_rows=64,
                            beta=2.0, ref=ref)
    q = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)            # π(·|correct) over "3+4", "3+4+0"
    q_ref = torch.tensor([1 / 3, 1 / 3, 1 / 3], dtype=torch.float64)  # π_ref(·|correct) over those and "0+7"
    assert abs(out["correct_mass"] - 0.75) < 1e-6
    assert abs(out["effective_correct"] - math.exp(-(q * q.log()).sum().item())) < 1e-5
    assert abs(out["target_effective_correct"] - 3.0) < 1e-5
    assert abs(out["kl_shape_to_target"] - (q * (q / q_ref[:2]).log()).sum().item()) < 1e-5
    assert abs(out["log_z_true"] - math.log(math.exp(2.0) * 0.6 + 0.4)) < 1e-6   # m = 0.6: "3+4+0" included


# ---- the sampler on a real model ----

def test_sampler_rows_end_independently_on_a_real_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, n_layer=2, n_head=2, n_kv_head=1, n_embd=16, block_size=64))
    eos = 7
    with torch.no_grad():
        model.wte.weight[eos] *= 40                                # tied head: EOS likely but not certain
    ro = generate(model, [[1, 2, 3], [4, 5]], num_samples=16, max_new_tokens=12, eos_id=eos,
                  generator=torch.Generator().manual_seed(1))
    lengths = ro.mask.sum(-1)
    assert lengths.min() < lengths.max()                            # some rows ended early, others went on
    for i in range(ro.mask.shape[0]):
        n = int(lengths[i])
        assert ro.mask[i, :n].all() and not ro.mask[i, n:].any()
        assert (ro.response[i, n:] == eos).all() and (ro.logprobs[i, n:] == 0).all()
        assert bool(ro.finished[i]) == (ro.response[i, n - 1].item() == eos)
        assert (ro.response[i, :n - 1] != eos).all()                # no EOS before the last token
    lp, _ = sequence_logprobs(model, ro)
    assert torch.allclose(lp, ro.logprobs, atol=1e-5)


# ---- real-scale numerics, stopping, samples, export, resume (issue: real scale on one GPU) ----

def test_on_policy_step_has_importance_weight_one(out):
    train.main(TINY + ["--algo", "flowrl", "grpo", "--steps", "3", "--out_dir", out])
    for algo in ("flowrl", "grpo"):
        tr = [r for r in read(os.path.join(out, algo, "metrics.jsonl")) if r["kind"] == "train"]
        assert all(r["clip_frac"] == 0.0 for r in tr)
        assert all(r["logprob_gap/max"] < 1e-4 for r in tr)          # sampler and training forward agree in fp32
        if algo == "flowrl":
            assert all(r["is_weight/mean"] == 1.0 for r in tr)


def test_heads_and_cache_compute_in_the_autocast_dtype_they_should():
    torch.manual_seed(0)
    h, mask = torch.randn(4, 5, 16), torch.ones(4, 5, dtype=torch.bool)
    head, value = flowrl.LogZHead(16, dropout=0.0), flowrl.ValueHead(16)
    with torch.no_grad():
        value.out.weight.normal_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, v = head(h.bfloat16(), mask), value(h.bfloat16())
        cache = GPT(GPTConfig(vocab_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)).make_cache(2, 8)
    assert z.dtype == v.dtype == torch.float32 and cache.k.dtype == torch.bfloat16
    assert torch.allclose(z, head(h.bfloat16().float(), mask), atol=1e-6)     # no bf16 rounding inside the head
    assert torch.allclose(v, value(h.bfloat16().float()), atol=1e-6)


def test_exact_metrics_ignore_autocast(out):
    tok, task = Tokenizer.for_chars(ALPHABET), get_task("make_n")
    model = starts.warm_start(train.parse_args(TINY + ["--out_dir", out]), task, tok, torch.device("cpu"))
    problems = evaluate.eval_problems(task, 9, 0)[:3]
    kw = dict(k=4, max_new_tokens=6, seed=0, step=0, chunk_rows=64, beta=15.0, ref=model)
    plain = evaluate.evaluate(model, tok, task, problems, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = evaluate.evaluate(model, tok, task, problems, **kw)
    for k in ("correct_mass", "kl_to_target", "kl_from_target", "log_z_true"):
        assert plain[k] == mixed[k], k


def test_every_stop_id_ends_a_row():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16, block_size=64))
    ro = generate(model, [[1, 2]], num_samples=64, max_new_tokens=10, eos_id=7, stop_ids=(7, 6),
                  generator=torch.Generator().manual_seed(0))
    ends = [ro.response[i, int(ro.mask[i].sum()) - 1].item() for i in range(64) if ro.finished[i]]
    assert 6 in ends and 7 in ends                                  # rows stopped at either id
    for i in range(64):
        n = int(ro.mask[i].sum())
        assert not any(t in (6, 7) for t in ro.response[i, :n - 1].tolist())


def test_samples_log_and_hf_export_of_a_run(out):
    transformers = pytest.importorskip("transformers")
    train.main(TINY + ["--algo", "flowrl", "--steps", "2", "--out_dir", out])
    samples = read(os.path.join(out, "flowrl", "samples.jsonl"))
    assert [s["step"] for s in samples] == [0] * 4 + [2] * 4
    assert all(set(s) == {"step", "prompt", "completion", "reward", "correct"} for s in samples)
    ck = torch.load(os.path.join(out, "flowrl", "ckpt.pt"), weights_only=True)
    policy = GPT(GPTConfig(**ck["model_config"]))
    policy.load_state_dict(ck["model"])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "flowrl", "hf")).eval()
    idx = torch.randint(0, 20, (2, 9))
    with torch.no_grad():
        assert (policy.eval()(idx) - theirs(idx).logits).abs().max() < 1e-4


def test_resume_starts_unstarted_algorithms_and_refuses_changed_flags(out, capsys):
    train.main(TINY + ["--algo", "flowrl", "--steps", "2", "--out_dir", out])
    train.main(TINY + ["--algo", "flowrl", "grpo", "--steps", "2", "--out_dir", out, "--resume"])
    assert "grpo: no checkpoint" in capsys.readouterr().out
    assert [r["step"] for r in read(os.path.join(out, "grpo", "metrics.jsonl")) if r["kind"] == "train"] == [1, 2]
    with pytest.raises(train.UserError, match="--lr"):
        train.main(TINY + ["--algo", "flowrl", "--steps", "3", "--lr", "1e-3", "--out_dir", out, "--resume"])


def read(path):
    import json
    with open(path) as f:
        return [json.loads(line) for line in f]


# ---- off-policy options: the sequence weight and the prior in δ ----

def test_weight_one_is_the_unweighted_residual_and_equal_to_the_ratio_on_policy(out, monkeypatch):
    """--weight one: L = mean δ² whatever π_old was; on-policy with one update per batch w = 1 exactly, so
    the two runs make the same updates (the identity the option must satisfy); off-policy they differ."""
    calls = record_calls(monkeypatch, "flowrl_loss")
    train.main(TINY + ["--algo", "flowrl", "--steps", "1", "--minibatches", "2", "--epochs", "2", "--lr", "3e-3",
                       "--weight", "one", "--out_dir", out])
    a, kw = calls[3]                                                 # after 3 updates: π_θ ≠ π_old
    assert kw["weight"] == "one"
    loss, st = flowrl.flowrl_loss(*a, **{**kw, "weight": "one"})
    logprobs, old, ref, mask, r, log_z = a
    m = mask.float()
    delta = log_z + flowrl.masked_mean(logprobs, m) - kw["beta"] * r - flowrl.masked_mean(ref, m)
    assert loss.item() == pytest.approx(delta.pow(2).mean().item(), rel=1e-5)
    assert st["is_weight"] == 1.0 and st["clip_frac"] == 0.0
    ratio_loss, _ = flowrl.flowrl_loss(*a, **{**kw, "weight": "ratio"})
    assert abs(ratio_loss.item() - loss.item()) > 1e-6                # the weight mattered off-policy
    for weight in ("ratio", "one"):                                  # on-policy, one update per batch
        d = os.path.join(out, weight)
        shutil.copytree(out, d, ignore=shutil.ignore_patterns("ratio", "one", "flowrl"))
        train.main(TINY + ["--algo", "flowrl", "--weight", weight, "--out_dir", d])
    pa = torch.load(os.path.join(out, "ratio", "flowrl", "ckpt.pt"), weights_only=True)["model"]
    pb = torch.load(os.path.join(out, "one", "flowrl", "ckpt.pt"), weights_only=True)["model"]
    assert all(torch.equal(v, pb[k]) for k, v in pa.items())


def test_weight_one_gradient_is_twice_delta_times_the_score():
    """The unweighted loss's gradient by hand: ∂/∂logprobs of mean δ² = 2δ·∂ℓ_θ/∂logprobs / N, whatever
    old_logprobs are; and ∂/∂log Z = 2δ/N."""
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    old = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ref = torch.randn(4, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    r = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    log_z = torch.tensor([0.3, 0.3, -0.2, -0.2], dtype=torch.float64, requires_grad=True)
    loss, _ = flowrl.flowrl_loss(lp, old, ref, mask, r, log_z, beta=2.0, length_norm=False, weight="one")
    loss.backward()
    m = mask.double()
    delta = (log_z + (lp * m).sum(1) - 2.0 * r - (ref * m).sum(1)).detach()
    assert torch.allclose(lp.grad, (2 * delta / 4)[:, None] * m)
    assert torch.allclose(log_z.grad, 2 * delta / 4)
    with pytest.raises(ValueError, match="weight"):
        flowrl.flowrl_loss(lp, old, ref, mask, r, log_z, weight="none")


@pytest.mark.parametrize("logz", ["head", "group"])
def test_prior_old_puts_the_sampling_policy_in_delta(out, monkeypatch, logz):
    """--prior old: the log-probs in δ's prior slot are π_old's (the batch's old_logprobs), not π_ref's,
    for the loss and for the group estimate of log Z."""
    calls, groups = record_calls(monkeypatch, "flowrl_loss"), record_calls(monkeypatch, "group_log_z")
    batches = record_batches(monkeypatch)
    train.main(TINY + ["--algo", "flowrl", "--prior", "old", "--logz", logz, "--out_dir", out])
    second = calls[1][0]                     # step 2: π_old is the policy after one update, no longer π_ref
    assert torch.equal(second[2], second[1])                                 # the prior is π_old ...
    assert (second[2] - batches[1][0].ref_logprobs).abs().max() > 1e-4       # ... and not π_ref
    if logz == "group":
        assert torch.equal(groups[1][0][1], second[1])
