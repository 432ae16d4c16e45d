"""A run directory with a quick teacher and its pseudo-labels, built once per module."""

from __future__ import annotations

import shutil

import pytest
import torch

from selftrain.data.dataset_info import load_dataset
from selftrain.runstore import RunStore
from tests.conftest import QUICK_TEACHER

QUICK_STUDENT = [
    "student.steps=12",
    "student.eval_every=6",
    "student.checkpoint_every=6",
    "student.warmup_steps=2",
    "student.batch_size=4",
    "student.unlabeled_ratio=[3, 5]",
    "student.models=[resnet10t, resnet10t]",
    "pseudolabel.confidence_threshold=0.1",  # a 12-step student is rarely sure of anything
]


@pytest.fixture(scope="module")
def labeled_run(digits_master, tmp_path_factory):
    """RUN with iteration 0 trained and pseudo-labeled (the state a student starts from)."""
    from pseudolabel.iteration import pseudolabel_iteration
    from teachers.supervised import train_teacher

    root = tmp_path_factory.mktemp("student") / "run"
    store = RunStore(root)
    cfg = store.open(digits_master, None, [*QUICK_TEACHER, *QUICK_STUDENT])
    train_teacher(store, load_dataset(digits_master), cfg, torch.device("cpu"))
    pseudolabel_iteration(store, 0, device=torch.device("cpu"))
    return root


@pytest.fixture
def run_copy(labeled_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(labeled_run, dst)
    return dst
