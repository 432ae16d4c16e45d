"""How right each model of a run would label the unlabeled images, under each labeling rule.

    .venv/bin/python benchmarks/label_quality.py RUN_DIR [RUN_DIR ...] [--keep-fraction 0.45] [--json]

Needs a data set imported with report-only truth for its unlabeled images (`data import
--unlabeled-truth`, as `benchmarks/quality.py` does); never trains. For every trained iteration
of each run, the model labels every unlabeled image as labeling does (un-noised, eval mode),
plain and averaged with the mirror image (`pseudolabel.hflip_average`), and prints the share
right over all images and among those each filter keeps: the fixed confidence threshold of the
run's config, and the most confident `--keep-fraction` (`pseudolabel.keep_fraction`). This is how
a filter is chosen without a training run per candidate (docs/results.md, 2026-11-30 session 7).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the repository, not benchmarks/, first

from pseudolabel.balance import keep_fraction_threshold  # noqa: E402
from pseudolabel.teacher_model import load_teacher  # noqa: E402
from selftrain.data.dataset_info import load_dataset  # noqa: E402
from selftrain.data.stream import SplitStream, make_loader  # noqa: E402
from selftrain.runstore import RunStore  # noqa: E402
from selftrain.transforms import eval_transform  # noqa: E402


def _share_right(right: np.ndarray, kept: np.ndarray) -> dict[str, float | int]:
    return {"accuracy": round(float(right[kept].mean()) if kept.any() else 0.0, 4), "count": int(kept.sum())}


def label_quality(run_dir: Path, keep_fraction: float) -> list[dict]:
    store = RunStore(run_dir)
    cfg = store.config()
    dataset = load_dataset(store.data_dir())
    truth = dataset.unlabeled_truth()
    if truth is None:
        raise SystemExit(
            f"{dataset.index_path}: no report-only truth for the unlabeled images; import with --unlabeled-truth"
        )
    cpu = torch.device("cpu")
    rows = []
    k = 0
    while store.stage_state(k, "train") == "done":
        teacher = load_teacher(store, k, dataset, cpu)
        stream = SplitStream(
            dataset, "unlabeled", eval_transform(teacher.image_size, teacher.in_chans), with_keys=True
        )
        probs = {False: [], True: []}
        labels = []
        for x, keys in make_loader(stream, 256, 0, cpu):
            for flip in probs:
                probs[flip].append(teacher.probabilities(x, cfg.pseudolabel.temperature, hflip=flip))
            labels += [truth[key] for key in keys]
        y = np.asarray(labels)
        row = {"run": str(run_dir), "iteration": k, "model": teacher.architecture}
        for flip, parts in probs.items():
            p = torch.cat(parts)
            conf, cls = (t.numpy() for t in p.max(1))
            right = cls == y
            top = conf >= keep_fraction_threshold(conf, keep_fraction)
            row["hflip" if flip else "plain"] = {
                "all": _share_right(right, np.ones_like(right)),
                "threshold": _share_right(right, conf >= cfg.pseudolabel.confidence_threshold),
                "keep_fraction": _share_right(right, top),
            }
        rows.append(row)
        k += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run directories (their data set needs report-only truth)"
    )
    parser.add_argument("--keep-fraction", type=float, default=0.45, help="share kept by the second filter")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [row for run in args.runs for row in label_quality(run, args.keep_fraction)]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(
        f"{'run':<28} it  {'model':<16} rule    all      threshold (n)      top {args.keep_fraction:.0%} (n)"
    )
    for r in rows:
        for rule in ("plain", "hflip"):
            q = r[rule]
            print(
                f"{Path(r['run']).name:<28} {r['iteration']:<3} {r['model']:<16} {rule:<6} "
                f"{q['all']['accuracy']:7.2%}  {q['threshold']['accuracy']:7.2%} ({q['threshold']['count']:>5})  "
                f"{q['keep_fraction']['accuracy']:7.2%} ({q['keep_fraction']['count']:>5})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
