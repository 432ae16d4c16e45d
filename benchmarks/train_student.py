"""Student training throughput: the whole input pipeline against the model alone.

    .venv/bin/python benchmarks/train_student.py          # a table
    .venv/bin/python benchmarks/train_student.py --json   # one JSON object
    python benchmarks/train_student.py --json --device cuda --from-run RUN   # gpu_check.sh's call

Builds, in a temporary folder, the digits data set, the default teacher (the default recipe in
full, so the balanced selection is the demo's: with a briefly trained teacher few images pass the
confidence filter and the stream reads about three unselected images per selected one) and its
pseudo-labels, then the default iteration-1 student exactly as `train_student` builds it
(`prepare_student`: resnet10t at 32x32, B=16 labeled + 14x16=224 pseudo-labeled per step).
End to end = samples/s of real steps (read shards, decode, RandAugment, 14x mixing, forward,
backward, optimizer step), after one warm-up pass over the selection (from then on each image's
decoding comes from the stream's cache, as in every later epoch of a real run; shards are still
read and verified). Baseline = samples/s of the same model and step function on one batch of
in-memory tensors of the same shapes, same threads. The two are timed in alternating blocks of
10 steps, so drift of a shared machine hits both. `ratio` = end to end / baseline; the target on
a 2-core CPU is >= 0.85.

TensorBoard: a third kind of block runs the end-to-end step plus what the engine logs per step
(`selftrain.tblog.ScalarLog.step`: every metric, the learning rate, throughput, the pseudo-labeled
share) into a real event file. `tensorboard_overhead` = 1 - (end to end with logging / without),
the share of step time logging costs, and `tensorboard_share_of_step_time` = the time spent inside
the logging call itself / the logged steps' time (steadier: block-to-block noise of a shared
machine is larger than the cost); the target is < 0.02.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not benchmarks/, first

from pseudolabel.iteration import pseudolabel_iteration  # noqa: E402
from selftrain.data.dataset_info import load_dataset  # noqa: E402
from selftrain.data.digits import build_digits  # noqa: E402
from selftrain.runstore import RunStore  # noqa: E402
from selftrain.tblog import ScalarLog  # noqa: E402
from students.noisy_student import prepare_student  # noqa: E402
from teachers.supervised import train_teacher  # noqa: E402


def _timed(step, batch_of, steps: int) -> float:
    start = time.perf_counter()
    for s in range(steps):
        step(batch_of(s), s)
    if torch.cuda.is_initialized():  # CUDA runs ahead of the host: time what it finished
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    work: Path,
    steps: int,
    iteration: int,
    workers: int,
    device_name: str = "cpu",
    from_run: Path | None = None,
) -> dict:
    """`from_run`: an existing run whose iteration 0 is trained and labeled (no setup here)."""
    device = torch.device(device_name)
    started = time.perf_counter()
    if from_run is not None:
        store = RunStore(from_run)
        cfg = store.config()
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": workers})})
        dataset = load_dataset(store.data_dir())
    else:
        data = work / "digits"
        build_digits(data)
        store = RunStore(work / "run")
        cfg = store.open(data, None, [f"data.num_workers={workers}", f"device={device_name}"])
        dataset = load_dataset(data)
        train_teacher(store, dataset, cfg, device)
        pseudolabel_iteration(store, 0, device=device)
    setup_seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    setup = prepare_student(store, dataset, cfg, device, iteration)
    stream = setup.batches(0)
    batch = next(stream)
    fixed = ((batch[0][0].clone(), batch[0][1].clone()), (batch[1][0].clone(), batch[1][1].clone()))
    per_step = setup.pseudo_batch + cfg.student.batch_size

    # Warm-up: one pass over the selection (the pipeline decodes each image once, then uses its
    # cache, as in every later epoch of a real run) and a few in-memory steps.
    epoch_steps = -(-sum(setup.selection["copies"].values()) // setup.pseudo_batch)
    _timed(setup.step_fn, lambda s: next(stream), epoch_steps + 1)
    _timed(setup.step_fn, lambda s: fixed, 3)
    tb = ScalarLog(work / "tb", samples_per_step=per_step)
    tb.open(0)
    optimizers = {"model": setup.optimizer}

    in_tb = [0.0]

    def logged_step(batch, s: int) -> dict:
        metrics = setup.step_fn(batch, s)
        t0 = time.perf_counter()
        tb.step(s + 1, metrics, optimizers)
        in_tb[0] += time.perf_counter() - t0
        return metrics

    # Interleaved blocks: drift of a shared machine (other work, clock changes) hits every side.
    block, rounds = 10, max(1, steps // 10)
    memory_s = pipeline_s = logged_s = 0.0
    for _ in range(rounds):
        memory_s += _timed(setup.step_fn, lambda s: fixed, block)
        pipeline_s += _timed(setup.step_fn, lambda s: next(stream), block)
        logged_s += _timed(logged_step, lambda s: next(stream), block)
    tb.close()
    memory, pipeline = rounds * block / memory_s, rounds * block / pipeline_s
    logged = rounds * block / logged_s
    return {
        "model": setup.name,
        "iteration": iteration,
        "labeled_batch": cfg.student.batch_size,
        "unlabeled_batch": setup.pseudo_batch,
        "threads": torch.get_num_threads(),
        "data_workers": workers,
        "steps": rounds * block,
        "warmup_steps": epoch_steps + 1,
        "pipeline_samples_per_s": round(pipeline * per_step, 1),
        "model_samples_per_s": round(memory * per_step, 1),
        "ratio": round(pipeline / memory, 3),
        "pipeline_with_tensorboard_samples_per_s": round(logged * per_step, 1),
        "tensorboard_overhead": round(1 - logged / pipeline, 4),
        "tensorboard_share_of_step_time": round(in_tb[0] / logged_s, 5),
        "selected_images": sum(1 for c in setup.selection["copies"].values() if c),
        "unlabeled_images": dataset.split("unlabeled").total,
        "setup_seconds": round(setup_seconds, 1),
        "device": device.type,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--steps", type=int, default=60, help="timed steps of each kind, in interleaved blocks of 10"
    )
    parser.add_argument("--iteration", type=int, default=1, help="1 = 14x batches, 2 = 28x")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (data.num_workers)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the steps run")
    parser.add_argument(
        "--from-run", type=Path, help="reuse this run's trained, labeled iteration 0 instead of building one"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:
        if args.iteration > 1:
            raise SystemExit("--iteration > 1 needs a trained iteration 1; measure iteration 1")
        result = measure(Path(tmp), args.steps, args.iteration, args.workers, args.device, args.from_run)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"student {result['model']} (iteration {result['iteration']}): "
        f"{result['labeled_batch']} labeled + {result['unlabeled_batch']} pseudo-labeled per step, "
        f"{result['threads']} threads"
    )
    print(
        f"  end to end (shards, RandAugment, mixing, fwd/bwd/step): {result['pipeline_samples_per_s']:>8} samples/s"
    )
    print(
        f"  model alone on in-memory tensors:                      {result['model_samples_per_s']:>8} samples/s"
    )
    print(
        f"  end to end with TensorBoard scalars:                   {result['pipeline_with_tensorboard_samples_per_s']:>8} samples/s"
    )
    print(f"  ratio: {result['ratio']:.3f} (target >= 0.85)")
    print(
        f"  TensorBoard: {result['tensorboard_share_of_step_time']:.3%} of step time inside the logging call, "
        f"{result['tensorboard_overhead']:.2%} end to end (target < 2%)"
    )


if __name__ == "__main__":
    main()
