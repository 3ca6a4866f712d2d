"""GFlowRL (as read) and the authors' token-level objectives (flowrl.py M10) against by-hand loops,
their on-policy gradients, and train.py's wiring of them."""
import math
import os
import shutil

import pytest
import torch

import config
import flowrl
import train
from flowrl import flowrl_token_loss, gflowrl_loss

TINY = ["--warm_steps", "300", "--steps", "2", "--batch_prompts", "4", "--group_size", "4", "--eval_every", "2",
        "--eval_k", "4", "--log_every", "2", "--ckpt_every", "2", "--n_layer", "1", "--n_embd", "32",
        "--n_head", "2", "--n_kv_head", "1", "--no_plot", "--warm_noise", "0.3"]


pytestmark = pytest.mark.usefixtures("float64")          # conftest.py: float64 throughout


def batch(seed=0, N=6, T=5, G=3):
    """Random per-token log-probs of π_θ (with gradients), π_old and π_ref, a ragged mask (every row at least one
    token) and 0/1 rewards with one all-equal group."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(N, T, generator=g) * 2
    old = lp + 0.3 * torch.randn(N, T, generator=g)
    ref = -torch.rand(N, T, generator=g) * 2
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])[:N]
    return lp.requires_grad_(), old, ref, mask, r, G


def by_hand_gflowrl(lp, old, ref, mask, r, G, beta, eps, cap, z_mean, geometric):
    """Eq. 4, 6, 7, 8 as loops over rows and tokens, in plain Python floats."""
    N, T = lp.shape
    rows = []
    for i in range(N):
        toks = [t for t in range(T) if mask[i, t]]
        s = lambda x: sum(float(x[i, t]) for t in toks)
        rows.append({"th_sum": s(lp), "old_sum": s(old), "ref_sum": s(ref), "n": len(toks)})
    loss, grads = 0.0, torch.zeros(N, T)
    st = {"log_z": 0.0, "tb_residual": 0.0, "is_weight": 0.0, "clip_frac": 0.0, "gap_abs": 0.0, "gap_clip_frac": 0.0}
    for i, row in enumerate(rows):
        grp = rows[(i // G) * G:(i // G + 1) * G]
        rs = r[(i // G) * G:(i // G + 1) * G].tolist()
        norm = (lambda x: x["n"]) if z_mean else (lambda x: 1)
        log_z = sum(beta * rj + (x["ref_sum"] - x["old_sum"]) / norm(x) for x, rj in zip(grp, rs)) / G
        l_th, l_old, l_ref = row["th_sum"] / row["n"], row["old_sum"] / row["n"], row["ref_sum"] / row["n"]
        gap = log_z + l_old - l_ref - beta * float(r[i])
        gap_c = min(max(gap, -eps[0]), eps[1])
        rho = math.exp(l_th - l_old) if geometric else math.exp(row["th_sum"] - row["old_sum"])
        w = min(rho, cap)
        e = gap_c + l_th - l_old
        loss += w * e * e / N
        for t in range(T):
            if mask[i, t]:
                grads[i, t] = w * 2 * e / row["n"] / N
        for key, v in (("log_z", log_z), ("tb_residual", (gap + l_th - l_old) ** 2), ("is_weight", w),
                       ("clip_frac", rho > cap), ("gap_abs", abs(gap)), ("gap_clip_frac", gap != gap_c)):
            st[key] += v / N
    return loss, grads, st


@pytest.mark.parametrize("z_mean,ratio,eps", [(True, "geometric", (0.2, 0.28)), (False, "sequence", (0.5, 3.0)),
                                              (True, "sequence", (0.05, 0.05))])
def test_gflowrl_loss_and_gradient_equal_a_loop_over_rows(z_mean, ratio, eps):
    lp, old, ref, mask, r, G = batch()
    loss, st = gflowrl_loss(lp, old, ref, mask, r, group_size=G, beta=8.0, gap_clip=eps, weight_cap=1.1,
                            z_length_norm=z_mean, ratio=ratio)
    loss.backward()
    want, grads, want_st = by_hand_gflowrl(lp.detach(), old, ref, mask, r, G, 8.0, eps, 1.1, z_mean,
                                           ratio == "geometric")
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(lp.grad, grads, atol=1e-12)
    assert st == pytest.approx(want_st, rel=1e-6, abs=1e-7)           # the stats come back in float32
    assert 0 < st["gap_clip_frac"] <= 1          # these gaps (β = 8 on 0/1 rewards) reach past ±eps


def test_gflowrl_on_policy_gradient_is_twice_the_clipped_gap():
    """With π_old = π_θ (one update per batch): the weight is 1 and ∂L/∂ℓ_θ(y_i) = 2·g̃_i/N."""
    lp, _, ref, mask, r, G = batch(seed=1)
    l_theta = flowrl.masked_mean(lp, mask.double())
    l_theta.retain_grad()
    loss, st = gflowrl_loss(lp, lp.detach(), ref, mask, r, group_size=G, beta=8.0, gap_clip=(0.2, 0.28))
    loss.backward()
    m = mask.double()
    l_old, l_ref = flowrl.masked_mean(lp.detach(), m), flowrl.masked_mean(ref, m)
    log_z = (8.0 * r + l_ref - l_old).view(-1, G).mean(1).repeat_interleave(G)
    gap_c = (log_z + l_old - l_ref - 8.0 * r).clamp(-0.2, 0.28)
    assert st["is_weight"] == 1.0 and st["clip_frac"] == 0.0
    want = 2 * gap_c / len(r)                                                      # per row, through ℓ_θ
    got = (lp.grad * mask.sum(-1, keepdim=True)).sum(-1) / mask.sum(-1)            # ∂L/∂ℓ_θ: |y|·∂L/∂logp_t
    assert torch.allclose(got, want, atol=1e-12)
    assert not torch.allclose(want, torch.zeros_like(want))


def test_gflowrl_without_the_clip_is_trajectory_balance_with_the_group_log_z():
    """Unclipped and on-policy, g + ℓ_θ − ℓ_old is FlowRL's δ with --logz group's estimate (the same Eq. 4)."""
    lp, _, ref, mask, r, G = batch(seed=2)
    loss, _ = gflowrl_loss(lp, lp.detach(), ref, mask, r, group_size=G, beta=8.0, gap_clip=None)
    log_z = flowrl.group_log_z(lp, ref, mask, r, 8.0, G, length_norm=True)
    tb, _ = flowrl.flowrl_loss(lp, lp.detach(), ref, mask, r, log_z, beta=8.0, clip=None, length_norm=True)
    assert loss.item() == pytest.approx(tb.item(), rel=1e-12)


def by_hand_token(lp, old, mask, r, G, beta, clip, old_prior, token_count=None):
    N, T = lp.shape
    a = [float(r[i]) - sum(r[(i // G) * G:(i // G + 1) * G].tolist()) / G for i in range(N)]
    tokens = int(mask.sum())
    n = tokens if token_count is None else token_count
    loss, grads, st = 0.0, torch.zeros(N, T), {"clip_frac": 0.0, "is_weight": 0.0, "residual": 0.0}
    for i in range(N):
        for t in range(T):
            if not mask[i, t]:
                continue
            e = float(lp[i, t]) - beta * a[i] - (float(old[i, t]) if old_prior else 0.0)
            rho = math.exp(float(lp[i, t]) - float(old[i, t]))
            w = min(max(rho, clip[0]), clip[1])
            loss += w * e * e / n
            grads[i, t] = 2 * w * e / n
            for key, v in (("clip_frac", w != rho), ("is_weight", w), ("residual", e)):
                st[key] += v / tokens
    return loss, grads, st


@pytest.mark.parametrize("old_prior,token_count", [(True, None), (False, None), (True, 40.0)])
def test_token_level_objectives_equal_a_loop_over_tokens(old_prior, token_count):
    lp, old, _, mask, r, G = batch(seed=3)
    loss, st = flowrl_token_loss(lp, old, mask, flowrl.group_center(r, G), beta=15.0, clip=(0.8, 1.28),
                                 old_prior=old_prior, token_count=token_count)
    loss.backward()
    want, grads, want_st = by_hand_token(lp.detach(), old, mask, r, G, 15.0, (0.8, 1.28), old_prior, token_count)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(lp.grad, grads, atol=1e-12)
    assert st == pytest.approx(want_st, rel=1e-6, abs=1e-7)           # the stats come back in float32
    assert 0 < st["clip_frac"] < 1


def test_token_level_on_policy_gradients_are_reinforce_and_reinforce_plus_sharpening():
    """On-policy: flowrl_token_old's gradient per token is −2β·A/n (REINFORCE with a group-mean baseline);
    flowrl_token's adds 2·log π_θ(y_t)/n, nonzero even where A = 0 (the all-equal group)."""
    lp, _, _, mask, r, G = batch(seed=4)
    a = flowrl.group_center(r, G)
    n = mask.sum()
    for old_prior in (True, False):
        x = lp.detach().clone().requires_grad_()
        loss, _ = flowrl_token_loss(x, x.detach(), mask, a, beta=15.0, old_prior=old_prior)
        loss.backward()
        want = 2 * (-15.0 * a[:, None] + (0 if old_prior else x.detach())) / n * mask
        assert torch.allclose(x.grad, want, atol=1e-12)
    flat = slice(3, 6)                                              # the all-equal group: A = 0
    assert torch.all(a[flat] == 0)


# ---- train.py's wiring ----

@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("warm")
    torch.set_default_dtype(torch.float32)
    train.main(TINY + ["--algo", "grpo", "--steps", "1", "--out_dir", str(d), "--no_summary"])
    return str(d / "warmstart.pt")


def test_gflowrl_filters_flat_groups_by_default_and_the_flag_turns_it_off():
    a = config.parse_args(["--algo", "gflowrl"])
    assert config.drops_flat_groups(a, "gflowrl") and not config.drops_flat_groups(a, "flowrl")
    b = config.parse_args(["--algo", "gflowrl", "--no-drop_flat_groups", "--gap_clip", "none"])
    assert not config.drops_flat_groups(b, "gflowrl") and b.gap_bounds is None
    with pytest.raises(config.UserError, match="--gap_clip"):
        config.parse_args(["--gap_clip", "0.2"])


def test_successors_train_on_policy_with_weight_one(tmp_path, warm_dir):
    torch.set_default_dtype(torch.float32)
    shutil.copy(warm_dir, tmp_path / "warmstart.pt")
    out = str(tmp_path)
    calls = []
    real = flowrl.gflowrl_loss
    flowrl.gflowrl_loss = lambda *a, **k: calls.append(k) or real(*a, **k)
    try:
        train.main(TINY + ["--algo", "gflowrl", "flowrl_token_old", "flowrl_token", "--no-drop_flat_groups",
                           "--steps", "2", "--out_dir", out])
    finally:
        flowrl.gflowrl_loss = real
    assert calls and all(k["beta"] == 8.0 and k["gap_clip"] == (0.2, 0.28) and k["weight_cap"] == 1.28 for k in calls)
    import json
    for algo in ("gflowrl", "flowrl_token_old", "flowrl_token"):
        with open(os.path.join(out, algo, "metrics.jsonl")) as f:
            tr = [json.loads(line) for line in f if '"train"' in line]
        assert len(tr) == 2
        assert all(t["is_weight/mean"] == 1.0 and t["clip_frac"] == 0.0 for t in tr)   # one update: π_old = π_θ


def test_flowrl_token_without_advantage_is_an_entropy_bonus_in_expectation():
    """Exact enumeration over a 5-token softmax: with A = 0 and π_old = π_θ, the expectation over y ~ π of
    flowrl_token's gradient is −2·∇H(π): descent raises the entropy (docs/method.md M10)."""
    theta = torch.tensor([1.5, 0.2, -0.7, 0.0, -2.0], requires_grad=True)
    logp = torch.log_softmax(theta, 0)
    probs = logp.exp().detach()
    expected = torch.zeros(5)
    for v in range(5):
        lp = torch.log_softmax(theta, 0)[v].view(1, 1)                 # one row, one token: y = v
        loss, _ = flowrl_token_loss(lp, lp.detach(), torch.ones(1, 1, dtype=torch.bool), torch.zeros(1),
                                    old_prior=False)
        g, = torch.autograd.grad(loss, theta)
        expected += probs[v] * g
    entropy = -(logp.exp() * logp).sum()
    grad_h, = torch.autograd.grad(entropy, theta)
    assert torch.allclose(expected, -2 * grad_h, atol=1e-12)
