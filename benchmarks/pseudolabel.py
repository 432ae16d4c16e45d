"""Pseudo-labeling throughput, memory and label size.

    .venv/bin/python benchmarks/pseudolabel.py          # a table
    .venv/bin/python benchmarks/pseudolabel.py --json   # one JSON object

Builds, in a temporary folder, the digits data set and its default teacher (resnet10t, 1 channel,
32x32 input; trained only briefly: throughput does not depend on how well it is trained), then
64x64 grayscale synthetic PNG shards of 10,000 and 40,000 images (1,000 per shard). Each size is
labeled by the real entry point (`pseudolabel_iteration`: read shards -> decode -> resize ->
forward -> write sidecars, then filter/balance) in a fresh subprocess, so each reports its own
peak resident memory. In the same subprocess the model alone runs on in-memory tensors of the
same batch size with the same threads, before and after the pipeline (drift on a shared machine
hits both), and the ratio is pipeline / model. The digits unlabeled split (1,207 images) is
labeled the same way as a third row.

Targets on a 2-core CPU: ratio >= 0.90; the same peak memory for 10k and 40k images (streaming);
label bytes <= 2% of image bytes. `--json` keys: pipeline_images_per_s, model_images_per_s and
ratio (of the 40k run), peak_rss_mb_10k, peak_rss_mb_40k, label_bytes_per_image,
image_bytes_per_image (of the 10k shards: stored shard bytes, tar overhead included).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run as a script, this file's folder comes first on sys.path and `import pseudolabel` would import
# this very file (benchmarks/pseudolabel.py); put the repository there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

SIDE = 64
PER_SHARD = 1000
SIZES = (10_000, 40_000)
TEACHER_STEPS = 60


def synthetic_image(rng: np.random.Generator, bank: np.ndarray) -> bytes:
    """A 64x64 gray PNG: a smooth random field (shifted) plus sensor-like noise, about 3 KB."""
    from PIL import Image

    base = np.roll(bank[rng.integers(len(bank))], tuple(rng.integers(0, SIDE, 2)), axis=(0, 1))
    pixels = np.clip(base + rng.normal(0, 8, (SIDE, SIDE)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def smooth_bank(rng: np.random.Generator, n: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    bank = np.full((n, SIDE, SIDE), 128.0)
    for field in bank:
        for _ in range(5):
            cx, cy, s, a = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3), rng.uniform(-60, 60)
            field += a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return bank


def build_synthetic(root: Path, total: int) -> None:
    """`root/all` holds `total` unlabeled images; `root/n<N>` index the first N of them."""
    from selftrain.data.dataset_info import DatasetInfo, ShardEntry, SplitInfo, save_dataset
    from selftrain.data.shards import RawSample, write_split

    rng = np.random.default_rng(0)
    bank = smooth_bank(rng)
    shards_dir = root / "shards"
    shards_dir.mkdir(parents=True)
    unlabeled = write_split(
        shards_dir,
        "unlabeled",
        (RawSample(f"synth_{i:07d}", synthetic_image(rng, bank), "png") for i in range(total)),
        PER_SHARD,
    )
    tiny = write_split(
        shards_dir,
        "labeled",
        (RawSample(f"synth_l{i:03d}", synthetic_image(rng, bank), "png", label=i % 10) for i in range(20)),
        PER_SHARD,
    )

    def absolute(entries: list[ShardEntry]) -> list[ShardEntry]:
        return [e.model_copy(update={"path": str(shards_dir / e.path)}) for e in entries]

    for n in SIZES:
        labeled = SplitInfo(labeled=True, shards=absolute(tiny))
        info = DatasetInfo(
            name=f"synthetic-{n}",
            classes=[str(c) for c in range(10)],
            image_size=(SIDE, SIDE),
            channels=1,
            splits={
                "labeled": labeled,
                "val": labeled,
                "test": labeled,
                "unlabeled": SplitInfo(labeled=False, shards=absolute(unlabeled[: n // PER_SHARD])),
            },
        )
        (root / f"n{n}").mkdir()
        save_dataset(root / f"n{n}", info)


def train_digits_teacher(root: Path) -> Path:
    import torch

    from selftrain.data.dataset_info import load_dataset
    from selftrain.data.digits import build_digits
    from selftrain.runstore import RunStore
    from teachers.supervised import train_teacher

    data = root / "digits"
    build_digits(data)
    store = RunStore(root / "teacher-run")
    cfg = store.open(
        data,
        None,
        [f"teacher.steps={TEACHER_STEPS}", "teacher.eval_every=30", "teacher.checkpoint_every=30"],
    )
    train_teacher(store, load_dataset(data), cfg, torch.device("cpu"))
    return store.root


def run_for(teacher_run: Path, data: Path, dest: Path) -> Path:
    """A copy of the teacher's run that labels `data` (same classes and channels)."""
    shutil.copytree(teacher_run, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["data"] = str(data)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


# -- the measured subprocess ------------------------------------------------------------------
def model_alone(teacher, batch_size: int, batches: int) -> tuple[int, float]:
    import torch

    from selftrain.device import to_device

    x = to_device(
        torch.randn(batch_size, teacher.in_chans, teacher.image_size, teacher.image_size), teacher.device
    )
    teacher.probabilities(x)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        teacher.probabilities(x).cpu()
    return batch_size * batches, time.perf_counter() - started


def child(run_dir: Path, workers: int) -> dict:
    import torch

    from pseudolabel.iteration import pseudolabel_iteration
    from pseudolabel.label_shards import pseudo_dir
    from pseudolabel.teacher_model import load_teacher
    from selftrain.data.dataset_info import load_dataset
    from selftrain.runstore import RunStore

    store = RunStore(run_dir)
    cfg = store.config()
    dataset = load_dataset(store.data_dir())
    device = torch.device("cpu")
    teacher = load_teacher(store, 0, dataset, device)
    images = dataset.split("unlabeled").total
    batch = cfg.pseudolabel.batch_size
    model_batches = max(4, images // batch // 2)
    n1, t1 = model_alone(teacher, batch, model_batches)
    started = time.perf_counter()
    result = pseudolabel_iteration(store, 0, device=device, num_workers=workers)
    total = time.perf_counter() - started
    n2, t2 = model_alone(teacher, batch, model_batches)
    labeling = result["labeling"]
    out_dir = pseudo_dir(store, 0)
    label_bytes = sum(p.stat().st_size for p in out_dir.glob("*.labels.*"))
    image_bytes = sum(dataset.shard_path(e).stat().st_size for e in dataset.split("unlabeled").shards)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "images": images,
        "labeled": labeling["labeled_images"],
        "pipeline_seconds": labeling["seconds"],
        "pipeline_images_per_s": labeling["labeled_images"] / labeling["seconds"],
        "model_images_per_s": (n1 + n2) / (t1 + t2),
        "selection_seconds": total - labeling["seconds"],
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "workers": workers,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": children / 1024 if workers else 0.0,
        "label_bytes_per_image": label_bytes / images,
        "image_bytes_per_image": image_bytes / images,
    }


def measure(run_dir: Path, workers: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(run_dir), "--workers", str(workers)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed for {run_dir}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def png_payload_bytes(data: Path, limit: int = 2000) -> float:
    from selftrain.data.dataset_info import load_dataset
    from selftrain.data.shards import iter_shard

    dataset = load_dataset(data)
    entry = dataset.split("unlabeled").shards[0]
    sizes = [
        len(raw["png"])
        for raw, _ in zip(iter_shard(dataset.shard_path(entry), entry), range(limit), strict=False)
    ]
    return float(np.mean(sizes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader decode workers (default 0: decode in the labeling process; on 2 cores "
        "low-priority workers do not beat it, see the report)",
    )
    parser.add_argument("--keep", type=Path, help="build everything here and keep it (default: a temp dir)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.child:
        print(json.dumps(child(args.child, args.workers)))
        return 0

    load_before = os.getloadavg()[0]
    root = args.keep or Path(tempfile.mkdtemp(prefix="pseudolabel-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        teacher_run = train_digits_teacher(root)
        build_synthetic(root / "synthetic", max(SIZES))
        setup = time.perf_counter() - started
        rows = {"digits": measure(teacher_run, args.workers)}
        for n in SIZES:
            run_dir = run_for(teacher_run, root / "synthetic" / f"n{n}", root / f"run-{n}")
            rows[f"synthetic {n // 1000}k"] = measure(run_dir, args.workers)
        png = png_payload_bytes(root / "synthetic" / f"n{SIZES[0]}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    big, small = rows[f"synthetic {SIZES[-1] // 1000}k"], rows[f"synthetic {SIZES[0] // 1000}k"]
    summary = {
        "pipeline_images_per_s": round(big["pipeline_images_per_s"], 1),
        "model_images_per_s": round(big["model_images_per_s"], 1),
        "ratio": round(big["pipeline_images_per_s"] / big["model_images_per_s"], 3),
        "peak_rss_mb_10k": round(small["peak_rss_mb"], 1),
        "peak_rss_mb_40k": round(big["peak_rss_mb"], 1),
        "label_bytes_per_image": round(small["label_bytes_per_image"], 1),
        "image_bytes_per_image": round(small["image_bytes_per_image"], 1),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"teacher: digits default (resnet10t, 1x32x32), trained {TEACHER_STEPS} steps; "
        f"{big['threads']} torch threads, batch {big['batch_size']}, {args.workers} decode worker(s); "
        f"setup {setup:.0f} s"
    )
    head = f"{'data':<14}{'images':>8}{'pipeline/s':>12}{'model/s':>10}{'ratio':>7}{'peak MB':>9}{'worker MB':>10}"
    head += f"{'label B/img':>12}{'image B/img':>12}"
    print(head)
    for name, r in rows.items():
        ratio = r["pipeline_images_per_s"] / r["model_images_per_s"]
        print(
            f"{name:<14}{r['images']:>8}{r['pipeline_images_per_s']:>12.0f}{r['model_images_per_s']:>10.0f}"
            f"{ratio:>7.3f}{r['peak_rss_mb']:>9.0f}{r['worker_peak_rss_mb']:>10.0f}"
            f"{r['label_bytes_per_image']:>12.1f}{r['image_bytes_per_image']:>12.1f}"
        )
    share = summary["label_bytes_per_image"] / summary["image_bytes_per_image"]
    print(
        f"1-min load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        f"({os.cpu_count()} cores): above about 0.5 other work shares the cores and the numbers are noisy"
    )
    print(
        f"labels are {100 * share:.2f}% of stored image bytes ({100 * summary['label_bytes_per_image'] / png:.2f}% "
        f"of the PNG payload alone, {png:.0f} B/img); targets: ratio >= 0.90, equal peak memory, labels <= 2%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
