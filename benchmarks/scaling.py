"""Scaling out: pseudo-labeling over 1 and 2 Dask workers, teacher training over 1 and 2 torchrun ranks.

    .venv/bin/python benchmarks/scaling.py          # a table
    .venv/bin/python benchmarks/scaling.py --json   # one JSON object

Builds, in a temporary folder, the digits data set, its default teacher (resnet10t, 1x32x32) saved
untrained (throughput does not depend on the weights, and training it here would cost minutes) and
10,000 synthetic 64x64 grayscale PNGs in 10 shards of 1,000 (`benchmarks/pseudolabel.py`).

Pseudo-labeling: the flows' own fan-out (`flows.noisy_student.label_shard_groups`, one shard per
task, Prefect tasks on `prefect_dask.DaskTaskRunner`) on local Dask clusters built by
`flows.task_runners.local_cluster`, each worker with ONE torch thread: 1 worker against 2
workers. One thread per worker stands for one accelerator per worker, so the ideal speedup on 2
cores is 2.0. Clusters are started (and their workers import torch, timm, Prefect) before the
clock starts; start-up is reported separately. Each measurement labels a fresh copy of the run;
the two are alternated for `--rounds` rounds and the best of each is kept (other work on the
machine only slows a run down; the same for training). For context, also once: Prefect's thread-pool runner (the
default, `pseudolabel.task_runner=threads`: every task in a thread of the flow process, which
uses all cores' torch threads).

Training: the supervised teacher through `selftrain.launch.launch_training` (torchrun, gloo, the
path of `--nproc-per-node`) with 1 and 2 ranks at the same global batch (teacher.batch_size, 64),
one thread per rank, and once with 1 rank on every core. The step rate is steady state: taken
from rank 0's `progress ... STEP/TOTAL` lines, timestamped as they arrive, between the second
line and the last one before the final evaluation; start-up (torchrun, imports, process group,
data, first step) is reported separately.

`--json` keys: pseudolabel_speedup, train_speedup, pseudolabel_images_per_s_{1,2}_workers,
pseudolabel_seconds_per_shard_{1,2}_workers (worker-seconds per 1,000-image shard: wall time x
workers / shards), pseudolabel_in_task_seconds_per_shard_{1,2}_workers (from a shard's first
batch to its committed sidecar, inside the task), pseudolabel_images_per_shard,
pseudolabel_threads_runner_images_per_s, pseudolabel_cluster_start_seconds_{1,2}_workers,
train_samples_per_s_{1,2}_ranks, train_seconds_per_step_{1,2}_ranks, train_global_batch,
train_startup_seconds_{1,2}_ranks, train_all_cores_1_rank_samples_per_s, train_parameters,
pseudolabel_rounds_images_per_s and train_rounds_samples_per_s (every round),
train_allreduce_seconds_2_ranks, cores, load_average_start, load_average_end, seconds (setup,
pseudolabel, train: where the benchmark's own time went).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and `import pseudolabel` would import
# benchmarks/pseudolabel.py; put the repository there instead (benchmarks/ is then a namespace package).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from benchmarks.pseudolabel import PER_SHARD, build_synthetic, run_for  # noqa: E402

SHARDS = 10
TRAIN_STEPS = 60
TRAIN_BATCH = 64  # global: 64 on 1 rank, 32 per rank on 2


# -- pseudo-labeling --------------------------------------------------------------------------
def untrained_teacher_run(root: Path, data: Path) -> Path:
    """A run on `data` whose iteration 0 is the default teacher with its initial (seeded) weights."""
    import torch

    from selftrain.data.dataset_info import load_dataset
    from selftrain.models import build_model
    from selftrain.runstore import RunStore

    store = RunStore(root / "teacher-run")
    cfg = store.open(data, None, [])
    info = load_dataset(data).info
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.teacher.model, num_classes=info.num_classes, in_chans=info.channels)
    card = {
        "iteration": 0,
        "role": "teacher",
        "architecture": cfg.teacher.model,
        "num_classes": info.num_classes,
        "classes": list(info.classes),
        "in_chans": info.channels,
        "input_size": [info.channels, cfg.data.image_size, cfg.data.image_size],
    }
    artifacts = store.save_model(0, model.state_dict(), card)
    store.mark_stage(0, "train", "done", role="teacher", model=cfg.teacher.model, artifacts=artifacts)
    return store.root


def _warm_worker() -> int:
    """Import what a labeling task imports, so that the first timed task does not pay for it."""
    import timm  # noqa: F401
    import torch

    import flows.noisy_student  # noqa: F401
    import pseudolabel.label_shards  # noqa: F401

    _quiet_loggers()
    return torch.get_num_threads()


def _quiet_loggers() -> None:
    """The per-shard and launch lines the flows log at INFO; the benchmark prints its own table."""
    for name in ("pseudolabel", "selftrain"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def started_cluster(workers: int, torch_threads: int) -> Iterator[tuple[str, float]]:
    """(scheduler address, seconds to start and warm up) of a local labeling cluster."""
    from distributed import Client

    from flows.task_runners import local_cluster

    started = time.perf_counter()
    # Not the default client: DaskTaskRunner(address=...) takes a default client's cluster over its address.
    with (
        local_cluster(workers, [], torch_threads) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        threads = client.run(_warm_worker)
        assert set(threads.values()) == {torch_threads}, threads
        yield cluster.scheduler_address, time.perf_counter() - started


def label_once(teacher_run: Path, data: Path, dest: Path, runner) -> dict:
    """Label every shard of `data` on `runner` in a fresh copy of the teacher's run."""
    from flows.noisy_student import label_shard_groups, shard_groups
    from flows.task_runners import workers_report_to_this_api
    from selftrain.runstore import RunStore

    run_dir = run_for(teacher_run, data, dest)
    cfg = RunStore(run_dir).config()
    groups = shard_groups(SHARDS, 1)
    started = time.perf_counter()
    with workers_report_to_this_api(runner):
        outcomes = label_shard_groups.with_options(task_runner=runner)(str(run_dir), cfg, 0, groups)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_dir)
    images = sum(o["samples"] for o in outcomes)
    assert images == SHARDS * PER_SHARD and all(o["status"] == "labeled" for o in outcomes), outcomes
    in_task = sum(o["seconds"] for o in outcomes) / len(outcomes)  # first batch to commit, per shard
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "in_task_per_shard": in_task,
    }


def measure_pseudolabel(root: Path, teacher_run: Path, rounds: int) -> dict:
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    data = root / "synthetic" / f"n{SHARDS * PER_SHARD}"

    @flow(name="scaling-benchmark")
    def bench() -> dict:
        out: dict = {}
        with started_cluster(1, 1) as (one, start_1), started_cluster(2, 1) as (two, start_2):
            out["cluster_start_1"], out["cluster_start_2"] = start_1, start_2
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for r in range(rounds):
                for workers, address in ((1, one), (2, two)):
                    dest = root / f"label-{workers}w-{r}"
                    runs[workers].append(label_once(teacher_run, data, dest, DaskTaskRunner(address=address)))
            out["one"] = max(runs[1], key=lambda m: m["images_per_s"])
            out["two"] = max(runs[2], key=lambda m: m["images_per_s"])
            out["rounds"] = {w: [round(m["images_per_s"], 1) for m in ms] for w, ms in runs.items()}
        out["threads"] = label_once(teacher_run, data, root / "label-threads", ThreadPoolTaskRunner())
        return out

    return bench()


# -- training ---------------------------------------------------------------------------------
def train_rate(root: Path, data: Path, ranks: int, threads: int) -> dict:
    """Steady-state teacher steps/s with `ranks` torchrun ranks of `threads` torch threads each."""
    from selftrain.launch import launch_training, progress_of
    from selftrain.runstore import RunStore

    store = RunStore(root / f"train-{ranks}r-{threads}t")
    overrides = [
        f"teacher.steps={TRAIN_STEPS}",
        f"teacher.eval_every={TRAIN_STEPS}",
        f"teacher.checkpoint_every={TRAIN_STEPS}",
        "teacher.warmup_steps=5",
        f"teacher.batch_size={TRAIN_BATCH}",
        f"distributed.nproc_per_node={ranks}",
        "device=cpu",
    ]
    cfg = store.open(data, None, overrides)
    marks: list[tuple[float, int]] = []

    def on_line(line: str) -> None:
        done = progress_of(line)
        if done is not None:
            marks.append((time.perf_counter(), done[0]))

    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # launch_training keeps a value that is set
    started = time.perf_counter()
    try:
        launch_training("teacher", store.root, cfg, on_line=on_line)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    total = time.perf_counter() - started
    shutil.rmtree(store.root)
    steady = [(t, s) for t, s in marks[1:] if s < TRAIN_STEPS]  # after the first step, before the final eval
    if len(steady) < 2:
        raise SystemExit(f"training with {ranks} rank(s): too few progress lines to time ({marks})")
    (t0, s0), (t1, s1) = steady[0], steady[-1]
    seconds_per_step = (t1 - t0) / (s1 - s0)
    return {
        "ranks": ranks,
        "threads": threads,
        "seconds_per_step": seconds_per_step,
        "samples_per_s": TRAIN_BATCH / seconds_per_step,
        "timed_steps": s1 - s0,
        "startup_seconds": marks[0][0] - started,
        "total_seconds": total,
    }


def _allreduce_rank(rank: int, world: int, numel: int, iters: int, init_file: str, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    grads = torch.randn(numel)
    for _ in range(2):
        dist.all_reduce(grads)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(grads)
    if rank == 0:
        out.put((time.perf_counter() - started) / iters)
    dist.destroy_process_group()


def allreduce_seconds(root: Path, numel: int, iters: int = 10) -> float:
    """Seconds of one gloo all-reduce of `numel` float32 between 2 local processes (1 thread each)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    init_file = root / "allreduce-init"
    mp.start_processes(
        _allreduce_rank, args=(2, numel, iters, str(init_file), out), nprocs=2, start_method="spawn"
    )
    return out.get()


def teacher_parameters() -> int:
    from selftrain.models import build_model

    model = build_model("resnet10t", num_classes=10, in_chans=1)  # the digits teacher
    return sum(p.numel() for p in model.parameters())


def measure_train(root: Path, data: Path, rounds: int) -> dict:
    cores = os.cpu_count() or 1
    params = teacher_parameters()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(rounds):  # alternated, best kept, as for pseudo-labeling
        for ranks in (1, 2):
            runs[ranks].append(train_rate(root, data, ranks, 1))
    return {
        "one": max(runs[1], key=lambda m: m["samples_per_s"]),
        "two": max(runs[2], key=lambda m: m["samples_per_s"]),
        "rounds": {r: [round(m["samples_per_s"], 1) for m in ms] for r, ms in runs.items()},
        "all_cores": train_rate(root, data, 1, cores),
        "parameters": params,
        "allreduce": allreduce_seconds(root, params),
    }


# -- report -----------------------------------------------------------------------------------
def summarize(pl: dict, tr: dict, load: tuple[float, float], seconds: dict[str, float]) -> dict:
    one, two = pl["one"], pl["two"]
    return {
        "pseudolabel_speedup": round(two["images_per_s"] / one["images_per_s"], 3),
        "train_speedup": round(tr["two"]["samples_per_s"] / tr["one"]["samples_per_s"], 3),
        "pseudolabel_images_per_s_1_worker": round(one["images_per_s"], 1),
        "pseudolabel_images_per_s_2_workers": round(two["images_per_s"], 1),
        "pseudolabel_seconds_per_shard_1_worker": round(one["seconds"] / SHARDS, 3),
        "pseudolabel_seconds_per_shard_2_workers": round(2 * two["seconds"] / SHARDS, 3),
        "pseudolabel_images_per_shard": PER_SHARD,
        "pseudolabel_in_task_seconds_per_shard_1_worker": round(one["in_task_per_shard"], 3),
        "pseudolabel_in_task_seconds_per_shard_2_workers": round(two["in_task_per_shard"], 3),
        "pseudolabel_threads_runner_images_per_s": round(pl["threads"]["images_per_s"], 1),
        "pseudolabel_cluster_start_seconds_1_worker": round(pl["cluster_start_1"], 2),
        "pseudolabel_cluster_start_seconds_2_workers": round(pl["cluster_start_2"], 2),
        "pseudolabel_rounds_images_per_s": pl["rounds"],
        "train_samples_per_s_1_rank": round(tr["one"]["samples_per_s"], 1),
        "train_samples_per_s_2_ranks": round(tr["two"]["samples_per_s"], 1),
        "train_seconds_per_step_1_rank": round(tr["one"]["seconds_per_step"], 4),
        "train_seconds_per_step_2_ranks": round(tr["two"]["seconds_per_step"], 4),
        "train_global_batch": TRAIN_BATCH,
        "train_startup_seconds_1_rank": round(tr["one"]["startup_seconds"], 2),
        "train_startup_seconds_2_ranks": round(tr["two"]["startup_seconds"], 2),
        "train_rounds_samples_per_s": tr["rounds"],
        "train_all_cores_1_rank_samples_per_s": round(tr["all_cores"]["samples_per_s"], 1),
        "train_parameters": tr["parameters"],
        "train_allreduce_seconds_2_ranks": round(tr["allreduce"], 4),
        "cores": os.cpu_count(),
        "load_average_start": round(load[0], 2),
        "load_average_end": round(load[1], 2),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def print_table(s: dict, rounds: int) -> None:
    print(
        f"pseudo-labeling: {SHARDS} shards x {PER_SHARD} synthetic 64x64 PNGs, digits teacher resnet10t 1x32x32, "
        f"batch 256, one shard per task, best of {rounds} alternated rounds {s['pseudolabel_rounds_images_per_s']}"
    )
    print(f"{'':<34}{'images/s':>10}{'s/shard':>9}{'in task':>9}{'start s':>9}")
    for label, n in (("1 Dask worker, 1 thread", "1_worker"), ("2 Dask workers, 1 thread each", "2_workers")):
        print(
            f"{label:<34}{s[f'pseudolabel_images_per_s_{n}']:>10.0f}{s[f'pseudolabel_seconds_per_shard_{n}']:>9.2f}"
            f"{s[f'pseudolabel_in_task_seconds_per_shard_{n}']:>9.2f}{s[f'pseudolabel_cluster_start_seconds_{n}']:>9.1f}"
        )
    threads = f"thread-pool runner, {s['cores']} threads"
    print(f"{threads:<34}{s['pseudolabel_threads_runner_images_per_s']:>10.0f}")
    print(f"pseudolabel_speedup (2 workers / 1): {s['pseudolabel_speedup']:.3f} (ideal 2.0)")
    slowdown = (
        s["pseudolabel_in_task_seconds_per_shard_2_workers"]
        / s["pseudolabel_in_task_seconds_per_shard_1_worker"]
    )
    overhead = (
        s["pseudolabel_seconds_per_shard_1_worker"] - s["pseudolabel_in_task_seconds_per_shard_1_worker"]
    )
    print(
        f"inside a task a shard takes {slowdown:.2f}x as long with 2 workers as with 1 (1.00 if each had a core "
        f"to itself); around it, {overhead:.2f} s per task (Prefect task run, teacher load, first batch)"
    )
    print()
    print(
        f"teacher training: resnet10t 1x32x32, global batch {s['train_global_batch']}, torchrun + gloo, steady state, "
        f"best of {rounds} alternated rounds {s['train_rounds_samples_per_s']}"
    )
    print(f"{'':<34}{'samples/s':>10}{'s/step':>9}{'start s':>9}")
    print(
        f"{'1 rank, 1 thread':<34}{s['train_samples_per_s_1_rank']:>10.1f}"
        f"{s['train_seconds_per_step_1_rank']:>9.4f}{s['train_startup_seconds_1_rank']:>9.1f}"
    )
    print(
        f"{'2 ranks, 1 thread each':<34}{s['train_samples_per_s_2_ranks']:>10.1f}"
        f"{s['train_seconds_per_step_2_ranks']:>9.4f}{s['train_startup_seconds_2_ranks']:>9.1f}"
    )
    all_cores = f"1 rank, {s['cores']} threads"
    print(f"{all_cores:<34}{s['train_all_cores_1_rank_samples_per_s']:>10.1f}")
    print(f"train_speedup (2 ranks / 1): {s['train_speedup']:.3f} (ideal 2.0)")
    share = s["train_allreduce_seconds_2_ranks"] / s["train_seconds_per_step_2_ranks"]
    print(
        f"one gloo all-reduce of the {s['train_parameters'] / 1e6:.2f}M gradients between 2 processes: "
        f"{s['train_allreduce_seconds_2_ranks']:.4f} s, {100 * share:.0f}% of a 2-rank step"
    )
    print(
        f"1-min load average {s['load_average_start']:.2f} at the start, {s['load_average_end']:.2f} at the end "
        f"({s['cores']} cores): above about 0.5 other work shares the cores and the numbers are noisy"
    )
    print("benchmark time, s: " + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternated 1/2-worker (1/2-rank) rounds; the best of each is kept",
    )
    parser.add_argument("--keep", type=Path, help="build everything here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    root = args.keep or Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    # Prefect's ephemeral API keeps its database here, not in ~/.prefect; set before Prefect loads.
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect-home"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import flows  # noqa: F401  (Prefect settings for the domain loggers, before Prefect is imported)

    logging.basicConfig(level=logging.WARNING)
    _quiet_loggers()
    seconds: dict[str, float] = {}
    try:
        started = time.perf_counter()
        from selftrain.data.digits import build_digits

        build_digits(root / "digits")
        teacher_run = untrained_teacher_run(root, root / "digits")
        build_synthetic(root / "synthetic", SHARDS * PER_SHARD)
        seconds["setup"] = time.perf_counter() - started
        pseudolabel = measure_pseudolabel(root, teacher_run, args.rounds)
        seconds["pseudolabel"] = time.perf_counter() - started - seconds["setup"]
        train = measure_train(root, root / "digits", args.rounds)
        seconds["train"] = time.perf_counter() - started - seconds["setup"] - seconds["pseudolabel"]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(pseudolabel, train, (load_before, os.getloadavg()[0]), seconds)
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(summary, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
