"""Exact evaluation on enumerable answer spaces (rollout.enumerate_responses, flowrl's target math)."""
import math

import pytest
import torch

from flowrl import binary_log_partition, kl_to_target, target_log_partition
from model import GPT, GPTConfig
from rollout import enumerate_responses, from_tokens, generate, sequence_logprobs

V, EOS = 6, 5


def tiny(seed, sharpen=30.0):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_kv_head=1, n_embd=16, block_size=16))
    with torch.no_grad():
        m.lm_head.weight.mul_(sharpen)     # far from uniform, so that the tree has structure
    return m


def test_enumerated_probabilities_sum_to_one():
    model = tiny(0)
    resp, logp, pruned = enumerate_responses(model, [1, 2], eos_id=EOS, max_new_tokens=4, min_prob=0, max_frontier=None)
    assert len(resp) == 1 + 5 + 25 + 125 + 625 and len(set(resp)) == len(resp)
    assert pruned == 0.0 and abs(logp.exp().sum().item() - 1) < 1e-9
    # each probability equals the teacher-forced one
    batch = from_tokens([[1, 2]] * len(resp), [list(y) for y in resp], EOS)
    assert (sequence_logprobs(model, batch)[0].sum(-1).double() - logp).abs().max() < 1e-4
    # pruning: what is kept plus what is reported pruned is still all the mass
    for min_prob, cap in ((1e-3, None), (0, 50), (1e-4, 20)):
        r2, lp2, pr2 = enumerate_responses(model, [1, 2], eos_id=EOS, max_new_tokens=4, min_prob=min_prob,
                                           max_frontier=cap)
        assert pr2 > 0 and len(r2) < len(resp)
        assert abs(lp2.exp().sum().item() + pr2 - 1) < 1e-9


def reward(y):
    return 1.0 if y[0] % 2 == 0 else 0.0          # a rule on the token sequence


def test_exact_kl_equals_monte_carlo():
    pi, ref = tiny(1), tiny(2, sharpen=1.0)
    beta, prompt, T = 2.0, [3, 1, 4], 4
    resp, log_pi, _ = enumerate_responses(pi, prompt, eos_id=EOS, max_new_tokens=T, min_prob=0, max_frontier=None)
    batch = from_tokens([prompt] * len(resp), [list(y) for y in resp], EOS)
    log_ref = sequence_logprobs(ref, batch)[0].sum(-1).double().detach()
    r = torch.tensor([reward(y) for y in resp], dtype=torch.float64)
    log_z = target_log_partition(log_ref, r, beta)
    kl = kl_to_target(log_pi, log_ref, r, beta, log_z).item()
    # Monte Carlo from the sampler: KL = E_pi[log pi - log ref - beta r] + log Z
    ro = generate(pi, [prompt], num_samples=20000, max_new_tokens=T, eos_id=EOS,
                  generator=torch.Generator().manual_seed(0))
    lp = ro.logprobs.sum(-1).double()
    lr = sequence_logprobs(ref, ro)[0].sum(-1).double().detach()
    rr = torch.tensor([reward(row) for row in ro.response.tolist()], dtype=torch.float64)
    x = lp - lr - beta * rr + log_z
    se = x.std().item() / math.sqrt(len(x))
    assert kl > 0.1 and abs(x.mean().item() - kl) < 4 * se, (kl, x.mean().item(), se)


def test_true_log_z_on_a_hand_made_example():
    log_ref = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    r = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    expected = math.log(0.5 * math.exp(2) + 0.3 + 0.2 * math.exp(2))
    assert abs(target_log_partition(log_ref, r, 2.0).item() - expected) < 1e-12
    assert abs(binary_log_partition(0.7, 2.0).item() - expected) < 1e-12
    # p* itself is at KL 0 from the target
    log_p_star = log_ref + 2.0 * r - expected
    assert abs(kl_to_target(log_p_star, log_ref, r, 2.0, torch.tensor(expected, dtype=torch.float64)).item()) < 1e-12


def test_kl_is_reward_entropy_and_cross_entropy_to_the_reference():
    """The paper's Appendix B proposition (docs/method.md M3): KL(π ‖ π_ref·e^{βr}/Z) = −β·E_π[r] − H(π)
    + CE(π, π_ref) + log Z, with each term computed on its own over a random table of answers."""
    g = torch.Generator().manual_seed(0)
    log_pi = torch.log_softmax(torch.randn(12, generator=g, dtype=torch.float64), 0)
    log_ref = torch.log_softmax(torch.randn(12, generator=g, dtype=torch.float64), 0)
    r = (torch.rand(12, generator=g, dtype=torch.float64) > 0.5).double()
    beta = 3.0
    log_z = torch.logsumexp(log_ref + beta * r, 0)
    pi = log_pi.exp()
    reward, entropy, cross = (pi * r).sum(), -(pi * log_pi).sum(), -(pi * log_ref).sum()
    p_star = (log_ref + beta * r - log_z).exp()
    direct = (pi * (log_pi - p_star.log())).sum()
    kl = kl_to_target(log_pi, log_ref, r, beta, log_z)
    assert kl.item() == pytest.approx(direct.item(), abs=1e-12)
    assert kl.item() == pytest.approx((-beta * reward - entropy + cross + log_z).item(), abs=1e-12)
    assert kl.item() > 0
