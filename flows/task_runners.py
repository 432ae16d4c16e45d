"""The task runner that the pseudo-labeling fan-out runs on: threads, or a Dask cluster.

    selftrain run noisy-student ... --set pseudolabel.task_runner=dask                # local cluster
    selftrain run noisy-student ... --set pseudolabel.task_runner=dask \\
        --set pseudolabel.dask_address=tcp://10.0.0.5:8786                           # existing cluster

`pseudolabel.task_runner: threads` (the default) runs the labeling tasks in threads of the flow
process, as Prefect's default runner does: no start-up cost, right for the digits demo. `dask`
runs them on `prefect_dask.DaskTaskRunner`. Without `dask_address`, a local cluster of worker
processes is started for the labeling stage and stopped after it (5-15 s on 2 cores): one worker per
GPU, each seeing only its own GPU (`CUDA_VISIBLE_DEVICES`) and advertising the Dask resource
`GPU=1`, or on a machine without GPU one per CPU core, each with `cores // workers` torch threads
so that the workers together do not oversubscribe the cores. With `dask_address`, the tasks go to
that cluster's scheduler; when its workers advertise a `GPU` resource (`dask worker ADDRESS
--nthreads 1 --resources GPU=1`, one per GPU), every labeling task asks for one GPU
(`dask.annotate(resources=...)`), so no two tasks share a GPU. Dask starts its workers with one
OMP/MKL thread unless their environment says otherwise, which suits GPU workers.

Everything a task receives must pickle: the flow passes the run directory as a `str` and the
resolved `RunConfig`; each task reopens the run itself (`flows.run_context.reopen`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from selftrain.config import RunConfig
from selftrain.errors import SelftrainError

GPU = "GPU"  # the Dask worker resource a labeling task asks one of


def local_gpus(cfg: RunConfig) -> list[str]:
    """The CUDA devices local workers may use (ids as CUDA_VISIBLE_DEVICES names them); [] for CPU."""
    if cfg.device == "cpu":
        return []
    import torch

    count = torch.cuda.device_count()  # counts devices without creating a CUDA context here
    if not count:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    return ids[:count] if ids else [str(i) for i in range(count)]


def worker_specs(n_workers: int, gpus: list[str], torch_threads: int, silence_logs: int) -> dict[str, dict]:
    """SpecCluster worker specs: `n_workers` processes running one task at a time each.

    With `gpus`, worker i sees only `gpus[i]` and advertises `GPU=1`. `torch_threads` sets
    OMP/MKL threads in each worker before torch is imported there (Dask's own default is 1).
    """
    from distributed import Nanny

    if gpus and n_workers > len(gpus):
        raise ValueError(f"{n_workers} GPU workers asked for, {len(gpus)} GPUs visible")
    workers: dict[str, dict[str, Any]] = {}
    for i in range(n_workers):
        env = {"OMP_NUM_THREADS": str(torch_threads), "MKL_NUM_THREADS": str(torch_threads)}
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "nthreads": 1,  # one labeling task per worker: a task already uses the worker's cores/GPU
            "env": env,
            # Dask's memory manager spills and restarts on Dask-held data; a labeling task streams
            # and holds a few batches, and the limit (RAM x nthreads / cores) would kill GPU workers.
            "memory_limit": 0,
            "silence_logs": silence_logs,
        }
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
            options["resources"] = {GPU: 1}
        workers[f"pseudolabel-{i}"] = {"cls": Nanny, "options": options}
    return workers


def local_cluster(n_workers: int, gpus: list[str], torch_threads: int, silence_logs: int = logging.WARNING):
    """A started Dask cluster of local worker processes (`worker_specs`); a context manager."""
    from distributed import Scheduler, SpecCluster

    workers = worker_specs(n_workers, gpus, torch_threads, silence_logs)
    # Port 0: no clash with a dashboard or another cluster on 8787 (the runner logs the link).
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    # The scheduler runs in this process and its INFO lines (about 40 per stage) reach the flow's
    # log and the CLI through the root logger; `silence_logs` alone only quiets Dask's handlers.
    logging.getLogger("distributed").setLevel(silence_logs)
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence_logs, name="pseudolabel")


def local_cluster_size(cfg: RunConfig, tasks: int) -> tuple[int, list[str], int]:
    """(workers, their GPUs, torch threads per worker) for a local cluster running `tasks` tasks."""
    gpus = local_gpus(cfg)
    cores = os.cpu_count() or 1
    wanted = cfg.pseudolabel.dask_workers or (len(gpus) if gpus else cores)
    workers = max(1, min(wanted, tasks, len(gpus) or wanted))  # more workers than tasks would idle
    return workers, gpus[:workers], max(1, cores // workers)


def check_scheduler_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, before any labeling, when nothing listens at `pseudolabel.dask_address`.

    Dask would otherwise retry for its connect timeout and end in a long traceback mid-flow.
    Only tcp:// addresses are checked; other schemes (tls://, ucx://) are left to Dask.
    """
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or parts.hostname is None:
        return
    try:
        socket.create_connection((parts.hostname, parts.port or 8786), timeout=timeout_s).close()
    except OSError as exc:
        raise SelftrainError(
            f"pseudolabel.dask_address: no Dask scheduler answers at {address} ({exc.strerror or exc}); "
            "start one with `dask scheduler`, or unset it to use a local cluster"
        ) from None


def pseudolabel_task_runner(cfg: RunConfig, tasks: int) -> TaskRunner:
    """The runner for a labeling fan-out of `tasks` tasks, as `cfg.pseudolabel` chooses it."""
    pl = cfg.pseudolabel
    if pl.task_runner == "threads":
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if pl.dask_address:
        return DaskTaskRunner(address=pl.dask_address)
    workers, gpus, threads = local_cluster_size(cfg, tasks)
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={"n_workers": workers, "gpus": gpus, "torch_threads": threads},
    )


def cluster_has_gpus(runner: TaskRunner) -> bool:
    """Whether `runner` is a started Dask runner whose cluster has a worker advertising GPUs."""
    from prefect_dask import DaskTaskRunner

    if not isinstance(runner, DaskTaskRunner):
        return False
    workers = runner.client.scheduler_info(n_workers=-1)["workers"].values()
    return any(w.get("resources", {}).get(GPU) for w in workers)


@contextlib.contextmanager
def one_gpu_per_task(runner: TaskRunner, cfg: RunConfig) -> Iterator[None]:
    """Tasks submitted inside ask for one GPU each when the runner's Dask cluster has GPU workers."""
    if cfg.device == "cpu" or not cluster_has_gpus(runner):
        yield
        return
    import dask

    with dask.annotate(resources={GPU: 1}):
        yield


@contextlib.contextmanager
def workers_report_to_this_api(runner: TaskRunner) -> Iterator[None]:
    """Make Dask workers send task runs and logs to the flow's own Prefect API.

    Tasks carry the flow's settings to the workers. With `PREFECT_API_URL` unset (`selftrain run`
    uses Prefect's ephemeral API: a temporary server of the flow process), each worker process
    would start a temporary server of its own (about 10 s, and its task runs would be lost), so
    the flow's server address is set for the fan-out. That address is 127.0.0.1: a cluster on
    other machines needs a real server (`PREFECT_API_URL`) that its workers can reach.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_dask import DaskTaskRunner

    if not isinstance(runner, DaskTaskRunner) or PREFECT_API_URL.value():
        yield
        return
    from prefect.client.orchestration import get_client

    url = str(get_client(sync_client=True).api_url).rstrip("/")  # the flow's client: not closed here
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield
