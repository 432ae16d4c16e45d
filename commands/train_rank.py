"""One torchrun rank of a training stage: what `selftrain.launch.launch_training` starts N times.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m commands.train_rank teacher \\
        --run-dir runs/ddp --config-json cfg.json

Each rank joins the process group (`selftrain.distributed.init`), runs the same training function
as the in-process path (`teachers/`, `students/`), and prints `progress DESC: STEP/TOTAL ...`
lines from rank 0 that the parent turns into progress; a `SelftrainError` becomes one
`[rank R] error: ...` line and exit code 2. It imports the stage packages, so it lives here with
the other entry points, above them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from selftrain.errors import SelftrainError
from selftrain.evaluate import describe
from selftrain.launch import STAGES


class ProgressLines:
    """Engine progress hook on rank 0: one `progress DESC: STEP/TOTAL loss L` line per interval."""

    def __init__(self, desc: str, interval_s: float = 2.0):
        self.desc, self.interval_s, self._last = desc, interval_s, 0.0

    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if step < total and now - self._last < self.interval_s:
            return
        self._last = now
        print(
            f"progress {self.desc}: {step}/{total} loss {metrics.get('loss', float('nan')):.4f}", flush=True
        )


def _run_stage(args: argparse.Namespace) -> dict[str, Any]:
    from selftrain import distributed
    from selftrain.config import RunConfig
    from selftrain.data.dataset_info import load_dataset
    from selftrain.runstore import RunStore

    cfg = RunConfig.model_validate_json(Path(args.config_json).read_text())
    device = distributed.init(cfg.device)
    store = RunStore(args.run_dir)
    dataset = load_dataset(store.data_dir())
    hooks = [ProgressLines(f"{args.stage} {args.iteration if args.iteration is not None else ''}".strip())]
    if args.stage == "teacher":
        from teachers.supervised import train_teacher

        return train_teacher(store, dataset, cfg, device, progress_hooks=hooks)
    if args.stage == "student":
        from students.noisy_student import train_student

        if args.iteration is None:
            raise SelftrainError("--iteration: required for the student stage")
        return train_student(store, dataset, cfg, device, args.iteration, progress_hooks=hooks)
    from teachers.mpl_training import finetune_student, train_mpl

    if args.stage == "mpl":
        return train_mpl(store, dataset, cfg, device, progress_hooks=hooks)
    return finetune_student(store, dataset, cfg, device, progress_hooks=hooks)


def main(argv: list[str] | None = None) -> int:
    """One torchrun rank: train `STAGE` of `--run-dir` with the config in `--config-json`."""
    from selftrain import distributed

    parser = argparse.ArgumentParser(prog="python -m commands.train_rank", description=main.__doc__)
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--config-json", required=True, type=Path)
    parser.add_argument("--iteration", type=int)
    args = parser.parse_args(argv)
    rank = distributed.rank()
    logging.basicConfig(
        level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in ("selftrain", "pseudolabel"):
        logging.getLogger(name).setLevel(logging.INFO if rank == 0 else logging.WARNING)
    try:
        card = _run_stage(args)
        if rank == 0:
            print(
                f"done {args.stage}: iteration {card['iteration']} val {describe(card['val_accuracy'])} "
                f"test {describe(card['test_accuracy'])} world_size {card['world_size']}",
                flush=True,
            )
    except SelftrainError as exc:
        print(f"[rank {rank}] error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
