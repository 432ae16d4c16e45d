"""Pseudo-labeling throughput against the honest limit and a plain peer; memory and label size.

    .venv/bin/python benchmarks/pseudolabel.py          # a table
    .venv/bin/python benchmarks/pseudolabel.py --json   # one JSON object

Builds, in a temporary folder, the digits data set and its default teacher (resnet10t, 1 channel,
32x32 input; trained only briefly: throughput does not depend on how well it is trained), then
64x64 grayscale synthetic PNG shards of 10,000 and 40,000 images (1,000 per shard). Each size is
labeled in a fresh subprocess, so each reports its own peak resident memory, by `label_shards`
(read shards -> decode -> resize -> forward -> write sidecars: what `selftrain pseudolabel` and the
flows' fan-out call), then filtered and balanced by `pseudolabel_iteration` once every shard is
labeled (timed apart as `selection_seconds`). The labeling runs in 8 chunks of shards (`--chunks`) with one
teacher, loaded once and its load counted in the pipeline's time, as one `selftrain pseudolabel`
call loads it once (a load per chunk would charge 8 loads, about 100 ms each on 2 cores, that no
user pays). Before each chunk, in the same process with the same threads, it measures:

- model: the model alone on in-memory tensors of the same batch size (half a chunk's images);
- decode: the cheapest decode + resize of the same images alone (4,000 of them, their bytes
  already in memory; the faster of PIL with the format named and torchvision's decoder + torch's
  antialiased resize, each to the uint8 tensor the model's batch is made of).

The limit of a chunk = its images x (per-image model time + per-image decode time): on a CPU the
same cores must both decode and run the model. `ratio_to_limit` pools the chunks (their limit
seconds / their pipeline seconds) and `ratio_to_limit_chunks` lists each: measured side by side,
a shared machine's drift (20% within a minute here) hits pipeline and limit alike.

- peer (10k only): the plain pipeline a user would write with the same model: webdataset
  `.decode("pil")` (`"pill"`, its grayscale form, for a 1-channel model) + torchvision's
  Resize/ToTensor/Normalize + a torch DataLoader, writing the same soft labels (float16, one file
  per shard); the best of 0 and 2 DataLoader workers. Measured in 2 paired rounds, each labeling
  the whole 10k split with the pipeline and then with the peer, back to back (the speedup pools
  the rounds' seconds; measured minutes apart, the peer once read 40% faster than the pipeline's
  chunks had seen the machine).

The digits unlabeled split (1,207 images) is labeled the same way as a third row.

Targets on a 2-core CPU: pipeline >= 0.90 of the limit and >= 1.3x the peer; the same peak memory
for 10k and 40k images (streaming); label bytes <= 2% of image bytes. `--json` keys:
pipeline_images_per_s, model_images_per_s, ratio (pipeline / model), decode_images_per_s,
limit_images_per_s, ratio_to_limit (of the 40k run), peer_images_per_s, speedup_vs_peer (pipeline /
peer, 10k run, paired rounds pooled), speedup_vs_peer_rounds, peer_workers (per round),
teacher_load_seconds (of the 40k run), peak_rss_mb_10k, peak_rss_mb_40k, label_bytes_per_image,
image_bytes_per_image (of the 10k shards: stored shard bytes, tar overhead included),
load_average, ratio_to_limit_chunks and decode_us_rounds (of the 40k run: per chunk; per way to
decode, per chunk), gap_us (of the 40k run, per image: the
pipeline's wait for decoded batches over the cheapest decode alone, its model phase over the
model alone, its sidecar writing, the rest; they sum to the time per image over the limit's).
The measuring functions take a device: `benchmarks/gpu_check.sh` runs them on CUDA.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import shutil
import statistics
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
CHUNKS = 8
TEACHER_STEPS = 60
PEER_ROUNDS = 2


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
    from selftrain.runstore import RunStore

    shutil.copytree(teacher_run, dest)
    RunStore(dest).point_at_data(data)
    return dest


# -- the measured subprocess ------------------------------------------------------------------
def model_alone(teacher, batch_size: int, batches: int) -> tuple[int, float]:
    import torch

    from selftrain.device import to_device

    x = to_device(
        torch.randn(batch_size, teacher.in_chans, teacher.image_size, teacher.image_size), teacher.device
    )
    teacher.probabilities(x)  # warm-up
    _sync(teacher.device)
    started = time.perf_counter()
    for _ in range(batches):
        teacher.probabilities(x).cpu()
    return batch_size * batches, time.perf_counter() - started


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_images(dataset, limit: int) -> list[tuple[str, bytes]]:
    """(extension, encoded bytes) of the first `limit` unlabeled images, read from the shards."""
    from selftrain.data.shards import IMAGE_EXTS
    from selftrain.data.tar_reader import iter_shard_fast

    out: list[tuple[str, bytes]] = []
    for e in dataset.split("unlabeled").shards:
        for raw in iter_shard_fast(dataset.shard_path(e), e, verify=False):
            ext = next(x for x in IMAGE_EXTS if x in raw)
            out.append((ext, raw[ext]))
            if len(out) == limit:
                return out
    return out


def decode_alone(images: list[tuple[str, bytes]], size: int, channels: int) -> dict[str, float]:
    """Seconds per image of each way to go from bytes to the uint8 (C, size, size) tensor."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    from selftrain.data.batch_decode import resize_batch
    from selftrain.data.shards import _open_image
    from selftrain.transforms import Resize, pil_to_uint8

    mode = "L" if channels == 1 else "RGB"
    resize = Resize(size)

    def pil(ext: str, data: bytes):
        image = _open_image(data, ext)
        return pil_to_uint8(resize(image if image.mode == mode else image.convert(mode)))

    read_mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB

    def tv(ext: str, data: bytes):
        x = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode)
        return resize_batch(x.unsqueeze(0), size)[0]

    out = {}
    for name, fn in (("pil", pil), ("torchvision", tv)):
        for ext, data in images[:20]:  # warm-up
            fn(ext, data)
        started = time.perf_counter()
        for ext, data in images:
            fn(ext, data)
        out[name] = (time.perf_counter() - started) / len(images)
    return out


def peer_pipeline(dataset, teacher, batch_size: int, workers: int, out_dir: Path) -> tuple[int, float]:
    """The plain pipeline: webdataset .decode("pil") + torchvision transforms + DataLoader + model,
    soft labels (float16) written to one .npz per shard. Returns (images, seconds)."""
    import torch
    import webdataset as wds
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    channels = dataset.info.channels
    transform = T.Compose(
        [
            T.Resize((teacher.image_size, teacher.image_size)),
            T.ToTensor(),
            T.Normalize([0.5] * channels, [0.5] * channels),
        ]
    )
    ext = "png;jpg;jpeg;webp"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    n = 0
    for e in dataset.split("unlabeled").shards:
        source = (
            wds.WebDataset(str(dataset.shard_path(e)), shardshuffle=False, empty_check=False)
            .decode("pill" if channels == 1 else "pil")
            .to_tuple("__key__", ext)
            .map_tuple(None, transform)
            .batched(batch_size)
        )
        keys, probs = [], []
        with torch.inference_mode():
            for batch_keys, x in DataLoader(source, batch_size=None, num_workers=workers):
                p = teacher.probabilities(x.to(teacher.device))
                keys += list(batch_keys)
                probs.append(p.half().cpu().numpy())
        np.savez(out_dir / f"{Path(e.path).stem}.npz", keys=np.array(keys), prob=np.concatenate(probs))
        n += len(keys)
    return n, time.perf_counter() - started


def _gap_us(parts: list[dict], images: int) -> dict[str, float]:
    """The pipeline's time per image over its limit, by phase, pooled over the chunks: its wait for
    decoded batches over the decode alone, its model phase over the model alone, its sidecar
    writing and the rest (the four sum to pipeline minus limit)."""
    decode = sum(p["images"] * min(p["decode_s"].values()) for p in parts)
    model = sum(p["images"] * p["model_seconds"] / p["model_images"] for p in parts)
    phases = {k: sum(getattr(p["phases"], k) for p in parts) for k in ("input", "model", "write")}
    other = sum(p["seconds"] for p in parts) - sum(phases.values())
    seconds = {
        "input_over_decode": phases["input"] - decode,
        "model_over_model_alone": phases["model"] - model,
        "write": phases["write"],
        "other": other,
    }
    return {k: v / images * 1e6 for k, v in seconds.items()}


def child(
    run_dir: Path,
    workers: int,
    device_name: str = "cpu",
    decode: str | None = None,
    peer: bool = False,
    chunks: int = CHUNKS,
) -> dict:
    import torch

    from pseudolabel.iteration import pseudolabel_iteration
    from pseudolabel.label_shards import label_shards, pseudo_dir
    from pseudolabel.teacher_model import load_teacher
    from selftrain.data.dataset_info import load_dataset
    from selftrain.runstore import RunStore

    store = RunStore(run_dir)
    if decode is not None:  # data.decode for this measurement (pil or batched)
        from selftrain import atomic
        from selftrain.config import config_to_yaml

        cfg = store.config()
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"decode": decode})})
        atomic.write_text(store.config_path, config_to_yaml(cfg))
    cfg = store.config()
    dataset = load_dataset(store.data_dir())
    device = torch.device(device_name)
    started = time.perf_counter()
    teacher = load_teacher(store, 0, dataset, device)
    load_s = time.perf_counter() - started
    split = dataset.split("unlabeled")
    images, batch = split.total, cfg.pseudolabel.batch_size
    sample = raw_images(dataset, min(images, 4000))
    # The labeling runs in chunks of shards, each preceded by the model alone and the decode
    # alone: the limit of every chunk is measured beside it, so a shared machine's drift (single
    # measurements moved 20% within a minute) hits both alike.
    chunks = [
        c.tolist() for c in np.array_split(np.arange(len(split.shards)), min(chunks, len(split.shards)))
    ]
    model_batches = max(2, images // batch // len(chunks) // 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    parts = []
    for chunk in chunks:
        n_model, t_model = model_alone(teacher, batch, model_batches)
        decode_s = decode_alone(sample, teacher.image_size, dataset.info.channels)
        labeling = label_shards(store, dataset, 0, chunk, cfg, device, num_workers=workers, teacher=teacher)
        n = labeling.labeled_images
        parts.append(
            {
                "images": n,
                "seconds": labeling.seconds,
                "model_images": n_model,
                "model_seconds": t_model,
                "decode_s": decode_s,
                "limit_seconds": n * (t_model / n_model + min(decode_s.values())),
                "phases": labeling.phases,
            }
        )
    parts[0]["seconds"] += load_s  # the one load a whole labeling call pays
    started = time.perf_counter()
    result = pseudolabel_iteration(store, 0, device=device)  # every sidecar reused: selection only
    assert result["selection"] is not None and result["labeling"]["labeled_shards"] == 0
    selection_s = time.perf_counter() - started - result["labeling"]["seconds"]
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    peer_result = {}
    out_dir = pseudo_dir(store, 0)
    if peer:
        # Paired rounds: the whole split labeled by the pipeline, then by the peer with 0 and 2
        # workers, back to back; a shared machine's drift (the peer alone once ran 40% faster
        # than minutes earlier) then hits both sides of each round alike.
        rounds = []
        for _ in range(PEER_ROUNDS):
            for stale in out_dir.glob("*.labels.*"):
                stale.unlink()
            ours = label_shards(store, dataset, 0, None, cfg, device, num_workers=workers, teacher=teacher)
            peers = {}
            for w in (0, 2):
                with tempfile.TemporaryDirectory(prefix="peer-") as tmp:
                    n, seconds = peer_pipeline(dataset, teacher, batch, w, Path(tmp))
                assert n == images == ours.labeled_images, (n, images, ours.labeled_images)
                peers[w] = seconds
            best = min(peers, key=peers.__getitem__)
            rounds.append({"seconds": ours.seconds, "peer_seconds": peers[best], "peer_workers": best})
        peer_s = sum(r["peer_seconds"] for r in rounds)
        peer_result = {
            "peer_images_per_s": images * len(rounds) / peer_s,
            "peer_workers": [r["peer_workers"] for r in rounds],
            "speedup_vs_peer": peer_s / sum(r["seconds"] for r in rounds),
            "speedup_vs_peer_rounds": [round(r["peer_seconds"] / r["seconds"], 3) for r in rounds],
        }
    label_bytes = sum(p.stat().st_size for p in out_dir.glob("*.labels.*"))
    image_bytes = sum(dataset.shard_path(e).stat().st_size for e in split.shards)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    labeled = sum(p["images"] for p in parts)
    pipeline_s = sum(p["seconds"] for p in parts)
    limit_s = sum(p["limit_seconds"] for p in parts)
    decode_us = {k: statistics.median(p["decode_s"][k] for p in parts) * 1e6 for k in parts[0]["decode_s"]}
    return {
        "images": images,
        "labeled": labeled,
        "pipeline_seconds": pipeline_s,
        "pipeline_images_per_s": labeled / pipeline_s,
        "model_images_per_s": sum(p["model_images"] for p in parts) / sum(p["model_seconds"] for p in parts),
        "decode_images_per_s": 1e6 / min(decode_us.values()),
        "decode_us": {k: round(v, 1) for k, v in decode_us.items()},
        "decode_us_rounds": {k: [round(p["decode_s"][k] * 1e6, 1) for p in parts] for k in decode_us},
        "limit_images_per_s": labeled / limit_s,
        "ratio_to_limit": limit_s / pipeline_s,
        "ratio_to_limit_chunks": [round(p["limit_seconds"] / p["seconds"], 3) for p in parts],
        "gap_us": _gap_us(parts, labeled),
        **peer_result,
        "selection_seconds": selection_s,
        "teacher_load_seconds": load_s,
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "workers": workers,
        "decode": cfg.data.decode,
        "device": device.type,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": peak_gpu,
        "worker_peak_rss_mb": children / 1024 if workers else 0.0,
        "label_bytes_per_image": label_bytes / images,
        "image_bytes_per_image": image_bytes / images,
    }


def measure(
    run_dir: Path,
    workers: int,
    device: str = "cpu",
    decode: str | None = None,
    peer: bool = False,
    chunks: int = CHUNKS,
) -> dict:
    """One labeling measurement in a fresh process. `chunks`: label_shards calls the shards are
    split over; each starts its own DataLoader workers, a cost that matters only where a chunk
    takes well under a second (a GPU)."""
    cmd = [sys.executable, __file__, "--child", str(run_dir), "--workers", str(workers), "--device", device]
    cmd += (["--decode", decode] if decode else []) + (["--peer"] if peer else [])
    cmd += ["--chunks", str(chunks)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "TQDM_DISABLE": "1"}
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
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--decode", choices=["pil", "batched"], help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=CHUNKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.child:
        print(json.dumps(child(args.child, args.workers, args.device, args.decode, args.peer, args.chunks)))
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
            rows[f"synthetic {n // 1000}k"] = measure(run_dir, args.workers, peer=n == SIZES[0])
        png = png_payload_bytes(root / "synthetic" / f"n{SIZES[0]}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    big, small = rows[f"synthetic {SIZES[-1] // 1000}k"], rows[f"synthetic {SIZES[0] // 1000}k"]
    summary = {
        "pipeline_images_per_s": round(big["pipeline_images_per_s"], 1),
        "model_images_per_s": round(big["model_images_per_s"], 1),
        "ratio": round(big["pipeline_images_per_s"] / big["model_images_per_s"], 3),
        "decode_images_per_s": round(big["decode_images_per_s"], 1),
        "decode_us_rounds": big["decode_us_rounds"],
        "ratio_to_limit_chunks": big["ratio_to_limit_chunks"],
        "gap_us": {k: round(v, 1) for k, v in big["gap_us"].items()},
        "limit_images_per_s": round(big["limit_images_per_s"], 1),
        "ratio_to_limit": round(big["ratio_to_limit"], 3),
        "peer_images_per_s": round(small["peer_images_per_s"], 1),
        "speedup_vs_peer": round(small["speedup_vs_peer"], 3),
        "speedup_vs_peer_rounds": small["speedup_vs_peer_rounds"],
        "peer_workers": small["peer_workers"],
        "teacher_load_seconds": round(big["teacher_load_seconds"], 3),
        "peak_rss_mb_10k": round(small["peak_rss_mb"], 1),
        "peak_rss_mb_40k": round(big["peak_rss_mb"], 1),
        "label_bytes_per_image": round(small["label_bytes_per_image"], 1),
        "image_bytes_per_image": round(small["image_bytes_per_image"], 1),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"teacher: digits default (resnet10t, 1x32x32), trained {TEACHER_STEPS} steps; "
        f"{big['threads']} torch threads, batch {big['batch_size']}, {args.workers} decode worker(s); "
        f"setup {setup:.0f} s"
    )
    head = f"{'data':<14}{'images':>8}{'pipeline/s':>11}{'model/s':>9}{'decode/s':>9}{'limit/s':>9}"
    head += f"{'/limit':>8}{'peer/s':>8}{'xpeer':>7}{'peak MB':>9}{'label B/img':>12}{'image B/img':>12}"
    print(head)
    for name, r in rows.items():
        peer = r.get("peer_images_per_s")
        print(
            f"{name:<14}{r['images']:>8}{r['pipeline_images_per_s']:>11.0f}{r['model_images_per_s']:>9.0f}"
            f"{r['decode_images_per_s']:>9.0f}{r['limit_images_per_s']:>9.0f}{r['ratio_to_limit']:>8.3f}"
            + (f"{peer:>8.0f}{r['speedup_vs_peer']:>7.2f}" if peer else f"{'-':>8}{'-':>7}")
            + f"{r['peak_rss_mb']:>9.0f}{r['label_bytes_per_image']:>12.1f}{r['image_bytes_per_image']:>12.1f}"
        )
    print(
        f"decode + resize alone, us/image (40k): {big['decode_us']}; peer (10k): pipeline / peer per round "
        f"{small['speedup_vs_peer_rounds']}, the peer's best DataLoader workers {small['peer_workers']}"
    )
    print(
        "the 40k run's time over its limit, us/image: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in summary["gap_us"].items())
    )
    share = summary["label_bytes_per_image"] / summary["image_bytes_per_image"]
    print(
        f"1-min load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        f"({os.cpu_count()} cores): above about 0.5 other work shares the cores and the numbers are noisy"
    )
    print(
        f"labels are {100 * share:.2f}% of stored image bytes ({100 * summary['label_bytes_per_image'] / png:.2f}% "
        f"of the PNG payload alone, {png:.0f} B/img); targets: pipeline >= 0.90 of the limit, >= 1.3x the peer, "
        "equal peak memory, labels <= 2%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
