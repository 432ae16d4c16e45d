"""What the Prefect UI shows: live progress, the per-iteration table, a summary with the plot.

Image artifacts only link to a URL the browser must reach, and these machines have no public
URL; the plot is therefore embedded in the markdown artifact as a base64 `data:` image, which the
UI renders inline with no network access.

Keyed artifacts form one history per key in the UI, so every key carries the run directory
(`run_key`): runs never share a key, and the artifacts of one run directory stay one history
across the flow runs that continue it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from slugify import slugify

from selftrain.report import TABLE_COLUMNS, format_value, summary_markdown
from selftrain.runstore import RunStore

SLUG_CHARS = 40  # keys stay readable in the UI's lists; the digest keeps them unique


def run_key(root: str | Path) -> str:
    """The run directory's part of every artifact key: `NAME-DIGEST`.

    NAME is the directory's name as python-slugify writes it (lowercase ASCII letters, digits and
    dashes, as Prefect requires; at most 40 characters; `run` when nothing is left);
    DIGEST is 8 hex digits of the sha256 of its absolute path, so two run directories with the
    same name in different folders (every test's `tmp_path/run`, `runs/demo` of two checkouts)
    still get different keys, while every flow run that continues the same directory reuses them.
    """
    path = Path(root).resolve()
    name = slugify(path.name, max_length=SLUG_CHARS) or "run"
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


class ProgressArtifact:
    """An engine progress hook that keeps a Prefect progress artifact current (at most every 2 s)."""

    def __init__(self, description: str, min_interval_s: float = 2.0):
        self.id = create_progress_artifact(progress=0.0, description=description)
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if step < total and now - self._last < self.min_interval_s:
            return
        self._last = now
        update_progress_artifact(artifact_id=self.id, progress=100.0 * step / total)


def publish_run_report(store: RunStore, flow_name: str) -> None:
    rows = store.status_rows()
    name = run_key(store.root)
    create_table_artifact(
        key=f"{slugify(flow_name)}-{name}-metrics",
        table=[{head: format_value(key, r.get(key)) for key, head in TABLE_COLUMNS} for r in rows],
        description=f"Per-iteration metrics of {store.root}",
    )
    summary = summary_markdown(rows, flow_name, store.root)
    create_markdown_artifact(
        key=f"{slugify(flow_name)}-{name}-summary", markdown=summary, description="Run summary"
    )


def publish_iteration_summary(store: RunStore, iteration: int, extra: dict[str, Any] | None = None) -> None:
    card = store.card(iteration)
    lines = [
        f"## Iteration {iteration}: {card['role']} `{card['architecture']}`",
        "",
        f"- parameters: {card['params']:,}; FLOPs per image: {card.get('flops') or 0:,}",
        f"- val top-1: {format_value('val_accuracy', card['val_accuracy'])}; test top-1: {format_value('test_accuracy', card['test_accuracy'])}",
        f"- best step (chosen on val): {card['best_step']} of {card['steps']}; skipped samples: {card['skipped_samples']}",
    ]
    if card.get("unlabeled_batch") is not None:
        magnitude = card.get("randaugment_magnitude")
        lines.append(
            f"- batches: {card['labeled_batch']} labeled + {card['unlabeled_batch']} unlabeled "
            f"(ratio {card['unlabeled_ratio']})"
            + (f"; RandAugment magnitude {magnitude}" if magnitude else "")
        )
    if card.get("pseudo_label_accuracy") is not None:
        lines.append(
            f"- accuracy of the pseudo-labels it learned from: {format_value('pseudo_label_accuracy', card['pseudo_label_accuracy'])}"
        )
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    create_markdown_artifact(
        key=f"{run_key(store.root)}-iter-{iteration}",
        markdown="\n".join(lines),
        description=f"Iteration {iteration} summary",
    )
