"""TensorBoard logs: a resumed stage replaces the steps it trains again; logging is a runtime switch."""

from __future__ import annotations

import pytest
import torch

from selftrain.runstore import RunStore
from selftrain.tblog import ScalarLog, read_scalars


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5)


@pytest.mark.parametrize("writers_before", [0, 9], ids=["first-writer", "counter-9-to-10"])
def test_resumed_stage_replaces_the_steps_it_logs_again(tmp_path, monkeypatch, writers_before):
    # A process's writers are numbered in their file names; 9 -> 10 sorts the resumed file first
    # as text, which lost the purge when both opened in the same second (seen under pytest-xdist).
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(writers_before))
    first = ScalarLog(tmp_path, samples_per_step=8)
    first.open(0)
    for step in range(1, 11):
        first.step(step, {"loss": float(step)}, {"model": _opt()})
    first.evaluation(10, 0.5)
    first.close()
    # Killed after the checkpoint at step 6: the resumed run logs 7..10 again, with other values.
    resumed = ScalarLog(tmp_path, samples_per_step=8)
    resumed.static["pseudo/filter_kept_fraction"] = 0.75
    resumed.open(6)
    for step in range(7, 11):
        resumed.step(step, {"loss": 100.0 + step}, {"model": _opt()})
    resumed.close()
    scalars = read_scalars(tmp_path)
    assert scalars["train/loss"] == [(s, float(s)) for s in range(1, 7)] + [
        (s, 100.0 + s) for s in range(7, 11)
    ]
    assert "val/accuracy" not in scalars  # the old step-10 evaluation was purged with its step
    assert [v for _, v in scalars["lr/model"]] == [0.5] * 10
    assert scalars["pseudo/filter_kept_fraction"] == [(6, 0.75)]
    assert len(scalars["throughput/samples_per_s"]) == 10


def test_tensorboard_may_be_switched_when_a_run_continues(digits_master, tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.open(digits_master, None, []).tensorboard.enabled
    assert not store.open(digits_master, None, ["tensorboard.enabled=false"]).tensorboard.enabled
