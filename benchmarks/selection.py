"""Which weights to keep when val is small: best-on-val against the last weights, on real photos.

    .venv/bin/python benchmarks/selection.py [--json] [--seeds 3] [--val-fraction 0.1 0.2]

For each val fraction, imports the CIFAR-10 dev photos (25 labels per class, 30% test, the rest
unlabeled) with `data import --val-fraction F`, then trains the default teacher (the photo recipe)
for each seed and evaluates val *and* test at every evaluation step. Test is only recorded, never
used: it tells what each selection rule would have scored. Rules compared: `best_val` (the
evaluation with the best val accuracy, the last one on ties), `last` (the final weights), and the
oracle (the best test accuracy seen, an upper bound no rule reaches). JSON keys per val fraction:
`val_images`, `best_val_test_mean`, `last_test_mean`, `oracle_test_mean` (and `_std`), `runs`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the repository, not benchmarks/, first

import selftrain.labeled_loop as labeled_loop  # noqa: E402
import selftrain.stage as stage  # noqa: E402
import teachers.supervised as supervised  # noqa: E402
from selftrain.data.arrays import load_npz_images, write_imagefolder  # noqa: E402
from selftrain.data.dataset_info import load_dataset  # noqa: E402
from selftrain.data.imagefolder import import_imagefolder  # noqa: E402
from selftrain.runstore import RunStore  # noqa: E402

DEV_PHOTOS = ROOT.parent / "shared" / "data" / "cifar10-dev-2796.npz"


def train_and_trace(data: Path, run: Path, seed: int, overrides: list[str]) -> list[tuple[float, float]]:
    """(val, test) accuracy at every evaluation of one teacher run."""
    trace: list[tuple[float, float]] = []
    plain = stage.val_scorer

    def recording_scorer(model, dataset, cfg, device, size):
        score, skipped = plain(model, dataset, cfg, device, size)

        def both() -> float:
            val = score()
            test, _ = stage.evaluate_split(model, dataset, "test", cfg, device, size)
            trace.append((val, test.top1))
            return val

        return both, skipped

    labeled_loop.val_scorer = recording_scorer  # the labeled-only loop looks it up by this name
    try:
        store = RunStore(run)
        cfg = store.open(data, None, [f"seed={seed}", *overrides])
        supervised.train_teacher(store, load_dataset(data), cfg, torch.device("cpu"))
    finally:
        labeled_loop.val_scorer = plain
    if not trace:
        raise SystemExit(
            "selection: the teacher was never evaluated through labeled_loop.val_scorer; update the hook"
        )
    return trace


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val-fraction", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--data", type=Path, default=DEV_PHOTOS, help="an .npz of labeled photos")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = p.parse_args()
    if not args.data.is_file():
        print(f"selection: {args.data} not found; nothing to measure", file=sys.stderr)
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="selftrain-selection-"))
    images, labels, classes = load_npz_images(args.data)
    write_imagefolder(images, labels, classes, work / "tree", labels_per_class=25, seed=0)
    results: dict = {}
    for fraction in args.val_fraction:
        data = work / f"photos-val{fraction}"
        import_imagefolder(labeled=work / "tree" / "labeled", unlabeled=work / "tree" / "unlabeled",
                           test=work / "tree" / "test", out=data, val_fraction=fraction)  # fmt: skip
        runs = []
        for seed in range(args.seeds):
            trace = train_and_trace(data, work / f"run-{fraction}-{seed}", seed, args.overrides)
            best = max(range(len(trace)), key=lambda i: (trace[i][0], i))
            runs.append({"seed": seed, "best_val": trace[best][1], "last": trace[-1][1],
                         "oracle": max(t for _, t in trace), "trace": trace})  # fmt: skip
        row: dict = {"val_images": load_dataset(data).split("val").total, "runs": runs}
        for rule in ("best_val", "last", "oracle"):
            values = [r[rule] for r in runs]
            row[f"{rule}_test_mean"] = round(statistics.fmean(values), 4)
            row[f"{rule}_test_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        results[str(fraction)] = row
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'val fraction':>12} {'val images':>10} {'best on val':>14} {'last weights':>14} {'oracle':>14}")
    for fraction, row in results.items():
        cells = [
            f"{row[f'{r}_test_mean'] * 100:.2f} ± {row[f'{r}_test_std'] * 100:.2f}"
            for r in ("best_val", "last", "oracle")
        ]
        print(f"{fraction:>12} {row['val_images']:>10} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
