"""Noisy Student training of one iteration's student (Xie et al. 2020, Algorithm 1 steps 2-3).

Every step takes a labeled batch of B and a pseudo-labeled batch of r*B drawn from the balanced
selection of the previous model's soft labels (r = 14 in iteration 1 and 28 from iteration 2 on in
the paper's schedule, `student.unlabeled_ratio` here), runs both through the *noised* student in
one forward pass (so BatchNorm sees both, as in the reference implementation) and minimises

    CE(labeled, label smoothing) + w * soft-CE(pseudo-labeled, teacher targets),

the targets being one-hot vectors of the teacher's argmax (`student.pseudo_targets: hard`, the
default, which measured better on digits: README, "Results") or the teacher's stored
probabilities (`soft`). The sidecars hold the soft labels either way.

Noise is on the student only: RandAugment on its inputs, dropout and stochastic depth in its body.
The student must be equal to or larger than its teacher.

Under torchrun (`distributed.nproc_per_node` > 1) B and r*B are global: each rank takes B / world
labeled and r*B / world pseudo-labeled images per step, so the ratio r holds per rank and globally.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target
from timm.utils import ModelEmaV3

from pseudolabel.label_shards import pseudo_dir
from pseudolabel.selection import read_selection
from selftrain import distributed
from selftrain.config import RunConfig, StudentConfig
from selftrain.data.dataset_info import Dataset
from selftrain.data.labeled_batches import labeled_batches
from selftrain.data.stream import make_loader
from selftrain.device import autocast, prepare_model, seed_everything, to_device
from selftrain.engine import ProgressHook, TrainLoop, TrainResult
from selftrain.errors import SelftrainError
from selftrain.labeled_loop import labeled_loop
from selftrain.ladder import ladder_phi, ladder_step
from selftrain.mixing import mix_soft
from selftrain.models import build_model, count_parameters, load_matching
from selftrain.noise import noised_transform
from selftrain.optim import build_optimizer, build_scheduler
from selftrain.runstore import RunStore
from selftrain.stage import evaluate_split, keeps_best, train_and_record, val_scorer
from students.pseudo_stream import PseudoLabeledStream

log = logging.getLogger("selftrain.student")


def student_model_name(cfg: StudentConfig, iteration: int) -> str:
    if cfg.models:
        return cfg.for_iteration(cfg.models, iteration)
    return f"effnet_ladder_{cfg.ladder_start + iteration - 1}"


def input_size_for(model_name: str, default: int) -> int:
    """Ladder models bring their compound-scaled resolution; other models use data.image_size."""
    phi = ladder_phi(model_name)
    return ladder_step(phi).resolution if phi is not None else default


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch; 0 for an empty batch (ratio 0), where the mean would be NaN."""
    if len(logits) == 0:
        return logits.sum() * 0.0
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def noisy_student_step(
    model,
    optimizer,
    scheduler,
    labeled,
    pseudo,
    *,
    label_smoothing: float,
    pseudo_weight: float,
    device: torch.device,
    ema: ModelEmaV3 | None = None,
    mix: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """One step; `mix` (`selftrain.mixing.mix_soft` bound to the step) mixes each part with itself."""
    x_l, y = to_device(labeled[0], device), labeled[1].to(device)
    x_u, p = to_device(pseudo[0], device), pseudo[1].to(device)
    if mix is not None:
        t_l = mixup_target(y, p.shape[1], lam=1.0, smoothing=label_smoothing)
        x_l, t_l = mix(x_l, t_l, part=0)
        x_u, p = mix(x_u, p, part=1)
    with autocast(device):
        logits = model(torch.cat([x_l, x_u])).float()
    if mix is None:
        loss_l = F.cross_entropy(logits[: len(x_l)], y, label_smoothing=label_smoothing)
    else:
        loss_l = soft_cross_entropy(logits[: len(x_l)], t_l)
    loss_u = soft_cross_entropy(logits[len(x_l) :], p)
    loss = loss_l + pseudo_weight * loss_u
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update(model)
    world = distributed.world_size()  # the engine averages metrics over ranks: these become global
    return {
        "loss": loss.item(),
        "loss_labeled": loss_l.item(),
        "loss_pseudo": loss_u.item(),
        "labeled_samples": float(len(x_l) * world),
        "pseudo_samples": float(len(x_u) * world),
    }


def selection_scalars(selection: dict[str, Any]) -> dict[str, float]:
    """The filter's kept share and the selection's size, for TensorBoard (`selftrain.tblog`)."""
    stats = selection.get("stats") or {}
    if not stats.get("images"):
        return {}
    return {
        "pseudo/filter_kept_fraction": stats["confident"] / stats["images"],
        "pseudo/selected_images": float(stats["selected_images"]),
        "pseudo/selected_copies": float(stats["selected_copies"]),
    }


@dataclass
class StudentSetup:
    """Everything one student iteration trains with; `train_student` and the benchmark share it."""

    name: str
    image_size: int
    model: torch.nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Callable[[int], Iterator]
    step_fn: Callable[[Any, int], dict[str, float]]
    streams: list
    ratio: int
    pseudo_batch: int
    magnitude: int
    teacher_card: dict[str, Any]
    selection: dict[str, Any]


def prepare_student(
    store: RunStore, dataset: Dataset, cfg: RunConfig, device: torch.device, iteration: int
) -> StudentSetup:
    """Build iteration `iteration`'s noised student and its labeled + pseudo-labeled batch stream."""
    if iteration < 1:
        raise SelftrainError(
            f"student iteration must be 1 or more (got {iteration}); iteration 0 is the teacher"
        )
    sc = cfg.student
    teacher_it = iteration - 1
    teacher_weights, teacher_card = store.load_weights(teacher_it)
    selection = read_selection(store, teacher_it)
    dataset.check_files(["labeled", "unlabeled", "val", "test"])
    seed_everything(cfg.seed + iteration)

    name = student_model_name(sc, iteration)
    size, chans = input_size_for(name, cfg.data.image_size), dataset.info.channels
    model = build_model(
        name,
        num_classes=dataset.info.num_classes,
        in_chans=chans,
        drop_rate=sc.drop_rate,
        drop_path_rate=sc.drop_path_rate,
        field="student.models",
    )
    if count_parameters(model) < teacher_card["params"]:
        raise SelftrainError(
            f"student.models: {name} ({count_parameters(model):,} parameters) is smaller than its teacher "
            f"{teacher_card['architecture']} ({teacher_card['params']:,}); Noisy Student needs an equal-or-larger student"
        )
    if sc.init_from_teacher:
        log.info("initialised %d tensors from the teacher", load_matching(model, teacher_weights))
    model = prepare_model(model, device)
    trained = distributed.wrap(model, device)  # `model` (bare) is evaluated, averaged and saved
    # From the teacher's weights the average starts from a good model and decays at a constant
    # rate; from a random init, warm-up makes it follow the weights closely at first, so the
    # random start does not linger (timm applies warm-up only when `update` is given the step).
    ema = (
        ModelEmaV3(model, decay=sc.ema_decay, use_warmup=not sc.init_from_teacher)
        if sc.ema_decay > 0
        else None
    )
    optimizer = build_optimizer(model, sc)
    scheduler = build_scheduler(optimizer, sc)

    ratio = sc.for_iteration(sc.unlabeled_ratio, iteration)
    magnitude = sc.for_iteration(sc.randaugment_magnitude, iteration)
    noise = noised_transform(size, chans, sc.augment, magnitude, sc.randaugment_ops)
    seed = cfg.seed + iteration
    labeled, streams = labeled_batches(dataset, cfg, sc, device, seed, noise, "student.batch_size")
    pseudo_batch = ratio * sc.batch_size  # global, like the labeled batch
    pseudo_per_rank = ratio * distributed.local_batch(sc.batch_size, "student.batch_size")
    copies = {k: int(v) for k, v in selection["copies"].items()}
    mixing = sc.mixup_alpha > 0 or sc.cutmix_alpha > 0

    def batches(start_step: int) -> Iterator:
        labeled_it = labeled(start_step)
        if pseudo_batch == 0:
            return ((b, None) for b in labeled_it)
        stream = PseudoLabeledStream(
            dataset,
            noise,
            pseudo_dir=pseudo_dir(store, teacher_it),
            copies=copies,
            hard=sc.pseudo_targets == "hard",
            seed=seed,
            start_sample=start_step * pseudo_batch,
            shuffle_buffer=cfg.data.shuffle_buffer,
            verify_checksums=cfg.data.verify_checksums,
            skip_corrupt=cfg.data.skip_corrupt,
            batch_size=pseudo_per_rank,
        )
        streams.append(stream)
        return zip(
            labeled_it,
            iter(make_loader(stream, pseudo_per_rank, cfg.data.num_workers, device)),
            strict=False,
        )

    def step_fn(batch, step: int) -> dict[str, float]:
        lab, pse = batch
        if pse is None:  # ratio 0: the student learns from labeled data alone (an ablation)
            empty = (lab[0][:0], torch.zeros(0, dataset.info.num_classes))
            pse = empty
        metrics = noisy_student_step(
            trained,
            optimizer,
            scheduler,
            lab,
            pse,
            label_smoothing=sc.label_smoothing,
            pseudo_weight=sc.pseudo_loss_weight,
            device=device,
            mix=functools.partial(
                mix_soft, seed=seed, step=step, mixup_alpha=sc.mixup_alpha, cutmix_alpha=sc.cutmix_alpha
            )
            if mixing
            else None,
        )
        if ema is not None:
            ema.update(model, step=step + 1)  # the bare module: its keys match the EMA copy's
        return metrics

    return StudentSetup(
        name=name,
        image_size=size,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=batches,
        step_fn=step_fn,
        streams=streams,
        ratio=ratio,
        pseudo_batch=pseudo_batch,
        magnitude=magnitude,
        teacher_card=teacher_card,
        selection=selection,
    )


def train_student(
    store: RunStore,
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    iteration: int,
    progress_hooks: list[ProgressHook] | None = None,
) -> dict:
    """Train iteration `iteration`'s student on iteration `iteration - 1`'s balanced pseudo-labels."""
    sc = cfg.student
    setup = prepare_student(store, dataset, cfg, device, iteration)
    model, ema, size, name = setup.model, setup.ema, setup.image_size, setup.name
    teacher_it, teacher_card = iteration - 1, setup.teacher_card
    ratio, pseudo_batch, magnitude = setup.ratio, setup.pseudo_batch, setup.magnitude
    selected = ema.module if ema is not None else model
    score, val_skipped = val_scorer(selected, dataset, cfg, device, size)
    modules = {"model": model, **({"ema": ema.module} if ema is not None else {})}
    loop = TrainLoop(
        modules=modules,
        optimizers={"model": setup.optimizer},
        schedulers={"model": setup.scheduler},
        step_fn=setup.step_fn,
        batches=setup.batches,
        evaluate=score,
        selected="ema" if ema is not None else "model",
        steps=sc.steps,
        eval_every=sc.eval_every,
        checkpoint_every=sc.checkpoint_every,
        checkpoint_dir=store.iter_dir(iteration) / "checkpoints",
        desc=f"student iter {iteration}",
        progress_hooks=progress_hooks or [],
        keep_best=keeps_best(sc.selection, dataset, "student.selection"),
        samples_per_step=sc.batch_size + pseudo_batch,
        static_scalars=selection_scalars(setup.selection),
    )
    accuracy = (setup.selection.get("stats") or {}).get("accuracy") or {}
    then = None
    if sc.finetune.steps:
        then = functools.partial(
            finetune_on_labeled,
            store=store,
            dataset=dataset,
            cfg=cfg,
            device=device,
            iteration=iteration,
            name=name,
            image_size=size,
            streams=setup.streams,
            progress_hooks=progress_hooks,
        )
    return train_and_record(
        store=store,
        dataset=dataset,
        cfg=cfg,
        device=device,
        iteration=iteration,
        role="student",
        architecture=name,
        image_size=size,
        loop=loop,
        selected_model=selected,
        val_skipped=val_skipped,
        train_streams=setup.streams,
        then=then,
        card_extra=lambda: {
            "teacher_iteration": teacher_it,
            "teacher_params": teacher_card["params"],
            "labeled_batch": sc.batch_size,
            "unlabeled_batch": pseudo_batch,
            "unlabeled_ratio": ratio,
            "randaugment_magnitude": magnitude,
            "drop_rate": sc.drop_rate,
            "drop_path_rate": sc.drop_path_rate,
            "ema_decay": sc.ema_decay,
            "pseudo_targets": sc.pseudo_targets,
            # Of the teacher's labels on the whole unlabeled split; None where truth is unknown.
            "pseudo_label_accuracy": (accuracy.get("before_filter") or {}).get("accuracy"),
            "pseudo_label_accuracy_detail": accuracy or None,
        },
    )


def finetune_on_labeled(
    first: TrainResult,
    *,
    store: RunStore,
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    iteration: int,
    name: str,
    image_size: int,
    streams: list,
    progress_hooks: list[ProgressHook] | None,
) -> TrainResult:
    """The noised student's selected weights trained on the labeled split alone (`student.finetune`).

    Its checkpoints sit under the stage's own, so a kill during the finetune resumes it there and
    the noised training (checkpointed at its last step) is not redone. The card records the val and
    test accuracy before the finetune, so what it added shows per iteration.
    """
    ft = cfg.student.finetune
    seed = cfg.seed + 300 + iteration
    seed_everything(seed)
    model = build_model(
        name,
        num_classes=dataset.info.num_classes,
        in_chans=dataset.info.channels,
        drop_rate=ft.drop_rate,
        drop_path_rate=ft.drop_path_rate,
        field="student.models",
    )
    model.load_state_dict(first.best_state)
    model = prepare_model(model, device)
    before, _ = evaluate_split(model, dataset, "test", cfg, device, image_size)
    loop, labeled_streams, _ = labeled_loop(
        dataset,
        cfg,
        device,
        model,
        ft,
        image_size=image_size,
        seed=seed,
        desc=f"finetune student iter {iteration}",
        checkpoint_dir=store.iter_dir(iteration) / "checkpoints" / "finetune",
        batch_field="student.finetune.batch_size",
        progress_hooks=progress_hooks,
        evaluate_at_start=True,
    )
    streams.extend(labeled_streams)  # their skipped samples count in the card
    result = loop.run()
    offset = first.steps
    return dataclasses.replace(
        result,
        best_step=offset + result.best_step,
        steps=offset + result.steps,
        history=first.history + [{**row, "step": offset + row["step"]} for row in result.history],
        resumed_from=first.resumed_from if result.resumed_from is None else offset + result.resumed_from,
        extra={
            **first.extra,
            "finetune_steps": ft.steps,
            "finetune_from_step": offset,
            "val_accuracy_before_finetune": first.best_score,
            "test_accuracy_before_finetune": before.top1,
        },
    )
