import math

import pytest
import torch
import torch.nn as nn

from model import GPT, GPTConfig, GroupCache
from rollout import generate, sample_token, sequence_logprobs

V, EOS = 12, 11


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=48)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]


def test_shapes_order_and_mask():
    model = tiny()
    r = generate(model, PROMPTS, num_samples=4, max_new_tokens=10, eos_id=EOS,
                 generator=torch.Generator().manual_seed(0))
    N, T = r.response.shape
    assert N == 12 and T <= 10 and r.mask.dtype == torch.bool
    # prompt-major rows: rows i*G .. i*G+G-1 carry prompt i
    for i, p in enumerate(PROMPTS):
        for g in range(4):
            row = r.prompt[i * 4 + g][r.prompt_mask[i * 4 + g]].tolist()
            assert row == p
    # the mask is a prefix, ends at the first EOS, and padding after it is EOS with logprob 0
    for n in range(N):
        m = r.mask[n]
        L = int(m.sum())
        assert m[:L].all() and not m[L:].any()
        toks = r.response[n, :L].tolist()
        assert EOS not in toks[:-1]
        assert (r.response[n, L:] == EOS).all() and (r.logprobs[n, L:] == 0).all()
        assert r.finished[n] == (L > 0 and toks[-1] == EOS)


def test_recomputed_logprobs_equal_sampled():
    model = tiny()
    for temperature in (1.0, 0.7):
        r = generate(model, PROMPTS, num_samples=5, max_new_tokens=12, temperature=temperature,
                     eos_id=EOS, generator=torch.Generator().manual_seed(1))
        lp, ent = sequence_logprobs(model, r, temperature=temperature)
        assert lp.requires_grad
        assert (lp - r.logprobs).abs().max() <= 1e-4
        assert (ent[r.mask] > 0).all() and (ent[r.mask] <= math.log(V) + 1e-5).all()
        assert (ent[~r.mask] == 0).all()


def test_greedy_equals_stepwise_argmax_and_padding_is_harmless():
    model = tiny(3).eval()
    r = generate(model, PROMPTS, num_samples=2, max_new_tokens=8, temperature=0, eos_id=EOS)
    for i, p in enumerate(PROMPTS):
        seq = list(p)
        expect = []
        for _ in range(r.response.shape[1]):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            expect.append(nxt)
            seq.append(nxt)
            if nxt == EOS:
                break
        for g in range(2):
            row = r.response[i * 2 + g][r.mask[i * 2 + g]].tolist()
            assert row == expect
        alone = generate(model, [p], num_samples=1, max_new_tokens=8, temperature=0, eos_id=EOS)
        assert alone.response[0][alone.mask[0]].tolist() == expect


def test_same_seed_same_output():
    model = tiny()
    a = generate(model, PROMPTS, num_samples=3, max_new_tokens=9, eos_id=EOS,
                 generator=torch.Generator().manual_seed(7))
    b = generate(model, PROMPTS, num_samples=3, max_new_tokens=9, eos_id=EOS,
                 generator=torch.Generator().manual_seed(7))
    c = generate(model, PROMPTS, num_samples=3, max_new_tokens=9, eos_id=EOS,
                 generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.response, b.response) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response, c.response)


def test_first_token_frequencies_match_softmax():
    model = tiny(5)
    with torch.no_grad():                              # sharpen a little so frequencies differ
        model.lm_head.weight.mul_(20)
    prompt = [1, 2, 3]
    T = 0.8
    probs = torch.softmax(model(torch.tensor([prompt]))[0, -1] / T, -1)
    n = 4000
    r = generate(model, [prompt], num_samples=n, max_new_tokens=1, temperature=T, eos_id=EOS,
                 generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(r.response[:, 0], minlength=V).double() / n
    tv = 0.5 * (freq - probs.double()).abs().sum()
    # E[TV] <= 0.5 * sum sqrt(p(1-p)/n) ~ 0.03 here; a sampler off by a token would give >> 0.06
    bound = 0.5 * (probs.double() * (1 - probs.double()) / n).sqrt().sum() * 2
    assert tv < bound, (tv, bound)
    chi2 = ((freq - probs.double()) ** 2 / probs.double()).sum() * n
    assert chi2 < 40                                    # chi-square, 11 dof: p < 1e-4 beyond 40


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.15, 0.1]])).repeat(5000, 1)
    g = torch.Generator().manual_seed(0)
    tok, lp = sample_token(logits, 1.0, 0.69, g)      # 0.4 + 0.3 reaches 0.69: nucleus {1, 2}
    assert set(tok.tolist()) == {1, 2}
    tok, _ = sample_token(logits, 1.0, 0.71, g)       # needs 0.15 too: {1, 2, 3}
    assert set(tok.tolist()) == {1, 2, 3}
    freq3 = (tok == 3).double().mean()
    assert abs(freq3 - 0.15 / 0.85) < 0.03
    # the reported logprob is under the untruncated distribution (log pi_old for the losses)
    tok, lp = sample_token(logits, 1.0, 0.69, g)
    full = torch.log(torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1]))
    assert torch.allclose(lp, full[tok], atol=1e-6)


class Fixed(nn.Module):
    """A 'model' whose next-token logits depend only on the last token: lets a test force EOS."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)
        self.config = GPTConfig(vocab_size=table.shape[0], n_layer=1, n_head=1, n_kv_head=1, n_embd=4, block_size=64)

    def make_cache(self, b, n):
        return tiny().make_cache(b, n)

    def forward(self, idx, valid=None, cache=None, return_hidden=False, logits_from=0):
        if cache is not None:
            cache.length += idx.shape[1]
        return self.table[idx[:, logits_from:]]


def test_rows_stop_independently_and_done_rows_do_not_change_others():
    # token 0 -> EOS always; token 1 -> token 2; token 2 -> token 1 (never stops)
    table = torch.full((V, V), -1e4)
    table[0, EOS] = 0
    table[1, 2] = 0
    table[2, 1] = 0
    table[EOS, 3] = 0
    m = Fixed(table)
    r = generate(m, [[0], [1]], num_samples=2, max_new_tokens=6, eos_id=EOS, generator=torch.Generator().manual_seed(0))
    assert r.response[0].tolist() == [EOS] * 6 and r.mask[0].tolist() == [True] + [False] * 5
    assert r.response[2].tolist() == [2, 1, 2, 1, 2, 1] and r.mask[2].all()
    assert r.finished.tolist() == [True, True, False, False]
    # the same prompt alone gives the same row: a finished row changes nothing for the others
    alone = generate(m, [[1]], num_samples=1, max_new_tokens=6, eos_id=EOS)
    assert torch.equal(alone.response[0], r.response[2])


def test_static_shape_decode_step_samples_what_the_forward_samples():
    # decode_step (what --compile compiles) run eagerly: the same tokens as the cached forward
    for kw in ({}, {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64, **kw))
        a = generate(model, PROMPTS, num_samples=4, max_new_tokens=10, eos_id=EOS,
                     generator=torch.Generator().manual_seed(0))
        model._compiled_decode = model.decode_step
        b = generate(model, PROMPTS, num_samples=4, max_new_tokens=10, eos_id=EOS,
                     generator=torch.Generator().manual_seed(0), compile=True)
        assert torch.equal(a.response, b.response) and torch.equal(a.mask, b.mask)
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64))
    seed = lambda: torch.Generator().manual_seed(0)
    a = generate(model, PROMPTS, num_samples=4, max_new_tokens=10, eos_id=EOS, generator=seed())
    b = generate(model, PROMPTS, num_samples=4, max_new_tokens=10, eos_id=EOS, generator=seed(), compile=True)
    assert model._compiled_decode is not model.decode_step                     # torch.compile did run
    assert torch.equal(a.response, b.response) and torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def stopping_model(seed=0, **kw):
    """A tiny model whose EOS is likely enough that rows end at many different lengths."""
    model = tiny(seed, block_size=64, **kw)
    with torch.no_grad():
        model.wte.weight[EOS] *= 3                                                     # the tied head: EOS likelier
    return model


@pytest.mark.parametrize("style", [dict(), dict(pos="learned", norm="layernorm", mlp="gelu", bias=True)])
def test_finished_rows_leaving_the_batch_change_no_token(style):
    """Compacting the batch (every 1 or 3 steps, eager; the static-shape step with its power-of-two
    buckets) gives today's tokens: each step draws one uniform per row of the whole batch."""
    model = stopping_model(**style)
    seed = lambda: torch.Generator().manual_seed(3)
    kw = dict(num_samples=8, max_new_tokens=30, eos_id=EOS, stop_ids=(EOS, 10))
    base = generate(model, PROMPTS, generator=seed(), compact_every=0, **kw)
    lengths = base.mask.sum(-1)
    assert len(set(lengths.tolist())) >= 8 and lengths.max() > 12                  # rows leave at many steps
    model._compiled_decode = model.decode_step                                      # the static-shape step, eagerly
    for compile in (False, True):
        for every in (1, 3):
            r = generate(model, PROMPTS, generator=seed(), compact_every=every, compile=compile, **kw)
            assert torch.equal(r.response, base.response) and torch.equal(r.mask, base.mask), (compile, every)
            assert torch.allclose(r.logprobs, base.logprobs, atol=1e-5)


@pytest.mark.parametrize("style", [dict(), dict(n_kv_head=1), dict(pos="learned", norm="layernorm", mlp="gelu",
                                                                   bias=True, n_kv_head=4), dict(qk_norm=True)])
def test_group_cache_attention_equals_the_copied_prompt(style):
    """A decode step on a GroupCache (each prompt's keys once, merged with the row's own keys by
    log-sum-exp) gives the logits of the same step on a cache with a copy of the prompt per row, step
    after step, with left padding and after rows leave (select)."""
    model = tiny(1, block_size=64, **style).eval()
    G, steps = 3, 6
    from rollout import left_pad
    ids, valid = left_pad(PROMPTS, EOS, "cpu")
    P, Tp = ids.shape
    with torch.no_grad():
        full, group = model.make_cache(P, Tp + steps), model.make_cache(P, Tp)
        model(ids, valid=valid, cache=full)
        model(ids, valid=valid, cache=group)
        full = full.select(torch.arange(P).repeat_interleave(G))
        group = GroupCache(group, G, steps)
        g = torch.Generator().manual_seed(0)
        for t in range(steps):
            token = torch.randint(0, V, (full.k.shape[1],), generator=g)
            a = model(token[:, None], cache=full)[:, -1]
            b = model(token[:, None], cache=group)[:, -1]
            assert (a - b).abs().max() < 1e-5, t
            if t == 2:                                                                 # rows 1, 4, 5 leave
                keep = torch.tensor([0, 2, 3, 6, 7, 8])
                full, group = full.select(keep), group.select(keep)


def test_shared_prompt_sampling_gives_the_copied_prompts_tokens():
    model = stopping_model()
    long = [list(range(1, 10)) * 4, [2, 3] * 18]                                       # 36-token prompts
    kw = dict(num_samples=4, max_new_tokens=20, eos_id=EOS)
    a = generate(model, long, generator=torch.Generator().manual_seed(0), share_prompt=False, **kw)
    b = generate(model, long, generator=torch.Generator().manual_seed(0), **kw)           # auto: shared
    assert torch.equal(a.response, b.response) and torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    with pytest.raises(ValueError, match="share_prompt"):
        generate(model, long, share_prompt=True, compile=True, **kw)


def one_forward(model, r):
    """The reference for sequence_logprobs: one forward over each row's prompt and response concatenated."""
    Tp = r.prompt.shape[1]
    idx = torch.cat([r.prompt, r.response], 1)                                        # (N, Tp+T)
    valid = torch.cat([r.prompt_mask, torch.ones_like(r.mask)], 1)
    logits, h = model(idx, valid=valid, return_hidden=True, logits_from=Tp - 1)      # (N, T+1, V)
    lp = torch.log_softmax(logits[:, :-1], -1).gather(2, r.response[..., None])[..., 0] * r.mask
    return lp, h


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("style", [dict(), dict(norm="layernorm", pos="learned", mlp="gelu", bias=True, n_kv_head=4)])
def test_shared_prompt_forward_equals_one_forward_per_row(style, checkpointing):
    """sequence_logprobs computes each prompt once for its group; values, hidden states and gradients
    must be those of one forward over every (prompt, response) row, padding included."""
    model = tiny(**style)
    model.grad_checkpointing = checkpointing
    r = generate(model, PROMPTS, num_samples=3, max_new_tokens=9, eos_id=EOS,
                 generator=torch.Generator().manual_seed(2))
    r = r.select(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 2]))   # a prompt's rows need not be adjacent
    grads = []
    for fn in (one_forward, lambda m, ro: sequence_logprobs(m, ro, return_hidden=True, with_entropy=False)[::2]):
        lp, h = fn(model, r)
        (lp.sum() + h.pow(2).mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
        if fn is one_forward:
            lp0, h0 = lp.detach(), h.detach()
    assert (lp - lp0).abs().max() <= 1e-5 and (h - h0).abs().max() <= 1e-5
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))
    assert any(g.abs().max() > 0 for g in grads[0])


def test_shared_prompts_finds_each_rows_run():
    from rollout import shared_prompts
    r = generate(tiny(), PROMPTS, num_samples=2, max_new_tokens=3, eos_id=EOS,
                 generator=torch.Generator().manual_seed(0))
    first, inverse = shared_prompts(r)
    assert first.tolist() == [0, 2, 4] and inverse.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(r.prompt[first][inverse], r.prompt)
    first, inverse = shared_prompts(r.select(torch.tensor([0, 2, 1, 3])))   # runs, not sets: 4 runs here
    assert first.tolist() == [0, 1, 2, 3] and inverse.tolist() == [0, 1, 2, 3]
