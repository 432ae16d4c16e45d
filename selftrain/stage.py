"""One training stage, recorded in the run directory: the part teacher and students share.

Marks the stage running, runs the `TrainLoop` (which resumes from its own checkpoints), restores
the weights chosen on val, evaluates val and test, writes weights and model card atomically, and
only then marks the stage done. A stage that fails is marked failed and leaves no model files.

Under torchrun every rank trains and evaluates (evaluation is split over ranks and summed); rank 0
alone touches the run directory: manifest, weights, model card, checkpoints.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

import torch

from selftrain import distributed
from selftrain.config import RunConfig
from selftrain.data.batch_decode import use_batched_decode
from selftrain.data.dataset_info import MIN_VAL_FOR_SELECTION, OPTIONAL_SPLITS, Dataset
from selftrain.data.encoded_stream import device_eval_batches
from selftrain.data.stream import SplitStream, make_loader
from selftrain.data.workers import resolve_workers
from selftrain.engine import TrainLoop, TrainResult
from selftrain.errors import SelftrainError
from selftrain.evaluate import EvalResult, describe, evaluate
from selftrain.modelcard import build_card
from selftrain.runstore import RunStore
from selftrain.tblog import stage_log
from selftrain.transforms import eval_transform

log = logging.getLogger("selftrain.stage")


def evaluate_split(
    model: torch.nn.Module,
    dataset: Dataset,
    split: str,
    cfg: RunConfig,
    device: torch.device,
    image_size: int,
) -> tuple[EvalResult, int]:
    """One deterministic pass over a labeled split; returns the result and the skipped count.

    In a process group each rank reads its share of the split and the counts are summed, so every
    rank returns the whole split's result, computed with rank 0's BatchNorm statistics. An empty
    optional split (a data set imported without val) gives `EvalResult.nothing`.
    """
    if split in OPTIONAL_SPLITS and dataset.count(split) == 0:
        return EvalResult.nothing(dataset.info.num_classes), 0
    distributed.broadcast_buffers(model)
    if use_batched_decode(cfg.data.decode, device):  # JPEGs decoded in batches on the GPU
        batches, encoded = device_eval_batches(
            dataset,
            split,
            image_size=image_size,
            device=device,
            num_workers=resolve_workers(cfg.data.num_workers, device),
            verify_checksums=cfg.data.verify_checksums,
            skip_corrupt=cfg.data.skip_corrupt,
        )
        result = evaluate(model, batches, dataset.info.num_classes, device)
        return result, distributed.sum_int(encoded.skipped.count)
    stream = SplitStream(
        dataset,
        split,
        eval_transform(image_size, dataset.info.channels),
        verify_checksums=cfg.data.verify_checksums,
        skip_corrupt=cfg.data.skip_corrupt,
    )
    loader = make_loader(stream, 256, cfg.data.num_workers, device)
    result = evaluate(model, loader, dataset.info.num_classes, device)
    return result, distributed.sum_int(stream.skipped.count)


def no_val_to_choose_by(field: str, dataset: Dataset) -> SelftrainError:
    return SelftrainError(
        f"{field}=best_val: {dataset.index_path} has no val images to choose by; set {field} to "
        "last or auto, or import the data with --val-fraction above 0"
    )


def keeps_best(selection: str, dataset: Dataset, field: str) -> bool:
    """Whether a stage keeps its best-on-val weights (True) or its final ones; warns on a small val."""
    n_val = dataset.count("val")
    if n_val == 0:
        if selection == "best_val":
            raise no_val_to_choose_by(field, dataset)
        return False
    if selection == "best_val":
        if n_val < MIN_VAL_FOR_SELECTION:
            log.warning(
                "%s=best_val on %d val images: too few to tell checkpoints apart (under %d); "
                "consider %s=last or more labeled images",
                field,
                n_val,
                MIN_VAL_FOR_SELECTION,
                field,
            )
        return True
    if selection == "last":
        return False
    if n_val < MIN_VAL_FOR_SELECTION:
        log.warning(
            "val has %d images, too few to trust (under %d): %s=auto keeps the last weights instead of "
            "the best on val; val accuracy is reported but moves by %.0f points per image",
            n_val,
            MIN_VAL_FOR_SELECTION,
            field,
            100 / max(n_val, 1),
        )
        return False
    return True


def val_scorer(
    model: torch.nn.Module, dataset: Dataset, cfg: RunConfig, device: torch.device, image_size: int
):
    """The engine's `evaluate` callback (val only: test never guides selection)."""
    skipped = [0]

    def score() -> float:
        result, skipped[0] = evaluate_split(model, dataset, "val", cfg, device, image_size)
        return result.top1

    return score, skipped


def train_and_record(
    *,
    store: RunStore,
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    iteration: int,
    role: str,
    architecture: str,
    image_size: int,
    loop: TrainLoop,
    selected_model: torch.nn.Module,
    val_skipped: list[int],
    train_streams: list[SplitStream],
    card_extra: Callable[[], dict[str, Any]],
    save_also: Callable[[], None] | None = None,
    then: Callable[[TrainResult], TrainResult] | None = None,
) -> dict[str, Any]:
    """`save_also` saves companion models (MPL's teacher) before the stage is marked done; `then`
    continues from the loop's result (a student's labeled-only finetune) inside the same stage.

    Every rank calls this (and `save_also`, which evaluates on every rank and writes on rank 0).
    """
    main = distributed.is_main()
    if main and loop.scalar_log is None:
        loop.scalar_log = stage_log(
            cfg, store.root, iteration, role, loop.samples_per_step, loop.static_scalars
        )
    if main:
        store.mark_stage(iteration, "train", "running", role=role, model=architecture)
    try:
        result = loop.run()
        if then is not None:
            result = then(result)
        selected_model.load_state_dict(result.best_state)
        val, _ = evaluate_split(selected_model, dataset, "val", cfg, device, image_size)
        test, test_skipped = evaluate_split(selected_model, dataset, "test", cfg, device, image_size)
        train_skipped = distributed.sum_int(sum(s.skipped.count for s in train_streams))
        skipped = train_skipped + val_skipped[0] + test_skipped
        card = build_card(
            iteration=iteration,
            role=role,
            architecture=architecture,
            model=selected_model,
            dataset=dataset,
            image_size=image_size,
            val=val,
            test=test,
            history=result.history,
            best_step=result.best_step,
            steps=result.steps,
            skipped_samples=skipped,
            seed=cfg.seed,
            device=device,
            world_size=result.world_size,
            extra={
                "resumed_from_step": result.resumed_from,
                "resumed_from_world_size": result.resumed_world_size,
                # A damaged checkpoint is never used: the card says which were passed over.
                "damaged_checkpoints_skipped": result.damaged_checkpoints,
                **result.extra,  # what a `then` phase adds (a finetune's before-accuracies)
                **card_extra(),
            },
        )
        artifacts = store.save_model(iteration, selected_model.state_dict(), card) if main else {}
        if save_also is not None:
            save_also()
    except BaseException as exc:
        if main:
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            store.mark_stage(iteration, "train", state, error=str(exc)[:500])
        raise
    if main:
        store.mark_stage(iteration, "train", "done", artifacts=artifacts)
        shutil.rmtree(store.iter_dir(iteration) / "checkpoints", ignore_errors=True)  # the model is saved
    distributed.barrier()  # no rank returns before the model and the manifest entry exist
    log.info(
        "%s %d: val %s test %s (%d skipped samples)",
        role,
        iteration,
        describe(val.top1),
        describe(test.top1),
        skipped,
    )
    return card
