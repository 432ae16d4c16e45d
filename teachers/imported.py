"""Bring your own teacher: an existing model registered as iteration 0 of a run.

    selftrain teacher import --data data/digits --run-dir runs/byo --weights teacher.safetensors --model resnet10t

The weights must be a classifier for this data set (every tensor of `--model` built for its
classes and channels, with its shape); they are read without unpickling, evaluated on val and test
like a trained teacher, and saved with a model card, so pseudo-labeling and the students continue
from them as from `selftrain teacher train`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from selftrain import atomic
from selftrain.config import RunConfig
from selftrain.data.dataset_info import Dataset
from selftrain.device import prepare_model
from selftrain.errors import SelftrainError
from selftrain.evaluate import describe
from selftrain.modelcard import build_card
from selftrain.models import build_model
from selftrain.pretrained import read_weights, require_exact_fit
from selftrain.runstore import RunStore
from selftrain.stage import evaluate_split

log = logging.getLogger("selftrain.teacher")


def import_teacher(
    store: RunStore, dataset: Dataset, cfg: RunConfig, device: torch.device, weights: Path, model_name: str
) -> dict:
    if store.stage_state(0, "train") == "done":
        raise SelftrainError(
            f"{store.iter_dir(0)}: this run already has a teacher; import into a new --run-dir"
        )
    dataset.check_files(["val", "test"])
    info = dataset.info
    model = build_model(model_name, num_classes=info.num_classes, in_chans=info.channels, field="--model")
    require_exact_fit(model, read_weights(weights, "--weights"), str(weights), model_name)
    model = prepare_model(model, device).eval()
    size = cfg.data.image_size
    store.mark_stage(0, "train", "running", role="teacher", model=model_name)
    try:
        val, val_skipped = evaluate_split(model, dataset, "val", cfg, device, size)
        test, test_skipped = evaluate_split(model, dataset, "test", cfg, device, size)
        card = build_card(
            iteration=0,
            role="teacher",
            architecture=model_name,
            model=model,
            dataset=dataset,
            image_size=size,
            val=val,
            test=test,
            history=[],
            best_step=0,
            steps=0,
            skipped_samples=val_skipped + test_skipped,
            seed=cfg.seed,
            device=device,
            extra={"imported_from": str(weights), "imported_sha256": atomic.sha256_file(weights)},
        )
        artifacts = store.save_model(0, model.state_dict(), card)
    except BaseException as exc:
        store.mark_stage(0, "train", "failed", error=str(exc)[:500])
        raise
    store.mark_stage(0, "train", "done", artifacts=artifacts)
    log.info(
        "imported teacher %s from %s: val %s test %s",
        model_name,
        weights,
        describe(val.top1),
        describe(test.top1),
    )
    return card
