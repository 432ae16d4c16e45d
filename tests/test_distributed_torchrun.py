"""Two gloo ranks through torchrun on the CPU: the data split, resuming with another world size,
and the same accuracy as one process with the same global batch.

Each test starts real torchrun subprocesses (`python -m torch.distributed.run`), on shards built
with `selftrain data digits`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from commands.cli import main

SELFTRAIN = [sys.executable, "-m", "commands.cli"]

# Run by torchrun on every rank: the training streams as the trainers build them (global batch,
# per-rank share, endless, shuffled, DataLoader workers), recording which keys each rank drew.
RANK_SCRIPT = """
import json, sys
from pathlib import Path

import torch.distributed as dist

from selftrain import distributed
from selftrain.data.dataset_info import load_dataset
from selftrain.data.stream import SplitStream, make_loader
from selftrain.transforms import eval_transform

one_shard, small_shards, out = map(Path, sys.argv[1:4])
device = distributed.init("cpu")
record = {"rank": distributed.rank(), "world_size": distributed.world_size(), "backend": dist.get_backend()}
# labeled: 50 images in one shard (fewer shards than readers: every other position per rank);
# val: 180 images in 11 shards of 17 or 10 (contiguous shares), read by 2 DataLoader workers per
# rank. Two epochs of steps each.
for data, split, global_batch, workers in ((one_shard, "labeled", 10, 0), (small_shards, "val", 30, 2)):
    dataset = load_dataset(data)
    per_rank = distributed.local_batch(global_batch, split)
    stream = SplitStream(
        dataset, split, eval_transform(8, 1), with_keys=True, repeat=True, shuffle=True, seed=7,
        shuffle_buffer=64, batch_size=per_rank,
    )
    batches = iter(make_loader(stream, per_rank, workers, device))
    steps = 2 * dataset.split(split).total // global_batch
    record[split] = [list(next(batches)[1]) for _ in range(steps)]
(out / f"rank{distributed.rank()}.json").write_text(json.dumps(record))
distributed.destroy()
"""


def _digits(tmp_path: Path) -> Path:
    out = tmp_path / "digits"
    assert main(["data", "digits", "--out", str(out), "--samples-per-shard", "17"]) == 0
    return out


@pytest.mark.integration
def test_two_gloo_ranks_draw_disjoint_samples_that_cover_each_epoch(digits_master, tmp_path):
    data = _digits(tmp_path)
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [f"--log-dir={tmp_path / 'torchrun'}", str(script)]  # not a torchelastic_* folder left in /tmp
    done = subprocess.run(
        [*cmd, str(digits_master), str(data), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    for source, split, per_rank in ((digits_master, "labeled", 5), (data, "val", 15)):
        assert all(len(batch) == per_rank for r in ranks for batch in r[split])  # global batch / 2
        truth = set(_split_keys(source, split))
        steps = len(ranks[0][split])
        for epoch in (slice(0, steps // 2), slice(steps // 2, steps)):
            drawn = [[k for batch in r[split][epoch] for k in batch] for r in ranks]
            assert set(drawn[0]).isdisjoint(drawn[1]), f"{split}: both ranks drew a sample"
            union = drawn[0] + drawn[1]
            assert len(union) == len(set(union)) == len(truth) and set(union) == truth, split
        first, second = (
            [k for r in ranks for b in r[split][part] for k in b]
            for part in (slice(0, steps // 2), slice(steps // 2, steps))
        )
        assert first != second, "each epoch is reshuffled"


def _split_keys(data: Path, split: str) -> list[str]:
    import tarfile

    index = json.loads((data / "dataset.json").read_text())
    keys = []
    for shard in index["splits"][split]["shards"]:
        with tarfile.open(data / shard["path"]) as tar:
            keys += sorted({Path(m.name).name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                status = (proc / "status").read_text()
                if "State:\tZ" not in status:
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


RESUME = [
    "teacher.steps=60",
    "teacher.eval_every=20",
    "teacher.checkpoint_every=20",
    "teacher.warmup_steps=5",
    "teacher.batch_size=32",
    "data.image_size=16",
]


@pytest.mark.integration
def test_checkpoint_of_two_ranks_resumes_with_one(digits_master, tmp_path):
    """Interrupted (Ctrl-C) after a 2-rank checkpoint: no rank survives; 1 process finishes the run."""
    run = tmp_path / "run"
    args = ["teacher", "train", "--data", str(digits_master), "--run-dir", str(run)]
    for o in RESUME:
        args += ["--set", o]
    scratch = tmp_path / "tmp"  # the system temp folder of the launcher and its ranks
    scratch.mkdir()
    proc = subprocess.Popen(
        [*SELFTRAIN, *args, "--nproc-per-node", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, TMPDIR=str(scratch)),
        # A shell that starts pytest in the background ignores SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoints = run / "iter-000" / "checkpoints"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not any(checkpoints.glob("step-*")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # the CLI stops torchrun's whole process group
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert "progress teacher 0:" in out  # rank 0's lines came through the pipe
    (written,) = [json.loads((c / "state.json").read_text())["state"] for c in sorted(checkpoints.iterdir())][
        -1:
    ]
    assert written["world_size"] == 2
    assert not (run / "iter-000" / "model.json").exists()
    time.sleep(1)
    assert _processes_mentioning(str(run)) == [], "a rank outlived the interrupted launcher"
    # torchrun's per-rank folders and the launch config went with the launcher, interrupted or not
    assert not [
        p.name for p in scratch.iterdir() if p.name.startswith(("torchelastic_", "selftrain-launch-"))
    ]

    assert main([*args, "--nproc-per-node", "1"]) == 0
    card = json.loads((run / "iter-000" / "model.json").read_text())
    assert card["world_size"] == 1 and card["resumed_from_world_size"] == 2
    assert card["resumed_from_step"] in (20, 40) and card["steps"] == 60
    assert [row["step"] for row in card["loss_curve"]] == [20, 40, 60]  # history carried over


# Same global batch (64) and steps whatever the world size; 16x16 inputs keep it to about a minute.
ACCURACY = [
    "teacher.steps=150",
    "teacher.eval_every=50",
    "teacher.checkpoint_every=1000",
    "data.image_size=16",
]


@pytest.mark.slow
def test_two_ranks_reach_the_accuracy_of_one_with_the_same_global_batch(digits_master, tmp_path):
    """Tolerance: 2 points of test accuracy (7 of 360 images).

    Two ranks do not replay one process's run: each rank shuffles its own share of the data, draws
    its own augmentations, and normalises BatchNorm over 32 images instead of 64, so the difference
    is of the size of the run-to-run spread of this recipe. Measured on this 2-core machine with
    these settings (test accuracy, seeds 0, 1, 2): 1 rank 93.33, 94.44, 93.89 (spread 1.1 points);
    2 ranks 93.61, 94.72, 94.44; differences per seed +0.28, +0.28, +0.56. 2 points covers that
    spread with a margin, and it fails a split that gives each rank a fixed half of the 50 labeled
    images (measured before epoch-wise shares: 91.11, 91.39, 92.22, i.e. 1.7 to 3.0 points below).
    Both runs are deterministic here (CPU, seeded, gloo's two-rank sum is order-free).
    """
    cards = {}
    for n in (1, 2):
        run = tmp_path / f"n{n}"
        args = [
            "teacher",
            "train",
            "--data",
            str(digits_master),
            "--run-dir",
            str(run),
            "--nproc-per-node",
            str(n),
        ]
        for o in ACCURACY:
            args += ["--set", o]
        done = subprocess.run([*SELFTRAIN, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        cards[n] = json.loads((run / "iter-000" / "model.json").read_text())
    assert cards[1]["world_size"] == 1 and cards[2]["world_size"] == 2
    assert cards[1]["labeled_batch"] == cards[2]["labeled_batch"] == 64
    assert cards[1]["test_accuracy"] > 0.85, "the one-process baseline itself did not learn"
    assert abs(cards[2]["test_accuracy"] - cards[1]["test_accuracy"]) <= 0.02, (
        cards[1]["test_accuracy"],
        cards[2]["test_accuracy"],
    )


@pytest.mark.gpu
def test_nccl_ranks_train_on_one_gpu_each(digits_master, tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    run = tmp_path / "run"
    args = ["teacher", "train", "--data", str(digits_master), "--run-dir", str(run), "--device", "cuda"]
    for o in RESUME:
        args += ["--set", o]
    done = subprocess.run(
        [*SELFTRAIN, *args, "--nproc-per-node", "2"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    card = json.loads((run / "iter-000" / "model.json").read_text())
    assert (card["world_size"], card["device"]) == (2, "cuda")


@pytest.mark.gpu
def test_more_ranks_than_gpus_is_refused(digits_master, tmp_path, capsys):
    import torch

    n = torch.cuda.device_count()
    args = ["teacher", "train", "--data", str(digits_master), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "--device", "cuda", "--nproc-per-node", str(n + 1)]) == 2
    assert (
        f"error: distributed.nproc_per_node: {n + 1} processes but {n} GPU(s) visible"
        in capsys.readouterr().err
    )
