"""`selftrain run` as a new user meets it: bad input is one `error:` line (exit 2) before any
Prefect server starts, and a run directory has one writer at a time (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selftrain import runlock

REPO = Path(__file__).resolve().parents[2]


def selftrain(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": "/nonexistent/prefect-home"},
        timeout=600,
        **kwargs,
    )


def assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in done.stderr and "prefect" not in done.stderr.lower()


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--data", "{tmp}/no-such-data"], ["no-such-data/dataset.json", "selftrain data digits"]),
        (["--data", "{data}", "--set", "teacher.stpes=3"], ["teacher.stpes", "unknown key"]),
        (["--data", "{data}", "--config", "{tmp}/missing.yaml"], ["missing.yaml"]),
        ([], ["data: required to start a new run"]),
        (["--data", "{data}", "--iterations", "-1"], ["iterations: must be 0 or more"]),
    ],
    ids=["missing-data", "config-typo", "missing-config", "no-data-new-run", "negative-iterations"],
)
def test_input_errors_are_one_line_before_prefect_and_create_nothing(
    tmp_path, digits_master, extra, fragments
):
    run_dir = tmp_path / "run"
    args = [a.format(tmp=tmp_path, data=digits_master) for a in extra]
    done = selftrain("run", "noisy-student", "--run-dir", str(run_dir), *args)
    assert_one_error_line(done, *fragments)
    if "--iterations" not in extra:  # input the run directory is checked against: nothing written
        assert not run_dir.exists()


def test_verbose_shows_the_traceback(tmp_path, digits_master):
    done = selftrain("-v", "run", "noisy-student", "--data", str(digits_master), "--run-dir", str(tmp_path / "r"),
                     "--set", "teacher.stpes=3")  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" in done.stderr and done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_run_directory_in_use_is_refused_before_prefect(tmp_path, digits_master):
    run_dir = tmp_path / "run"
    with runlock.hold(run_dir, by="`selftrain run noisy-student` (this test)"):
        done = selftrain("run", "noisy-student", "--data", str(digits_master), "--run-dir", str(run_dir))
    assert_one_error_line(done, str(run_dir), f"pid {os.getpid()}", "(this test)", "another --run-dir")
    assert not (run_dir / "manifest.json").exists()


@pytest.mark.integration
def test_two_cli_runs_on_one_run_directory(tmp_path, digits_master):
    """The first run trains; a second run, a teacher training and a labeler are refused naming it;
    `status` still reads; once the first is killed the lock is free again at once."""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "run", "noisy-student", "--data", str(digits_master),
         "--run-dir", str(run_dir), "--set", "teacher.steps=5000", "--set", "teacher.checkpoint_every=5000"],
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PREFECT_HOME": str(tmp_path / "prefect"),
            # On a busy machine the temporary Prefect server may take longer than its 30 s default.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        },
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"), start_new_session=True,  # noqa: SIM115
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "manifest.json").exists() or runlock.read_holder(run_dir) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the first run never opened its run directory"
            time.sleep(0.5)
        holder = runlock.read_holder(run_dir)
        assert holder["pid"] == first.pid and "selftrain" in holder["by"] and "noisy-student" in holder["by"]

        second = selftrain("run", "noisy-student", "--run-dir", str(run_dir))
        assert_one_error_line(second, f"{run_dir}: in use by", f"pid {first.pid}", "noisy-student")
        teacher = selftrain("teacher", "train", "--data", str(digits_master), "--run-dir", str(run_dir))
        assert_one_error_line(teacher, f"pid {first.pid}")
        labeler = selftrain("pseudolabel", "--run-dir", str(run_dir), "--shards", "0")
        assert_one_error_line(labeler, f"pid {first.pid}")
        status = selftrain("status", "--run-dir", str(run_dir))
        assert status.returncode == 0, status.stderr
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The kernel released the killed holder's lock: the next writer gets past it at once and
    # meets the run's real state instead (no teacher yet, so nothing to label).
    after = selftrain("pseudolabel", "--run-dir", str(run_dir), "--iteration", "0")
    assert_one_error_line(after, "no trained model")
