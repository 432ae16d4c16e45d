"""The training loop every trainer shares: step, evaluate on val, keep the best, checkpoint, resume.

What a step does is not the engine's business: the teacher, the Noisy Student student and Meta
Pseudo Labels each pass a `step_fn` that takes a batch and returns `{"loss": ..., <parts>}` (it
owns forward, backward and the optimizer steps, since MPL steps two models). The engine owns the
bookkeeping that must be identical everywhere: model selection on the val split only, checkpoints
every N steps written atomically, and resuming from the newest checkpoint with the data stream
positioned where it stopped.

Under torchrun (`selftrain.distributed`) every rank runs this same loop in lock step: metrics are
averaged over ranks each step (so every rank logs, checks for a non-finite loss and stops at the
same step), evaluation is split over ranks and summed, rank 0 alone writes checkpoints, and all
ranks resume from the same checkpoint, whatever world size wrote it: checkpoints hold bare
modules, the global step and nothing per rank.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from selftrain import distributed
from selftrain.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from selftrain.errors import SelftrainError
from selftrain.evaluate import describe
from selftrain.tblog import ScalarLog

log = logging.getLogger("selftrain.engine")

ProgressHook = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_score: float | None  # None: the data set has no val split
    best_step: int
    steps: int
    history: list[dict[str, float]]
    resumed_from: int | None
    # Card fields a later phase of the stage adds (`train_and_record(then=...)`: a student finetune).
    extra: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    resumed_world_size: int | None = None  # the world size that wrote the checkpoint resumed from
    # Damaged checkpoints passed over on resume (newest first): "step-00000040: <why>".
    damaged_checkpoints: list[str] = field(default_factory=list)


@dataclass
class TrainLoop:
    """Everything the loop needs; `batches(start_step)` returns the batch iterator from that step on."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    step_fn: Callable[[Any, int], dict[str, float]]
    batches: Callable[[int], Iterator[Any]]
    evaluate: Callable[[], float | None]  # val accuracy; None without a val split (keep_best False)
    selected: str
    steps: int
    eval_every: int
    checkpoint_every: int
    checkpoint_dir: Path
    desc: str = "train"
    progress_hooks: list[ProgressHook] = field(default_factory=list)
    # State a step function keeps outside the modules (MPL's moving baseline), checkpointed with them.
    get_extra_state: Callable[[], dict[str, Any]] | None = None
    set_extra_state: Callable[[dict[str, Any]], None] | None = None
    # Score the starting weights first, so the result is never worse on val than the start (finetuning).
    evaluate_at_start: bool = False
    # False: the final weights are the result (val too small to choose; `stage.keeps_best`). Val is
    # still evaluated every `eval_every` steps for the curves.
    keep_best: bool = True
    # Samples one step trains on (global), for the throughput scalars.
    samples_per_step: int | None = None
    # TensorBoard scalars (`selftrain.tblog`); `train_and_record` opens one per stage when the config asks.
    scalar_log: ScalarLog | None = None
    # Scalars that describe the whole stage (a student's filter kept share), logged once at its start.
    static_scalars: dict[str, float] = field(default_factory=dict)

    def _resume(self) -> tuple[int, dict[str, Any], dict[str, torch.Tensor]] | None:
        """The newest checkpoint that loads; damaged ones are passed over, logged and recorded."""
        self._damaged: list[str] = []
        for path in reversed(list_checkpoints(self.checkpoint_dir)):
            try:
                return load_checkpoint(
                    path, modules=self.modules, optimizers=self.optimizers, schedulers=self.schedulers
                )
            except SelftrainError as exc:
                log.warning("%s; trying an older checkpoint", exc)
                self._damaged.append(f"{path.name}: {exc}")
        return None

    def run(self) -> TrainResult:
        model = self.modules[self.selected]
        start, history, resumed_from = 0, [], None
        best_score, best_step = -1.0, -1
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        restored = self._resume()
        resumed_world_size = None
        if restored is not None:
            start, state, extra = restored
            resumed_from = start
            resumed_world_size = state.get("world_size", 1)
            history = state["history"]
            best_score, best_step = state["best_score"], state["best_step"]
            if self.set_extra_state is not None and "extra" in state:
                self.set_extra_state(state["extra"])
            best_state = {
                k[len("best.") :]: v for k, v in extra.items() if k.startswith("best.")
            } or best_state
            log.info(
                "resuming %s from step %d (best val %s at step %d; written by %d process(es), now %d)",
                self.desc,
                start,
                describe(best_score),
                best_step,
                resumed_world_size,
                distributed.world_size(),
            )
        distributed.same_on_all_ranks(start, f"{self.checkpoint_dir}: the step each rank resumes from")
        distributed.decorrelate_rng()
        main = distributed.is_main()

        def checkpoint(step: int) -> None:
            if not main:  # rank 0 writes; the others wait so that no rank runs ahead of the file
                distributed.barrier()
                return
            save_checkpoint(
                self.checkpoint_dir,
                step,
                modules=self.modules,
                optimizers=self.optimizers,
                schedulers=self.schedulers,
                state={
                    "history": history,
                    "best_score": best_score,
                    "best_step": best_step,
                    "world_size": distributed.world_size(),
                    **({"extra": self.get_extra_state()} if self.get_extra_state else {}),
                },
                extra_tensors={f"best.{k}": v for k, v in best_state.items()},
            )
            distributed.barrier()

        tb = self.scalar_log if main else None
        if tb is not None:
            tb.open(start)
        if self.evaluate_at_start and restored is None:
            best_score, best_step = self.evaluate(), 0
            history.append({"step": 0, "val_accuracy": best_score})
            if tb is not None:
                tb.evaluation(0, best_score)
        # Creating a DataLoader iterator draws its base seed from torch's global generator. The
        # uninterrupted run made those draws before step 0, and the checkpoint's RNG state already
        # follows them; a resumed run must not draw them again on top, or every dropout mask and
        # sampled pseudo-label after the resume differs (MPL ended up to 1 point off in the soak).
        before_streams = rng_state() if restored is not None else None
        it = self.batches(start)
        if before_streams is not None:
            set_rng_state(*before_streams)
        bar = tqdm(
            total=self.steps,
            initial=start,
            desc=self.desc,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=None if main else True,
            leave=True,
        )
        running: dict[str, float] = {}
        since = 0
        for model_ in self.modules.values():
            model_.train()
        try:
            for step in range(start, self.steps):
                try:
                    batch = next(it)
                except StopIteration:
                    raise SelftrainError(
                        f"{self.desc}: the training stream ran dry at step {step}; "
                        "every sample of the split was skipped as corrupt"
                    ) from None
                metrics = distributed.mean_scalars(self.step_fn(batch, step))
                if not all(map(_finite, metrics.values())):
                    raise SelftrainError(
                        f"{self.desc}: loss became {metrics.get('loss')} at step {step}; lower the learning rate"
                    )
                if tb is not None:
                    tb.step(step + 1, metrics, self.optimizers)
                for k, v in metrics.items():
                    running[k] = running.get(k, 0.0) + float(v)
                since += 1
                done = step + 1
                if done % self.eval_every == 0 or done == self.steps:
                    score = self.evaluate()
                    for model_ in self.modules.values():
                        model_.train()
                    row = {"step": done, **{k: v / since for k, v in running.items()}, "val_accuracy": score}
                    history.append(row)
                    if tb is not None:
                        tb.evaluation(done, score)
                    running, since = {}, 0
                    if not self.keep_best or score >= best_score:
                        best_score, best_step = score, done
                        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    bar.set_postfix(loss=f"{row['loss']:.3f}", val=describe(score), best=describe(best_score))
                    # The bar is for terminals; this line is what reaches the Prefect UI's task logs.
                    log.info(
                        "%s step %d/%d: loss %.4f, val %s (best %s at step %d)",
                        self.desc,
                        done,
                        self.steps,
                        row["loss"],
                        describe(score),
                        describe(best_score),
                        best_step,
                    )
                bar.update(1)
                for hook in self.progress_hooks if main else []:
                    hook(done, self.steps, metrics)
                if done % self.checkpoint_every == 0 or done == self.steps:
                    checkpoint(done)
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        return TrainResult(
            best_state=best_state,
            best_score=best_score,
            best_step=best_step,
            steps=self.steps,
            history=history,
            resumed_from=resumed_from,
            world_size=distributed.world_size(),
            resumed_world_size=resumed_world_size,
            damaged_checkpoints=self._damaged,
        )


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))
