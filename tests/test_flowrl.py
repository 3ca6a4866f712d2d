"""flowrl.py against independent references: exact enumeration of a tabular autoregressive policy,
finite differences, and hand-computed values."""
import math

import pytest
import torch

from flowrl import (LogZHead, dapo_loss, dr_grpo_loss, flowrl_loss, gae, group_center, group_normalize, grpo_loss,
                    gspo_loss, log_partition_init, ppo_loss, reinforce_pp_advantages, reinforce_pp_loss)



pytestmark = pytest.mark.usefixtures("float64")          # exactness is claimed: float64 throughout (conftest.py)

EOS, T_MAX = 2, 3


def all_sequences():
    """Every response over tokens {0, 1} and EOS (=2), at most 3 tokens: 15 sequences."""
    seqs = [[EOS]]
    for n in (1, 2):
        for k in range(2 ** n):
            seqs.append([(k >> i) & 1 for i in range(n)] + [EOS])
    for k in range(8):
        seqs.append([(k >> i) & 1 for i in range(3)])                  # cut at 3 tokens
    return seqs


SEQS = all_sequences()
PREFIXES = [(), (0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]            # the 7 tree nodes


def token_logprobs(theta):
    """theta: (7, 3) logits per tree node -> per-token log-probs (15, 3) and mask (15, 3)."""
    logp_node = torch.log_softmax(theta, -1)
    lp = torch.zeros(len(SEQS), T_MAX)
    mask = torch.zeros(len(SEQS), T_MAX, dtype=torch.bool)
    rows = []
    for s in SEQS:
        row = [logp_node[PREFIXES.index(tuple(s[:t])), s[t]] for t in range(len(s))]
        rows.append(torch.stack(row + [torch.zeros(())] * (T_MAX - len(s))))
    lp = torch.stack(rows)
    for i, s in enumerate(SEQS):
        mask[i, :len(s)] = True
    return lp, mask


def exact_kl(theta, theta_ref, r, beta):
    """KL(π_θ ‖ p*) by enumeration, p* = π_ref·exp(β r)/Z."""
    lp, mask = token_logprobs(theta)
    lref, _ = token_logprobs(theta_ref)
    log_pi, log_ref = lp.sum(-1), lref.sum(-1)
    log_p_star = log_ref + beta * r - torch.logsumexp(log_ref + beta * r, 0)
    return (log_pi.exp() * (log_pi - log_p_star)).sum()


def true_log_z(theta_ref, r, beta):
    lref, _ = token_logprobs(theta_ref)
    return torch.logsumexp(lref.sum(-1) + beta * r, 0)


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(7, 3, generator=g)
    theta_ref = torch.randn(7, 3, generator=g)
    r = torch.rand(len(SEQS), generator=g)
    return theta, theta_ref, r


def expected_tb_grad(theta, theta_ref, r, beta, log_z):
    """Σ_y π(y)·∇_θ ½δ(y)², each δ(y)² computed by flowrl_loss (sum form, w = 1, log Z fixed)."""
    theta = theta.clone().requires_grad_(True)
    lp, mask = token_logprobs(theta)
    lref, _ = token_logprobs(theta_ref)
    pi = lp.sum(-1).exp().detach()
    total = 0
    for i in range(len(SEQS)):
        loss, _ = flowrl_loss(lp[i:i + 1], lp[i:i + 1].detach(), lref[i:i + 1], mask[i:i + 1], r[i:i + 1],
                              torch.tensor([log_z]), beta=beta, clip=None, length_norm=False)
        total = total + pi[i] * 0.5 * loss
    return torch.autograd.grad(total, theta)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proposition_1_exactly(seed):
    theta, theta_ref, r, beta = *setup(seed), 1.7
    tb = expected_tb_grad(theta, theta_ref, r, beta, log_z=0.3)
    t = theta.clone().requires_grad_(True)
    kl = torch.autograd.grad(exact_kl(t, theta_ref, r, beta), t)[0]
    assert kl.abs().max() > 1e-2                              # a real gradient, not zero = zero
    assert (tb - kl).abs().max() < 1e-8


def test_constant_log_z_is_a_baseline():
    theta, theta_ref, r = setup(3)
    g1 = expected_tb_grad(theta, theta_ref, r, 2.0, log_z=-5.0)
    g2 = expected_tb_grad(theta, theta_ref, r, 2.0, log_z=7.5)
    assert (g1 - g2).abs().max() < 1e-10


def test_log_z_optimum_and_true_log_z():
    beta = 2.5
    theta, theta_ref, r = setup(4)

    def expected_loss_grad_logz(theta, log_z):
        lp, mask = token_logprobs(theta)
        lref, _ = token_logprobs(theta_ref)
        pi = lp.sum(-1).exp()
        z = torch.full((len(SEQS),), float(log_z), requires_grad=True)
        losses = [flowrl_loss(lp[i:i + 1], lp[i:i + 1], lref[i:i + 1], mask[i:i + 1], r[i:i + 1], z[i:i + 1],
                              beta=beta, clip=None, length_norm=False)[0] for i in range(len(SEQS))]
        total = sum(pi[i] * losses[i] for i in range(len(SEQS)))
        return torch.autograd.grad(total, z)[0].sum(), lp.sum(-1), lref.sum(-1), pi

    _, log_pi, log_ref, pi = expected_loss_grad_logz(theta, 0.0)
    z_star = (pi * (beta * r + log_ref - log_pi)).sum()
    g_at, *_ = expected_loss_grad_logz(theta, z_star)
    g_off, *_ = expected_loss_grad_logz(theta, z_star + 0.5)
    assert abs(g_at) < 1e-10 and abs(g_off - 2 * 0.5) < 1e-10    # d/dlogZ E[δ²] = 2 E[δ]

    # π = p*: build the tree logits from p*'s subtree masses; then z_star is the true log Z
    log_p_star = log_ref + beta * r - torch.logsumexp(log_ref + beta * r, 0)
    p_star = log_p_star.exp()
    theta_star = torch.zeros(7, 3)
    for n, pre in enumerate(PREFIXES):
        for a in range(3):
            mass = sum(p_star[i] for i, s in enumerate(SEQS) if tuple(s[:len(pre) + 1]) == pre + (a,))
            theta_star[n, a] = torch.log(mass)
    _, log_pi, log_ref, pi = expected_loss_grad_logz(theta_star, 0.0)
    assert (log_pi - log_p_star).abs().max() < 1e-10
    z_star = (pi * (beta * r + log_ref - log_pi)).sum()
    assert abs(z_star - true_log_z(theta_ref, r, beta)) < 1e-10
    assert abs(exact_kl(theta_star, theta_ref, r, beta)) < 1e-10


@pytest.mark.parametrize("length_norm", [True, False])
def test_finite_differences_and_no_gradient_to_constants(length_norm):
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    shift = 0.1 * torch.randn(4, 5, generator=g)              # log π_θ − log π_old, held fixed
    ref = -torch.rand(4, 5, generator=g)
    r = torch.randn(4, generator=g)
    z = torch.randn(4, generator=g)

    def f(lp, z):
        return flowrl_loss(lp, lp.detach() - shift, ref, mask, r, z, beta=3.0, clip=None, length_norm=length_norm)[0]

    x, zz = lp.clone().requires_grad_(True), z.clone().requires_grad_(True)
    gx, gz = torch.autograd.grad(f(x, zz), (x, zz))
    h = 1e-6
    for i in range(4):
        for t in range(5):
            e = torch.zeros(4, 5)
            e[i, t] = h
            fd = (f(lp + e, z) - f(lp - e, z)) / (2 * h)
            assert abs(fd - gx[i, t]) < 1e-7
        e = torch.zeros(4)
        e[i] = h
        assert abs((f(lp, z + e) - f(lp, z - e)) / (2 * h) - gz[i]) < 1e-7
    assert (gx[~mask] == 0).all() and (gx[mask] != 0).all()

    old = (lp - shift).clone().requires_grad_(True)
    rf, rr = ref.clone().requires_grad_(True), r.clone().requires_grad_(True)
    x = lp.clone().requires_grad_(True)
    loss, _ = flowrl_loss(x, old, rf, mask, rr, z, beta=3.0, length_norm=length_norm)
    loss.backward()
    assert old.grad is None and rf.grad is None and rr.grad is None and x.grad is not None


def test_hand_computed_values():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    old = torch.tensor([[-1.1, -2.2, 5.0], [-0.1, 7.0, 7.0]])        # padding values must not matter
    ref = torch.tensor([[-1.5, -1.5, 3.0], [-1.0, 4.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    r = torch.tensor([1.0, -1.0])
    z = torch.tensor([0.5, 0.25])
    beta = 2.0
    # length_norm: ℓ = token mean. row 0: ℓ=-1.5, ℓref=-1.5, δ=0.5-1.5-2+1.5=-1.5;
    # w=exp(0.3)=1.3499 -> 1.2 clamped
    #              row 1: ℓ=-0.5, ℓref=-1.0, δ=0.25-0.5+2+1=2.75; w=exp(-0.4)=0.6703 -> 0.8 clamped
    loss, st = flowrl_loss(lp, old, ref, mask, r, z, beta=beta)
    assert loss.item() == pytest.approx((1.2 * 1.5 ** 2 + 0.8 * 2.75 ** 2) / 2, abs=1e-12)
    assert st["clip_frac"] == 1.0 and st["is_weight"] == pytest.approx(1.0)
    assert st["tb_residual"] == pytest.approx((1.5 ** 2 + 2.75 ** 2) / 2)
    assert st["logp"] == pytest.approx(-1.0) and st["ref_logp"] == pytest.approx(-1.25)
    assert st["log_z"] == pytest.approx(0.375)
    loss, st = flowrl_loss(lp, old, ref, mask, r, z, beta=beta, clip=None)
    assert loss.item() == pytest.approx((math.exp(0.3) * 1.5 ** 2 + math.exp(-0.4) * 2.75 ** 2) / 2, abs=1e-12)
    assert st["clip_frac"] == 0.0
    # sum form: row 0: ℓ=-3, ℓref=-3, δ=0.5-3-2+3=-1.5; row 1: ℓ=-0.5, ℓref=-1, δ=2.75 (one token)
    loss, _ = flowrl_loss(lp, old, ref, mask, r, z, beta=beta, clip=(0, 10), length_norm=False)
    assert loss.item() == pytest.approx((math.exp(0.3) * 1.5 ** 2 + math.exp(-0.4) * 2.75 ** 2) / 2, abs=1e-12)
    lp2 = lp.clone()
    lp2[0, 0] = -2.0                                                  # row 0 sum form: δ=-2.5, w=exp(-0.7)
    loss, _ = flowrl_loss(lp2, old, ref, mask, r, z, beta=beta, clip=(0.8, 1.2), length_norm=False)
    assert loss.item() == pytest.approx((0.8 * 2.5 ** 2 + 0.8 * 2.75 ** 2) / 2, abs=1e-12)


def test_mechanism_stats_of_equal_reward_groups():
    """flat_grad_share = Σ_flat w·|δ| / Σ w·|δ| and flat_delta_abs = mean |δ| over the flat rows, by hand; the
    other δ terms: mean ℓ_θ − ℓ_ref and mean |β·r|."""
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5], [-3.0, -1.0], [-2.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.5], [-1.0, -1.0], [-2.0, -2.0], [-1.0, -3.0]])
    mask = torch.ones(4, 2, dtype=torch.bool)
    r = torch.tensor([0.0, 0.0, 1.0, -1.0])
    z = torch.tensor([0.5, 0.5, -0.25, -0.25])
    beta = 2.0
    # token means: ℓ = -1.5, -1, -2, -2; ℓ_ref = -1.5, -1, -2, -2 -> ℓ_θ − ℓ_ref = 0 everywhere
    # δ = z − β·r = 0.5, 0.5, -2.25, 1.75; w = 1 (old = lp)
    flat = torch.tensor([True, True, False, False])
    _, st = flowrl_loss(lp, lp.detach(), ref, mask, r, z, beta=beta, flat=flat)
    assert st["flat_grad_share"] == pytest.approx(1.0 / (0.5 + 0.5 + 2.25 + 1.75))
    assert st["flat_delta_abs"] == pytest.approx(0.5)
    assert st["logp_minus_ref"] == pytest.approx(0.0) and st["beta_reward"] == pytest.approx(1.0)
    ref2 = ref + torch.tensor([[1.5], [0.0], [0.0], [0.0]])          # row 0: ℓ_θ − ℓ_ref = -1.5, δ = -1
    _, st = flowrl_loss(lp, lp.detach(), ref2, mask, r, z, beta=beta, flat=flat)
    assert st["logp_minus_ref"] == pytest.approx(-0.375) and st["flat_delta_abs"] == pytest.approx(0.75)
    _, st = flowrl_loss(lp, lp.detach(), ref, mask, r, z, beta=beta, flat=torch.zeros(4, dtype=torch.bool))
    assert st["flat_grad_share"] == 0.0 and "flat_delta_abs" not in st
    _, st = flowrl_loss(lp, lp.detach(), ref, mask, r, z, beta=beta, flat=torch.ones(4, dtype=torch.bool))
    assert st["flat_grad_share"] == pytest.approx(1.0)


def test_group_normalize():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    out = group_normalize(r, 4)
    s = math.sqrt(1 / 3)                                              # unbiased std of [1, 0, 0, 1]
    assert torch.allclose(out[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-6))
    assert (out[4:] == 0).all()
    with pytest.raises(ValueError):
        group_normalize(r, 3)
    with pytest.raises(ValueError):
        group_normalize(r, 1)


def test_log_z_head_pools_prompt_tokens_and_has_its_own_params():
    torch.manual_seed(0)
    head = LogZHead(8, init=4.0).eval()
    h = torch.randn(3, 5, 8)
    assert (head(h, torch.ones(3, 5, dtype=torch.bool)) - 4.0).abs().max() < 0.2    # starts near init
    torch.nn.init.zeros_(head.out.weight)
    m = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.allclose(head(h, m), torch.full((3,), 4.0))
    torch.nn.init.normal_(head.out.weight)
    h2 = h.clone()
    h2[0, :2] = 100.0                                                  # padding changes nothing
    assert torch.allclose(head(h, m)[0], head(h2, m)[0])
    assert not torch.allclose(head(h, m)[0], head(h, m)[2])
    assert len(list(head.parameters())) == 10
    assert head.mlp[1].__class__.__name__ == "GELU" and head.mlp[2].__class__.__name__ == "LayerNorm"


def test_log_partition_init_is_a_log_mean_exp():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    init = log_partition_init(r, 4, 15.0)
    assert init[0].item() == pytest.approx(math.log(0.25 * math.exp(15) + 0.75), rel=1e-6)
    assert init[1].item() == pytest.approx(15.0, rel=1e-6)


# ---- baselines ----

def test_grpo_zero_gradient_for_equal_rewards():
    """Two groups of 4: rewards all equal in the first, mixed in the second. The first group's advantages
    are exactly 0, so its rows get only the KL term's gradient, by hand kl_coef·(1 − exp(ref − lp))/(T·N);
    the second group's rows get a policy-gradient part beside it."""
    torch.manual_seed(0)
    N, T, c = 8, 3, 0.1
    x = torch.randn(N, T, requires_grad=True)
    mask = torch.ones(N, T, dtype=torch.bool)
    ref = x.detach() - 0.3
    adv = group_normalize(torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 1]), 4)
    assert (adv[:4] == 0).all() and (adv[4:] != 0).all()
    loss, _ = grpo_loss(x, x.detach() + 0.1 * torch.randn(N, T), ref, mask, adv, kl_coef=c)
    loss.backward()
    kl_grad = c * (1 - torch.exp(ref - x.detach())) / (T * N)                      # d k3 / d lp, token mean
    assert torch.allclose(x.grad[:4], kl_grad[:4], atol=1e-7)
    assert (x.grad[4:] - kl_grad[4:]).abs().min() > 1e-3


def test_grpo_hand_computed():
    lp = torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(0.6), 0.0]], requires_grad=True)
    old = torch.tensor([[math.log(0.25), math.log(0.5)], [math.log(0.8), 0.0]])   # ratios 2, 1 | 0.75
    ref = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.6), 0.0]])   # q = 0, ln .5 | 0
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    loss, st = grpo_loss(lp, old, ref, mask, adv, clip_eps=0.2, kl_coef=0.1)
    # row 0: tokens −min(2·1, 1.2·1) = −1.2, −1; k3: 0, (0.5 − ln .5 − 1)
    # row 1: −min(−0.75, −0.8) = 0.8
    k3 = 0.5 - math.log(0.5) - 1
    row0 = (-1.2 + 0.1 * 0 - 1.0 + 0.1 * k3) / 2
    row1 = 0.8
    assert loss.item() == pytest.approx((row0 + row1) / 2)
    assert st["clip_frac"] == pytest.approx(2 / 3)
    assert st["kl_ref"] == pytest.approx((k3 / 2 + 0) / 2)
    loss.backward()
    # clipped tokens carry no policy gradient: token (0,0) only its k3 term (here 0), (1,0) none
    assert lp.grad[0, 0].item() == pytest.approx(0.0) and lp.grad[1, 0].item() == pytest.approx(0.0)
    assert lp.grad[0, 1].item() == pytest.approx(0.5 * (-1.0 + 0.1 * (1 - 0.5)) / 2)


def test_dr_grpo_kl_term_is_the_k3_token_sum_over_the_budget():
    """dr_grpo_loss with a KL coefficient adds c·Σ_t k3_t / budget per row (then the row mean),
    k3_t = e^q − q − 1, q = log π_ref − log π_θ: by hand on two rows of different lengths, and its gradient
    c·(1 − e^q)/budget/N."""
    lp = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.6), 0.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)], [math.log(0.3), 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    adv = torch.zeros(2)                                       # the policy-gradient term is zero: only the KL is left
    c, budget = 0.1, 4
    loss, st = dr_grpo_loss(lp, lp.detach(), ref, mask, adv, budget=budget, kl_coef=c)
    k3 = lambda pi, pr: pr / pi - math.log(pr / pi) - 1
    want = ((k3(0.5, 0.25) + k3(0.25, 0.5)) / budget + k3(0.6, 0.3) / budget) / 2 * c
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    assert lp.grad[0, 1].item() == pytest.approx(c * (1 - 0.5 / 0.25) / budget / 2, rel=1e-12)
    assert lp.grad[1, 1].item() == 0.0                         # masked


def test_group_center_and_dr_grpo_hand_computed():
    assert group_center(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3).tolist() == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    lp = torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(0.6), 0.0]], requires_grad=True)
    old = torch.tensor([[math.log(0.25), math.log(0.5)], [math.log(0.8), 0.0]])   # ratios 2, 1 | 0.75
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    adv = torch.tensor([0.5, -0.5])
    loss, st = dr_grpo_loss(lp, old, lp.detach(), mask, adv, budget=4, clip_eps=0.2)
    # row 0: −min(2·.5, 1.2·.5) − min(1·.5, 1·.5) = −0.6 − 0.5; row 1: −min(−.375, −.4) = 0.4;
    # each sum / 4
    assert loss.item() == pytest.approx(((-0.6 - 0.5) / 4 + 0.4 / 4) / 2)
    loss.backward()
    # the unclipped token (0, 1): −A·ρ / budget / N, whatever the row's length
    assert lp.grad[0, 1].item() == pytest.approx(-0.5 * 1.0 / 4 / 2)
    assert lp.grad[0, 0].item() == 0.0 and lp.grad[1, 0].item() == 0.0          # clipped


def test_dapo_is_token_mean_grpo_with_clip_higher():
    """On one on-policy minibatch DAPO is the token-mean-over-the-batch surrogate (= reinforce_pp_loss
    with the sequence advantage on every token); off-policy a ratio in (1.2, 1.28] with A > 0 still
    carries a gradient, where the symmetric clip cuts it."""
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.randn(4, generator=g)
    x, y = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    dapo_loss(x, lp, mask, adv)[0].backward()
    reinforce_pp_loss(y, lp, mask, adv[:, None].expand(4, 5), clip_eps=0.2)[0].backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-12) and x.grad.abs().max() > 0
    assert torch.allclose(x.grad[mask], (-adv[:, None].expand(4, 5) / mask.sum())[mask], atol=1e-12)
    old = lp.detach().clone()
    old[0, 0] = lp[0, 0] - math.log(1.25)                                            # ρ = 1.25 on token (0, 0)
    a = torch.tensor([1.0, 1.0, 1.0, 1.0])
    x, y = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    loss, st = dapo_loss(x, old, mask, a)
    loss.backward()
    reinforce_pp_loss(y, old, mask, a[:, None].expand(4, 5), clip_eps=0.2)[0].backward()
    assert x.grad[0, 0].item() == pytest.approx(-1.25 / mask.sum().item()) and y.grad[0, 0].item() == 0.0
    assert st["clip_frac"] == 0.0


def test_gspo_equals_grpo_on_policy_and_clips_the_sequence_ratio():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(4, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]],
                        dtype=torch.bool)                                              # four different lengths
    adv = torch.randn(4, generator=g)
    x, y = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    gspo_loss(x, lp, mask, adv)[0].backward()
    grpo_loss(y, lp, lp, mask, adv)[0].backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-12) and x.grad.abs().max() > 0
    # off-policy, by hand: s_i = exp(mean_t (log π_θ − log π_old)); clipped to [1 − 3e-4, 1 + 4e-4]
    old = lp - 0.001 * torch.arange(6.0) * torch.tensor([[1.0], [-1.0], [0.0], [0.1]])
    s = [math.exp(sum((lp[i, t] - old[i, t]).item() for t in range(6) if mask[i, t]) / int(mask[i].sum()))
         for i in range(4)]
    want = [-min(si * a, min(max(si, 1 - 3e-4), 1 + 4e-4) * a) for si, a in zip(s, adv.tolist())]
    loss, st = gspo_loss(lp, old, mask, adv)
    assert loss.item() == pytest.approx(sum(want) / 4, abs=1e-12)
    assert st["clip_frac"] == pytest.approx(sum(
        min(max(si, 1 - 3e-4), 1 + 4e-4) * a < si * a for si, a in zip(s, adv.tolist())) / 4)
    x = lp.clone().requires_grad_(True)                                               # finite differences
    gspo_loss(x, old, mask, adv)[0].backward()
    h = 1e-7
    for i, t in [(0, 1), (1, 5), (3, 2)]:
        e = torch.zeros(4, 6)
        e[i, t] = h
        fd = (gspo_loss(lp + e, old, mask, adv)[0] - gspo_loss(lp - e, old, mask, adv)[0]) / (2 * h)
        assert abs(fd.item() - x.grad[i, t].item()) < 1e-6


def test_reinforce_pp_hand_computed():
    old = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    r = torch.tensor([1.0, 0.0])
    a = reinforce_pp_advantages(r, old, ref, mask, kl_coef=0.5)
    # token rewards: row 0: −0.5·0.5 = −0.25, −0.5·(−1) + 1 = 1.5 ; row 1: −0.5·1 + 0 = −0.5
    # returns: row 0: 1.25, 1.5 ; row 1: −0.5 ; then normalized over the 3 tokens (unbiased std)
    ret = torch.tensor([1.25, 1.5, -0.5])
    z = (ret - ret.mean()) / (ret.std() + 1e-8)
    assert torch.allclose(a[mask], z) and (a[~mask] == 0).all()
    lp = old.clone().requires_grad_(True)
    loss, _ = reinforce_pp_loss(lp, old, mask, a)
    assert loss.item() == pytest.approx(-(z.sum() / 3).item())      # ratio 1: −mean A
    loss.backward()
    assert torch.allclose(lp.grad[mask], -z / 3)


def test_gae_and_ppo_hand_computed():
    values = torch.tensor([[0.5, 0.25, 9.0], [0.1, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    r = torch.tensor([1.0, 0.0])
    adv, ret = gae(r, values, mask, gamma=1.0, lam=0.5)
    # row 0: δ1 = 1 − 0.25 = 0.75, δ0 = 0 + 0.25 − 0.5 = −0.25; A1 = 0.75, A0 = −0.25 + 0.5·0.75 = 0.125
    # row 1: δ0 = 0 − 0.1 = −0.1
    assert torch.allclose(adv, torch.tensor([[0.125, 0.75, 0.0], [-0.1, 0.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.625, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    adv1, ret1 = gae(r, values, mask, gamma=1.0, lam=1.0)               # λ = 1: Monte-Carlo returns
    assert torch.allclose(ret1[mask], torch.tensor([1.0, 1.0, 0.0]))
    lp = torch.zeros(2, 3, requires_grad=True)
    v = values.clone().requires_grad_(True)
    loss, st = ppo_loss(lp, lp.detach(), mask, adv, v, ret, vf_coef=0.5)
    a = torch.tensor([0.125, 0.75, -0.1])
    z = (a - a.mean()) / (a.std() + 1e-8)
    v_loss = 0.5 * ((torch.tensor([0.5, 0.25, 0.1]) - torch.tensor([0.625, 1.0, 0.0])) ** 2).mean()
    assert loss.item() == pytest.approx((-z.mean() + 0.5 * v_loss).item())
    assert st["value_loss"] == pytest.approx(v_loss.item())
    loss.backward()
    assert (v.grad[~mask] == 0).all() and (v.grad[mask] != 0).all()


def micro_run(algo, steps=1000, beta=15.0, seed=0):
    """Train the tabular tree policy on sampled batches (8 prompts' worth x G = 8), on-policy, from
    π_ref. 4 of the 15 answers are correct (reward 1). Returns (KL(π‖p*), learned log Z, max mass, acc)."""
    g = torch.Generator().manual_seed(seed)
    theta_ref = torch.randn(7, 3, generator=g)
    correct = torch.zeros(len(SEQS))
    correct[[1, 4, 7, 12]] = 1.0
    lref, mask = token_logprobs(theta_ref)
    theta = theta_ref.clone().requires_grad_(True)
    log_z = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([{"params": [theta], "lr": 0.05}, {"params": [log_z], "lr": 0.1}])
    for step in range(steps):
        lp, _ = token_logprobs(theta)
        idx = torch.multinomial(lp.sum(-1).exp().detach(), 64, replacement=True, generator=g)
        r = correct[idx]
        if algo == "flowrl_exact":
            if step == 0:
                with torch.no_grad():
                    log_z.fill_(log_partition_init(r, 64, beta)[0].item())
            loss, _ = flowrl_loss(lp[idx], lp[idx].detach(), lref[idx], mask[idx], r, log_z.expand(64),
                                  beta=beta, clip=None, length_norm=False)
        else:
            loss, _ = grpo_loss(lp[idx], lp[idx].detach(), lref[idx], mask[idx], group_normalize(r, 8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = token_logprobs(theta.detach())[0].sum(-1).exp()
    kl = exact_kl(theta.detach(), theta_ref, correct, beta).item()
    return kl, log_z.item(), pi.max().item(), (pi * correct).sum().item(), true_log_z(theta_ref, correct, beta).item()


def test_micro_run_flowrl_exact_matches_target_and_log_z():
    kl, log_z, max_mass, acc, true_z = micro_run("flowrl_exact")
    kl_g, _, max_mass_g, acc_g, _ = micro_run("grpo")
    print(f"\nmicro run (1000 steps, beta=15): flowrl_exact KL(pi||p*)={kl:.4f} log Z={log_z:.4f} "
          f"(true {true_z:.4f}) max mass={max_mass:.3f} acc={acc:.4f}; "
          f"grpo KL={kl_g:.4f} max mass={max_mass_g:.3f} acc={acc_g:.4f}")
    assert kl < 0.05
    assert abs(log_z - true_z) < 0.05
    # what held in this setting: GRPO also reaches the correct answers but concentrates on one
    assert kl_g > 10 * kl and max_mass_g > max_mass
