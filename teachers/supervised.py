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
import torch.nn.functional as F

from selftrain import distributed
from selftrain.config import RunConfig, TeacherConfig, TrainConfig
from selftrain.data.dataset_info import Dataset
from selftrain.data.labeled_batches import labeled_batches
from selftrain.device import autocast, prepare_model, seed_everything, to_device
from selftrain.engine import ProgressHook, TrainLoop
from selftrain.models import build_model
from selftrain.noise import noised_transform
from selftrain.optim import build_optimizer, build_scheduler
from selftrain.runstore import RunStore
from selftrain.stage import keeps_best, train_and_record, val_scorer
from selftrain.transforms import train_transform

log = logging.getLogger("selftrain.teacher")


def supervised_step(
    model, optimizer, scheduler, batch, *, label_smoothing: float, device: torch.device
) -> dict:
    x, y = to_device(batch[0], device), batch[1].to(device)
    with autocast(device):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return {"loss": loss.item(), "train_accuracy": (logits.argmax(1) == y).float().mean().item()}


def supervised_transform(size: int, channels: int, train: TrainConfig):
    """The weak augmentation, plus RandAugment where the config asks for it (the teacher's)."""
    if isinstance(train, TeacherConfig) and train.randaugment_magnitude:
        return noised_transform(
            size, channels, train.augment, train.randaugment_magnitude, train.randaugment_ops
        )
    return train_transform(size, channels, train.augment)


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
    size, chans = cfg.data.image_size, dataset.info.channels
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    batches, streams = labeled_batches(
        dataset, cfg, train, device, seed, supervised_transform(size, chans, train), batch_field
    )
    trained = distributed.wrap(model, device)  # the bare `model` is what is evaluated and saved
    score, val_skipped = val_scorer(model, dataset, cfg, device, size)
    loop = TrainLoop(
        modules={"model": model},
        optimizers={"model": optimizer},
        schedulers={"model": scheduler},
        step_fn=lambda batch, step: supervised_step(
            trained, optimizer, scheduler, batch, label_smoothing=train.label_smoothing, device=device
        ),
        batches=batches,
        evaluate=score,
        selected="model",
        steps=train.steps,
        eval_every=train.eval_every,
        checkpoint_every=train.checkpoint_every,
        checkpoint_dir=store.iter_dir(iteration) / "checkpoints",
        desc=desc,
        progress_hooks=progress_hooks or [],
        evaluate_at_start=evaluate_at_start,
        keep_best=keeps_best(train.selection, dataset, batch_field.removesuffix("batch_size") + "selection"),
        samples_per_step=train.batch_size,
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
