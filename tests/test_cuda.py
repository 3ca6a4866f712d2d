"""CUDA checks (skipped where there is no GPU: CI has none; run on a GPU machine)."""
import pytest
import torch

import flowrl
from model import GPT, GPTConfig
from rollout import generate, sequence_logprobs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64))


def test_cuda_cache_matches_full_forward_and_cpu():
    cpu = tiny().eval()
    gpu = tiny().cuda().eval()
    idx = torch.randint(0, 40, (4, 20))
    full = gpu(idx.cuda())
    cache = gpu.make_cache(4, 20)
    parts = [gpu(idx[:, :8].cuda(), cache=cache)] + [gpu(idx[:, t:t + 1].cuda(), cache=cache) for t in range(8, 20)]
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-4
    assert (full.cpu() - cpu(idx)).abs().max() < 1e-3          # TF32 may be on: a loose bound


def test_cuda_sampling_logprobs_and_greedy():
    model = tiny().cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    r = generate(model, prompts, num_samples=16, max_new_tokens=12, eos_id=39,
                 generator=torch.Generator(device="cuda").manual_seed(0))
    assert r.response.is_cuda
    lp, ent = sequence_logprobs(model, r)
    assert (lp - r.logprobs).abs().max() < 1e-3
    g = generate(model, prompts, num_samples=2, max_new_tokens=8, temperature=0, eos_id=39)
    c = generate(tiny(), prompts, num_samples=2, max_new_tokens=8, temperature=0, eos_id=39)
    assert torch.equal(g.response.cpu(), c.response)


def test_bf16_autocast_training_step_is_finite():
    model = tiny().cuda()
    head = flowrl.LogZHead(64).cuda()
    r = generate(model, [[1, 2, 3]] * 4, num_samples=4, max_new_tokens=10, eos_id=39,
                 generator=torch.Generator(device="cuda").manual_seed(1))
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lp, _, h = sequence_logprobs(model, r, return_hidden=True)
        log_z = head(h[:, :r.prompt.shape[1]], r.prompt_mask)
        rewards = flowrl.group_normalize(torch.rand(16, device="cuda"), 4)
        loss, st = flowrl.flowrl_loss(lp, r.logprobs, r.logprobs, r.mask, rewards, log_z)
    loss.backward()
    before = model.wte.weight.detach().clone()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.wte.weight)
    assert (lp.float() - r.logprobs).abs().max() < 0.1            # bf16 log-probs stay close
