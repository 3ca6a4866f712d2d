"""
Data parallel training under torchrun: one process per device, each sampling its share of the
prompts; gradients averaged over the processes by DistributedDataParallel; the statistics that
span the batch (token counts, REINFORCE++ and PPO whitening) summed over the processes, so that N
processes compute what one would. Plain `python train.py` is one process and never touches
torch.distributed.
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


def data_parallel(module, device):
    """module wrapped in DistributedDataParallel: its gradients are averaged over the processes by a
    bucketed all-reduce that overlaps the backward pass, once per backward (we step the optimizer
    after every backward, so once per optimizer step)."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(x):
    """The sum of a tensor over the processes (a new tensor; x is left as it is)."""
    y = x.detach().clone()
    dist.all_reduce(y)
    return y


def gather_objects(obj, world):
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects, e.g. RNG states)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


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
