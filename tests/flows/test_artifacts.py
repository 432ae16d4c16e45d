"""Artifact keys are per run directory: two runs never share a key's history in the Prefect UI."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.flows.conftest import FLOW_CONFIG

KEY = re.compile(r"^[a-z0-9-]*$")  # what Prefect accepts


def _run_key():
    from flows.artifacts import run_key  # `flows` first: it sets Prefect's logging before Prefect loads

    return run_key


def test_run_key_tells_apart_run_directories_with_the_same_name(tmp_path):
    run_key = _run_key()
    a, b = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    assert run_key(a) != run_key(b)
    assert run_key(a).startswith("demo-") and run_key(b).startswith("demo-")
    # The same directory, however it is spelled, keeps its key (one history across flow runs).
    assert run_key(a) == run_key(tmp_path / "b" / ".." / "a" / "demo") == run_key(str(a))


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("Démo run_1", "demo-run-1-"), ("数据", "shu-ju-"), ("...", "run-"), ("x" * 60, "x" * 40 + "-")],
)
def test_run_key_is_a_valid_prefect_key_for_any_directory_name(tmp_path, name, prefix):
    key = _run_key()(tmp_path / name)
    assert KEY.match(key), key
    assert key.startswith(prefix) and len(key) == len(prefix) + 8


@pytest.mark.integration
def test_two_runs_publish_disjoint_artifact_keys(prefect_api, digits_master, tmp_path):
    """The issue's case: `a/run` and its copy `b/run`, the same name, each continued by a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.noisy_student import noisy_student

    run_key = _run_key()
    first = tmp_path / "a" / "run"
    state = noisy_student(
        run_dir=str(first), data=str(digits_master), config=FLOW_CONFIG, iterations=1, return_state=True
    )
    assert state.is_completed()
    second = tmp_path / "b" / "run"
    shutil.copytree(first, second)
    runs = {first: state.state_details.flow_run_id}
    state = noisy_student(run_dir=str(second), iterations=1, return_state=True)
    assert state.is_completed()
    runs[second] = state.state_details.flow_run_id

    keys = {}
    with get_client(sync_client=True) as client:
        for run_dir, flow_run_id in runs.items():
            found = client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            keys[run_dir] = {a.key for a in found if a.key}
    for run_dir, published in keys.items():
        name = run_key(run_dir)
        assert {f"noisy-student-{name}-metrics", f"noisy-student-{name}-summary"} <= published
        assert all(name in key for key in published), published
    assert not keys[first] & keys[second]
