"""
Data parallel training under torchrun: one process per device, each sampling its share of the
prompts; gradients averaged over the processes by DistributedDataParallel; the statistics that
span the batch (token counts, REINFORCE++ and PPO whitening) summed over the processes, so that N
processes compute what one would. Plain `python train.py` is one process and never touches
torch.distributed.
"""

import contextlib
import os

import torch
import torch.distributed as dist


def setup_distributed(device, batch_prompts, fsdp=False):
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1): NCCL on CUDA (one device per local
    rank), gloo on the CPU; --fsdp sets up a process group even for one process. Raises ValueError when
    the prompts do not split evenly over the processes, or --fsdp runs outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not fsdp:
        return 0, 1, device
    if "RANK" not in os.environ:
        raise ValueError("--fsdp runs under torchrun: torchrun --nproc_per_node=N train.py --fsdp ...")
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


# ---------------------------------------------------------------------------------------------
# FSDP2 (--fsdp): parameters, gradients and AdamW state sharded over the processes

def shard(module, device, bf16):
    """torch.distributed.fsdp.fully_shard on each transformer block and at the root (a module without
    blocks, e.g. a head: at the root only). On CUDA with bf16, parameters are gathered in bf16 for
    compute and gradients reduced in fp32; the sharded master copy stays fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" and bf16 else MixedPrecisionPolicy())
    for block in getattr(module, "blocks", []):
        fully_shard(block, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return module


@contextlib.contextmanager
def gathered(module):
    """An FSDP module's parameters gathered once for the whole block of code (a rollout: hundreds of
    forwards), instead of an all-gather per forward. A module that is not sharded: nothing to do."""
    from torch.distributed.fsdp import FSDPModule
    parts = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in parts:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield module
    finally:
        for m in parts:
            m.reshard()
            m.set_reshard_after_forward(True)


def full_state(state):
    """A state dict (a model's or an optimizer's, nested) with every sharded DTensor gathered into one
    full CPU tensor: what one process can load. Collective: every process calls it."""
    from torch.distributed.tensor import DTensor
    if isinstance(state, DTensor):
        return state.full_tensor().cpu()
    if isinstance(state, dict):
        return {k: full_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [full_state(v) for v in state]
    return state.cpu() if isinstance(state, torch.Tensor) else state


def load_full_state(module, state):
    """Load a full (unsharded) state dict into a module: sharded (FSDP), each process keeps its own
    shard of every tensor, placed like the parameter it belongs to; not sharded, a plain load."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    state = dict(state)
    for name, t in module.state_dict().items():
        if isinstance(t, DTensor):
            state[name] = distribute_tensor(state[name].to(t.dtype), t.device_mesh, t.placements)
    module.load_state_dict(state)


def load_full_optimizer_state(opt, state):
    """Load a full optimizer state dict: over sharded parameters (FSDP), every per-parameter tensor
    shaped like its parameter is split as the parameter is; otherwise a plain load."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, st in state["state"].items():
        p = params[int(i)]
        for k, v in st.items():
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape:
                st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
    opt.load_state_dict(state)


def full_states(run):
    """(model, head, optimizer) state dicts gathered in full from FSDP shards (every process calls it)."""
    head = full_state(run.head.state_dict()) if run.head is not None else None
    return full_state(run.policy.state_dict()), head, full_state(run.opt.state_dict())
