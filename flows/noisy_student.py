"""The `noisy-student` flow: Noisy Student (Xie et al. 2020, Algorithm 1) over a run directory.

    selftrain run noisy-student --data data/digits --run-dir runs/demo --iterations 3
    prefect deployment run noisy-student/iter --param run_dir=runs/demo

Each iteration k >= 1: the current teacher (iteration k-1, un-noised) labels the unlabeled shards
(fanned out over shard groups), the labels are filtered and balanced, a noised equal-or-larger
student is trained on labeled + pseudo-labeled batches, evaluated, and promoted to teacher.
Iteration 0, the supervised teacher, is trained first when the run has none. The run directory's
manifest records every finished stage; a stage that is done is never redone, so re-running the
same command (or deployment) after a kill continues where it stopped.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.context import FlowRunContext

from flows.artifacts import ProgressArtifact, publish_iteration_summary, publish_run_report
from flows.run_context import flow_run_holder, input_errors_fail_the_run, open_run, reopen
from flows.task_runners import (
    check_scheduler_reachable,
    one_gpu_per_task,
    pseudolabel_task_runner,
    workers_report_to_this_api,
)
from pseudolabel.label_shards import label_shards
from pseudolabel.selection import write_selection
from selftrain import runlock
from selftrain.config import RunConfig
from selftrain.evaluate import EvalResult
from selftrain.report import write_accuracy_plot
from selftrain.run_inputs import RunContext, check_inputs, check_loop_options
from selftrain.stage import evaluate_split
from students.noisy_student import train_student
from teachers.supervised import train_teacher


@task(name="train-teacher")
def train_teacher_task(run_dir: str, cfg: RunConfig) -> dict[str, Any]:
    ctx = reopen(run_dir, cfg)
    if ctx.store.stage_state(0, "train") == "done":
        return ctx.store.card(0)
    hook = ProgressArtifact("teacher (iteration 0) training")
    if cfg.distributed.nproc_per_node > 1:  # a torchrun subprocess; its lines go to this task's log
        from selftrain.launch import launch_training

        return launch_training("teacher", run_dir, cfg, on_line=get_run_logger().info, on_progress=hook)
    return train_teacher(ctx.store, ctx.dataset, ctx.cfg, ctx.device, progress_hooks=[hook])


@task(name="pseudolabel-shards")
def pseudolabel_shards_task(run_dir: str, cfg: RunConfig, iteration: int, shards: list[int]) -> list[dict]:
    """One unit of parallel work: label a group of shards (complete sidecars are reused)."""
    ctx = reopen(run_dir, cfg)
    result = label_shards(ctx.store, ctx.dataset, iteration, shards, ctx.cfg, ctx.device)
    if result.labeled_images:
        t = result.phases
        get_run_logger().info(
            "shards %s: %d images in %.1f s (reading + decoding %.1f s, model %.1f s, writing %.1f s)",
            shards,
            result.labeled_images,
            result.seconds,
            t.input,
            t.model,
            t.write,
        )
    return [vars(o) for o in result.shards]


@task(name="balance")
def balance_task(run_dir: str, cfg: RunConfig, iteration: int) -> dict[str, Any]:
    ctx = reopen(run_dir, cfg)
    stats = write_selection(ctx.store, ctx.dataset, iteration, ctx.cfg)
    ctx.store.mark_stage(iteration, "pseudolabel", "done", artifacts=stats.pop("artifacts"))
    return stats


@task(name="train-student")
def train_student_task(run_dir: str, cfg: RunConfig, iteration: int) -> dict[str, Any]:
    ctx = reopen(run_dir, cfg)
    if ctx.store.stage_state(iteration, "train") == "done":
        return ctx.store.card(iteration)
    hook = ProgressArtifact(f"student (iteration {iteration}) training")
    if cfg.distributed.nproc_per_node > 1:  # a torchrun subprocess; its lines go to this task's log
        from selftrain.launch import launch_training

        return launch_training(
            "student", run_dir, cfg, iteration=iteration, on_line=get_run_logger().info, on_progress=hook
        )
    return train_student(ctx.store, ctx.dataset, ctx.cfg, ctx.device, iteration, progress_hooks=[hook])


@task(name="evaluate")
def evaluate_task(run_dir: str, cfg: RunConfig, iteration: int) -> dict[str, float]:
    """Reload the saved weights (checksum-verified) and re-measure val and test."""
    from selftrain.device import prepare_model
    from selftrain.models import build_model

    ctx = reopen(run_dir, cfg)
    weights, card = ctx.store.load_weights(iteration)
    model = build_model(card["architecture"], num_classes=card["num_classes"], in_chans=card["in_chans"])
    model.load_state_dict(weights)
    model = prepare_model(model, ctx.device)
    results: dict[str, EvalResult] = {
        split: evaluate_split(model, ctx.dataset, split, ctx.cfg, ctx.device, card["input_size"][-1])[0]
        for split in ("val", "test")
    }
    measured = {f"{s}_accuracy": r.top1 for s, r in results.items()}
    ctx.store.mark_stage(iteration, "evaluate", "done", **measured)
    write_accuracy_plot(ctx.store)
    publish_iteration_summary(ctx.store, iteration, {"re-measured from saved weights": measured})
    publish_run_report(ctx.store, "noisy-student")  # the table and plot grow one row per iteration
    return measured


@task(name="promote")
def promote_task(run_dir: str, cfg: RunConfig, iteration: int) -> int:
    reopen(run_dir, cfg).store.promote(iteration)
    return iteration


def shard_groups(num_shards: int, per_task: int) -> list[list[int]]:
    return [list(range(i, min(i + per_task, num_shards))) for i in range(0, num_shards, per_task)]


@flow(name="pseudolabel", validate_parameters=False)
def label_shard_groups(
    run_dir: str, cfg: RunConfig, teacher_iteration: int, groups: list[list[int]]
) -> list[dict]:
    """The fan-out as a subflow, so that its task runner (threads or Dask) is chosen per call."""
    runner = FlowRunContext.get().task_runner
    with one_gpu_per_task(runner, cfg):
        futures = pseudolabel_shards_task.map(
            unmapped(run_dir), unmapped(cfg), unmapped(teacher_iteration), groups
        )
    futures.wait()
    return [outcome for f in futures for outcome in f.result()]  # re-raises the first failure


def run_pseudolabel_stage(run_dir: str, cfg: RunConfig, teacher_iteration: int, num_shards: int) -> None:
    """Fan out over shard groups on `cfg.pseudolabel.task_runner`, then fan in to the selection."""
    groups = shard_groups(num_shards, cfg.pseudolabel.shards_per_task)
    if cfg.pseudolabel.task_runner == "dask" and cfg.pseudolabel.dask_address:
        check_scheduler_reachable(cfg.pseudolabel.dask_address)
    runner = pseudolabel_task_runner(cfg, len(groups))
    with workers_report_to_this_api(runner):
        label_shard_groups.with_options(task_runner=runner)(run_dir, cfg, teacher_iteration, groups)
    balance_task(run_dir, cfg, teacher_iteration)


@flow(name="noisy-student", validate_parameters=True)
@input_errors_fail_the_run
def noisy_student(
    run_dir: str,
    data: str | None = None,
    config: str | dict[str, Any] | list[str] | None = None,
    iterations: int = 1,
    from_iteration: int | None = None,
) -> list[dict[str, Any]]:
    """Noisy Student self-training over a run directory.

    Args:
        run_dir: Run directory (created if new). Its manifest records finished stages; a re-run
            continues where the last one stopped.
        data: Data set folder holding dataset.json. Required for a new run; may be omitted once
            the run directory records it.
        config: YAML config file path, or inline overrides such as {"student.steps": 200} or
            "student.steps=200,seed=1", or a list of a path and/or "key=value" items. Unknown keys
            are rejected.
        iterations: Noisy Student iterations (students) this flow run trains. The supervised
            teacher (iteration 0) is trained first when the run has none and does not count;
            0 trains no student but finishes a killed one's evaluation and promotion.
        from_iteration: Start a new branch from saved iteration K: iterations after K are moved to
            RUN/branches/ and a new K+1 is trained.

    The flow run holds the run directory's lock (`selftrain.runlock`) from start to end; bad input
    (data set, config, run directory, a second writer) ends it Failed with a one-line message.
    """
    check_inputs(run_dir, data, config)
    with runlock.hold(run_dir, by=flow_run_holder()):
        ctx = open_run(run_dir, data, config)
        check_loop_options(ctx.store, iterations, from_iteration)
        return train_iterations(ctx, iterations, from_iteration)


def train_iterations(ctx: RunContext, iterations: int, from_iteration: int | None) -> list[dict[str, Any]]:
    """The flow's body, once its inputs are open: teacher if missing, then `iterations` students."""
    logger = get_run_logger()
    store, cfg = ctx.store, ctx.cfg
    run_dir = str(store.root)
    if from_iteration is not None:
        archive = store.branch_from(from_iteration)
        logger.info("branching from iteration %d; later iterations moved to %s", from_iteration, archive)

    if store.stage_state(0, "train") != "done":
        train_teacher_task(run_dir, cfg)
    for k in store.iterations_done():  # a run killed between a model's training and its promotion
        if store.stage_state(k, "evaluate") != "done":
            evaluate_task(run_dir, cfg, k)
        if k >= 1 and store.stage_state(k, "promote") != "done":
            promote_task(run_dir, cfg, k)
    num_shards = len(ctx.dataset.split("unlabeled").shards)
    for _ in range(iterations):
        k = store.next_iteration()
        teacher = k - 1
        logger.info("iteration %d: teacher is iteration %d", k, teacher)
        if store.stage_state(teacher, "pseudolabel") != "done":
            run_pseudolabel_stage(run_dir, cfg, teacher, num_shards)
        train_student_task(run_dir, cfg, k)
        if store.stage_state(k, "evaluate") != "done":
            evaluate_task(run_dir, cfg, k)
        promote_task(run_dir, cfg, k)
    publish_run_report(store, "noisy-student")
    return store.status_rows()
