"""
Mixed precision on the CPU (train.py --bf16): whether the CPU has bf16 matrix instructions, the bf16 twin of
an fp32 policy, the moves of gradients and weights between them, and the CPU's description for the timings.
"""

import copy

import torch


def cpu_has_bf16():
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX tiles, as torch detects
    them): there a bf16 matmul runs about 5x faster than an fp32 one (docs/performance.md). Without them
    oneDNN emulates bf16, slower than fp32."""
    has = lambda name: bool(getattr(torch.cpu, name, lambda: False)())
    return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")


def cpu_description():
    """This machine's CPU as the timings name it: the model name (Linux: /proc/cpuinfo), the cores torch
    uses, and torch's CPU capability (the vector instructions its kernels use), e.g. "AMD EPYC, 2 threads,
    AVX512, bf16 matrix instructions"."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return (f"{name}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
            + (", bf16 matrix instructions" if cpu_has_bf16() else ""))


# Mixed precision on the CPU (train.py --bf16). On CUDA, autocast casts each fp32 weight to bf16 inside every
# matmul, which costs little there; on the CPU the same cast is a separate pass over the weight on every call
# and ate most of the bf16 gain (measured: SmolLM2-135M forward + backward 6.36 s fp32, 4.26 s autocast,
# 2.26 s with the weights themselves in bf16). So the CPU keeps two copies of the policy: the fp32 master
# that AdamW updates (its state fp32 too), and a bf16 twin that computes everything (sampling, π_old, the
# training forward and backward, evaluation). After backward the twin's gradients become the master's (fp32),
# the optimizer steps the master, and the twin is refreshed from it: each weight is cast once per optimizer
# step. The alternative, bf16 parameters with fp32 copies inside the optimizer, needs an optimizer of our
# own; this keeps torch's AdamW, the checkpoints (the master's state dict) and the export as they are.

def bf16_twin(master):
    """A bf16 copy of master (parameters and floating buffers) that computes in its place."""
    return copy.deepcopy(master).to(torch.bfloat16)


@torch.no_grad()
def grads_to_master(twin, master):
    """Move the twin's gradients (bf16) onto the master's parameters as fp32, in the same order
    (deepcopy keeps it, tied weights included). A parameter without a gradient gets none."""
    for p16, p32 in zip(twin.parameters(), master.parameters()):
        p32.grad = None if p16.grad is None else p16.grad.to(torch.float32)
        p16.grad = None


@torch.no_grad()
def refresh_twin(master, twin):
    """Copy the master's weights into the twin, rounded to bf16 once (after each optimizer step)."""
    for p32, p16 in zip(master.parameters(), twin.parameters()):
        p16.copy_(p32)
