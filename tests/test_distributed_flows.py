"""The flows with `distributed.nproc_per_node: 2`: every training task runs torchrun (2 gloo ranks)
as a subprocess and logs its lines to the task's Prefect log."""

from __future__ import annotations

import json

import pytest
import yaml

from selftrain.runstore import RunStore
from tests.conftest import QUICK_TEACHER
from tests.flows.conftest import FLOW_CONFIG
from tests.teachers.test_mpl_training import QUICK_MPL

pytestmark = pytest.mark.integration


def _task_logs(flow_run_id) -> list[tuple[str, str]]:
    """(task run name, message) of every log line the API stored for a flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    out, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), offset=offset
            )
            if not logs:
                break
            # Task run ids, not names: the log records carry the id, while a task run's own record
            # arrives through Prefect's event stream, which may lag behind on a loaded machine.
            out += [(log.task_run_id, log.message) for log in logs]
            offset += len(logs)
    return out


def test_mpl_flow_trains_every_stage_with_two_ranks(prefect_api, digits_master, tmp_path):
    from flows.meta_pseudo_labels import meta_pseudo_labels

    run = tmp_path / "run"
    config = {
        o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1])
        for o in [*QUICK_TEACHER, *QUICK_MPL, "data.image_size=16", "distributed.nproc_per_node=2"]
    }
    state = meta_pseudo_labels(run_dir=str(run), data=str(digits_master), config=config, return_state=True)
    assert state.is_completed()
    store = RunStore(run)
    cards = {k: store.card(k) for k in (0, 1, 2, 3)}
    assert {k: c["world_size"] for k, c in cards.items()} == {0: 2, 1: 2, 2: 2, 3: 2}
    assert cards[2]["labeled_batch"] == 4 and cards[2]["unlabeled_batch"] == 8  # global, not per rank
    assert all(store.stage_state(k, "evaluate") == "done" for k in cards)
    assert not any(run.glob("iter-*/checkpoints"))

    logs = _task_logs(state.state_details.flow_run_id)
    # The torchrun subprocess's lines land in the logs of each of the three training tasks.
    streamed = {task for task, message in logs if message.startswith("progress ")}
    assert None not in streamed and len(streamed) == 3, [m for _, m in logs][:20]
    stages = {message.split()[1] for _, message in logs if message.startswith("progress ")}
    assert len(stages) == 3, stages
    done = [message for _, message in logs if message.startswith("done ")]
    assert any("done mpl: iteration 2" in m and "world_size 2" in m for m in done), done


def test_noisy_student_run_command_with_nproc_per_node(prefect_api, digits_master, tmp_path):
    from commands.cli import main

    run = tmp_path / "run"
    args = [
        "run",
        "noisy-student",
        "--data",
        str(digits_master),
        "--run-dir",
        str(run),
        "--nproc-per-node",
        "2",
    ]
    for key, value in {**FLOW_CONFIG, "data.image_size": 16}.items():
        args += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    assert main(args) == 0
    store = RunStore(run)
    student = store.card(1)
    assert (store.card(0)["world_size"], student["world_size"]) == (2, 2)
    assert student["labeled_batch"] == 4 and student["unlabeled_batch"] == 12  # ratio 3, global
    assert store.config().distributed.nproc_per_node == 2
