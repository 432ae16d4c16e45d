"""Training on the labeled split alone: the loop a teacher trains with, and the one that finetunes
a trained student (MPL's last stage; a Noisy Student student's `student.finetune`).

It lives in the shared package because both training stages use it and neither may import the
other (import-linter's layers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from selftrain import distributed
from selftrain.config import RunConfig, TeacherConfig, TrainConfig
from selftrain.data.dataset_info import Dataset
from selftrain.data.labeled_batches import labeled_batches
from selftrain.data.stream import SplitStream
from selftrain.device import autocast, to_device
from selftrain.engine import ProgressHook, TrainLoop
from selftrain.mixing import mix_batch
from selftrain.noise import noised_transform
from selftrain.optim import build_optimizer, build_scheduler
from selftrain.stage import keeps_best, val_scorer
from selftrain.transforms import train_transform


def supervised_step(
    model,
    optimizer,
    scheduler,
    batch,
    *,
    label_smoothing: float,
    device: torch.device,
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """One step on a labeled batch; `mix` (Mixup/CutMix) turns it into images with soft targets."""
    x, y = to_device(batch[0], device), batch[1].to(device)
    target = y
    if mix is not None:
        x, target = mix(x, y)  # smoothing is in the soft targets
    with autocast(device):
        logits = model(x)
    loss = F.cross_entropy(
        logits.float(), target, label_smoothing=0.0 if mix is not None else label_smoothing
    )
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


def labeled_loop(
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    model: torch.nn.Module,
    train: TrainConfig,
    *,
    image_size: int,
    seed: int,
    desc: str,
    checkpoint_dir: Path,
    batch_field: str,
    progress_hooks: list[ProgressHook] | None = None,
    evaluate_at_start: bool = False,
) -> tuple[TrainLoop, list[SplitStream], list[int]]:
    """The loop, the training streams (for their skipped-sample counts) and val's skipped count.

    `model` is the bare module: it is what is evaluated and saved; DDP wraps it for the steps.
    """
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    transform = supervised_transform(image_size, dataset.info.channels, train)
    batches, streams = labeled_batches(dataset, cfg, train, device, seed, transform, batch_field)
    trained = distributed.wrap(model, device)
    score, val_skipped = val_scorer(model, dataset, cfg, device, image_size)
    mix = None
    if isinstance(train, TeacherConfig) and (train.mixup_alpha or train.cutmix_alpha):
        mix = functools.partial(
            mix_batch,
            seed=seed,
            mixup_alpha=train.mixup_alpha,
            cutmix_alpha=train.cutmix_alpha,
            num_classes=dataset.info.num_classes,
            label_smoothing=train.label_smoothing,
        )

    def step_fn(batch, step: int) -> dict:
        return supervised_step(
            trained,
            optimizer,
            scheduler,
            batch,
            label_smoothing=train.label_smoothing,
            device=device,
            # drawn per (stage seed, step): a resumed stage mixes as the uninterrupted one
            mix=None if mix is None else functools.partial(mix, step=step),
        )

    loop = TrainLoop(
        modules={"model": model},
        optimizers={"model": optimizer},
        schedulers={"model": scheduler},
        step_fn=step_fn,
        batches=batches,
        evaluate=score,
        selected="model",
        steps=train.steps,
        eval_every=train.eval_every,
        checkpoint_every=train.checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        desc=desc,
        progress_hooks=progress_hooks or [],
        evaluate_at_start=evaluate_at_start,
        keep_best=keeps_best(train.selection, dataset, batch_field.removesuffix("batch_size") + "selection"),
        samples_per_step=train.batch_size,
    )
    return loop, streams, val_skipped
