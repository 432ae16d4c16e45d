"""What a pseudo-labeling pass produced, in numbers and one picture.

Per-class counts before the filter, after it and after balancing; the confidence histogram (also
drawn to `confidence.png`); and, where the data set knows the true labels of its unlabeled split
(digits does; a real unlabeled set does not), pseudo-label accuracy before filtering, after it and
after balancing (weighted by copies: the labels as the student will see them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.balance import Selection
from selftrain import atomic

HISTOGRAM_BINS = 20


def confidence_histogram(conf: np.ndarray, confident: np.ndarray) -> dict[str, list]:
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    return {
        "bin_edges": [round(float(e), 4) for e in edges],
        "all": np.histogram(conf, bins=edges)[0].tolist(),
        "confident": np.histogram(conf[confident], bins=edges)[0].tolist(),
    }


def pseudo_label_accuracy(
    keys: Sequence[str], cls: np.ndarray, truth: dict[str, int], weights: np.ndarray | None = None
) -> dict[str, float | int] | None:
    """Share of pseudo-labels equal to the true label, over the keys whose truth is known."""
    known = np.array([k in truth for k in keys], dtype=bool)
    if not known.any():
        return None
    true = np.array([truth[k] for k, ok in zip(keys, known, strict=True) if ok])
    hit = (np.asarray(cls)[known] == true).astype(np.float64)
    w = np.ones_like(hit) if weights is None else np.asarray(weights, dtype=np.float64)[known]
    return {"accuracy": round(float((hit * w).sum() / w.sum()), 6), "count": int(known.sum())}


def selection_stats(
    keys: Sequence[str],
    cls: np.ndarray,
    conf: np.ndarray,
    selection: Selection,
    classes: list[str],
    truth: dict[str, int] | None,
    skipped: int = 0,
) -> dict[str, Any]:
    keys = list(keys)
    confident = np.asarray(conf) >= selection.threshold

    def per_class(counts: np.ndarray) -> dict[str, int]:
        return {name: int(n) for name, n in zip(classes, counts, strict=True)}

    accuracy = None
    if truth:
        kept_keys = [keys[i] for i in selection.index]
        accuracy = {
            "before_filter": pseudo_label_accuracy(keys, cls, truth),
            "after_filter": pseudo_label_accuracy(
                [k for k, c in zip(keys, confident, strict=True) if c], np.asarray(cls)[confident], truth
            ),
            "after_balance": pseudo_label_accuracy(
                kept_keys, np.asarray(cls)[selection.index], truth, weights=selection.copies
            ),
        }
    return {
        "images": len(keys),
        "skipped": skipped,
        "confident": int(confident.sum()),
        "selected_images": len(selection.index),
        "selected_copies": int(selection.copies.sum()),
        "images_per_class": selection.images_per_class,
        "images_per_class_from": selection.images_per_class_from,
        "confidence_threshold": selection.threshold,
        "per_class": {
            "predicted": per_class(selection.predicted_counts),
            "confident": per_class(selection.confident_counts),
            "selected": per_class(selection.selected_counts),
            "selected_distinct": per_class(selection.kept_counts),
        },
        "confidence_histogram": confidence_histogram(np.asarray(conf), confident),
        "accuracy": accuracy,
    }


def plot_confidence(path: Path, stats: dict[str, Any], title: str) -> None:
    """Confidence histogram (all vs kept by the filter) and per-class counts, as a PNG.

    Built on matplotlib's object API with the Agg canvas: no pyplot global state, no display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = stats["confidence_histogram"]
    edges = np.array(hist["bin_edges"])
    width = np.diff(edges)
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.bar(edges[:-1], hist["all"], width=width, align="edge", color="#bbbbbb", label="all images")
    left.bar(
        edges[:-1], hist["confident"], width=width, align="edge", color="#3b75af", label="kept by the filter"
    )
    left.axvline(
        stats["confidence_threshold"],
        color="#c0392b",
        linestyle="--",
        label=f"threshold {stats['confidence_threshold']:g}",
    )
    left.set_xlabel("teacher confidence (top probability)")
    left.set_ylabel("images")
    left.set_xlim(0, 1)
    left.legend(loc="upper left")

    counts = stats["per_class"]
    names = list(counts["predicted"])
    x = np.arange(len(names))
    series = [("predicted", "#bbbbbb"), ("confident", "#3b75af"), ("selected", "#2e8b57")]
    if len(names) <= 30:
        w = 0.27
        for j, (series_name, color) in enumerate(series):
            right.bar(
                x + (j - 1) * w, list(counts[series_name].values()), width=w, color=color, label=series_name
            )
        right.set_xticks(x, names)
    else:  # many classes: lines read better than thousands of bars
        for series_name, color in series:
            right.plot(x, list(counts[series_name].values()), color=color, linewidth=0.8, label=series_name)
    right.axhline(
        stats["images_per_class"],
        color="#c0392b",
        linestyle="--",
        linewidth=0.8,
        label=f"N = {stats['images_per_class']}",
    )
    right.set_xlabel("predicted class")
    right.set_ylabel("images (selected: with copies)")
    right.legend(loc="upper right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
