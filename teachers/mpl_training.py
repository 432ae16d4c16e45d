"""Meta Pseudo Labels training: teacher and student together, then the student finetuned.

    selftrain run meta-pseudo-labels --data data/digits --run-dir runs/mpl

Run directory: iteration 0 is the supervised teacher (the baseline, and the MPL teacher's
starting point), iteration 1 the MPL teacher, iteration 2 the MPL student, iteration 3 the
student finetuned on the labeled data. Teacher, student, both optimizers and schedulers, the
student's EMA, the reward baseline and the step are checkpointed together; a killed run resumes.
The math of the teacher's feedback is in `teachers.meta_pseudo_labels`.

Under torchrun both models are DistributedDataParallel; the batches in the config are global
(each rank takes its share), and the feedback h is averaged over ranks (`average_feedback`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from selftrain import distributed
from selftrain.config import RunConfig, TrainConfig
from selftrain.data.dataset_info import Dataset
from selftrain.data.labeled_batches import labeled_batches
from selftrain.data.stream import SplitStream, make_loader
from selftrain.device import autocast, prepare_model, seed_everything, to_device
from selftrain.engine import ProgressHook, TrainLoop
from selftrain.mixing import mix_soft
from selftrain.modelcard import build_card
from selftrain.models import build_model, load_matching
from selftrain.noise import noised_transform
from selftrain.optim import build_optimizer, build_scheduler
from selftrain.runstore import RunStore
from selftrain.stage import evaluate_split, keeps_best, train_and_record, val_scorer
from selftrain.transforms import train_transform
from teachers.meta_pseudo_labels import (
    MovingBaseline,
    mpl_teacher_loss,
    sample_pseudo_labels,
    student_step_feedback,
    uda_loss,
    uda_weight,
    unnoised_logits,
)
from teachers.supervised import train_supervised

log = logging.getLogger("selftrain.mpl")

TEACHER_IT, STUDENT_IT, FINETUNED_IT = 1, 2, 3


class WeakStrongPair:
    """Two views of one unlabeled image: weak (the UDA target) and strong (RandAugment)."""

    def __init__(self, weak, strong):
        self.weak, self.strong = weak, strong

    def __call__(self, img):
        return self.weak(img), self.strong(img)


def average_feedback(h: float) -> float:
    """The student's feedback h averaged over ranks (all_reduce); the identity in one process.

    Each rank measures h_r = CE before - CE after the student's step on its own share of the labeled
    batch; the step itself used the DDP-averaged gradient, so every rank's student took the same
    step. With equal shares the global batch's labeled loss is the mean of the per-rank losses, so
    mean_r h_r is exactly the h one process would measure on the whole batch. Using that on every
    rank (a) gives the teacher the one-process MPL gradient: DDP averages h * grad CE_r over ranks
    into h * grad CE(global batch), whereas per-rank h_r would weight each rank's pseudo-labels by
    its own noisier reward, a different estimator; and (b) keeps the moving baseline the same on
    every rank, so the checkpoint rank 0 writes is every rank's state.
    """
    return distributed.mean_scalar(h)


def _opt_config(lr: float, weight_decay: float, warmup: int, steps: int) -> TrainConfig:
    steps = max(steps, warmup + 1)
    return TrainConfig(lr=lr, weight_decay=weight_decay, warmup_steps=warmup, steps=steps)


def train_mpl(
    store: RunStore,
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    progress_hooks: list[ProgressHook] | None = None,
) -> dict[str, Any]:
    """Joint MPL training; saves the MPL teacher (iteration 1) and student (iteration 2)."""
    mc = cfg.mpl
    dataset.check_files(["labeled", "unlabeled", "val", "test"])
    seed_everything(cfg.seed + 100)
    size, chans, classes = cfg.data.image_size, dataset.info.channels, dataset.info.num_classes

    def make(name: str, field: str) -> torch.nn.Module:
        return build_model(name, num_classes=classes, in_chans=chans, drop_rate=mc.drop_rate, field=field)

    teacher, student = (
        make(mc.teacher_model, "mpl.teacher_model"),
        make(mc.student_model, "mpl.student_model"),
    )
    if mc.init_teacher_from_supervised or mc.init_student_from_supervised:
        weights, card = store.load_weights(0)  # read and checksummed once for both models
        if mc.init_teacher_from_supervised and card["architecture"] == mc.teacher_model:
            teacher.load_state_dict(weights)
            log.info("MPL teacher starts from the supervised teacher (iteration 0)")
        if mc.init_student_from_supervised:
            log.info("MPL student: %d tensors from the supervised teacher", load_matching(student, weights))
    teacher, student = prepare_model(teacher, device), prepare_model(student, device)
    # The bare modules are optimised, averaged, evaluated and saved; the wrappers train.
    t_train, s_train = distributed.wrap(teacher, device), distributed.wrap(student, device)
    # A constant decay from the first update (timm's warm-up needs the step, which is not passed).
    ema = ModelEmaV3(student, decay=mc.ema_decay, use_warmup=False) if mc.ema_decay > 0 else None
    t_opt = build_optimizer(teacher, _opt_config(mc.teacher_lr, mc.weight_decay, mc.warmup_steps, mc.steps))
    t_sched = build_scheduler(t_opt, _opt_config(mc.teacher_lr, mc.weight_decay, mc.warmup_steps, mc.steps))
    student_steps = mc.steps - mc.student_wait_steps
    s_cfg = _opt_config(mc.student_lr, mc.weight_decay, mc.warmup_steps, student_steps)
    s_opt, s_sched = build_optimizer(student, s_cfg), None
    s_sched = build_scheduler(s_opt, s_cfg)
    baseline = MovingBaseline(decay=mc.baseline_decay)

    weak = train_transform(size, chans, cfg.teacher.augment)
    strong = noised_transform(size, chans, cfg.teacher.augment, mc.randaugment_magnitude, mc.randaugment_ops)
    labeled_cfg = TrainConfig(batch_size=mc.batch_size, steps=mc.steps, warmup_steps=0)
    labeled, streams = labeled_batches(
        dataset, cfg, labeled_cfg, device, cfg.seed + 100, weak, "mpl.batch_size"
    )
    mu_batch = mc.unlabeled_ratio * mc.batch_size  # global
    mu_per_rank = mc.unlabeled_ratio * distributed.local_batch(mc.batch_size, "mpl.batch_size")

    def batches(start_step: int) -> Iterator:
        stream = SplitStream(
            dataset,
            "unlabeled",
            WeakStrongPair(weak, strong),
            repeat=True,
            shuffle=True,
            seed=cfg.seed + 101,
            start_sample=start_step * mu_batch,
            shuffle_buffer=cfg.data.shuffle_buffer,
            verify_checksums=cfg.data.verify_checksums,
            skip_corrupt=cfg.data.skip_corrupt,
            with_keys=True,
            batch_size=mu_per_rank,
        )
        streams.append(stream)
        return zip(
            labeled(start_step),
            iter(make_loader(stream, mu_per_rank, cfg.data.num_workers, device)),
            strict=False,
        )

    mixing = (
        {
            "seed": cfg.seed + 101,
            "mixup_alpha": mc.student_mixup_alpha,
            "cutmix_alpha": mc.student_cutmix_alpha,
        }
        if mc.student_mixup_alpha > 0 or mc.student_cutmix_alpha > 0
        else {}
    )  # drawn per (seed, step): a resumed run mixes as the uninterrupted one

    def step_fn(batch, step: int) -> dict[str, float]:
        (x_l, y), ((x_uw, x_us), _keys) = batch
        x_l, y, x_uw, x_us = (
            to_device(x_l, device),
            y.to(device),
            to_device(x_uw, device),
            to_device(x_us, device),
        )
        b, u = len(x_l), len(x_uw)
        with autocast(device):
            t_logits = t_train(torch.cat([x_l, x_uw, x_us])).float()
        t_l, t_uw, t_us = t_logits[:b], t_logits[b : b + u], t_logits[b + u :]
        t_sup = F.cross_entropy(t_l, y, label_smoothing=mc.label_smoothing)
        t_uda, mask = uda_loss(t_uw, t_us, temperature=mc.uda_temperature, threshold=mc.uda_threshold)
        w_uda = uda_weight(step, mc.uda_weight, mc.uda_warmup_steps)
        t_pl, x_pl = (t_uw, x_uw) if mc.pseudo_label_view == "weak" else (t_us, x_us)
        labels_from = t_pl  # the MPL term below always uses t_pl, the pass that carries a graph
        if not mc.noised_pseudo_labels:
            with autocast(device):
                labels_from = unnoised_logits(teacher, x_pl)
        y_hat = sample_pseudo_labels(labels_from, mc.sample_pseudo_labels)

        update = step >= mc.student_wait_steps
        with autocast(device):
            h, s_loss = student_step_feedback(
                s_train, s_opt, x_l, y, x_us, y_hat, update=update, num_classes=t_logits.shape[1],
                mix=functools.partial(mix_soft, step=step, **mixing) if mixing else None,
            )  # fmt: skip
        reward = 0.0
        if update:
            h = average_feedback(h)
            s_sched.step()
            if ema is not None:
                ema.update(student)
            reward = baseline.reward(h)
        t_mpl = mpl_teacher_loss(t_pl, y_hat, reward * mc.feedback_weight)
        t_loss = t_sup + w_uda * t_uda + t_mpl
        t_opt.zero_grad(set_to_none=True)
        t_loss.backward()
        t_opt.step()
        t_sched.step()
        return {
            "loss": t_loss.item(),
            "teacher_supervised": t_sup.item(),
            "teacher_uda": t_uda.item(),
            "teacher_mpl": t_mpl.item(),
            "uda_mask": mask.mean().item(),
            "uda_weight": w_uda,
            "student_loss": s_loss,
            "feedback_h": h,
            "reward": reward,
        }

    selected = ema.module if ema is not None else student
    score, val_skipped = val_scorer(selected, dataset, cfg, device, size)
    modules = {"teacher": teacher, "student": student, **({"ema": ema.module} if ema is not None else {})}
    loop = TrainLoop(
        modules=modules,
        optimizers={"teacher": t_opt, "student": s_opt},
        schedulers={"teacher": t_sched, "student": s_sched},
        step_fn=step_fn,
        batches=batches,
        evaluate=score,
        selected="ema" if ema is not None else "student",
        steps=mc.steps,
        eval_every=mc.eval_every,
        checkpoint_every=mc.checkpoint_every,
        checkpoint_dir=store.iter_dir(STUDENT_IT) / "checkpoints",
        desc="meta pseudo labels",
        progress_hooks=progress_hooks or [],
        keep_best=keeps_best(mc.selection, dataset, "mpl.selection"),
        samples_per_step=mc.batch_size + mu_batch,  # labeled + unlabeled images (each in two views)
        get_extra_state=lambda: {"baseline": baseline.value, "baseline_initialised": baseline.initialised},
        set_extra_state=lambda s: (
            setattr(baseline, "value", s["baseline"]),
            setattr(baseline, "initialised", s["baseline_initialised"]),
        ),
    )

    def save_teacher() -> None:
        # Recorded done by a run killed before the student was: never redone (every rank reads this).
        if store.stage_state(TEACHER_IT, "train") == "done":
            return
        val, _ = evaluate_split(teacher, dataset, "val", cfg, device, size)
        test, _ = evaluate_split(teacher, dataset, "test", cfg, device, size)
        card = build_card(
            iteration=TEACHER_IT,
            role="mpl-teacher",
            architecture=mc.teacher_model,
            model=teacher,
            dataset=dataset,
            image_size=size,
            val=val,
            test=test,
            history=[],
            best_step=mc.steps,
            steps=mc.steps,
            skipped_samples=0,
            seed=cfg.seed,
            device=device,
            world_size=distributed.world_size(),
        )
        if not distributed.is_main():  # every rank evaluated (its share); rank 0 writes
            return
        store.mark_stage(TEACHER_IT, "train", "running", role="mpl-teacher", model=mc.teacher_model)
        artifacts = store.save_model(TEACHER_IT, teacher.state_dict(), card)
        store.mark_stage(TEACHER_IT, "train", "done", artifacts=artifacts)

    return train_and_record(
        store=store,
        dataset=dataset,
        cfg=cfg,
        device=device,
        iteration=STUDENT_IT,
        role="mpl-student",
        architecture=mc.student_model,
        image_size=size,
        loop=loop,
        selected_model=selected,
        val_skipped=val_skipped,
        train_streams=streams,
        save_also=save_teacher,
        card_extra=lambda: {
            "labeled_batch": mc.batch_size,
            "unlabeled_batch": mu_batch,
            "unlabeled_ratio": mc.unlabeled_ratio,
            "student_wait_steps": mc.student_wait_steps,
            "sample_pseudo_labels": mc.sample_pseudo_labels,
            "noised_pseudo_labels": mc.noised_pseudo_labels,
            "baseline_decay": mc.baseline_decay,
            "final_baseline": baseline.value,
        },
    )


def finetune_student(
    store: RunStore,
    dataset: Dataset,
    cfg: RunConfig,
    device: torch.device,
    progress_hooks: list[ProgressHook] | None = None,
) -> dict[str, Any]:
    """Finetune the MPL student (iteration 2) on labeled data; never worse on val than its start."""
    ft = cfg.mpl.finetune
    weights, card = store.load_weights(STUDENT_IT)
    seed_everything(cfg.seed + 200)
    model = build_model(
        card["architecture"],
        num_classes=dataset.info.num_classes,
        in_chans=dataset.info.channels,
        drop_rate=ft.drop_rate,
        field="mpl.student_model",
    )
    model.load_state_dict(weights)
    return train_supervised(
        store,
        dataset,
        cfg,
        device,
        prepare_model(model, device),
        ft,
        iteration=FINETUNED_IT,
        role="mpl-finetuned",
        architecture=card["architecture"],
        seed=cfg.seed + 200,
        desc="finetune MPL student",
        progress_hooks=progress_hooks,
        evaluate_at_start=True,
        card_extra={"finetuned_from": STUDENT_IT, "val_accuracy_before_finetune": card["val_accuracy"]},
        batch_field="mpl.finetune.batch_size",
    )
