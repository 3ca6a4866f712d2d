"""Every loss and advantage of flowrl.py against a second implementation of its formula, written here
token by token in plain Python loops (no masks, no broadcasting), on an off-policy batch whose rows
have different lengths (one of a single token), whose ratios fall on both sides of every clip, and
whose rewards are not symmetric: the loss, its gradient and every stat the function returns. These
are the checks that mutation testing (docs/testing.md) showed the hand-computed cases leave open
(gflowrl_loss and flowrl_token_loss have theirs in test_successors.py)."""
import math

import pytest
import torch

from flowrl import (LogZTable, ValueHead, dapo_loss, dr_grpo_loss, gae, grpo_loss, gspo_loss, masked_whiten, ppo_loss,
                    reinforce_pp_advantages, reinforce_pp_loss)

LENGTHS = [5, 3, 1, 4, 2, 5]                  # the response lengths of the batch's rows (right-padded to 5)
N, T = len(LENGTHS), max(LENGTHS)


pytestmark = pytest.mark.usefixtures("float64")          # conftest.py: float64 throughout


def batch(seed=0):
    """logprobs (a leaf with grad), old and ref log-probs, a float mask, per-row advantages and 0/1-ish
    rewards. Per-token ratios exp(lp − old) spread over about [0.5, 2]: every clip binds somewhere."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(N, T, generator=g) * 3 - 0.1
    lp = (old + (torch.rand(N, T, generator=g) - 0.5) * 1.4).requires_grad_(True)
    ref = old + (torch.rand(N, T, generator=g) - 0.5)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in LENGTHS])
    adv = torch.tensor([1.3, -0.4, 0.9, -1.7, 0.2, 0.6])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    return lp, old, ref, mask, adv, rewards


def grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


def surrogate(lp, old, a, lo, hi):
    """−min(ρ·A, clip(ρ, 1 − lo, 1 + hi)·A) for one token, and whether the clip binds."""
    rho = torch.exp(lp - old)
    c = torch.clamp(rho, 1 - lo, 1 + hi)
    return -torch.minimum(rho * a, c * a), bool(c * a < rho * a)


def k3(lp, ref):
    q = ref - lp
    return torch.exp(q) - q - 1


def whiten_list(xs, copies=1):
    """(x − mean) / (std + 1e-8) over xs repeated `copies` times (as if `copies` processes held xs)."""
    allx = [x for _ in range(copies) for x in xs]
    m = sum(allx) / len(allx)
    s = math.sqrt(sum((x - m) ** 2 for x in allx) / (len(allx) - 1))
    return [(x - m) / (s + 1e-8) for x in xs]


@pytest.mark.parametrize("kl_coef", [0.0, 0.3])
@pytest.mark.parametrize("budget", [None, 7])
def test_grpo_and_dr_grpo_losses_token_by_token(kl_coef, budget):
    """GRPO: each row's token sum over its own length (budget None); Dr. GRPO: over the budget. Then the mean
    over rows; kl_ref is the mean over rows of each row's token-mean k3 either way."""
    lp, old, ref, mask, adv, _ = batch(0 if budget is None else 1)
    if budget is None:
        loss, st = grpo_loss(lp, old, ref, mask, adv, clip_eps=0.2, kl_coef=kl_coef)
    else:
        loss, st = dr_grpo_loss(lp, old, ref, mask, adv, budget=budget, clip_eps=0.2, kl_coef=kl_coef)
    rows, kls, clipped = [], [], 0
    for i, n in enumerate(LENGTHS):
        terms = []
        for t in range(n):
            pg, c = surrogate(lp[i, t], old[i, t], adv[i], 0.2, 0.2)
            terms.append(pg + kl_coef * k3(lp[i, t], ref[i, t]))
            clipped += c
        rows.append(sum(terms) / (n if budget is None else budget))
        kls.append(sum(k3(lp[i, t], ref[i, t]).item() for t in range(n)) / n)
    ref_loss = sum(rows) / N
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert torch.allclose(grad(loss, lp), grad(ref_loss, lp))
    assert st["kl_ref"] == pytest.approx(sum(kls) / N, rel=1e-12)
    assert st["clip_frac"] == pytest.approx(clipped / sum(LENGTHS)) and 0 < clipped < sum(LENGTHS)


@pytest.mark.parametrize("token_count", [None, 40.0])
def test_dapo_and_reinforce_pp_losses_token_by_token(token_count):
    """DAPO: clip-higher [0.8, 1.28] with per-row advantages; REINFORCE++: [0.8, 1.2] with per-token
    advantages. Both: Σ over every token of the batch / (token_count or the number of tokens)."""
    lp, old, _, mask, adv, _ = batch(2)
    tok_adv = torch.linspace(-1.5, 1.1, N * T).view(N, T)
    div = sum(LENGTHS) if token_count is None else token_count
    for fn, a_of, hi in ((dapo_loss, lambda i, t: adv[i], 0.28), (reinforce_pp_loss, lambda i, t: tok_adv[i, t], 0.2)):
        a = adv if fn is dapo_loss else tok_adv
        loss, st = fn(lp, old, mask, a, clip_eps=0.2, token_count=token_count)
        total, clipped = 0.0, 0
        for i, n in enumerate(LENGTHS):
            for t in range(n):
                pg, c = surrogate(lp[i, t], old[i, t], a_of(i, t), 0.2, hi)
                total, clipped = total + pg, clipped + c
        assert loss.item() == pytest.approx((total / div).item(), rel=1e-12), fn.__name__
        assert torch.allclose(grad(loss, lp), grad(total / div, lp)), fn.__name__
        assert st["clip_frac"] == pytest.approx(clipped / sum(LENGTHS)) and 0 < clipped < sum(LENGTHS)


def test_dapo_clip_higher_binds_between_the_two_bounds():
    """A token with ρ in (1.2, 1.28] and A > 0: GRPO's symmetric clip binds, DAPO's higher one does not."""
    old = torch.zeros(1, 1)
    lp = torch.full((1, 1), math.log(1.25), requires_grad=True)
    mask, a = torch.ones(1, 1), torch.ones(1)
    loss, st = dapo_loss(lp, old, mask, a)
    assert loss.item() == pytest.approx(-1.25) and st["clip_frac"] == 0.0
    assert grad(loss, lp).item() == pytest.approx(-1.25)
    loss, st = dapo_loss(lp, old, mask, a, clip_eps_high=0.2)
    assert loss.item() == pytest.approx(-1.2) and st["clip_frac"] == 1.0
    low = torch.full((1, 1), math.log(0.75), requires_grad=True)        # ρ = 0.75 < 0.8 and A < 0: the lower clip
    loss, st = dapo_loss(low, old, mask, -a)
    assert loss.item() == pytest.approx(0.8) and st["clip_frac"] == 1.0 and grad(loss, low).item() == 0.0


def test_gspo_loss_sequence_by_sequence():
    """One ratio per sequence, s = exp(mean_t(lp − old)), clipped to [1 − 0.02, 1 + 0.03] here (wide enough
    that some rows are inside it, narrow enough that others are not)."""
    lp, old, _, mask, adv, _ = batch(3)
    loss, st = gspo_loss(lp, old, mask, adv, clip_low=0.02, clip_high=0.03)
    terms, clipped = [], 0
    for i, n in enumerate(LENGTHS):
        s = torch.exp(sum(lp[i, t] - old[i, t] for t in range(n)) / n)
        u, c = s * adv[i], torch.clamp(s, 0.98, 1.03) * adv[i]
        terms.append(-torch.minimum(u, c))
        clipped += bool(c < u)
    ref_loss = sum(terms) / N
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert torch.allclose(grad(loss, lp), grad(ref_loss, lp))
    assert st["clip_frac"] == pytest.approx(clipped / N) and 0 < clipped < N


@pytest.mark.parametrize("kl_coef", [0.0, 0.25])
def test_reinforce_pp_advantages_token_by_token(kl_coef):
    """r_t = −c·(old_t − ref_t) plus the reward on the last token; A_t = Σ_{s ≥ t} r_s, whitened over
    every response token of the batch (unbiased std), 0 on padding."""
    _, old, ref, mask, _, rewards = batch(4)
    a = reinforce_pp_advantages(rewards, old, ref, mask, kl_coef=kl_coef)
    returns = []
    for i, n in enumerate(LENGTHS):
        r = [-kl_coef * (old[i, t] - ref[i, t]).item() + (rewards[i].item() if t == n - 1 else 0.0) for t in range(n)]
        returns.append([sum(r[t:]) for t in range(n)])
    flat = whiten_list([x for row in returns for x in row])
    k = 0
    for i, n in enumerate(LENGTHS):
        for t in range(T):
            if t < n:
                assert a[i, t].item() == pytest.approx(flat[k], rel=1e-9, abs=1e-12)
                k += 1
            else:
                assert a[i, t].item() == 0.0


def test_masked_whiten_all_sum_is_the_global_batch():
    """all_sum sums a statistic over processes: two processes holding the same batch see the statistics
    of the batch twice over (the same mean, the std with 2n − 1 in its denominator)."""
    _, old, _, mask, _, _ = batch(5)
    w = masked_whiten(old, mask, all_sum=lambda t: 2 * t)
    xs = [old[i, t].item() for i, n in enumerate(LENGTHS) for t in range(n)]
    want = whiten_list(xs, copies=2)
    got = [w[i, t].item() for i, n in enumerate(LENGTHS) for t in range(n)]
    assert got == pytest.approx(want, rel=1e-9)
    assert whiten_list(xs) != pytest.approx(want, rel=1e-6)         # the copies do change the std


@pytest.mark.parametrize("gamma,lam,with_token_rewards", [(1.0, 0.95, False), (0.9, 0.7, True)])
def test_gae_token_by_token(gamma, lam, with_token_rewards):
    """δ_t = r_t + γ·V_{t+1} − V_t (V past the row's end = 0), A_t = δ_t + γλ·A_{t+1}; R_t = A_t + V_t; 0 on
    padding; float64 in, float64 out."""
    _, old, ref, mask, _, rewards = batch(6)
    values = torch.rand(N, T, generator=torch.Generator().manual_seed(7)) * 2 - 0.5
    values = values + (1 - mask) * 50.0                               # padding's values must not leak in
    token_rewards = (old - ref) * 0.3 if with_token_rewards else None
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam, token_rewards=token_rewards)
    assert adv.dtype == ret.dtype == torch.float64
    for i, n in enumerate(LENGTHS):
        a_next = 0.0
        for t in reversed(range(T)):
            if t >= n:
                assert adv[i, t].item() == 0.0 and ret[i, t].item() == 0.0
                continue
            r = (rewards[i].item() if t == n - 1 else 0.0) + (token_rewards[i, t].item() if with_token_rewards else 0.0)
            v_next = values[i, t + 1].item() if t + 1 < n else 0.0
            a_next = r + gamma * v_next - values[i, t].item() + gamma * lam * a_next
            assert adv[i, t].item() == pytest.approx(a_next, rel=1e-12, abs=1e-12)
            assert ret[i, t].item() == pytest.approx(a_next + values[i, t].item(), rel=1e-12, abs=1e-12)


def test_gae_on_a_full_row_reads_the_last_value_at_the_end():
    """A row with no padding: V after its last token is 0, and the δ before it uses V_{T−1}."""
    values, mask = torch.tensor([[0.5, 2.0, 3.0]]), torch.ones(1, 3)
    adv, _ = gae(torch.tensor([1.0]), values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[0.5, -1.0, -2.0]]                        # R = 1 at every token, minus V_t


@pytest.mark.parametrize("token_count,processes", [(None, 1), (60.0, 2)])
def test_ppo_loss_token_by_token(token_count, processes):
    """The whitened-advantage clipped surrogate plus vf_coef·½(V − R)², Σ over tokens / token_count (or the
    number of tokens); all_sum: `processes` copies of the batch (the whitening's statistics)."""
    lp, old, _, mask, _, _ = batch(8)
    advs = torch.linspace(-1.0, 2.0, N * T).view(N, T) ** 2 - 0.7
    values = (torch.rand(N, T, generator=torch.Generator().manual_seed(9)) - 0.5).requires_grad_(True)
    returns = torch.rand(N, T, generator=torch.Generator().manual_seed(10))
    all_sum = None if processes == 1 else (lambda t: processes * t)
    loss, st = ppo_loss(lp, old, mask, advs, values, returns, clip_eps=0.2, vf_coef=0.7,
                        token_count=token_count, all_sum=all_sum)
    div = sum(LENGTHS) if token_count is None else token_count
    z = whiten_list([advs[i, t].item() for i, n in enumerate(LENGTHS) for t in range(n)], copies=processes)
    pg, vl, clipped, k = 0.0, 0.0, 0, 0
    for i, n in enumerate(LENGTHS):
        for t in range(n):
            p, c = surrogate(lp[i, t], old[i, t], z[k], 0.2, 0.2)
            pg, clipped, k = pg + p, clipped + c, k + 1
            vl = vl + 0.5 * (values[i, t] - returns[i, t]) ** 2
    ref_loss = pg / div + 0.7 * vl / div
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-10)
    g, g_ref = torch.autograd.grad(loss, (lp, values)), torch.autograd.grad(ref_loss, (lp, values))
    assert all(torch.allclose(a, b) for a, b in zip(g, g_ref))
    assert st["value_loss"] == pytest.approx((vl / div).item(), rel=1e-10)
    assert st["clip_frac"] == pytest.approx(clipped / sum(LENGTHS)) and 0 < clipped < sum(LENGTHS)


def test_value_head_reads_out_each_position_and_learns():
    """ValueHead starts at V ≡ 0 and is a linear map of each position's state: w·h + b after one set."""
    head = ValueHead(4)
    h = torch.randn(2, 3, 4)
    assert head(h).shape == (2, 3) and (head(h) == 0).all()
    with torch.no_grad():
        head.out.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
        head.out.bias.fill_(0.25)
    want = torch.einsum("nth,h->nt", h, torch.tensor([1.0, -2.0, 0.5, 3.0])) + 0.25
    assert torch.allclose(head(h), want)
    assert head(h.float()).dtype == torch.float64                      # its own dtype, whatever the trunk's


def test_log_z_table_starts_at_init_and_looks_up_by_key():
    table = LogZTable(5, init=2.5)
    assert table.table.tolist() == [2.5] * 5
    with torch.no_grad():
        table.table.copy_(torch.arange(5.0))
    assert table(torch.tensor([3, 0, 3])).tolist() == [3.0, 0.0, 3.0]
    table(torch.tensor([1, 1])).sum().backward()
    assert table.table.grad.tolist() == [0.0, 2.0, 0.0, 0.0, 0.0]


def test_masked_whiten_on_two_tokens():
    """Two tokens: mean (a + b)/2, unbiased std |a − b|/√2, so they whiten to ∓1/√2 · √2 = ∓0.707..."""
    x, mask = torch.tensor([[1.0, 4.0, 99.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, :2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-6)


def test_reinforce_pp_advantages_whiten_over_all_processes():
    """all_sum reaches the whitening: two processes holding this batch whiten over it twice over."""
    _, old, ref, mask, _, rewards = batch(4)
    a = reinforce_pp_advantages(rewards, old, ref, mask, kl_coef=0.25, all_sum=lambda t: 2 * t)
    returns = []
    for i, n in enumerate(LENGTHS):
        r = [-0.25 * (old[i, t] - ref[i, t]).item() + (rewards[i].item() if t == n - 1 else 0.0) for t in range(n)]
        returns += [sum(r[t:]) for t in range(n)]
    got = [a[i, t].item() for i, n in enumerate(LENGTHS) for t in range(n)]
    assert got == pytest.approx(whiten_list(returns, copies=2), rel=1e-9)


def mixed(seed):
    """The oracle batch in float32 but for a float64 mask (and float64 rewards and advantages, the third pair,
    for the losses that cast them): the losses must compute in the log-probs' dtype, whatever the mask's."""
    lp, old, ref, mask, adv, rewards = batch(seed)
    return (lp.detach().float().requires_grad_(True), old.float(), ref.float(), mask, adv.float(), rewards.float(),
            adv, rewards)


def test_losses_compute_in_the_log_probs_dtype_whatever_the_masks():
    lp, old, ref, mask, adv, rewards, adv64, rewards64 = mixed(13)
    tok = torch.linspace(-1, 1, N * T).view(N, T)
    values = torch.zeros(N, T, dtype=torch.float32, requires_grad=True)
    from flowrl import flowrl_loss, flowrl_token_loss, gflowrl_loss, group_log_z
    cases = {
        "grpo": grpo_loss(lp, old, ref, mask, adv)[0],
        "dr_grpo": dr_grpo_loss(lp, old, ref, mask, adv, budget=5)[0],
        "dapo": dapo_loss(lp, old, mask, adv)[0],
        "gspo": gspo_loss(lp, old, mask, adv)[0],
        "reinforce_pp": reinforce_pp_loss(lp, old, mask, tok.float())[0],
        "ppo": ppo_loss(lp, old, mask, tok.float(), values, tok.float())[0],
        "gflowrl": gflowrl_loss(lp, old, ref, mask, rewards64, group_size=3)[0],
        "flowrl_token": flowrl_token_loss(lp, old, mask, adv64)[0],
        "group_log_z": group_log_z(lp, ref, mask, rewards, 2.0, 3, True),
        "flowrl": flowrl_loss(lp, old, ref, mask, adv, torch.zeros(N, dtype=torch.float32))[0],
    }
    for name, loss in cases.items():
        assert loss.dtype == torch.float32, name
    for name, st in (("grpo", grpo_loss(lp, old, ref, mask, adv)[1]), ("dapo", dapo_loss(lp, old, mask, adv)[1]),
                     ("dr_grpo", dr_grpo_loss(lp, old, ref, mask, adv, budget=5)[1]),
                     ("reinforce_pp", reinforce_pp_loss(lp, old, mask, tok.float())[1]),
                     ("ppo", ppo_loss(lp, old, mask, tok.float(), values, tok.float())[1])):
        assert 0 < st["clip_frac"] < 1, name
    a = reinforce_pp_advantages(rewards, old.double(), ref.double(), mask.float())
    assert a.dtype == torch.float64                                     # the log-probs' dtype, not the mask's
    adv_g, ret = gae(rewards, torch.zeros(N, T), mask.float())
    assert adv_g.dtype == ret.dtype == torch.float64
    assert adv_g[0, 4].item() == 1.0 and adv_g[0, 0].item() == pytest.approx(0.95 ** 4)


def test_the_defaults_are_the_documented_values():
    """Each loss called without its knobs equals the call with the values its docstring and docs/method.md
    give (the papers' where they give one), and differs from a call with another value."""
    lp, old, ref, mask, adv, rewards = batch(14)
    from flowrl import flowrl_token_loss, gflowrl_loss
    values, tok = torch.zeros(N, T, requires_grad=True), torch.linspace(-1, 1, N * T).view(N, T)
    cases = [
        (lambda **k: grpo_loss(lp, old, ref, mask, adv, **k), dict(clip_eps=0.2, kl_coef=0.0),
         dict(clip_eps=0.3)),
        (lambda **k: dr_grpo_loss(lp, old, ref, mask, adv, budget=5, **k), dict(clip_eps=0.2, kl_coef=0.0),
         dict(kl_coef=0.1)),
        (lambda **k: dapo_loss(lp, old, mask, adv, **k), dict(clip_eps=0.2, clip_eps_high=0.28),
         dict(clip_eps_high=0.2)),
        (lambda **k: gspo_loss(lp, old, mask, adv, **k), dict(clip_low=3e-4, clip_high=4e-4), dict(clip_high=1e-3)),
        (lambda **k: reinforce_pp_loss(lp, old, mask, tok, **k), dict(clip_eps=0.2), dict(clip_eps=0.1)),
        (lambda **k: ppo_loss(lp, old, mask, tok, values, tok, **k), dict(clip_eps=0.2, vf_coef=0.5),
         dict(vf_coef=0.4)),
        (lambda **k: gflowrl_loss(lp, old, ref, mask, rewards, group_size=3, **k),
         dict(beta=8.0, gap_clip=(0.2, 0.28), weight_cap=1.28, z_length_norm=True, ratio="geometric"),
         dict(weight_cap=1.1)),
        (lambda **k: flowrl_token_loss(lp, old, mask, adv, **k), dict(beta=15.0, clip=(0.8, 1.28), old_prior=True),
         dict(clip=(0.8, 1.2))),
        (lambda **k: (gae(rewards, tok, mask, **k)[0], {}), dict(gamma=1.0, lam=0.95), dict(lam=0.9)),
        (lambda **k: (reinforce_pp_advantages(rewards, old, ref, mask, **k), {}), dict(kl_coef=0.0),
         dict(kl_coef=0.1)),
    ]
    for fn, documented, other in cases:
        (l0, s0), (l1, s1), (l2, _) = fn(), fn(**documented), fn(**other)
        assert torch.equal(l0, l1) and s0 == s1, documented
        assert not torch.equal(l0, l2), other


def test_gflowrl_weight_at_the_cap_counts_as_uncapped():
    """On-policy (ρ = 1 exactly) with weight_cap = 1: no weight is above the cap, so clip_frac is 0."""
    lp, _, ref, mask, _, rewards = batch(15)
    from flowrl import gflowrl_loss
    _, st = gflowrl_loss(lp, lp.detach(), ref, mask, rewards, group_size=3, weight_cap=1.0)
    assert st["clip_frac"] == 0.0 and st["is_weight"] == 1.0


def test_bad_choices_name_themselves():
    lp, old, ref, mask, adv, rewards = batch(16)
    from flowrl import flowrl_loss, gflowrl_loss
    with pytest.raises(ValueError, match="ratio must be 'geometric' or 'sequence', got 'token'"):
        gflowrl_loss(lp, old, ref, mask, rewards, group_size=3, ratio="token")
    with pytest.raises(ValueError, match="weight must be 'ratio' or 'one', got 'none'"):
        flowrl_loss(lp, old, ref, mask, rewards, torch.zeros(N), weight="none")


def test_equal_reward_rows_marks_each_row_of_a_flat_group():
    from flowrl import equal_reward_rows
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    assert equal_reward_rows(r, 3).tolist() == [False] * 3 + [False] * 3 + [True] * 3
    assert equal_reward_rows(r[:6], 2).tolist() == [True, True, False, False, True, True]


def test_flowrl_form_overrides_only_what_it_is_given():
    from flowrl import FORMS, flowrl_form
    before = {k: dict(v) for k, v in FORMS.items()}
    assert flowrl_form("flowrl") == FORMS["flowrl"] and flowrl_form("flowrl_exact") == FORMS["flowrl_exact"]
    assert flowrl_form("flowrl", length_norm=False) == dict(FORMS["flowrl"], length_norm=False)
    assert flowrl_form("flowrl_exact", length_norm=True)["length_norm"] is True
    assert FORMS == before                                             # the table itself is left alone


def test_log_z_head_pools_the_real_prompt_tokens_in_float32():
    """log Z = out(mlp(mean of the prompt's real tokens' states)), one value per row; a one-token prompt is its
    token's state; under bf16 autocast the head still computes in float32 (the same value to 1e-6), and a
    bf16 trunk's states are read in the head's dtype."""
    from flowrl import LogZHead
    torch.manual_seed(0)
    head = LogZHead(8, init=1.5).float().eval()
    h = torch.randn(3, 4, 8).float()
    pm = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    pooled = torch.stack([h[i][pm[i]].mean(0) for i in range(3)])
    want = head.out(head.mlp(pooled))[:, 0]
    got = head(h, pm)
    assert got.shape == (3,) and torch.allclose(got, want, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(head(h, pm), want, atol=1e-6)
        assert torch.equal(ValueHead(8).float()(h), torch.zeros(3, 4, dtype=torch.float32))
    assert torch.allclose(head(h.bfloat16(), pm), head(h.bfloat16().float(), pm))
    vh = ValueHead(8).float()
    with torch.no_grad():
        vh.out.weight.normal_()
    want_v = (h @ vh.out.weight[0] + vh.out.bias).detach()                 # float32, outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(vh(h), want_v, atol=1e-5)


def test_flowrl_loss_row_by_row_with_its_equal_reward_stats():
    """FlowRL's loss (Eq. 5 with the clipped weight; docs/method.md M4), its gradient and every stat against a
    loop over rows: δ_i = log Z_i + ℓ_θ − β·r_i − ℓ_ref (token means), w_i = clamp(exp(Σ_t lp − old), 0.8,
    1.2); weight="one" drops w; flat rows give flat_grad_share = Σ_flat w·|δ| / Σ w·|δ| and their mean |δ|."""
    from flowrl import flowrl_loss
    lp, old, ref, mask, adv, _ = batch(17)
    log_z = torch.tensor([0.3, -0.2, 0.1, 0.05, -0.4, 0.2], requires_grad=True)
    flat = torch.tensor([True, False, False, True, False, False])
    beta = 0.5
    for weight in ("ratio", "one"):
        loss, st = flowrl_loss(lp, old, ref, mask, adv, log_z, beta=beta, clip=(0.8, 1.2), flat=flat, weight=weight)
        terms, ws, ds, clipped, lths, lrefs = [], [], [], 0, [], []
        for i, n in enumerate(LENGTHS):
            l_th = sum(lp[i, t] for t in range(n)) / n
            l_ref = sum(ref[i, t] for t in range(n)).item() / n
            d = log_z[i] + l_th - beta * adv[i].item() - l_ref
            raw = math.exp(sum((lp[i, t] - old[i, t]).item() for t in range(n)))
            w = min(max(raw, 0.8), 1.2) if weight == "ratio" else 1.0
            clipped += w != raw if weight == "ratio" else 0
            terms.append(w * d ** 2)
            ws.append(w), ds.append(d.item()), lths.append(l_th.item()), lrefs.append(l_ref)
        ref_loss = sum(terms) / N
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12), weight
        g, g_ref = torch.autograd.grad(loss, (lp, log_z)), torch.autograd.grad(ref_loss, (lp, log_z))
        assert all(torch.allclose(a, b) for a, b in zip(g, g_ref)), weight
        pull = [w * abs(d) for w, d in zip(ws, ds)]
        want = {"log_z": log_z.mean().item(), "tb_residual": sum(d * d for d in ds) / N, "is_weight": sum(ws) / N,
                "clip_frac": clipped / N, "logp": sum(lths) / N, "ref_logp": sum(lrefs) / N,
                "logp_minus_ref": (sum(lths) - sum(lrefs)) / N,
                "beta_reward": sum(abs(beta * a) for a in adv.tolist()) / N,
                "flat_grad_share": sum(p for p, f in zip(pull, flat.tolist()) if f) / sum(pull),
                "flat_delta_abs": sum(abs(d) for d, f in zip(ds, flat.tolist()) if f) / 2}
        assert st == pytest.approx(want, rel=1e-6), weight                # the stats come back in float32
        if weight == "ratio":
            assert 0 < clipped < N
    tiny = torch.full((N,), 1e-3)              # δ = log Z = 1e-3 on every row: Σ w·|δ| far below 1, no floor in it
    _, st = flowrl_loss(lp, lp.detach(), lp.detach(), mask, torch.zeros(N), tiny, beta=0.0, clip=None, flat=flat)
    assert st["flat_grad_share"] == pytest.approx(2 / 6, rel=1e-6)


def test_group_normalize_by_hand_and_its_smallest_group():
    from flowrl import group_normalize
    r = torch.tensor([0.0, 1.0, 3.0, 3.0])
    s = 1 / math.sqrt(2)                                                  # the unbiased std of {0, 1}
    assert group_normalize(r, 2).tolist() == pytest.approx([-0.5 / (s + 1e-6), 0.5 / (s + 1e-6), 0.0, 0.0], rel=1e-12)
    with pytest.raises(ValueError, match="group_size must be >= 2 and divide the 4 rows, got 3"):
        group_normalize(r, 3)
    with pytest.raises(ValueError, match="got 1"):
        group_normalize(r, 1)


def test_head_and_loss_defaults_are_the_documented_ones():
    """FlowRL's loss without its knobs is the call with β = 15, clip (0.8, 1.2), token-mean ℓ, weight "ratio";
    LogZHead starts at log Z = 0 (its init) and ValueHead at V = 0."""
    from flowrl import LogZHead, flowrl_loss
    lp, old, ref, mask, adv, _ = batch(18)
    log_z = torch.zeros(N)
    l0, s0 = flowrl_loss(lp, old, ref, mask, adv, log_z)
    l1, s1 = flowrl_loss(lp, old, ref, mask, adv, log_z, beta=15.0, clip=(0.8, 1.2), length_norm=True, weight="ratio")
    assert torch.equal(l0, l1) and s0 == s1
    assert not torch.equal(l0, flowrl_loss(lp, old, ref, mask, adv, log_z, beta=14.0)[0])
    head = LogZHead(8)
    assert head.out.bias.item() == 0.0 and head.mlp[3].p == 0.1
    assert LogZHead(8, init=2.0).out.bias.item() == 2.0
    assert LogZTable(3).table.tolist() == [0.0] * 3
