"""`data.num_workers: auto`: none on the CPU, enough on a GPU, never more than a split can feed."""

from __future__ import annotations

import pytest
import torch

from selftrain.config import load_config
from selftrain.data import workers
from selftrain.data.dataset_info import load_dataset
from selftrain.data.stream import SplitStream, make_loader
from selftrain.data.workers import resolve_workers
from selftrain.errors import SelftrainError
from selftrain.transforms import eval_transform

CUDA = torch.device("cuda")  # a device object only: nothing here touches a GPU


def test_auto_is_the_default_and_means_no_workers_on_the_cpu():
    assert load_config(None).data.num_workers == "auto"
    assert load_config(None, recipe="photos").data.num_workers == "auto"
    assert resolve_workers("auto", torch.device("cpu")) == 0
    assert resolve_workers(3, torch.device("cpu")) == 3 and resolve_workers(0, CUDA) == 0


@pytest.mark.parametrize(
    ("cpus", "world", "expected"), [(16, 1, 8), (4, 1, 3), (1, 1, 0), (16, 2, 7), (8, 4, 1)]
)
def test_auto_on_cuda_leaves_each_rank_a_core_and_stops_at_eight(monkeypatch, cpus, world, expected):
    monkeypatch.setattr(workers, "available_cpus", lambda: cpus)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert resolve_workers("auto", CUDA) == expected


@pytest.mark.parametrize(
    ("cpu_max", "expected"), [("400000 100000\n", 4), ("150000 100000", 1), ("max 100000", None), ("junk", None)]
)
def test_a_containers_cpu_quota_caps_the_cpus(tmp_path, monkeypatch, cpu_max, expected):
    """A pod limited to 4 CPUs gets workers for 4, not for the node's cores."""
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(workers, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert workers.available_cpus() == (expected or 64)


@pytest.mark.parametrize("value", ["many", -1, 65, 2.5, "true"])
def test_other_values_are_refused_in_one_line_naming_the_key(value):
    with pytest.raises(
        SelftrainError,
        match=r"^config: data\.num_workers: Input should be a count from 0 to 64 or 'auto' \(got [^;]*\)$",
    ):
        load_config(None, [f"data.num_workers={value}"])


def test_auto_gives_a_small_split_only_the_workers_it_can_feed(digits_master, monkeypatch):
    """50 labeled images over 8 ranks: 7 workers each would leave readers empty; auto takes 6,
    while an explicit 7 is refused with the way out."""
    monkeypatch.setattr(workers, "available_cpus", lambda: 64)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    stream = SplitStream(load_dataset(digits_master), "labeled", eval_transform(8, 1), repeat=True)
    assert stream.epoch_size == 50 and resolve_workers("auto", CUDA) == 7
    assert make_loader(stream, 1, "auto", CUDA).num_workers == 6
    with pytest.raises(SelftrainError, match="cannot feed 8 processes x 7 DataLoader workers; lower"):
        make_loader(stream, 1, 7, CUDA)
