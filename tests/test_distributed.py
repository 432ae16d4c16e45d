"""Data-parallel plumbing that needs no process group: the split of an epoch over ranks x DataLoader
workers, resume positions, per-rank batches, and the launcher's subprocess handling.

The torchrun runs (2 gloo ranks) are in tests/test_distributed_torchrun.py.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest
import torch

from selftrain import distributed
from selftrain.data.dataset_info import load_dataset
from selftrain.data.stream import SplitStream, consumed_by_reader, epoch_plan, make_loader
from selftrain.errors import SelftrainError
from selftrain.launch import progress_of, run_streaming, training_command
from selftrain.transforms import eval_transform

UNEVEN = [7, 3, 0, 11, 5, 1]  # includes an empty shard and a one-sample shard


@pytest.mark.parametrize("sizes", [UNEVEN, [50], [4, 9]])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_epoch_plan_is_disjoint_covering_and_balanced(sizes, world, workers):
    slots = world * max(workers, 1)
    for epoch in range(3):
        order = list(range(len(sizes)))
        random.Random(epoch).shuffle(order)
        seen: list[tuple[int, int]] = []
        shares = []
        for slot in range(slots):
            plan = epoch_plan(sizes, order, slot, slots, seed=f"epoch-{epoch}")
            mine = [(shard, j) for shard, positions in plan for j in positions]
            assert all(list(positions) == sorted(positions) for _, positions in plan)
            assert all(0 <= j < sizes[shard] for shard, j in mine)
            shares.append(len(mine))
            seen += mine
        assert len(seen) == len(set(seen)), "two readers share a sample"
        assert set(seen) == {(i, j) for i, n in enumerate(sizes) for j in range(n)}, "a sample is missed"
        assert max(shares) - min(shares) <= 1


def test_epoch_plan_reads_few_shards_when_there_are_many():
    sizes = [100] * 16
    plans = [epoch_plan(sizes, list(range(16)), s, 4) for s in range(4)]
    assert [[i for i, _ in p] for p in plans] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
        [12, 13, 14, 15],
    ]
    assert all(positions == range(100) for p in plans for _, positions in p)  # whole shards


def test_epoch_plan_draws_another_share_each_epoch_when_shards_are_few():
    shares = [
        {j for _, mine in epoch_plan([50], [0], 0, 2, seed=f"epoch-{e}") for j in mine} for e in range(3)
    ]
    assert all(len(s) == 25 for s in shares) and len({frozenset(s) for s in shares}) == 3


def _round_robin(steps: int, batch: int, workers: int) -> list[int]:
    """What a DataLoader over `workers` endless workers hands out: batch k from worker k % workers."""
    delivered = [0] * workers
    for k in range(steps):
        delivered[k % workers] += batch
    return delivered


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_consumed_by_reader_matches_the_dataloader_round_robin(world, workers):
    batch = 4
    for steps in range(0, 11):
        expected = _round_robin(steps, batch, workers)
        start_sample = steps * batch * world
        got = [consumed_by_reader(start_sample, batch, world, w, workers) for w in range(workers)]
        assert got == expected


@pytest.fixture(scope="module")
def uneven_digits(tmp_path_factory) -> Path:
    """Digits in 17-sample shards: val has 180 images in 10 full shards and one of 10."""
    from selftrain.data.digits import build_digits

    out = tmp_path_factory.mktemp("uneven") / "digits"
    build_digits(out, labels_per_class=5, seed=0, samples_per_shard=17)
    return out


def _keys_of_rank(dataset, split, rank, world, workers, monkeypatch, **kwargs) -> list[str]:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    stream = SplitStream(dataset, split, eval_transform(8, 1), with_keys=True, **kwargs)
    loader = make_loader(stream, 8, workers, torch.device("cpu"))
    return [k for _, keys in loader for k in keys]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_streams_of_all_ranks_cover_an_epoch_once(uneven_digits, world, workers, monkeypatch):
    dataset = load_dataset(uneven_digits)
    for split in ("val", "labeled"):  # many uneven shards / fewer shards than readers
        every = _keys_of_rank(dataset, split, 0, 1, 0, monkeypatch)
        per_rank = [
            _keys_of_rank(dataset, split, r, world, workers, monkeypatch, shuffle=True, seed=3)
            for r in range(world)
        ]
        union = [k for keys in per_rank for k in keys]
        assert len(union) == len(set(union)) == len(every), f"{split}: ranks overlap or miss samples"
        assert set(union) == set(every)
        if world > 1:
            assert all(set(a).isdisjoint(b) for i, a in enumerate(per_rank) for b in per_rank[i + 1 :])


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_training_stream_resumes_exactly_at_the_same_world_size(uneven_digits, world, workers, monkeypatch):
    """Per rank: the batches after a resume at step T are the batches an uninterrupted run draws."""
    dataset = load_dataset(uneven_digits)
    global_batch, steps, resume_at = 12 * world, 40, 23  # 40 steps of 12 per rank cross epochs

    def draw(rank: int, start_step: int, n: int) -> list[list[str]]:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        stream = SplitStream(
            dataset,
            "val",
            eval_transform(8, 1),
            with_keys=True,
            repeat=True,
            shuffle=True,
            seed=5,
            shuffle_buffer=20,
            start_sample=start_step * global_batch,
            batch_size=global_batch // world,
        )
        it = iter(make_loader(stream, global_batch // world, workers, torch.device("cpu")))
        return [list(next(it)[1]) for _ in range(n)]

    for rank in range(world):
        whole = draw(rank, 0, steps)
        assert draw(rank, resume_at, steps - resume_at) == whole[resume_at:]


def test_training_stream_with_more_readers_than_samples_is_refused(uneven_digits, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "64")
    stream = SplitStream(load_dataset(uneven_digits), "labeled", eval_transform(8, 1), repeat=True)
    with pytest.raises(SelftrainError, match="labeled: 50 samples cannot feed 64 processes x 1"):
        make_loader(stream, 1, 0, torch.device("cpu"))


def test_local_batch_divides_the_global_batch(monkeypatch):
    assert distributed.local_batch(64, "teacher.batch_size") == 64
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.local_batch(64, "teacher.batch_size") == 16
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SelftrainError, match=r"^teacher.batch_size: 64 is not divisible by 3 processes"):
        distributed.local_batch(64, "teacher.batch_size")


def test_one_process_helpers_are_identities():
    assert not distributed.active()
    assert distributed.mean_scalars({"loss": 1.5}) == {"loss": 1.5}
    assert distributed.sum_int(7) == 7
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    state = torch.get_rng_state()
    distributed.decorrelate_rng()  # rank 0: untouched
    assert torch.equal(torch.get_rng_state(), state)


def test_training_command_is_torchrun_on_this_module(tmp_path):
    cmd = training_command("student", tmp_path / "run", tmp_path / "c.json", 2, iteration=1)
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:8] == ["-m", "commands.train_rank", "student"] and cmd[-2:] == ["--iteration", "1"]
    logged = training_command("teacher", tmp_path / "run", tmp_path / "c.json", 2, log_dir=tmp_path / "logs")
    assert logged[5:7] == [f"--log-dir={tmp_path / 'logs'}", "-m"]  # a torchrun option, before the module
    assert progress_of("progress student 1: 12/300 loss 0.5") == (12, 300)
    assert progress_of("[rank 0] INFO selftrain.engine: step 12/300") is None


def test_run_streaming_streams_lines_and_reports_the_rank_error():
    script = "import sys; print('one', flush=True); print('[rank 1] error: bad thing', file=sys.stderr); sys.exit(3)"
    seen: list[str] = []
    with pytest.raises(SelftrainError, match="exited with code 3: bad thing"):
        run_streaming([sys.executable, "-c", script], seen.append)
    assert seen == ["one", "[rank 1] error: bad thing"]
    assert run_streaming([sys.executable, "-c", "print('ok')"], seen.append) == ["ok"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


@pytest.mark.parametrize("stop", ["timeout", "exception"])
def test_run_streaming_stops_the_whole_process_group(stop, tmp_path):
    """A parent and the grandchild it starts (as torchrun starts ranks) are both gone afterwards."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )

    def on_line(line: str) -> None:
        if stop == "exception" and line == "started":
            raise KeyboardInterrupt  # as Ctrl-C, or Prefect's TimeoutError injected into the task thread

    started = time.monotonic()
    with pytest.raises(TimeoutError if stop == "timeout" else KeyboardInterrupt):
        run_streaming(
            [sys.executable, "-c", script], on_line, timeout_s=8 if stop == "timeout" else None, grace_s=5
        )
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the grandchild survived"


def test_a_killed_launcher_takes_its_subprocess_with_it(tmp_path):
    """SIGKILL of the launching process (a flow killed hard) must not leave training running."""
    import signal
    import subprocess

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    launcher = (
        "import sys\n"
        "from selftrain.launch import run_streaming\n"
        f"run_streaming([sys.executable, '-c', {child!r}], print)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher])
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the training subprocess outlived its launcher"
