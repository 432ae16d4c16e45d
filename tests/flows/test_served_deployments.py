"""Users' path end to end: `prefect server start` (basic auth on), `selftrain serve`, and
`prefect deployment run noisy-student/iter --watch`, checked in the run directory and through the
Prefect API; then the serve process dies mid-run and a new run finishes the interrupted iteration.

The server runs with an auth string throughout, so every step here also shows that the serve
process, the CLI and the UI work with credentials. The browser test drives Debian's Chromium
(/usr/bin/chromium, never a browser downloaded by a test tool) through Playwright.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from selftrain import runlock
from selftrain.checkpoint import list_checkpoints
from tests.conftest import QUICK_TEACHER
from tests.flows.prefect_processes import PrefectServer, ServeProcess, run_deployment

pytestmark = pytest.mark.integration

AUTH = "selftrain:not-a-real-secret"

# Quick models; the student trains long enough (80 steps, a checkpoint every 10) to be killed midway.
CONFIG = {
    **{o.split("=", 1)[0]: json.loads(o.split("=", 1)[1]) for o in QUICK_TEACHER},
    "student.steps": 80,
    "student.eval_every": 20,
    "student.checkpoint_every": 10,
    "student.warmup_steps": 2,
    "student.batch_size": 4,
    "student.unlabeled_ratio": [3, 5],
    "pseudolabel.confidence_threshold": 0.1,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect-server")
    srv = PrefectServer(home=root / "home", log_dir=root, auth=AUTH).start()
    yield srv
    assert srv.stop() is not None


@pytest.fixture(scope="module")
def serve(server, tmp_path_factory):
    proc = ServeProcess(server, tmp_path_factory.mktemp("serve")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def served_runs(server, serve, digits_master, tmp_path_factory):
    """Two `iter` runs of the same run directory: the first trains iterations 0 and 1, the second 2."""
    run_dir = tmp_path_factory.mktemp("served") / "run"
    params = {"run_dir": str(run_dir), "data": str(digits_master), "config": CONFIG}
    results = []
    for _ in range(2):
        code, run_id, output = run_deployment(server, "noisy-student/iter", params)
        assert code == 0, output[-3000:]
        results.append(run_id)
    # Once the run directory records its data set, `data` may be left out.
    return {"run_dir": run_dir, "run_ids": results, "params": {"run_dir": str(run_dir), "config": CONFIG}}


def manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_api_refuses_requests_without_credentials(server):
    assert server.api("GET", "/health", auth=None).status_code == 200  # health stays open
    assert server.api("POST", "/flows/filter", {}, auth=None).status_code == 401
    assert server.api("POST", "/flows/filter", {}, auth="selftrain:wrong").status_code == 401
    assert server.api("POST", "/flows/filter", {}).status_code == 200


def test_deployments_are_served_with_a_documented_parameter_form(server, serve):
    deployments = server.deployments()
    assert {"noisy-student/iter", "meta-pseudo-labels/train"} <= set(deployments)
    automations = server.post("/automations/filter")
    assert any(a["name"].startswith("selftrain: mark unresponsive") for a in automations)
    schema = deployments["noisy-student/iter"]["parameter_openapi_schema"]
    props = schema["properties"]
    assert {"run_dir", "data", "config", "iterations", "from_iteration"} <= set(props)
    assert schema["required"] == ["run_dir"]
    for name in ("run_dir", "data", "iterations", "from_iteration"):
        assert props[name].get("description"), f"parameter {name} has no description in the UI form"
    assert props["iterations"]["default"] == 1


def test_each_deployment_run_trains_the_next_iteration(server, served_runs):
    run_dir = served_runs["run_dir"]
    first, second = served_runs["run_ids"]
    iterations = manifest(run_dir)["iterations"]
    assert sorted(int(k) for k in iterations) == [0, 1, 2]
    for k in ("0", "1", "2"):
        assert iterations[k]["stages"]["train"]["state"] == "done"
        assert iterations[k]["stages"]["evaluate"]["state"] == "done"
    assert manifest(run_dir)["teacher_iteration"] == 2

    for run_id in (first, second):
        assert server.flow_run(run_id)["state"]["type"] == "COMPLETED"
    first_tasks, second_tasks = server.task_run_names(first), server.task_run_names(second)
    assert {"train-teacher", "pseudolabel-shards", "balance", "train-student", "evaluate", "promote"} <= set(
        first_tasks
    )
    assert "train-teacher" not in second_tasks  # the teacher of iteration 0 is never retrained
    assert {"pseudolabel-shards", "train-student", "promote"} <= set(second_tasks)

    from flows.artifacts import run_key

    run = run_key(run_dir)  # the run directory's name and a digest of its path: `run-1a2b3c4d`
    kinds = {(a["type"], a["key"]) for a in server.artifacts(second)}
    assert ("table", f"noisy-student-{run}-metrics") in kinds
    assert ("markdown", f"noisy-student-{run}-summary") in kinds
    assert ("markdown", f"{run}-iter-2") in kinds
    assert any(kind == "progress" for kind, _ in kinds)
    summary = next(a for a in server.artifacts(second) if a["key"] == f"noisy-student-{run}-summary")
    assert "data:image/png;base64," in summary["data"]


CHROMIUM = os.environ.get("SELFTRAIN_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google from an offline machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip():
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        if os.environ.get("SELFTRAIN_REQUIRE_BROWSER") == "1":  # .ci/run installs it: no silent skip
            pytest.fail(f"{CHROMIUM} not found; install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} not found (apt install chromium)")
    return pytest.importorskip("playwright.sync_api")


def test_prefect_ui_shows_state_tasks_logs_and_artifacts(server, served_runs, tmp_path):
    sync_api = _browser_or_skip()
    from flows.artifacts import run_key

    run_id = served_runs["run_ids"][1]
    run = run_key(served_runs["run_dir"])
    artifacts = {a["key"]: a for a in server.artifacts(run_id) if a["key"]}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            # Basic auth is on: the UI asks for user:password once and keeps it in local storage.
            page.goto(f"{server.url}/login")
            page.locator("input[type=password]").fill(AUTH)
            page.locator("input[type=password]").press("Enter")
            page.wait_for_url(re.compile(r"^(?!.*/login).*$"))

            page.goto(f"{server.url}/runs/flow-run/{run_id}")
            sync_api.expect(page.get_by_text("Completed").first).to_be_visible()
            sync_api.expect(page.get_by_text(re.compile(r"step \d+/\d+: loss")).first).to_be_visible()
            page.screenshot(path=tmp_path / "flow-run.png", full_page=True)

            page.get_by_text("Task Runs", exact=True).first.click()
            for name in ("train-student", "evaluate", "promote"):
                sync_api.expect(page.get_by_text(re.compile(rf"^{name}-")).first).to_be_visible()
            page.get_by_text("Artifacts", exact=True).first.click()
            for key in (f"noisy-student-{run}-summary", f"noisy-student-{run}-metrics", f"{run}-iter-2"):
                sync_api.expect(page.get_by_text(key).first).to_be_visible()
            sync_api.expect(page.get_by_text("student (iteration 2) training").first).to_be_visible()
            page.screenshot(path=tmp_path / "artifacts.png", full_page=True)

            page.goto(f"{server.url}/artifacts/artifact/{artifacts[f'noisy-student-{run}-summary']['id']}")
            plot = page.locator("img[src^='data:image/png;base64,']")
            sync_api.expect(plot).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=plot.element_handle())
            page.screenshot(path=tmp_path / "summary.png", full_page=True)

            page.goto(f"{server.url}/artifacts/artifact/{artifacts[f'noisy-student-{run}-metrics']['id']}")
            for column in ("pseudo-label acc", "ratio", "test acc"):
                sync_api.expect(page.get_by_text(column, exact=True).first).to_be_visible()
            page.screenshot(path=tmp_path / "metrics.png", full_page=True)
        except Exception:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            raise
        finally:
            browser.close()
    print(f"screenshots: {tmp_path}")


@pytest.fixture(scope="module")
def killed_serve(server, serve, served_runs):
    """Iteration 3 started through `noisy-student/iter`, its serve process killed mid-training, then
    `selftrain serve` started again and the same deployment run once more."""
    run_dir = served_runs["run_dir"]
    before = manifest(run_dir)
    weights_before = {k: v["stages"]["train"].get("artifacts") for k, v in before["iterations"].items()}

    _, killed_run, _ = run_deployment(server, "noisy-student/iter", served_runs["params"], watch=False)
    checkpoints = run_dir / "iter-003" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list_checkpoints(checkpoints):  # a complete one, not a checkpoint being written
        assert time.monotonic() < deadline, "iteration 3 never wrote a checkpoint"
        assert server.flow_run(killed_run)["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED")
        time.sleep(0.1)
    serve.crash()
    assert serve.proc.returncode is not None
    after_kill = manifest(run_dir)
    assert after_kill["iterations"]["3"]["stages"]["train"]["state"] != "done"
    pseudo_done = after_kill["iterations"]["2"]["stages"]["pseudolabel"]  # iteration 3's labels
    assert pseudo_done["state"] == "done"

    serve.start()  # the same command again, as a user would after a reboot
    code, resumed_run, output = run_deployment(server, "noisy-student/iter", served_runs["params"])
    assert code == 0, output[-3000:]
    return {
        "run_dir": run_dir,
        "weights_before": weights_before,
        "pseudo_done": pseudo_done,
        "killed_run": killed_run,
        "resumed_run": resumed_run,
    }


def test_killed_serve_process_then_a_new_run_finishes_the_iteration(server, killed_serve):
    run_dir, pseudo_done = killed_serve["run_dir"], killed_serve["pseudo_done"]
    final = manifest(run_dir)
    assert final["iterations"]["3"]["stages"]["train"]["state"] == "done"
    assert final["teacher_iteration"] == 3
    assert "4" not in final["iterations"]  # the new run finished 3 rather than starting 4
    # Nothing finished was redone: iteration 3's labels (made by teacher 2 before the kill) and the
    # earlier models are untouched.
    assert final["iterations"]["2"]["stages"]["pseudolabel"] == pseudo_done
    for k, artifacts in killed_serve["weights_before"].items():
        assert final["iterations"][k]["stages"]["train"].get("artifacts") == artifacts
    tasks = server.task_run_names(killed_serve["resumed_run"])
    assert "train-student" in tasks
    assert not {"train-teacher", "pseudolabel-shards", "balance"} & set(tasks)
    card = json.loads((run_dir / "iter-003" / "model.json").read_text())
    assert card["resumed_from_step"] is not None and card["resumed_from_step"] >= 10


# -- one writer per run directory, and input errors shown as the run's state -----------------------
def test_second_deployment_run_on_a_busy_run_dir_fails_naming_the_first(
    server, serve, digits_master, tmp_path
):
    """Two `noisy-student/iter` runs on one run_dir: the second ends Failed, its state message the
    one-line refusal naming the first flow run; the first is undisturbed."""
    run_dir = tmp_path / "busy"
    params = {"run_dir": str(run_dir), "data": str(digits_master), "config": {**CONFIG, "teacher.steps": 300}}
    _, first, _ = run_deployment(server, "noisy-student/iter", params, watch=False)
    deadline = time.monotonic() + 300
    while runlock.read_holder(run_dir) is None:
        assert time.monotonic() < deadline, "the first run never took the run directory's lock"
        assert server.flow_run(first)["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED")
        time.sleep(0.5)
    holder = runlock.read_holder(run_dir)
    assert first in holder["by"] and "noisy-student" in holder["by"]

    code, second, output = run_deployment(server, "noisy-student/iter", params)
    assert code == 1, output[-3000:]
    state = server.flow_run(second)["state"]
    assert state["type"] == "FAILED"
    assert state["message"].startswith(f"{run_dir}: in use by deployment run of noisy-student")
    assert first in state["message"] and "\n" not in state["message"]
    assert server.flow_run(first)["state"]["type"] not in ("FAILED", "CRASHED")

    # No need to train it out: cancel the first (serve stops its process; the lock goes with it).
    server.post(f"/flow_runs/{first}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
    deadline = time.monotonic() + 120
    while server.flow_run(first)["state"]["type"] != "CANCELLED":
        assert time.monotonic() < deadline, server.flow_run(first)["state"]
        time.sleep(1)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"data": "/nonexistent/digits"}, "/nonexistent/digits/dataset.json: not found"),
        ({"config": {"teacher.stpes": 3}}, "teacher.stpes: unknown key"),
    ],
    ids=["missing-data", "config-typo"],
)
def test_input_errors_fail_the_deployment_run_with_the_line_as_state_message(
    server, serve, digits_master, tmp_path, params, fragment
):
    run_dir = tmp_path / "run"
    code, run_id, output = run_deployment(
        server, "noisy-student/iter", {"run_dir": str(run_dir), "data": str(digits_master), **params}
    )
    assert code == 1, output[-3000:]
    state = server.flow_run(run_id)["state"]
    assert state["type"] == "FAILED"
    assert fragment in state["message"] and "\n" not in state["message"]
    assert "Traceback" not in state["message"] and not run_dir.exists()


# Last in the file: the heartbeats take about 90 s to go missing, which the tests above overlap.
def test_killed_run_is_marked_crashed_once_its_heartbeats_stop(server, killed_serve):
    """The killed run does not stay "Running" in the UI: missed heartbeats mark it Crashed."""
    killed_run = killed_serve["killed_run"]
    deadline = time.monotonic() + 240
    while server.flow_run(killed_run)["state"]["type"] != "CRASHED":
        assert time.monotonic() < deadline, f"killed run still {server.flow_run(killed_run)['state']}"
        time.sleep(2)
