"""Supervised teacher: a timm model trained on the labeled split, selected on val, tested on test.

This is iteration 0 of Noisy Student (Xie et al. 2020, Algorithm 1 step 1) and the supervised
baseline every semi-supervised result is compared with. Run it with

    selftrain teacher train --data data/digits --run-dir runs/demo
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from selftrain.config import RunConfig, TrainConfig
from selftrain.data.dataset_info import Dataset
from selftrain.data.stream import SplitStream, make_loader
from selftrain.device import autocast, prepare_model, seed_everything, to_device
from selftrain.engine import ProgressHook, TrainLoop
from selftrain.evaluate import EvalResult, evaluate
from selftrain.modelcard import build_card
from selftrain.models import build_model
from selftrain.optim import build_optimizer, build_scheduler
from selftrain.runstore import RunStore
from selftrain.transforms import eval_transform, train_transform

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


def split_loader(dataset: Dataset, split: str, cfg: RunConfig, device: torch.device, batch_size: int = 256):
    """One deterministic pass over a labeled split (val or test)."""
    stream = SplitStream(
        dataset,
        split,
        eval_transform(cfg.data.image_size, dataset.info.channels),
        verify_checksums=cfg.data.verify_checksums,
        skip_corrupt=cfg.data.skip_corrupt,
    )
    return stream, make_loader(stream, batch_size, cfg.data.num_workers, device)


def evaluate_split(
    model, dataset: Dataset, split: str, cfg: RunConfig, device: torch.device
) -> tuple[EvalResult, int]:
    stream, loader = split_loader(dataset, split, cfg, device)
    return evaluate(model, loader, dataset.info.num_classes, device), stream.skipped.count


def labeled_batches(dataset: Dataset, cfg: RunConfig, train: TrainConfig, device, seed: int):
    """`start_sample -> iterator of batches`: the endless, resumable labeled stream."""
    streams: list[SplitStream] = []

    def batches(start_sample: int) -> Iterator:
        stream = SplitStream(
            dataset,
            "labeled",
            train_transform(cfg.data.image_size, dataset.info.channels, train.augment),
            repeat=True,
            shuffle=True,
            seed=seed,
            start_sample=start_sample,
            shuffle_buffer=cfg.data.shuffle_buffer,
            verify_checksums=cfg.data.verify_checksums,
            skip_corrupt=cfg.data.skip_corrupt,
        )
        streams.append(stream)
        return iter(make_loader(stream, train.batch_size, cfg.data.num_workers, device))

    return batches, streams


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
    model = build_model(
        train.model,
        num_classes=dataset.info.num_classes,
        in_chans=dataset.info.channels,
        drop_rate=train.drop_rate,
        drop_path_rate=train.drop_path_rate,
        field="teacher.model",
    )
    model = prepare_model(model, device)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    batches, streams = labeled_batches(dataset, cfg, train, device, seed=cfg.seed + iteration)
    val_skipped = [0]

    def val_score() -> float:
        result, skipped = evaluate_split(model, dataset, "val", cfg, device)
        val_skipped[0] = skipped
        return result.top1

    store.mark_stage(iteration, "train", "running", role="teacher", model=train.model)
    loop = TrainLoop(
        modules={"model": model},
        optimizers={"model": optimizer},
        schedulers={"model": scheduler},
        step_fn=lambda batch, step: supervised_step(
            model, optimizer, scheduler, batch, label_smoothing=train.label_smoothing, device=device
        ),
        batches=batches,
        evaluate=val_score,
        selected="model",
        steps=train.steps,
        eval_every=train.eval_every,
        checkpoint_every=train.checkpoint_every,
        checkpoint_dir=store.iter_dir(iteration) / "checkpoints",
        samples_per_step=train.batch_size,
        desc=f"teacher iter {iteration}",
        progress_hooks=progress_hooks or [],
    )
    try:
        result = loop.run()
        model.load_state_dict(result.best_state)
        val, _ = evaluate_split(model, dataset, "val", cfg, device)
        test, test_skipped = evaluate_split(model, dataset, "test", cfg, device)
        skipped = sum(s.skipped.count for s in streams) + val_skipped[0] + test_skipped
        card = build_card(
            iteration=iteration,
            role="teacher",
            architecture=train.model,
            model=model,
            dataset=dataset,
            image_size=cfg.data.image_size,
            val=val,
            test=test,
            history=result.history,
            best_step=result.best_step,
            steps=train.steps,
            skipped_samples=skipped,
            seed=cfg.seed,
            device=device,
            extra={"resumed_from_step": result.resumed_from},
        )
        artifacts = store.save_model(iteration, model.state_dict(), card)
    except BaseException as exc:
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.mark_stage(iteration, "train", state, error=str(exc)[:500])
        raise
    store.mark_stage(iteration, "train", "done", artifacts=artifacts)
    shutil.rmtree(store.iter_dir(iteration) / "checkpoints", ignore_errors=True)  # the model is saved
    log.info("teacher: val %.4f test %.4f (%d skipped samples)", val.top1, test.top1, skipped)
    return card
