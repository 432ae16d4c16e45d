"""One iteration's pseudo-labeling stage in one process: label the shards, then select.

    selftrain pseudolabel --run-dir runs/demo --iteration 0

is `pseudolabel_iteration(RunStore("runs/demo"), 0)`. Given a subset of shards it labels only
those, and writes the selection only once every shard has a complete sidecar; so several
processes can each label a group of shards, and whichever completes the set writes the selection.
A flow that fans out should call `label_shards` per group and `write_selection` once instead.
The manifest records the stage as done only when the selection is written.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pseudolabel.label_shards import label_shards, pseudo_dir
from pseudolabel.selection import label_spec, missing_sidecars, write_selection
from selftrain.data.dataset_info import load_dataset
from selftrain.device import resolve_device
from selftrain.runstore import RunStore

log = logging.getLogger("pseudolabel")

STAGE = "pseudolabel"


def pseudolabel_iteration(
    store: RunStore,
    iteration: int,
    *,
    shards: list[int] | None = None,
    device: torch.device | None = None,
    skip_corrupt: bool | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Label `shards` (all when None) with iteration `iteration`'s model; select when all are done.

    Reads the run's config (section `pseudolabel`) and data set from the run directory. Returns
    `{"labeling": ..., "selection": stats or None, "missing_shards": [...], "pseudo_dir": ...}`.
    """
    store.manifest()  # a clear error when RUN is not a run directory
    cfg = store.config()
    dataset = load_dataset(store.data_dir())
    device = device or resolve_device(cfg.device)
    labeling = label_shards(
        store, dataset, iteration, shards, cfg, device, skip_corrupt=skip_corrupt, num_workers=num_workers
    )
    missing = missing_sidecars(store, dataset, iteration, label_spec(store, iteration, cfg))
    selection = None
    if missing:
        log.info("%d shards still unlabeled; the selection is written once all are labeled", len(missing))
    else:
        selection = write_selection(store, dataset, iteration, cfg)
        store.mark_stage(
            iteration,
            STAGE,
            "done",
            artifacts=selection["artifacts"],
            teacher_weights_sha256=labeling.spec.teacher_weights_sha256,
            images=selection["images"],
            selected_copies=selection["selected_copies"],
        )
    return {
        "labeling": labeling.as_dict(),
        "selection": selection,
        "missing_shards": missing,
        "pseudo_dir": str(pseudo_dir(store, iteration)),
    }
