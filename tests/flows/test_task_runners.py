"""Which task runner the labeling fan-out gets, and the local cluster's shape (no cluster started)."""

from __future__ import annotations

import logging
import os

import pytest

from selftrain.config import load_config


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def _task_runners():
    """`flows.task_runners`, imported before Prefect is: the `flows` package sets Prefect's logging
    settings on import, and a Prefect imported first would make later tests' domain logs warn."""
    from flows import task_runners

    return task_runners


def test_threads_by_default():
    task_runners = _task_runners()
    from prefect.task_runners import ThreadPoolTaskRunner

    assert isinstance(task_runners.pseudolabel_task_runner(_cfg(), 3), ThreadPoolTaskRunner)


def test_an_address_connects_to_that_cluster():
    task_runners = _task_runners()
    from prefect_dask import DaskTaskRunner

    runner = task_runners.pseudolabel_task_runner(
        _cfg("pseudolabel.task_runner=dask", "pseudolabel.dask_address=tcp://10.0.0.5:8786"), 3
    )
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.0.0.5:8786" and not runner.cluster_kwargs


def test_local_cpu_cluster_splits_the_cores_and_never_outnumbers_the_tasks(monkeypatch):
    task_runners = _task_runners()
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(task_runners, "local_gpus", lambda cfg: [])
    dask = "pseudolabel.task_runner=dask"
    assert task_runners.local_cluster_size(_cfg(dask), 20) == (8, [], 1)  # one worker per core
    assert task_runners.local_cluster_size(_cfg(dask, "pseudolabel.dask_workers=2"), 20) == (2, [], 4)
    assert task_runners.local_cluster_size(_cfg(dask), 3) == (3, [], 2)  # 3 shard groups: 3 workers
    runner = task_runners.pseudolabel_task_runner(_cfg(dask, "pseudolabel.dask_workers=2"), 20)
    assert runner.cluster_class is task_runners.local_cluster
    assert runner.cluster_kwargs == {"n_workers": 2, "gpus": [], "torch_threads": 4}


def test_local_gpu_cluster_has_one_worker_per_visible_gpu(monkeypatch):
    import torch

    task_runners = _task_runners()
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    dask = "pseudolabel.task_runner=dask"
    assert task_runners.local_gpus(_cfg(dask)) == ["3", "5"]
    assert task_runners.local_gpus(_cfg(dask, "device=cpu")) == []
    assert task_runners.local_cluster_size(_cfg(dask), 10) == (2, ["3", "5"], 8)
    assert task_runners.local_cluster_size(_cfg(dask, "pseudolabel.dask_workers=4"), 10) == (2, ["3", "5"], 8)
    assert task_runners.local_cluster_size(_cfg(dask), 1) == (1, ["3"], 16)


def test_gpu_workers_see_one_gpu_each_and_advertise_it():
    worker_specs = _task_runners().worker_specs
    specs = worker_specs(2, ["3", "5"], 8, logging.WARNING)
    options = [spec["options"] for spec in specs.values()]
    assert [o["env"]["CUDA_VISIBLE_DEVICES"] for o in options] == ["3", "5"]
    assert all(o["resources"] == {"GPU": 1} and o["nthreads"] == 1 for o in options)
    assert all(o["env"]["OMP_NUM_THREADS"] == "8" for o in options)
    cpu = worker_specs(2, [], 1, logging.WARNING)
    assert all(
        "resources" not in s["options"] and "CUDA_VISIBLE_DEVICES" not in s["options"]["env"]
        for s in cpu.values()
    )
    with pytest.raises(ValueError, match="3 GPU workers asked for, 2 GPUs visible"):
        worker_specs(3, ["0", "1"], 4, logging.WARNING)


def test_an_address_where_no_scheduler_listens_is_one_line_naming_the_field():
    import socket

    from selftrain.errors import SelftrainError

    task_runners = _task_runners()
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SelftrainError, match=r"^pseudolabel.dask_address: no Dask scheduler answers"):
        task_runners.check_scheduler_reachable(f"tcp://127.0.0.1:{port}")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        task_runners.check_scheduler_reachable(f"tcp://127.0.0.1:{listening.getsockname()[1]}")
