"""From complete sidecars to the selection manifest: which images the student trains on.

    RUN/iter-K/pseudo/selection.json   key -> copies, the settings, the sidecars it was built from
                                       (sha256 each), and the stats of `pseudolabel.report`
    RUN/iter-K/pseudo/confidence.png   confidence histogram and per-class counts

Runs once per iteration after every shard is labeled (the fan-in after `label_shards`' fan-out).
It reads only (key, class, confidence) from the sidecars: a few bytes per image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.balance import filter_and_balance
from pseudolabel.label_shards import SPLIT, LabelSpec, pseudo_dir, shard_file_name
from pseudolabel.report import plot_confidence, selection_stats
from pseudolabel.sidecar import incomplete_reason, meta_path, read_meta, read_sidecar, sidecar_path
from selftrain import atomic
from selftrain.config import RunConfig
from selftrain.data.dataset_info import Dataset
from selftrain.errors import SelftrainError
from selftrain.runstore import RunStore

SELECTION = "selection.json"
PLOT = "confidence.png"
FORMAT_VERSION = 1


def label_spec(store: RunStore, iteration: int, cfg: RunConfig) -> LabelSpec:
    """The spec sidecars of `iteration` must have been made with, from the model card and config."""
    return LabelSpec.from_card(store.card(iteration), cfg.pseudolabel)


def missing_sidecars(store: RunStore, dataset: Dataset, iteration: int, spec: LabelSpec) -> list[str]:
    """Unlabeled shards without a finished sidecar made as `spec` says (skipped samples allowed)."""
    out_dir = pseudo_dir(store, iteration)
    return [
        shard_file_name(e)
        for e in dataset.split(SPLIT).shards
        if incomplete_reason(out_dir, shard_file_name(e), spec.expected_meta(e), allow_skipped=True)
        is not None
    ]


def write_selection(store: RunStore, dataset: Dataset, iteration: int, cfg: RunConfig) -> dict[str, Any]:
    """Filter and balance all of iteration `iteration`'s pseudo-labels; write selection + plot.

    Returns the stats (also inside selection.json) plus the artifacts' sha256.
    """
    spec = label_spec(store, iteration, cfg)
    out_dir = pseudo_dir(store, iteration)
    missing = missing_sidecars(store, dataset, iteration, spec)
    if missing:
        shown = " ".join(Path(m).stem for m in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise SelftrainError(
            f"{out_dir}: {len(missing)} unlabeled shards have no complete sidecar for this teacher; label them "
            f"first: `selftrain pseudolabel --run-dir {store.root} --iteration {iteration} --shards {shown}`"
        )
    keys: list[str] = []
    cls_parts: list[np.ndarray] = []
    conf_parts: list[np.ndarray] = []
    sidecars: dict[str, str] = {}
    skipped = 0
    for entry in dataset.split(SPLIT).shards:
        name = shard_file_name(entry)
        meta = read_meta(meta_path(out_dir, name)) or {}
        labels = read_sidecar(sidecar_path(out_dir, name), spec.num_classes, spec.mode)
        keys += labels.keys
        cls_parts.append(labels.cls)
        conf_parts.append(labels.conf)
        sidecars[meta["sidecar"]] = meta["sidecar_sha256"]
        skipped += int(meta.get("skipped", 0))
    cls = np.concatenate(cls_parts) if cls_parts else np.zeros(0, np.int32)
    conf = np.concatenate(conf_parts) if conf_parts else np.zeros(0, np.float32)

    pl = cfg.pseudolabel
    selection = filter_and_balance(
        keys,
        cls,
        conf,
        spec.num_classes,
        pl.confidence_threshold,
        pl.images_per_class,
        seed=cfg.seed + iteration,
        keep_fraction=pl.keep_fraction,
    )
    stats = selection_stats(
        keys, cls, conf, selection, dataset.info.classes, dataset.unlabeled_truth(), skipped
    )
    stats["plot"] = PLOT
    plot_confidence(
        out_dir / PLOT,
        stats,
        title=f"iteration {iteration}: {stats['images']} images, {stats['confident']} above "
        f"{selection.threshold:.3g}, N = {selection.images_per_class} per class",
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "teacher_weights_sha256": spec.teacher_weights_sha256,
        "mode": spec.mode,
        "temperature": spec.temperature,
        "hflip_average": spec.hflip_average,
        "top_k": spec.top_k,
        "confidence_threshold": pl.confidence_threshold,
        "keep_fraction": pl.keep_fraction,
        "threshold_applied": selection.threshold,
        "images_per_class": selection.images_per_class,
        "images_per_class_from": selection.images_per_class_from,
        "seed": selection.seed,
        "sidecars": sidecars,
        "stats": stats,
        "copies": selection.copies_by_key(keys),
    }
    selection_sha = atomic.write_json(out_dir / SELECTION, manifest)
    return {
        **stats,
        "artifacts": {SELECTION: selection_sha, PLOT: atomic.sha256_file(out_dir / PLOT)},
    }


def read_selection(store: RunStore, iteration: int) -> dict[str, Any]:
    """The selection manifest of `iteration` (for the student's data loader)."""
    path = pseudo_dir(store, iteration) / SELECTION
    if not path.is_file():
        raise SelftrainError(
            f"{path}: no selection yet; run `selftrain pseudolabel --run-dir {store.root} --iteration {iteration}`"
        )
    relabel = f"run `selftrain pseudolabel --run-dir {store.root} --iteration {iteration}` to label it again"
    data = path.read_bytes()
    recorded = store.iteration(iteration).get("stages", {}).get("pseudolabel", {}).get("artifacts", {})
    if recorded.get(SELECTION) and hashlib.sha256(data).hexdigest() != recorded[SELECTION]:
        raise SelftrainError(f"{path}: damaged (sha256 differs from {store.manifest_path}); {relabel}")
    try:
        selection = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SelftrainError(f"{path}: unreadable; delete it and {relabel}") from None
    # The sidecars the selection was built from are read again by the student: same bytes or nothing.
    for name, sha in selection.get("sidecars", {}).items():
        sidecar = path.parent / name
        if not sidecar.is_file() or atomic.sha256_file(sidecar) != sha:
            raise SelftrainError(f"{sidecar}: missing or damaged (sha256 differs from {path}); {relabel}")
    return selection
