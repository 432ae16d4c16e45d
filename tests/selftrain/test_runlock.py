"""One writer per run directory, checked with real processes: refused at once with the holder
named, free again the moment a holder is killed, shared by labelers of disjoint shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selftrain import runlock

HOLD = """
import sys, time
from selftrain import runlock
runlock.acquire(sys.argv[1], by=sys.argv[2], shared=sys.argv[3] == "shared")
print("held", flush=True)
time.sleep(600)
"""
REPO = Path(__file__).resolve().parents[2]


def hold_in_subprocess(run_dir: Path, by: str, shared: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), by, "shared" if shared else "exclusive"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holders():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_second_writer_is_refused_at_once_naming_the_holder(tmp_path, holders):
    run = tmp_path / "run"
    holders.append(p := hold_in_subprocess(run, "`selftrain run noisy-student --run-dir run`"))
    started = time.monotonic()
    with pytest.raises(runlock.RunDirInUse) as info:
        runlock.acquire(run, by="test")
    assert time.monotonic() - started < 2  # refused, not queued
    message = str(info.value)
    assert "\n" not in message
    assert f"pid {p.pid}" in message and "`selftrain run noisy-student --run-dir run`" in message
    assert os.uname().nodename in message and "use another --run-dir" in message
    assert not runlock.holds(run)


def test_a_killed_holder_never_blocks_the_next_writer(tmp_path, holders):
    run = tmp_path / "run"
    holders.append(p := hold_in_subprocess(run, "victim"))
    p.send_signal(signal.SIGKILL)
    p.wait()
    with runlock.hold(run, by="next"):
        assert runlock.read_holder(run)["pid"] == os.getpid()
        assert runlock.read_holder(run)["by"] == "next"
    assert not runlock.holds(run)


def test_reentrant_in_one_process_and_released_by_the_outermost(tmp_path, holders):
    run = tmp_path / "run"
    with runlock.hold(run, by="cli"):
        with runlock.hold(run, by="flow"):  # `selftrain run` holds it, then its flow asks again
            pass
        assert runlock.holds(run)
        assert runlock.read_holder(run)["by"] == "cli"
    assert not runlock.holds(run)
    holders.append(hold_in_subprocess(run, "someone else"))  # really released


def test_shard_labelers_share_the_lock_but_not_with_a_run(tmp_path, holders):
    run = tmp_path / "run"
    holders.append(hold_in_subprocess(run, "labeler 1", shared=True))
    with runlock.hold(run, by="labeler 2", shared=True):
        pass
    with pytest.raises(runlock.RunDirInUse, match="labeler 1"):
        runlock.acquire(run, by="a run")


WRITE_THEN_DIE = """
import os, signal, sys
from selftrain import atomic
with atomic.atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of it")
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write: the temporary stays
"""


def test_the_next_writer_removes_temporaries_a_killed_writer_left(tmp_path, holders):
    run = tmp_path / "run"
    target = run / "iter-001" / "model.safetensors"
    target.parent.mkdir(parents=True)
    died = subprocess.run(
        [sys.executable, "-c", WRITE_THEN_DIE, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert died.returncode == -signal.SIGKILL
    (stale,) = target.parent.glob(".model.safetensors.*.tmp")
    with runlock.hold(run, by="labeler", shared=True):  # a shared holder may have writers beside it
        assert stale.exists()
    with runlock.hold(run, by="the next run"):
        assert not stale.exists() and not target.exists()
