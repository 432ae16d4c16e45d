"""Supervised teacher: a timm model trained on the labeled split, selected on val, tested on test.

This is iteration 0 of Noisy Student (Xie et al. 2020, Algorithm 1 step 1) and the supervised
baseline every semi-supervised result is compared with. Run it with

    selftrain teacher train --data data/digits --run-dir runs/demo
    selftrain teacher train --data data/digits --run-dir runs/ddp --nproc-per-node 2   # torchrun

Under torchrun each rank runs `train_teacher` with its share of every global batch (DDP averages
the gradients, so the update is the one-process update on the whole batch).
"""

from __future__ import annotations

import logging

import torch

from selftrain.config import RunConfig, TrainConfig
from selftrain.data.dataset_info import Dataset
from selftrain.device import prepare_model, seed_everything
from selftrain.engine import ProgressHook
from selftrain.labeled_loop import labeled_loop
from selftrain.models import build_model
from selftrain.runstore import RunStore
from selftrain.stage import train_and_record

log = logging.getLogger("selftrain.teacher")


def train_teacher(
    store: RunStore,
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    progress_hooks: list[ProgressHook] | None = None,
    iteration: int = 0,
) -> dict:
    """Train, select on val, test, save `iter-000/`; a killed run resumes from its last checkpoint."""
    train = cfg.teacher
    dataset.check_files(["labeled", "val", "test"])
    seed_everything(cfg.seed + iteration)
    chans = dataset.info.channels
    model = build_model(
        train.model,
        num_classes=dataset.info.num_classes,
        in_chans=chans,
        drop_rate=train.drop_rate,
        drop_path_rate=train.drop_path_rate,
        field="teacher.model",
    )
    card_extra = {}
    if train.init_weights:
        from selftrain.atomic import sha256_file
        from selftrain.pretrained import init_backbone, read_weights

        state = read_weights(train.init_weights, "teacher.init_weights")
        log.info(init_backbone(model, state, train.init_weights, dataset.info.num_classes))
        card_extra = {
            "init_weights": train.init_weights,
            "init_weights_sha256": sha256_file(train.init_weights),
        }
    return train_supervised(
        store,
        dataset,
        cfg,
        device,
        prepare_model(model, device),
        train,
        iteration=iteration,
        role="teacher",
        architecture=train.model,
        seed=cfg.seed + iteration,
        desc=f"teacher iter {iteration}",
        progress_hooks=progress_hooks,
        card_extra=card_extra,
        batch_field="teacher.batch_size",
    )


def train_supervised(
    store: RunStore,
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    model: torch.nn.Module,
    train: TrainConfig,
    *,
    iteration: int,
    role: str,
    architecture: str,
    seed: int,
    desc: str,
    progress_hooks: list[ProgressHook] | None = None,
    evaluate_at_start: bool = False,
    card_extra: dict | None = None,
    batch_field: str = "batch_size",
) -> dict:
    """Supervised training of `model` on the labeled split, recorded as `iteration` of the run.

    The teacher trains from scratch; MPL's finetune passes its trained student and
    `evaluate_at_start=True`, so its result is never worse on val than where it started.
    """
    size = cfg.data.image_size
    loop, streams, val_skipped = labeled_loop(
        dataset,
        cfg,
        device,
        model,
        train,
        image_size=size,
        seed=seed,
        desc=desc,
        checkpoint_dir=store.iter_dir(iteration) / "checkpoints",
        batch_field=batch_field,
        progress_hooks=progress_hooks,
        evaluate_at_start=evaluate_at_start,
    )
    return train_and_record(
        store=store,
        dataset=dataset,
        cfg=cfg,
        device=device,
        iteration=iteration,
        role=role,
        architecture=architecture,
        image_size=size,
        loop=loop,
        selected_model=model,
        val_skipped=val_skipped,
        train_streams=streams,
        card_extra=lambda: {"labeled_batch": train.batch_size, **(card_extra or {})},
    )
