"""What `data import --max-side` saves when users bring camera photos: training input at 12 megapixels
stored whole against the same photos stored at the default 512 pixels.

    .venv/bin/python benchmarks/stored_size.py            # a table
    .venv/bin/python benchmarks/stored_size.py --json     # one JSON object

Builds, in a temporary folder, an ImageFolder tree of real photos at a phone camera's size: dev
CIFAR-10 photos (`../shared/data/cifar10-dev-2796.npz`; random pixels without it) enlarged to
4032x3024 and saved as JPEG (quality 90), then imports it twice through `selftrain data import`:
with `--max-side 0` (every original kept, what the import did before) and with the default. For each
data set it times the import and an endless training stream over the unlabeled split, as a
student draws it: decode, then the photo recipe's weak augmentation and RandAugment at 128 pixels
(the largest size the recipe picks), two epochs, one reader, the stream's decoded-image cache at
its real budget (256 MB a reader: about 7 whole camera photos, or about 400 at 512 pixels).
`ratio` = images/s stored whole / images/s at 512: the share of the input speed camera photos
keep without the cap. Enlarged photos are smoother than real ones and compress better; decoding
costs about the same per pixel either way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from commands.cli import main as selftrain  # noqa: E402
from selftrain.config import load_config  # noqa: E402
from selftrain.data.dataset_info import DEFAULT_MAX_SIDE, load_dataset  # noqa: E402
from selftrain.data.stream import SplitStream  # noqa: E402
from selftrain.noise import noised_transform  # noqa: E402

DEV_PHOTOS = ROOT.parent / "shared" / "data" / "cifar10-dev-2796.npz"
CAMERA = (4032, 3024)  # a 12-megapixel phone photo, landscape
SIZE = 128  # the largest input size the photo recipe picks


def source_photos(n: int) -> list[np.ndarray]:
    if DEV_PHOTOS.is_file():
        with np.load(DEV_PHOTOS, allow_pickle=False) as f:
            return list(f["images"][:n])
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def write_tree(root: Path, photos: list[np.ndarray]) -> None:
    """Two classes with one labeled and one test photo each (the import needs them); the rest unlabeled."""
    for i, pixels in enumerate(photos):
        label = "cat" if i % 2 else "dog"
        folder = root / "train" / label if i < 2 else root / "test" / label if i < 4 else root / "unlabeled"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize(CAMERA, Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=90)


def import_tree(tree: Path, out: Path, max_side: int) -> float:
    start = time.perf_counter()
    args = ["data", "import", "--labeled", str(tree / "train"), "--unlabeled", str(tree / "unlabeled")]
    with contextlib.redirect_stdout(io.StringIO()):  # its summary lines; --json prints one object
        rc = selftrain([*args, "--test", str(tree / "test"), "--out", str(out), "--max-side", str(max_side)])
    if rc != 0:
        raise SystemExit(f"data import --max-side {max_side} failed (exit {rc})")
    return time.perf_counter() - start


def stream_rate(data: Path, epochs: int) -> float:
    """Images/s of an endless student stream over the unlabeled split, for `epochs` epochs."""
    cfg = load_config(None, recipe="photos")
    transform = noised_transform(
        SIZE, 3, cfg.student.augment, cfg.student.randaugment_magnitude[0], cfg.student.randaugment_ops
    )
    dataset = load_dataset(data)
    n = dataset.count("unlabeled") * epochs
    stream = iter(SplitStream(dataset, "unlabeled", transform, repeat=True, shuffle=True, seed=0))
    start = time.perf_counter()
    for _ in range(n):
        next(stream)
    return n / (time.perf_counter() - start)


def run(n_photos: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="stored-size-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_tree(tmp / "tree", source_photos(n_photos))
        build_s = time.perf_counter() - t0
        rows = {}
        for name, max_side in (("originals", 0), ("capped", DEFAULT_MAX_SIDE)):
            out = tmp / name
            import_s = import_tree(tmp / "tree", out, max_side)
            stored = sum(p.stat().st_size for p in out.glob("*.tar"))
            rows[name] = {
                "max_side": max_side,
                "import_s": round(import_s, 2),
                "stored_mb": round(stored / 2**20, 1),
                "stream_images_per_s": round(stream_rate(out, epochs), 2),
            }
    return {
        "photos": n_photos,
        "unlabeled": n_photos - 4,
        "camera_size": list(CAMERA),
        "train_size": SIZE,
        "epochs": epochs,
        "build_s": round(build_s, 1),
        "source": "dev photos" if DEV_PHOTOS.is_file() else "random pixels",
        **rows,
        "ratio": round(rows["originals"]["stream_images_per_s"] / rows["capped"]["stream_images_per_s"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--photos", type=int, default=40, help="camera photos built (default 40; 4 go to labeled/test)"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="passes of the stream over the unlabeled photos"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.photos < 5 or args.epochs < 1:
        parser.error("--photos must be at least 5 and --epochs at least 1")
    result = run(args.photos, args.epochs)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['unlabeled']} unlabeled {CAMERA[0]}x{CAMERA[1]} JPEGs ({result['source']}), student stream at {SIZE} px"
    )
    print(f"{'stored':<12} {'max side':>8} {'import s':>9} {'shards MB':>10} {'images/s':>9}")
    for name in ("originals", "capped"):
        r = result[name]
        print(
            f"{name:<12} {r['max_side']:>8} {r['import_s']:>9} {r['stored_mb']:>10} {r['stream_images_per_s']:>9}"
        )
    print(f"ratio (originals / capped images/s): {result['ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
