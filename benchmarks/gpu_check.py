"""The GPU path measured in one command: tests, training, labeling and student-training benchmarks.

    bash benchmarks/gpu_check.sh         # on the GPU machine: $OUT/gpu_check.json + gpu_check.log
    bash benchmarks/gpu_check.sh --cpu   # the same steps at small sizes on the CPU (CI runs it)

The parts, in this order (a part that fails is recorded with its error and the next one runs, so
one rare GPU session yields everything that works; the exit code is 1 if any part failed):

1. `tests`: the `gpu`-marked tests (pytest, on the modules that hold them; none imports Prefect,
   which the GPU machine lacks).
2. `digits`: the supervised teacher and one Noisy Student iteration (label, filter + balance,
   student) on the bundled digits, with the config the CLI picks by default, on CUDA with bf16
   autocast: the stage functions the flows call, without Prefect.
3. `labeling`: the pseudo-labeling benchmark (`benchmarks/pseudolabel.py`'s measurement: pipeline
   against the model alone on in-memory tensors, in a fresh process each) on 32x32 PNG shards of
   the dev photos and on 224x224 JPEG shards of the same photos upscaled, the JPEGs decoded on the
   GPU (`data.decode: batched`) and, for comparison, on the CPU (`pil`).
4. `photos`: the dev photos (`../shared/data/cifar10-dev-2796.npz`, or `.gpu/data/` where
   `gpu_carry.sh` put them for the GPU machine; skipped when absent) imported
   with `selftrain data import` from an ImageFolder tree of JPEGs (25 labels per class, 600 test
   images, the rest unlabeled), then teacher + one iteration as for digits.
5. `train_student`: `benchmarks/train_student.py` on the digits run of part 2.
6. `mpl`: Meta Pseudo Labels (joint stage + labeled finetune, `train_mpl` and `finetune_student`)
   on CUDA from part 4's photo teacher, at the photo recipe; then the same with as many times the
   joint steps as the time left allows (2-8x): the one lever for MPL on photos (#12) that a 2-core
   CPU cannot reach. One seed: a lead, not a result.

Peak GPU memory is recorded per part and overall. `--cpu` runs everything on the CPU with small
sizes and few steps (a minute or two on 2 idle cores; about 10 minutes at load average 11), so the
script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import torch  # noqa: E402

# The dev photos: beside the repository, or carried to the GPU machine in .gpu/data/ (gpu_carry.sh).
PHOTO_PLACES = [REPO.parent / "shared" / "data", REPO / ".gpu" / "data"]
PHOTOS_NAME = "cifar10-dev-2796.npz"
PARTS = ("tests", "digits", "labeling", "photos", "train_student", "mpl")

# Sizes: GPU (a 6-minute budget on one H200) and --cpu (small: the code paths, not the figures).
SIZES = {
    "gpu": {
        "train": [],  # the CLI's default recipe, untouched
        "png_images": 50_000,
        "jpeg_images": 10_000,
        "jpeg_side": 224,
        "per_shard": 1000,
        "label_workers": 8,
        # One label_shards call for all shards: in 8 (the CPU benchmark's drift guard), each chunk
        # took about 0.46 s on the H200 and started its own workers (2026-12-04).
        "label_chunks": 1,
        "jpeg_decodes": ["batched", "pil"],  # GPU-side decode, and the CPU decode for comparison
        "student_steps": 60,
        "student_workers": (0, 8),
        "photos": {"labels_per_class": 25, "test": 600, "unlabeled": None},
        "mpl": [],  # the photo recipe's MPL, untouched
        "mpl_scale": (2, 8),  # least and most times the recipe's joint steps for the scaled run
        "mpl_budget_s": 520.0,  # the scaled run is sized to end by then
        "start_by": {"mpl": 380.0},  # parts with their own latest start (the rest: the budget)
    },
    "cpu": {
        "train": [
            "teacher.steps=12",
            "teacher.warmup_steps=2",
            "teacher.eval_every=6",
            "teacher.checkpoint_every=12",
            "teacher.batch_size=32",
            "student.steps=6",
            "student.warmup_steps=1",
            "student.eval_every=3",
            "student.checkpoint_every=6",
            "student.finetune.steps=4",  # the photo recipe's 100-step labeled finetune, in miniature
            "student.finetune.warmup_steps=1",
            "student.finetune.eval_every=2",
            "pseudolabel.confidence_threshold=0.0",  # a 12-step teacher is rarely confident
        ],
        "png_images": 512,
        "jpeg_images": 256,
        "jpeg_side": 64,
        "per_shard": 128,
        "label_workers": 0,
        "label_chunks": 2,
        "jpeg_decodes": ["batched"],  # `pil` is png32's path here already
        "student_steps": 10,
        "student_workers": (0,),
        "photos": {"labels_per_class": 5, "test": 100, "unlabeled": 300},
        "mpl": [
            "mpl.steps=6",
            "mpl.warmup_steps=1",
            "mpl.student_wait_steps=2",
            "mpl.uda_warmup_steps=2",
            "mpl.eval_every=3",
            "mpl.checkpoint_every=6",
            "mpl.finetune.steps=4",
            "mpl.finetune.warmup_steps=1",
            "mpl.finetune.eval_every=2",
        ],
        "mpl_scale": (2, 2),
        "mpl_budget_s": float("inf"),
        "start_by": {},
    },
}

log = logging.getLogger("gpu_check")


def _bench(name: str):
    """A benchmarks/ script as a module (benchmarks/pseudolabel.py would shadow the package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_mb(device: torch.device) -> float:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else 0.0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# -- parts --------------------------------------------------------------------------------------
def gpu_test_files() -> list[str]:
    """Test modules with gpu-marked tests, outside tests/flows (Prefect, absent on the GPU machine).

    Collecting only these keeps the part short and free of Prefect imports.
    """
    files = sorted(p for p in (REPO / "tests").rglob("test_*.py") if "flows" not in p.relative_to(REPO).parts)
    return [str(p.relative_to(REPO)) for p in files if "pytest.mark.gpu" in p.read_text()]


def part_tests(ctx: dict) -> dict:
    """The gpu-marked tests, in a subprocess; counts from pytest's JUnit XML."""
    with tempfile.TemporaryDirectory(prefix="gpu-tests-") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
        ]
        cmd += gpu_test_files()
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
        if not xml.exists():
            raise RuntimeError(f"pytest exited {proc.returncode} without a report: {proc.stderr[-500:]}")
        suites = ET.parse(xml).getroot()
        suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = n["failures"] + n["errors"]
    out = {
        "rc": proc.returncode,
        "passed": n["tests"] - failed - n["skipped"],
        "failed": failed,
        "skipped": n["skipped"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if proc.returncode not in (0, 5):  # 5: nothing selected
        raise PartFailed(out, f"pytest exited {proc.returncode}: {failed} failed")
    return out


def noisy_student_iteration(
    data: Path, run_dir: Path, device: torch.device, overrides: list[str], teacher_only: bool = False
) -> dict:
    """Teacher, labeling + selection, one student: what the noisy-student flow runs, without Prefect."""
    from pseudolabel.iteration import pseudolabel_iteration
    from selftrain.data.dataset_info import load_dataset
    from selftrain.runstore import RunStore
    from students.noisy_student import train_student
    from teachers.supervised import train_teacher

    store = RunStore(run_dir)
    cfg = store.open(data, None, [f"device={device.type}", *overrides])  # as `selftrain teacher train`
    dataset = load_dataset(data)
    out: dict = {
        "images": {k: s.total for k, s in dataset.info.splits.items()},
        "config_overrides": overrides,
    }
    for stage in ("teacher",) if teacher_only else ("teacher", "pseudolabel", "student"):
        _reset_peak(device)
        started = time.perf_counter()
        if stage == "teacher":
            card = train_teacher(store, dataset, cfg, device)
        elif stage == "pseudolabel":
            result = pseudolabel_iteration(store, 0, device=device)
        else:
            card = train_student(store, dataset, cfg, device, 1)
        row = {"seconds": round(time.perf_counter() - started, 1), "peak_gpu_mb": _peak_mb(device)}
        if stage == "pseudolabel":
            sel = result["selection"]
            acc = (sel.get("accuracy") or {}).get("before_filter") or {}
            row |= {
                "images_per_s": round(
                    result["labeling"]["labeled_images"] / result["labeling"]["seconds"], 1
                ),
                "selected_images": sel["selected_images"],
                "pseudo_label_accuracy": acc.get("accuracy"),
            }
        else:
            row |= {
                "model": card["architecture"],
                "steps": card["steps"],
                "device": card["device"],
                "val_accuracy": card["val_accuracy"],
                "test_accuracy": card["test_accuracy"],
                "samples_per_s": round(_samples(cfg, stage) * card["steps"] / row["seconds"], 1),
            }
        out[stage] = row
        log.info("%s %s: %s", data.name, stage, row)
    if teacher_only:
        return out
    out["gain_points"] = round(100 * (out["student"]["test_accuracy"] - out["teacher"]["test_accuracy"]), 2)
    out["autocast"] = "bfloat16" if device.type == "cuda" else None
    return out


def _samples(cfg, stage: str) -> int:
    """Samples per step (labeled + pseudo-labeled for the iteration-1 student); includes eval time."""
    if stage == "teacher":
        return cfg.teacher.batch_size
    ratio = cfg.student.for_iteration(cfg.student.unlabeled_ratio, 1)
    return cfg.student.batch_size * (1 + ratio)


def part_digits(ctx: dict) -> dict:
    from selftrain.data.digits import build_digits

    data = ctx["work"] / "digits"
    build_digits(data)
    ctx["digits_run"] = ctx["work"] / "digits-run"
    return noisy_student_iteration(
        data, ctx["digits_run"], ctx["device"], ctx["sizes"]["train"], ctx["teacher_only"]
    )


def _load_photos() -> dict[str, np.ndarray]:
    path = next((d / PHOTOS_NAME for d in PHOTO_PLACES if (d / PHOTOS_NAME).exists()), None)
    if path is None:
        raise PartSkipped(f"{PHOTOS_NAME}: not in {' or '.join(map(str, PHOTO_PLACES))}")
    with np.load(path) as z:
        return {"images": z["images"], "labels": z["labels"], "classes": z["classes"]}


def _encode(pixels: np.ndarray, fmt: str, side: int | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    if side is not None and image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def part_photos(ctx: dict) -> dict:
    """Dev photos as a user's ImageFolder of JPEGs -> `selftrain data import` -> teacher + 1 iteration."""
    from commands.cli import main as cli

    photos = _load_photos()
    plan = ctx["sizes"]["photos"]
    classes = [str(c) for c in photos["classes"]]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(photos["labels"]))
    tree = ctx["work"] / "photos-tree"
    picked = {"train": 0, "test": 0, "unlabeled": 0}
    per_class = dict.fromkeys(range(len(classes)), 0)
    test_per_class = plan["test"] // len(classes)
    test_count = dict.fromkeys(range(len(classes)), 0)
    for i in order:
        c = int(photos["labels"][i])
        if per_class[c] < plan["labels_per_class"]:
            per_class[c] += 1
            folder = tree / "train" / classes[c]
        elif test_count[c] < test_per_class:
            test_count[c] += 1
            folder = tree / "test" / classes[c]
        elif plan["unlabeled"] is None or picked["unlabeled"] < plan["unlabeled"]:
            folder = tree / "unlabeled"
        else:
            continue
        picked[folder.relative_to(tree).parts[0]] += 1
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(_encode(photos["images"][i], "JPEG"))
    data = ctx["work"] / "photos"
    args = ["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled")]
    if cli([*args, "--test", str(tree / "test"), "--out", str(data)]) != 0:
        raise RuntimeError("selftrain data import failed (see the log)")
    ctx["photos_data"], ctx["photos_run"] = data, ctx["work"] / "photos-run"
    out = noisy_student_iteration(
        data, ctx["photos_run"], ctx["device"], ctx["sizes"]["train"], ctx["teacher_only"]
    )
    out["imported"] = picked
    return out


def _labeling_run(
    work: Path, name: str, images: list[bytes], ext: str, side: int, cfg_device: str, per_shard: int
) -> Path:
    """A data set of `images` (unlabeled) and a run whose iteration 0 is the default teacher model,
    freshly initialised at `side` (throughput does not depend on the weights)."""
    from selftrain.data.dataset_info import DatasetInfo, SplitInfo, save_dataset
    from selftrain.data.shards import RawSample, write_split
    from selftrain.models import build_model
    from selftrain.runstore import RunStore

    data = work / f"{name}-data"
    data.mkdir(parents=True)
    unlabeled = write_split(
        data, "unlabeled", (RawSample(f"img_{i:07d}", b, ext) for i, b in enumerate(images)), per_shard
    )
    labeled = write_split(
        data,
        "labeled",
        (RawSample(f"lab_{i:03d}", images[i], ext, label=i % 10) for i in range(20)),
        per_shard,
    )
    split = SplitInfo(labeled=True, shards=labeled)
    info = DatasetInfo(
        name=name,
        classes=[str(c) for c in range(10)],
        image_size=(side, side),
        channels=3,
        splits={
            "labeled": split,
            "val": split,
            "test": split,
            "unlabeled": SplitInfo(labeled=False, shards=unlabeled),
        },
    )
    save_dataset(data, info)
    store = RunStore(work / f"{name}-run")
    cfg = store.open(data, None, [f"device={cfg_device}", f"data.image_size={side}"])
    torch.manual_seed(0)
    model = build_model(cfg.teacher.model, num_classes=10, in_chans=3)
    card = {
        "iteration": 0,
        "role": "teacher",
        "architecture": cfg.teacher.model,
        "num_classes": 10,
        "classes": info.classes,
        "in_chans": 3,
        "input_size": [3, side, side],
    }
    artifacts = store.save_model(0, model.state_dict(), card)
    store.mark_stage(0, "train", "done", role="teacher", model=cfg.teacher.model, artifacts=artifacts)
    return store.root


def part_labeling(ctx: dict) -> dict:
    """pipeline / model-only on 32x32 PNG shards and on 224x224 JPEG shards (GPU and CPU decode)."""
    bench = _bench("pseudolabel")
    sizes, device = ctx["sizes"], ctx["device"].type
    photos = _load_photos()["images"]
    out = {}
    pngs = [_encode(p, "PNG") for p in photos[: min(len(photos), sizes["png_images"])]]
    side = sizes["jpeg_side"]
    jpegs = [_encode(p, "JPEG", side) for p in photos[: min(len(photos), sizes["jpeg_images"])]]
    cases = [
        ("png32", [pngs[i % len(pngs)] for i in range(sizes["png_images"])], "png", 32, [None]),
        (
            f"jpeg{side}",
            [jpegs[i % len(jpegs)] for i in range(sizes["jpeg_images"])],
            "jpg",
            side,
            sizes["jpeg_decodes"],
        ),
    ]
    for name, images, ext, image_side, decodes in cases:
        for decode in decodes:
            label = name if decode is None else f"{name}_{decode}"
            run = _labeling_run(
                ctx["work"] / "labeling", label, images, ext, image_side, device, sizes["per_shard"]
            )
            r = bench.measure(
                run, sizes["label_workers"], device=device, decode=decode, chunks=sizes["label_chunks"]
            )
            out[label] = {
                "images": r["images"],
                "decode": r["decode"],
                "workers": r["workers"],
                "chunks": len(r["ratio_to_limit_chunks"]),
                "pipeline_images_per_s": round(r["pipeline_images_per_s"], 1),
                "model_images_per_s": round(r["model_images_per_s"], 1),
                "ratio": round(r["pipeline_images_per_s"] / r["model_images_per_s"], 3),
                "cpu_decode_us": r["decode_us"],
                # where the time over the limit goes, by phase
                "gap_us": {k: round(v, 1) for k, v in r["gap_us"].items()},
                "peak_gpu_mb": round(r["peak_gpu_mb"], 1),
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
            }
            log.info("labeling %s: %s", label, out[label])
            shutil.rmtree(run.parent / f"{label}-data", ignore_errors=True)
    return out


def part_train_student(ctx: dict) -> dict:
    if "digits_run" not in ctx:
        raise PartSkipped("needs the digits run of part `digits`")
    out = {}
    for workers in ctx["sizes"]["student_workers"]:
        cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "train_student.py"),
            "--json",
            "--device",
            ctx["device"].type,
        ]
        cmd += ["--from-run", str(ctx["digits_run"]), "--steps", str(ctx["sizes"]["student_steps"])]
        cmd += ["--workers", str(workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"train_student.py exited {proc.returncode}: {proc.stderr[-1500:]}")
        out[f"workers_{workers}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        log.info("train_student workers=%d: %s", workers, out[f"workers_{workers}"])
    return out


def mpl_run(data: Path, teacher_run: Path, run_dir: Path, device: torch.device, overrides: list[str]) -> dict:
    """Joint MPL stage + labeled finetune from `teacher_run`'s iteration 0, without Prefect."""
    from selftrain.data.dataset_info import load_dataset
    from selftrain.runstore import RunStore
    from teachers.mpl_training import finetune_student, train_mpl

    store = RunStore(run_dir)
    cfg = store.open(data, None, [f"device={device.type}", *overrides])
    weights, card = RunStore(teacher_run).load_weights(0)  # the same teacher for every MPL run
    artifacts = store.save_model(0, weights, card)
    store.mark_stage(0, "train", "done", role="teacher", model=card["architecture"], artifacts=artifacts)
    dataset = load_dataset(data)
    out: dict = {"config_overrides": overrides, "teacher_test_accuracy": card["test_accuracy"]}
    for stage, train in (("joint", train_mpl), ("finetune", finetune_student)):
        _reset_peak(device)
        started = time.perf_counter()
        result = train(store, dataset, cfg, device)
        out[stage] = {
            "seconds": round(time.perf_counter() - started, 1),
            "steps": result["steps"],
            "model": result["architecture"],
            "device": result["device"],
            "val_accuracy": result["val_accuracy"],
            "test_accuracy": result["test_accuracy"],
            "peak_gpu_mb": _peak_mb(device),
        }
        log.info("mpl %s %s: %s", run_dir.name, stage, out[stage])
    out["mpl_teacher_test_accuracy"] = store.card(1)["test_accuracy"]
    out["gain_points"] = round(100 * (out["finetune"]["test_accuracy"] - card["test_accuracy"]), 2)
    return out


def part_mpl(ctx: dict) -> dict:
    """MPL from the photo teacher at the recipe's joint steps, then the same with as many times the
    joint steps (`mpl_scale`: least, most) as the time left allows: the lever a CPU cannot reach."""
    if "photos_run" not in ctx or not (ctx["photos_run"] / "iter-000").is_dir():
        raise PartSkipped("needs the photo teacher of part `photos`")
    from selftrain.config import load_config
    from selftrain.runstore import RunStore

    sizes, device = ctx["sizes"], ctx["device"]
    base = sizes["mpl"]
    steps = load_config(RunStore(ctx["photos_run"]).config_path, base).mpl.steps  # the overrides applied
    out: dict = {"recipe_steps": steps}

    def scaled(scale: int) -> dict:
        run = [*base, f"mpl.steps={steps * scale}"]
        result = mpl_run(
            ctx["photos_data"], ctx["photos_run"], ctx["work"] / f"mpl-steps-x{scale}", device, run
        )
        return {**result, "scale": scale}

    if ctx["mpl_scale"] is not None:  # one run at a chosen scale, e.g. a second, short GPU call
        out["scaled"] = scaled(ctx["mpl_scale"])
        return out
    out["recipe"] = recipe = mpl_run(
        ctx["photos_data"], ctx["photos_run"], ctx["work"] / "mpl-recipe", device, base
    )
    ctx["save_partial"](out)  # the recipe run's figures survive a kill during the scaled one
    least, most = sizes["mpl_scale"]
    left = sizes["mpl_budget_s"] - (time.perf_counter() - ctx["started"]) - recipe["finetune"]["seconds"]
    # Joint time grows with its steps (evaluations included); 10% spare for the estimate.
    scale = min(most, int(left / (1.1 * recipe["joint"]["seconds"]))) if left < float("inf") else least
    if scale < least:
        out["scaled"] = {"status": "skipped", "reason": f"{left:.0f} s left: under {least}x the joint stage"}
    else:
        out["scaled"] = scaled(scale)
    return out


# -- driver -------------------------------------------------------------------------------------
class PartSkipped(Exception):
    pass


class PartFailed(Exception):
    def __init__(self, result: dict, message: str):
        super().__init__(message)
        self.result = result


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "pillow", "pydantic", "webdataset", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run every part on the CPU at small sizes")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks" / "out")
    )
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--budget-s", type=float, help="skip parts that would start after this many seconds")
    parser.add_argument(
        "--teacher-only", action="store_true", help="digits/photos: train the teacher, no iteration"
    )
    parser.add_argument(
        "--mpl-scale",
        type=int,
        help="mpl: one run at exactly this many times the recipe's joint steps (default: the recipe, "
        "then as many times as the time left allows)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    os.environ.setdefault("TQDM_DISABLE", "1")
    mode = "cpu" if args.cpu else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run on the GPU machine, or pass --cpu", file=sys.stderr)
        return 2
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    sizes = SIZES[mode]
    budget = args.budget_s if args.budget_s is not None else (330.0 if mode == "gpu" else float("inf"))
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "mode": mode,
        "device": torch.cuda.get_device_name(0) if mode == "gpu" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "versions": _versions(),
        "parts": {},
    }
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    ctx = {"device": device, "sizes": sizes, "work": work, "started": started}
    ctx |= {"teacher_only": args.teacher_only, "mpl_scale": args.mpl_scale}
    start_by = {} if args.budget_s is not None else sizes["start_by"]
    handlers = {
        "tests": part_tests,
        "digits": part_digits,
        "labeling": part_labeling,
        "photos": part_photos,
        "train_student": part_train_student,
        "mpl": part_mpl,
    }
    try:
        for name in args.only or PARTS:
            elapsed = time.perf_counter() - started
            deadline = start_by.get(name, budget)
            if elapsed > deadline:
                report["parts"][name] = {"status": "skipped", "reason": f"over the {deadline:g} s budget"}
                continue

            def save_partial(result: dict, name: str = name) -> None:
                report["parts"][name] = {"status": "running", **result}
                _write_json(args.out / "gpu_check.json", report)

            ctx["save_partial"] = save_partial
            log.info("== %s (%.0f s elapsed)", name, elapsed)
            _reset_peak(device)
            t0 = time.perf_counter()
            try:
                result = {"status": "ok", **handlers[name](ctx)}
            except PartSkipped as exc:
                result = {"status": "skipped", "reason": str(exc)}
            except PartFailed as exc:
                result = {"status": "failed", "error": str(exc), **exc.result}
            except Exception as exc:  # record it and go on: one rare GPU session should yield the rest
                traceback.print_exc(file=sys.stdout)
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            result["part_seconds"] = round(time.perf_counter() - t0, 1)
            result.setdefault("peak_gpu_mb", _peak_mb(device))
            report["parts"][name] = result
            _write_json(args.out / "gpu_check.json", report)  # partial results survive a kill
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peaks = [_max_peak(p) for p in report["parts"].values()]
    report["peak_gpu_mb"] = max(peaks, default=0.0)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = all(p["status"] != "failed" for p in report["parts"].values())
    _write_json(args.out / "gpu_check.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "parts"}))
    for name, part in report["parts"].items():
        print(
            f"{name}: {part['status']} ({part.get('part_seconds', 0)} s){' - ' + part.get('error', part.get('reason', '')) if part['status'] != 'ok' else ''}"
        )
    return 0 if report["ok"] else 1


def _max_peak(value) -> float:
    """The largest `peak_gpu_mb` anywhere in a part's (nested) result."""
    if isinstance(value, dict):
        own = [float(v) for k, v in value.items() if k == "peak_gpu_mb" and isinstance(v, (int, float))]
        return max(own + [_max_peak(v) for v in value.values() if isinstance(v, dict)], default=0.0)
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
