"""The `meta-pseudo-labels` flow: MPL (Pham et al. 2021) over a run directory.

    selftrain run meta-pseudo-labels --data data/digits --run-dir runs/mpl
    prefect deployment run meta-pseudo-labels/train --param run_dir=runs/mpl

Stages, each recorded in the manifest and never redone: the supervised teacher (iteration 0, the
baseline and the MPL teacher's start), joint MPL training (iterations 1 = teacher, 2 = student;
resumable from its checkpoints), the student's finetune on labeled data (iteration 3), and
evaluation of each saved model.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from flows.artifacts import ProgressArtifact, publish_run_report
from flows.noisy_student import evaluate_task, train_teacher_task
from flows.run_context import flow_run_holder, input_errors_fail_the_run, open_run, reopen
from selftrain import runlock
from selftrain.config import RunConfig
from selftrain.run_inputs import check_inputs
from teachers.mpl_training import FINETUNED_IT, STUDENT_IT, TEACHER_IT, finetune_student, train_mpl


@task(name="mpl-train")
def mpl_train_task(run_dir: str, cfg: RunConfig) -> dict[str, Any]:
    ctx = reopen(run_dir, cfg)
    if ctx.store.stage_state(STUDENT_IT, "train") == "done":
        return ctx.store.card(STUDENT_IT)
    hook = ProgressArtifact("Meta Pseudo Labels: teacher and student")
    if cfg.distributed.nproc_per_node > 1:  # a torchrun subprocess; its lines go to this task's log
        from selftrain.launch import launch_training

        return launch_training("mpl", run_dir, cfg, on_line=get_run_logger().info, on_progress=hook)
    return train_mpl(ctx.store, ctx.dataset, ctx.cfg, ctx.device, progress_hooks=[hook])


@task(name="finetune-student")
def finetune_task(run_dir: str, cfg: RunConfig) -> dict[str, Any]:
    ctx = reopen(run_dir, cfg)
    if ctx.store.stage_state(FINETUNED_IT, "train") == "done":
        return ctx.store.card(FINETUNED_IT)
    hook = ProgressArtifact("finetune of the MPL student on labeled data")
    if cfg.distributed.nproc_per_node > 1:
        from selftrain.launch import launch_training

        return launch_training("finetune", run_dir, cfg, on_line=get_run_logger().info, on_progress=hook)
    return finetune_student(ctx.store, ctx.dataset, ctx.cfg, ctx.device, progress_hooks=[hook])


@flow(name="meta-pseudo-labels", validate_parameters=True)
@input_errors_fail_the_run
def meta_pseudo_labels(
    run_dir: str,
    data: str | None = None,
    config: str | dict[str, Any] | list[str] | None = None,
) -> list[dict[str, Any]]:
    """Meta Pseudo Labels: teacher and student trained together, then the student finetuned.

    Args:
        run_dir: Run directory (created if new). Its manifest records finished stages; a re-run
            continues where the last one stopped, from the last checkpoint.
        data: Data set folder holding dataset.json. Required for a new run; may be omitted once
            the run directory records it.
        config: YAML config file path, or inline overrides such as {"mpl.steps": 300} or
            "mpl.steps=300,seed=1", or a list of a path and/or "key=value" items.
    """
    check_inputs(run_dir, data, config)
    with runlock.hold(run_dir, by=flow_run_holder()):
        ctx = open_run(run_dir, data, config)
        store, cfg = ctx.store, ctx.cfg
        if store.stage_state(0, "train") != "done":
            train_teacher_task(run_dir, cfg)
        mpl_train_task(run_dir, cfg)
        finetune_task(run_dir, cfg)
        for k in (0, TEACHER_IT, STUDENT_IT, FINETUNED_IT):
            if store.stage_state(k, "evaluate") != "done":
                evaluate_task(run_dir, cfg, k)
        publish_run_report(store, "meta-pseudo-labels")
        return store.status_rows()
