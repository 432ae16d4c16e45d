"""Pseudo-labeling fanned out over a 2-worker Dask LocalCluster equals a single-process run.

The comparison is byte-for-byte: every sidecar archive and completeness record, and the selection
built from them. The single-process reference runs with the same torch thread count as one Dask
worker, so both compute with the same kernels; the sidecar format itself is deterministic
(pseudolabel/sidecar.py).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from pseudolabel.label_shards import label_shards, pseudo_dir
from selftrain.data.dataset_info import load_dataset
from selftrain.data.digits import build_digits
from selftrain.runstore import RunStore
from tests.pseudolabel.conftest import IMAGE_SIZE, SAMPLES_PER_SHARD, _save_teacher

pytestmark = pytest.mark.integration

CPU = torch.device("cpu")
DASK_2 = ["pseudolabel.task_runner=dask", "pseudolabel.dask_workers=2", "pseudolabel.shards_per_task=2"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """10 unlabeled digits shards and a run whose iteration 0 is a saved (quickly fitted) teacher."""
    root = tmp_path_factory.mktemp("dask-pseudolabel")
    build_digits(root / "data", samples_per_shard=SAMPLES_PER_SHARD)
    store = RunStore(root / "teacher-run")
    store.open(root / "data", None, [f"data.image_size={IMAGE_SIZE}", "device=cpu", *DASK_2])
    _save_teacher(store, load_dataset(root / "data"))
    return store.root


def _copy(run, dest) -> RunStore:
    shutil.copytree(run, dest)
    return RunStore(dest)


def _files(store: RunStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pseudo_dir(store, 0).iterdir()) if p.is_file()}


def _in_a_flow(fn, *args):
    """Call `fn` inside a flow run, as the noisy-student flow does (its logs then have a run)."""
    from prefect import flow

    return flow(name="reference", validate_parameters=False)(fn)(*args)


def _with_torch_threads(threads: int, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _in_a_flow(fn, *args)
    finally:
        torch.set_num_threads(before)


def _label_all(store: RunStore) -> None:
    label_shards(store, load_dataset(store.data_dir()), 0, None, store.config(), CPU)


def test_two_dask_workers_share_the_shards_and_write_the_same_sidecars(prefect_api, teacher_run, tmp_path):
    from distributed import Client
    from prefect_dask import DaskTaskRunner

    from flows.noisy_student import label_shard_groups, shard_groups
    from flows.task_runners import pseudolabel_task_runner

    store = _copy(teacher_run, tmp_path / "dask")
    cfg = store.config()
    groups = shard_groups(10, cfg.pseudolabel.shards_per_task)
    runner = pseudolabel_task_runner(cfg, len(groups))
    assert isinstance(runner, DaskTaskRunner)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert runner.cluster_kwargs == {"n_workers": 2, "gpus": [], "torch_threads": threads}

    # The runner's own cluster, started here and reached by address (as an existing cluster would
    # be), so that the test can ask each worker what it did. The test's client must not be the
    # default one: DaskTaskRunner takes a default client's cluster over its `address`.
    with (
        runner.cluster_class(**runner.cluster_kwargs) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        flow = label_shard_groups.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        outcomes = flow(str(store.root), cfg, 0, groups)
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        worker_threads = client.run(torch.get_num_threads)
    assert len(executed) == 2 and all(n >= 1 for n in executed.values()), executed
    assert sum(executed.values()) == len(groups)
    assert set(worker_threads.values()) == {threads}  # workers do not oversubscribe the cores
    assert [o["status"] for o in outcomes] == ["labeled"] * 10
    assert sum(o["samples"] for o in outcomes) == 1207

    single = _copy(teacher_run, tmp_path / "single")
    _with_torch_threads(threads, _label_all, single)
    reference = _files(single)
    assert len(reference) == 20  # an archive and a record per shard
    assert _files(store) == reference


def test_noisy_student_stage_on_a_local_dask_cluster_matches_threads(prefect_api, teacher_run, tmp_path):
    """The flow's stage as `pseudolabel.task_runner` chooses it: sidecars, then the selection."""
    from flows.noisy_student import run_pseudolabel_stage

    on_dask = _copy(teacher_run, tmp_path / "dask")
    _in_a_flow(run_pseudolabel_stage, str(on_dask.root), on_dask.config(), 0, 10)

    on_threads = _copy(teacher_run, tmp_path / "threads")
    cfg = on_threads.config()
    threads_cfg = cfg.model_copy(
        update={
            "pseudolabel": cfg.pseudolabel.model_copy(update={"task_runner": "threads", "dask_workers": None})
        }
    )
    threads = max(1, (os.cpu_count() or 1) // 2)
    _with_torch_threads(threads, run_pseudolabel_stage, str(on_threads.root), threads_cfg, 0, 10)

    assert on_dask.stage_state(0, "pseudolabel") == "done"
    dask_files, thread_files = _files(on_dask), _files(on_threads)
    assert "selection.json" in dask_files
    assert dask_files == thread_files


def test_on_a_cluster_with_gpu_workers_every_task_asks_for_a_gpu(prefect_api, teacher_run, tmp_path):
    """Of two workers, only the one advertising `GPU` (here a fake one: CUDA_VISIBLE_DEVICES names
    no device, so it computes on the CPU) may run labeling tasks once the cluster has GPUs."""
    import logging

    from distributed import Client, Scheduler, SpecCluster
    from prefect_dask import DaskTaskRunner

    from flows.noisy_student import label_shard_groups, shard_groups
    from flows.task_runners import worker_specs

    store = _copy(teacher_run, tmp_path / "gpu")
    cfg = store.config().model_copy(update={"device": "auto"})  # a CPU-only run never asks for GPUs
    workers = {
        "with-gpu": worker_specs(1, ["no-such-gpu"], 1, logging.WARNING)["pseudolabel-0"],
        "without": worker_specs(1, [], 1, logging.WARNING)["pseudolabel-0"],
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    groups = shard_groups(10, cfg.pseudolabel.shards_per_task)
    with (
        SpecCluster(workers=workers, scheduler=scheduler) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        flow = label_shard_groups.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        outcomes = flow(str(store.root), cfg, 0, groups)
        executed = client.run(lambda dask_worker: (dask_worker.name, dask_worker.state.executed_count))
    assert sorted(executed.values()) == [("with-gpu", len(groups)), ("without", 0)]
    assert sum(o["samples"] for o in outcomes) == 1207
