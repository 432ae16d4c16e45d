"""TensorBoard scalars of a training stage, under `RUN/tb/iter-K-ROLE/`.

    tensorboard --logdir runs/demo/tb

Every stage the engine runs (teacher, students, the Meta Pseudo Labels joint stage, its finetune)
writes: the step's losses and other metrics (`train/...`), the learning rate of each optimizer
(`lr/...`), val accuracy at each evaluation (`val/accuracy`), and throughput (`throughput/...`,
measured from one step's end to the next, so data loading counts). Students add the
pseudo-labeled share of each batch and the share of the teacher's labels the confidence filter
kept (`pseudo/...`). Rank 0 alone writes under torchrun.

`torch.utils.tensorboard.SummaryWriter` queues events to a background thread; a step costs a
few `add_scalar` calls (measured in `benchmarks/train_student.py`: well under 2% of a student
step). `tensorboard.enabled: false` turns it off.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch


def tb_dir(run_root: Path, iteration: int, role: str) -> Path:
    return Path(run_root) / "tb" / f"iter-{iteration:03d}-{role}"


def _wait_for_a_later_second(log_dir: Path) -> None:
    """Open a new event file only in a later second than the folder's newest one.

    TensorBoard reads a folder's event files in name order, and a name starts with the second its
    writer opened (`events.out.tfevents.SECONDS.HOST.PID.N`). A second writer opened in the same
    second by the same process sorts by its counter N compared as text (10 before 9): the resumed
    file would be read first and its purge would miss the events it replaces. Only a stage reopened
    within a second waits (at most a second); a run restarted after a kill never does.
    """

    def opened(p: Path) -> int:
        parts = p.name.split(".")
        return int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0

    newest = max((opened(p) for p in log_dir.glob("events.out.tfevents.*")), default=0)
    while time.time() < newest + 1:
        time.sleep(0.05)


class ScalarLog:
    """One stage's event file; `purge_step` drops events of steps a resumed run does again."""

    def __init__(self, log_dir: Path, samples_per_step: int | None = None):
        self.log_dir = Path(log_dir)
        self.samples_per_step = samples_per_step
        self.static: dict[str, float] = {}  # logged once at the first step (e.g. the filter's kept share)
        self._writer = None
        self._last: float | None = None

    def open(self, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_a_later_second(self.log_dir)
        # Steps are logged 1-based; a run resumed after step S logs S + 1 on, replacing older events.
        self._writer = SummaryWriter(str(self.log_dir), purge_step=start_step + 1 if start_step else None)
        for tag, value in self.static.items():
            self._writer.add_scalar(tag, value, start_step)
        self._last = time.perf_counter()

    def step(
        self, step: int, metrics: dict[str, float], optimizers: dict[str, torch.optim.Optimizer]
    ) -> None:
        w = self._writer
        if w is None:
            return
        for name, value in metrics.items():
            w.add_scalar(f"train/{name}", value, step)
        labeled, pseudo = metrics.get("labeled_samples"), metrics.get("pseudo_samples")
        if labeled is not None and pseudo is not None and labeled + pseudo > 0:
            w.add_scalar("pseudo/share_of_batch", pseudo / (labeled + pseudo), step)
        for name, opt in optimizers.items():
            # the highest group's rate: the configured lr (layer_decay slows the groups below it)
            w.add_scalar(f"lr/{name}", max(g["lr"] for g in opt.param_groups), step)
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            seconds = now - self._last
            w.add_scalar("throughput/steps_per_s", 1.0 / seconds, step)
            if self.samples_per_step:
                w.add_scalar("throughput/samples_per_s", self.samples_per_step / seconds, step)
        self._last = now

    def evaluation(self, step: int, val_accuracy: float | None) -> None:
        if self._writer is not None and val_accuracy is not None:
            self._writer.add_scalar("val/accuracy", val_accuracy, step)
        self._last = time.perf_counter()  # the evaluation's time is not a training step's

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] from a stage's event files, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return {tag: events for tag, events in out.items() if events}  # a purged tag stays listed, empty


def stage_log(
    cfg: Any,
    run_root: Path,
    iteration: int,
    role: str,
    samples_per_step: int | None,
    static: dict[str, float] | None = None,
) -> ScalarLog | None:
    """The stage's log when the config has TensorBoard on, else None."""
    if not cfg.tensorboard.enabled:
        return None
    log = ScalarLog(tb_dir(run_root, iteration, role), samples_per_step)
    log.static.update(static or {})
    return log
