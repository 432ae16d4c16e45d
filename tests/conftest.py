"""Shared fixtures: a digits data set built once per session, quick teacher settings, and one
Prefect test harness per session (a server takes 20 s to start; runs in subprocesses share it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
# `make test` runs one pytest-xdist worker per core (at most 4). Each worker, and every run it starts
# in a subprocess, computes on one thread: two workers of two threads on 2 cores spend a third more
# CPU time spinning than they save (20.4 min serial, 19.5 with two threads each, 13.2 with one).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))

# Steps small enough for unit tests; accuracy tests set their own. The digits are 8x8 scans:
# 16x16 loses nothing and trains about 3x faster than the default 32.
QUICK_TEACHER = [
    "data.image_size=16",
    "teacher.steps=30",
    "teacher.eval_every=15",
    "teacher.checkpoint_every=15",
    "teacher.warmup_steps=5",
    "teacher.batch_size=32",
]


@pytest.fixture(scope="session")
def digits_master(tmp_path_factory) -> Path:
    from selftrain.data.digits import build_digits

    out = tmp_path_factory.mktemp("digits") / "digits"
    build_digits(out, labels_per_class=5, seed=0)
    return out


@pytest.fixture
def digits_dir(digits_master: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may corrupt its shards."""
    dst = tmp_path / "digits"
    shutil.copytree(digits_master, dst)
    return dst


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    # under pytest's own temp root, which it prunes: a mkdtemp here was left in /tmp every session
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # 30 s is not enough on a busy machine
        yield PREFECT_API_URL.value()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
