"""Damaged run state is caught on resume, never used: checkpoints, weights, model cards,
selections and sidecars, and the manifest; each refusal is one line naming the file and the fix.
A write that fails (file size limit: a full disk as the process sees it) keeps the old file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selftrain import atomic
from selftrain.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from selftrain.engine import TrainLoop
from selftrain.errors import SelftrainError
from selftrain.runstore import PREVIOUS_MANIFEST, RunStore

REPO = Path(__file__).resolve().parents[2]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def tiny_loop(root: Path, steps: int) -> TrainLoop:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

    def step_fn(batch, step):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item()}

    return TrainLoop(
        modules={"model": model},
        optimizers={"model": opt},
        schedulers={"model": sched},
        step_fn=step_fn,
        batches=lambda start: iter(range(start, 10_000)),
        evaluate=lambda: 0.5,
        selected="model",
        steps=steps,
        eval_every=2,
        checkpoint_every=2,
        checkpoint_dir=root,
    )


@pytest.mark.parametrize("damage", [truncate, flip_last_byte], ids=["truncated", "altered"])
@pytest.mark.parametrize("name", ["tensors.safetensors", "state.json"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage, name):
    model = torch.nn.Linear(4, 2)
    path = save_checkpoint(tmp_path, 2, modules={"m": model}, optimizers={}, schedulers={}, state={})
    damage(path / name)
    with pytest.raises(SelftrainError) as exc:
        load_checkpoint(path, modules={"m": model}, optimizers={}, schedulers={})
    one_line(exc, str(path / name), "delete", "previous checkpoint")


def test_resume_passes_over_a_damaged_checkpoint_and_says_so(tmp_path):
    tiny_loop(tmp_path, steps=4).run()  # checkpoints at steps 2 and 4 (two kept)
    newest = list_checkpoints(tmp_path)[-1]
    assert newest.name.endswith("4")
    flip_last_byte(newest / "tensors.safetensors")
    result = tiny_loop(tmp_path, steps=6).run()
    assert result.resumed_from == 2  # the previous good checkpoint, not the damaged one
    assert len(result.damaged_checkpoints) == 1 and result.damaged_checkpoints[0].startswith(newest.name)


@pytest.fixture
def store(tmp_path) -> RunStore:
    """A run directory whose iteration 0 is recorded as trained, with weights and card."""
    store = RunStore(tmp_path / "run")
    store.root.mkdir()
    store._write_manifest({"format_version": 1, "data": "/data", "created": 0, "iterations": {}})
    model = torch.nn.Linear(4, 2)
    artifacts = store.save_model(0, model.state_dict(), {"architecture": "linear", "num_classes": 2})
    store.mark_stage(0, "train", "done", role="teacher", model="linear", artifacts=artifacts)
    return store


@pytest.mark.parametrize("damage", [truncate, flip_last_byte], ids=["truncated", "altered"])
def test_damaged_weights_are_refused(store, damage):
    damage(store.iter_dir(0) / "model.safetensors")
    with pytest.raises(SelftrainError) as exc:
        store.load_weights(0)
    one_line(exc, "model.safetensors", "sha256 differs")


@pytest.mark.parametrize("damage", [truncate, flip_last_byte], ids=["truncated", "altered"])
def test_damaged_model_card_is_refused(store, damage):
    damage(store.iter_dir(0) / "model.json")
    with pytest.raises(SelftrainError) as exc:
        store.card(0)
    one_line(exc, "model.json", "damaged", "--from-iteration")


@pytest.mark.parametrize("edit", ["truncate", "alter"])
def test_damaged_manifest_is_refused_and_points_at_the_previous_version(store, edit):
    path = store.manifest_path
    if edit == "truncate":
        truncate(path)
    else:  # valid JSON, but not what selftrain wrote: a stage marked done by hand
        manifest = json.loads(path.read_text())
        manifest["iterations"]["0"]["stages"]["train"]["state"] = "pending"
        path.write_text(json.dumps(manifest))
    with pytest.raises(SelftrainError) as exc:
        store.manifest()
    one_line(exc, str(path), "damaged", PREVIOUS_MANIFEST)
    (store.root / PREVIOUS_MANIFEST).replace(path)  # the fix the message gives
    assert store.manifest()["format_version"] == 1


def test_damaged_selection_and_sidecar_are_refused(store):
    from pseudolabel.selection import SELECTION, read_selection

    pseudo = store.iter_dir(0) / "pseudo"
    sidecar_sha = atomic.write_bytes(pseudo / "unlabeled-000000.labels.tar.gz", b"labels")
    sha = atomic.write_json(pseudo / SELECTION, {"sidecars": {"unlabeled-000000.labels.tar.gz": sidecar_sha}})
    store.mark_stage(0, "pseudolabel", "done", artifacts={SELECTION: sha})
    assert read_selection(store, 0)["sidecars"]
    flip_last_byte(pseudo / "unlabeled-000000.labels.tar.gz")
    with pytest.raises(SelftrainError) as exc:
        read_selection(store, 0)
    one_line(exc, "unlabeled-000000.labels.tar.gz", "selftrain pseudolabel")
    truncate(pseudo / SELECTION)
    with pytest.raises(SelftrainError) as exc:
        read_selection(store, 0)
    one_line(exc, str(pseudo / SELECTION), "damaged")


WRITE_OVER_LIMIT = """
import resource, sys  # Python ignores SIGXFSZ: an over-limit write raises EFBIG
from selftrain import atomic
from selftrain.errors import SelftrainError
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    atomic.write_bytes(sys.argv[1], b"x" * 5000)
except SelftrainError as exc:
    print(f"error: {exc}")
    sys.exit(2)
"""


def test_a_failed_write_keeps_the_previous_file_and_says_so(tmp_path):
    target = tmp_path / "model.json"
    atomic.write_text(target, "previous")
    done = subprocess.run(
        [sys.executable, "-c", WRITE_OVER_LIMIT, str(target)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip().splitlines() == [done.stdout.strip()]
    assert str(target) in done.stdout and "previous file kept" in done.stdout
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary left behind


def test_reopening_removes_checkpoints_of_a_stage_killed_after_it_was_recorded_done(tmp_path, digits_master):
    store = RunStore(tmp_path / "run")
    store.open(digits_master, None, [])
    artifacts = store.save_model(0, torch.nn.Linear(4, 2).state_dict(), {"architecture": "linear"})
    store.mark_stage(0, "train", "done", role="teacher", model="linear", artifacts=artifacts)
    finished, unfinished = store.iter_dir(0) / "checkpoints", store.iter_dir(1) / "checkpoints"
    for root in (finished, unfinished):  # the kill came between "done" and their removal
        save_checkpoint(root, 2, modules={"m": torch.nn.Linear(4, 2)}, optimizers={}, schedulers={}, state={})
    store.open(digits_master, None, [])
    assert not finished.exists()
    assert list_checkpoints(unfinished)  # a stage still training resumes from these


def test_pointing_a_copied_run_at_other_data_keeps_its_manifest_valid(store, tmp_path):
    """The benchmarks label other shards with a copy of a trained run: the manifest they change
    must still verify (an edit by hand is refused as damage)."""
    store.point_at_data(tmp_path / "other-data")
    assert store.data_dir() == tmp_path / "other-data"
    assert store.load_weights(0)[1]["architecture"] == "linear"  # the rest is untouched and verifies
