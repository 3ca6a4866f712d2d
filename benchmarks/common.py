"""
What every benchmark here shares: timing with the device synchronized, the process's peak memory, and
raise_eos (a random GPT-2 whose answers stop at many lengths). benchmarks/bench.py, bench_trl.py and
bench_real.py import from here, never from each other's modules, except bench.py's modes calling theirs.
"""

import math
import resource
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10      # process peak RSS (Linux: KiB)


def raise_eos(gpt2, eos, p_stop):
    """In place: the final LayerNorm's bias 2 along axis 0 and the tied EOS embedding along it, raising
    EOS's logit by log(p_stop·V) on average."""
    with torch.no_grad():
        gpt2.transformer.ln_f.bias.zero_()[0] = 2.0
        gpt2.transformer.wte.weight[eos] = 0.0
        gpt2.transformer.wte.weight[eos, 0] = math.log(p_stop * gpt2.config.vocab_size) / 2.0
