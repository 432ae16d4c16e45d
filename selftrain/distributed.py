"""Data-parallel training: the rank's side of a torchrun launch, and a no-op in one process.

    selftrain teacher train --data data/digits --run-dir runs/ddp --nproc-per-node 2

`selftrain.launch` starts the ranks with torchrun (`torch.distributed.run`); each rank calls
`init()`, which reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
joins the process group through `env://`: NCCL on CUDA (one GPU per rank, LOCAL_RANK), gloo on the
CPU. Outside torchrun every function here is the identity of a one-process run (rank 0 of 1, no
process group, no wrapper), so the in-process path (`distributed.nproc_per_node: 1`) is unchanged.

What stays the same whatever the world size, so runs are comparable and resume with another one:
- the *global* batch: config batch sizes are global and each rank takes `batch / world_size`
  (`local_batch`); the unlabeled ratio applies per rank, so the global ratio is unchanged;
- the step and the data streams' positions (global samples consumed) kept in checkpoints;
- what is written: checkpoints, weights, model cards and manifest entries come from rank 0 alone
  (`is_main`), and the other ranks wait at a `barrier` where they could read them.

BatchNorm statistics stay per rank (as in timm without --sync-bn): SyncBatchNorm runs on CUDA
only, and the CPU path must behave like the GPU one.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

from selftrain.device import resolve_device, seed_everything
from selftrain.errors import SelftrainError


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)  # DataLoader workers of a torchrun rank inherit the environment


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init(device_choice: str) -> torch.device:
    """Join torchrun's process group; return this rank's device (cuda:LOCAL_RANK or the CPU)."""
    device = resolve_device(device_choice)
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise SelftrainError(
                f"distributed.nproc_per_node: local rank {local_rank()} has no GPU "
                f"({torch.cuda.device_count()} visible); use at most one process per GPU"
            )
        torch.cuda.set_device(local_rank())
        device = torch.device("cuda", local_rank())
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return device
    if device.type == "cuda":
        dist.init_process_group("nccl", init_method="env://", device_id=device)
    else:
        # gloo's default timeout is 30 min; a rank that died is reported by torchrun long before.
        dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(minutes=30))
    return device


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _comm_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def local_batch(global_batch: int, field: str) -> int:
    """This rank's share of a global batch; the global batch stays what the config says."""
    world = world_size()
    if global_batch % world:
        raise SelftrainError(
            f"{field}: {global_batch} is not divisible by {world} processes (distributed.nproc_per_node); "
            f"use a multiple of {world}"
        )
    return global_batch // world


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` in a process group, `model` itself otherwise.

    The trainers keep the bare module for everything but the training forward: optimizers,
    checkpoints, EMA, evaluation and saved weights never see the `module.` prefix, so checkpoints
    load whatever the world size.
    """
    if not active():
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place (on the communication device); returns it."""
    if active():
        moved = tensor.to(_comm_device())
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved.to(tensor.device))
    return tensor


def mean_scalar(value: float) -> float:
    if not active():
        return value
    t = sum_(torch.tensor([float(value)], dtype=torch.float64))
    return float(t.item()) / world_size()


def mean_scalars(values: Mapping[str, float]) -> dict[str, float]:
    """Per-step metrics averaged over ranks (one all_reduce), so every rank logs and checks the same."""
    if not active():
        return dict(values)
    keys = list(values)
    t = sum_(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def sum_int(value: int) -> int:
    if not active():
        return value
    return int(sum_(torch.tensor([value], dtype=torch.int64)).item())


def same_on_all_ranks(value: int, what: str) -> int:
    """Raise unless every rank holds the same `value` (e.g. the step all ranks resumed from)."""
    if not active():
        return value
    t = torch.tensor([value, -value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != value or -int(t[1]) != value:
        raise SelftrainError(f"{what}: ranks disagree (from {-int(t[1])} to {int(t[0])}); rerun to resume")
    return value


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, so all ranks evaluate the saved model.

    DDP broadcasts buffers at the start of each training forward, but each rank then updates them
    with its own batch; before an evaluation that is split over ranks they must agree again.
    """
    if not active():
        return
    for buf in module.buffers():
        moved = buf.data.to(_comm_device())
        dist.broadcast(moved, src=0)
        buf.data.copy_(moved.to(buf.device))


def decorrelate_rng() -> None:
    """Give ranks > 0 their own random streams (augmentation, dropout, sampled pseudo-labels).

    All ranks start from the same state (the same seed, or rank 0's checkpointed RNG on resume);
    rank r > 0 draws a seed from that state and adds r. Rank 0 is left untouched, so a one-process
    run and rank 0 of a larger one draw the same numbers.
    """
    r = rank()
    if r > 0:
        seed_everything(int(torch.randint(0, 2**31 - 1, (1,)).item()) + 7919 * r)
