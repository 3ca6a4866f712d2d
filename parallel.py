"""
Data parallel training under torchrun: one process per device, each sampling its share of the
prompts; gradients averaged over the processes. Plain `python train.py` is one process and never
touches torch.distributed.
"""

import os

import torch
import torch.distributed as dist


def setup_distributed(device, batch_prompts):
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1): NCCL on CUDA (one device per local
    rank), gloo on the CPU. Raises ValueError when the prompts do not split evenly over the processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if batch_prompts % world:
        raise ValueError(f"--batch_prompts={batch_prompts} must be divisible by the {world} processes")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def allreduce_grads(params, world):
    """Average the gradients over the ranks. Each rank's loss is a mean over its own sequences (the
    same number on every rank), so the average of the ranks' gradients is the gradient of the
    mean over the whole batch: what one process would compute. (Token-mean losses, REINFORCE++
    and PPO, are averaged per rank, then over ranks: exact only when ranks hold equal token counts.)"""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def gather_rows(x, world):
    """Concatenate a (n, ...) tensor over the ranks, in rank order (every rank holds n rows)."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_ranks(record, world, device, skip=()):
    """The float entries of a metrics record averaged over the ranks (each rank holds an equal share)."""
    if world == 1:
        return record
    keys = [k for k, v in record.items() if isinstance(v, float) and k not in skip]
    vals = torch.tensor([record[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vals)
    return {**record, **{k: v / world for k, v in zip(keys, vals.tolist())}}
