"""How many DataLoader worker processes a stage gets: `data.num_workers: auto` sizes them by device.

On a GPU the training process alone cannot decode and augment as fast as the model trains: on the
first H200 run (docs/gpu.md, 2026-12-04) students trained at 0.18 of their in-memory rate with no
workers and at 0.888 with 8. On a CPU, workers take cores from the model itself (on the 2-core
machines this was built on, every figure used none), so `auto` means none there.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from selftrain import distributed

AUTO_MAX_WORKERS = 8  # measured enough for resnet-size students at 32x32 on an H200 (0.888)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD", or "max PERIOD"


def available_cpus() -> int:
    """CPUs this process may use: its cpuset, and a container's CPU quota where one is set (a
    Kubernetes pod limited to 4 CPUs on a 64-core node sees 64 in its cpuset)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or one this does not understand: the cpuset
        pass
    return cpus


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """`data.num_workers` as a count: a number as given; `auto` none on the CPU, and on CUDA up to
    8 per rank, leaving each rank's training process a core of its own."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    per_rank = available_cpus() // max(distributed.world_size(), 1)
    return max(0, min(AUTO_MAX_WORKERS, per_rank - 1))
