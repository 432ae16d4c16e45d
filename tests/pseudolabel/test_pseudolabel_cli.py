"""`selftrain pseudolabel` end to end: outputs, shard groups, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from commands.cli import main
from pseudolabel.label_shards import pseudo_dir
from pseudolabel.selection import read_selection, write_selection
from pseudolabel.sidecar import meta_path, read_meta, read_sidecar, sidecar_path
from selftrain.data.dataset_info import load_dataset, save_dataset
from selftrain.data.shards import iter_shard

REPO = Path(__file__).resolve().parents[2]


def _run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["pseudolabel", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_end_to_end_writes_sidecars_selection_plot_and_manifest(run, capsys):
    rc, out, _ = _run_cli(capsys, "--run-dir", str(run.root), "--json")
    assert rc == 0
    result = json.loads(out)
    assert result["labeling"]["labeled_images"] == 1207 and result["missing_shards"] == []
    phases = result["labeling"]["phase_seconds"]  # where the time went: each part measured, within the total
    assert set(phases) == {"input", "model", "write"} and min(phases.values()) > 0
    assert sum(phases.values()) <= result["labeling"]["seconds"] + 0.01
    sel = read_selection(run, 0)
    n = sel["images_per_class"]
    stats = sel["stats"]
    nonempty = [c for c, v in stats["per_class"]["confident"].items() if v]
    assert sum(sel["copies"].values()) == n * len(nonempty) == stats["selected_copies"]
    assert all(v == n for c, v in stats["per_class"]["selected"].items() if c in nonempty)
    assert sum(stats["per_class"]["predicted"].values()) == stats["images"] == 1207
    assert sum(stats["confidence_histogram"]["all"]) == 1207
    for when in ("before_filter", "after_filter", "after_balance"):  # digits knows the truth
        assert 0.0 <= stats["accuracy"][when]["accuracy"] <= 1.0
    assert stats["accuracy"]["before_filter"]["count"] == 1207
    assert set(sel["sidecars"]) == {f"unlabeled-{i:06d}.labels.tar.gz" for i in range(10)}
    assert (pseudo_dir(run, 0) / "confidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stage = run.iteration(0)["stages"]["pseudolabel"]
    assert stage["state"] == "done" and set(stage["artifacts"]) == {"selection.json", "confidence.png"}


def test_human_output(run, capsys):
    rc, out, _ = _run_cli(capsys, "--run-dir", str(run.root))
    assert rc == 0
    assert "labeled 10 shards (1207 images)" in out and "pseudo-label accuracy: before filter" in out
    assert re.search(r"\(reading \+ decoding \d+\.\d s, model \d+\.\d s, writing \d+\.\d s\)", out)
    assert out.splitlines()[-1].startswith("9 ")  # per-class table, last class


def test_shard_groups_then_selection_once_all_are_labeled(run, capsys):
    rc, out, _ = _run_cli(capsys, "--run-dir", str(run.root), "--shards", "0", "unlabeled-000001", "--json")
    first = json.loads(out)
    assert rc == 0 and first["selection"] is None and len(first["missing_shards"]) == 8
    assert run.stage_state(0, "pseudolabel") == "pending"
    assert not (pseudo_dir(run, 0) / "selection.json").exists()
    rest = ",".join(str(i) for i in range(2, 10))
    rc, out, _ = _run_cli(capsys, "--run-dir", str(run.root), "--shards", rest, "--json")
    second = json.loads(out)
    assert rc == 0 and second["selection"] is not None and second["labeling"]["labeled_shards"] == 8
    assert run.stage_state(0, "pseudolabel") == "done"


def test_selection_refuses_missing_sidecars(run):
    dataset = load_dataset(run.data_dir())
    with pytest.raises(
        Exception, match=r"10 unlabeled shards have no complete sidecar.*--shards unlabeled-000000"
    ):
        write_selection(run, dataset, 0, run.config())


KILL_ON_THIRD_SHARD = """
import os, signal, sys
from pseudolabel.sidecar import SidecarWriter
from commands.cli import main

opened = []
original_init, original_write = SidecarWriter.__init__, SidecarWriter.write

def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    opened.append(self)

def write(self, *args, **kwargs):
    original_write(self, *args, **kwargs)
    if len(opened) == 3:  # two shards committed, the third half written
        os.kill(os.getpid(), signal.SIGKILL)

SidecarWriter.__init__, SidecarWriter.write = init, write
sys.exit(main(["pseudolabel", "--run-dir", sys.argv[1]]))
"""


def test_resume_after_sigkill_equals_an_uninterrupted_run(make_run, sidecar_files, capsys):
    killed, clean = make_run("killed"), make_run("clean")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_ON_THIRD_SHARD, str(killed.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    out_dir = pseudo_dir(killed, 0)
    assert sorted(p.name for p in out_dir.glob("*.labels.json")) == [
        "unlabeled-000000.labels.json",
        "unlabeled-000001.labels.json",
    ]
    assert list(out_dir.glob(".unlabeled-000002.labels.tar.gz.*.tmp"))  # the half-written shard
    assert killed.stage_state(0, "pseudolabel") == "pending"

    rc, out, _ = _run_cli(capsys, "--run-dir", str(killed.root), "--json")
    assert rc == 0 and json.loads(out)["labeling"]["reused_shards"] == 2
    assert _run_cli(capsys, "--run-dir", str(clean.root))[0] == 0
    assert sidecar_files(out_dir) == sidecar_files(pseudo_dir(clean, 0))
    assert not list(out_dir.glob(".*.tmp"))
    assert read_selection(killed, 0)["copies"] == read_selection(clean, 0)["copies"]


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_corrupt_shard_fails_naming_it_and_commits_nothing_of_it(make_run, data_copy, capsys):
    store = make_run(data=data_copy)
    _truncate(data_copy / "unlabeled-000002.tar", 60_000)
    rc, _, err = _run_cli(capsys, "--run-dir", str(store.root))
    assert rc == 2
    assert "unlabeled-000002.tar: corrupt or truncated tar" in err and "--skip-corrupt" in err
    assert len(err.strip().splitlines()) == 1
    out_dir = pseudo_dir(store, 0)
    assert sorted(p.name for p in out_dir.glob("*.labels.json")) == [
        "unlabeled-000000.labels.json",
        "unlabeled-000001.labels.json",
    ]
    assert not list(out_dir.glob("unlabeled-000002.*")) and not list(out_dir.glob(".*.tmp"))
    assert store.stage_state(0, "pseudolabel") == "pending"


def test_skip_corrupt_counts_and_goes_on(make_run, data_copy, capsys):
    store = make_run(data=data_copy)
    _truncate(data_copy / "unlabeled-000002.tar", 60_000)
    rc, out, _ = _run_cli(capsys, "--run-dir", str(store.root), "--skip-corrupt", "--json")
    assert rc == 0
    result = json.loads(out)
    meta = read_meta(meta_path(pseudo_dir(store, 0), "unlabeled-000002.tar"))
    assert meta["skipped"] > 0 and meta["samples"] + meta["skipped"] == 128
    assert result["labeling"]["skipped"] == meta["skipped"] == result["selection"]["skipped"]
    assert result["selection"]["images"] == 1207 - meta["skipped"]
    rc, out, _ = _run_cli(capsys, "--run-dir", str(store.root), "--skip-corrupt", "--json")
    again = json.loads(out)["labeling"]  # a shard with skipped samples is never taken as complete
    assert [s["shard"] for s in again["shards"] if s["status"] == "labeled"] == ["unlabeled-000002.tar"]


def test_corrupt_image_in_a_valid_shard(make_run, data_copy, capsys):
    dataset = load_dataset(data_copy)
    entry = dataset.split("unlabeled").shards[1]
    path = dataset.shard_path(entry)
    samples = list(iter_shard(path, entry))
    with wds.TarWriter(str(path), encoder=False) as sink:
        for i, s in enumerate(samples):
            sink.write({"__key__": s["__key__"], "png": b"not a png" if i == 5 else s["png"]})
    entry.sha256 = None  # the shard was rewritten on purpose
    save_dataset(data_copy, dataset.info)
    store = make_run(data=data_copy)
    rc, _, err = _run_cli(capsys, "--run-dir", str(store.root))
    assert rc == 2 and "unlabeled-000001.tar: sample" in err and "is not a readable image" in err
    rc, out, _ = _run_cli(capsys, "--run-dir", str(store.root), "--skip-corrupt", "--json")
    assert rc == 0 and json.loads(out)["labeling"]["skipped"] == 1
    labels = read_sidecar(sidecar_path(pseudo_dir(store, 0), "unlabeled-000001.tar"), 10)
    assert len(labels) == 127 and samples[5]["__key__"] not in labels.keys


def test_class_count_mismatch_fails_before_any_output(make_run, data_copy, capsys):
    store = make_run(data=data_copy)  # teacher for 10 classes
    raw = json.loads((data_copy / "dataset.json").read_text())
    raw["classes"] = ["a", "b", "c"]
    (data_copy / "dataset.json").write_text(json.dumps(raw))
    rc, _, err = _run_cli(capsys, "--run-dir", str(store.root))
    assert rc == 2
    assert "model.json: the model of iteration 0 predicts 10 classes" in err and "has 3" in err
    assert not pseudo_dir(store, 0).exists()


def test_missing_teacher_says_which_iteration_to_train_first(make_run, capsys):
    store = make_run(teacher=False)
    rc, _, err = _run_cli(capsys, "--run-dir", str(store.root))
    assert rc == 2 and "iteration 0 has no trained model" in err
    assert "train iteration 0 first (`selftrain teacher train --data" in err
    assert not pseudo_dir(store, 0).exists()

    trained = make_run("trained")
    rc, _, err = _run_cli(capsys, "--run-dir", str(trained.root), "--iteration", "2")
    assert rc == 2 and "iteration 2 has no trained model" in err and "train iteration 1 first" in err


def test_not_a_run_directory(tmp_path, capsys):
    rc, _, err = _run_cli(capsys, "--run-dir", str(tmp_path / "nowhere"))
    assert rc == 2 and "not a run directory" in err


def test_unknown_shard_name(run, capsys):
    rc, _, err = _run_cli(capsys, "--run-dir", str(run.root), "--shards", "unlabeled-000042")
    assert rc == 2 and "--shards 'unlabeled-000042'" in err


@pytest.mark.integration
def test_trained_teacher_labels_digits_well(make_run, capsys, digits_shards, tmp_path):
    """A real (briefly trained) teacher: its pseudo-labels beat chance by far, and filtering helps."""
    from selftrain.runstore import RunStore

    store = RunStore(tmp_path / "trained")
    rc = main(
        [
            "teacher",
            "train",
            "--data",
            str(digits_shards),
            "--run-dir",
            str(store.root),
            "--set",
            "data.image_size=16",
            "--set",
            "teacher.steps=100",
            "--set",
            "teacher.warmup_steps=10",
            "--set",
            "teacher.eval_every=50",
            "--set",
            "teacher.checkpoint_every=100",
        ]
    )
    assert rc == 0
    capsys.readouterr()
    rc, out, _ = _run_cli(capsys, "--run-dir", str(store.root), "--json")
    acc = json.loads(out)["selection"]["accuracy"]
    assert acc["before_filter"]["accuracy"] > 0.8
    assert acc["after_filter"]["accuracy"] >= acc["before_filter"]["accuracy"]
    assert np.isfinite(acc["after_balance"]["accuracy"])


def test_kill_leaves_no_record_for_the_interrupted_shard_in_process(run, monkeypatch):
    """The same guarantee without a subprocess: an exception midway aborts the open sidecar."""
    from pseudolabel import sidecar

    original = sidecar.SidecarWriter.write
    seen = []

    def failing_write(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self)
        if len(seen) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(sidecar.SidecarWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        from pseudolabel.iteration import pseudolabel_iteration

        pseudolabel_iteration(run, 0)
    out_dir = pseudo_dir(run, 0)
    assert len(list(out_dir.glob("*.labels.json"))) == 3 and not list(out_dir.glob(".*.tmp"))
