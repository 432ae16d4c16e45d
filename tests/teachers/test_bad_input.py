"""Every bad input stops the teacher with one line naming the file and the fix, and loses nothing."""

import json

import pytest

from commands.cli import main
from selftrain.runstore import RunStore
from tests.conftest import QUICK_TEACHER
from tests.helpers import edit_index, rewrite_shard


def train(digits_dir, run_dir, *extra):
    args = ["teacher", "train", "--data", str(digits_dir), "--run-dir", str(run_dir)]
    for o in QUICK_TEACHER:
        args += ["--set", o]
    return main([*args, *extra])


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def assert_nothing_looks_done(run_dir):
    assert not (run_dir / "iter-000" / "model.safetensors").exists()
    assert not (run_dir / "iter-000" / "model.json").exists()
    if (run_dir / "manifest.json").exists():
        assert RunStore(run_dir).stage_state(0, "train") != "done"


def test_truncated_shard(digits_dir, tmp_path, capsys):
    shard = digits_dir / "labeled-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert train(digits_dir, tmp_path / "run") == 2
    line = error_line(capsys)
    assert "labeled-000000.tar" in line and ("truncated" in line or "sha256" in line)
    assert "--skip-corrupt" in line
    assert_nothing_looks_done(tmp_path / "run")


def test_garbage_shard(digits_dir, tmp_path, capsys):
    (digits_dir / "val-000000.tar").write_bytes(b"\x00garbage" * 300)
    assert train(digits_dir, tmp_path / "run") == 2
    assert "val-000000.tar" in error_line(capsys)
    assert_nothing_looks_done(tmp_path / "run")
    assert RunStore(tmp_path / "run").stage_state(0, "train") == "failed"


def test_checksum_mismatch(digits_dir, tmp_path, capsys):
    edit_index(digits_dir, lambda ix: ix["splits"]["labeled"]["shards"][0].update(sha256="ab" * 32))
    assert train(digits_dir, tmp_path / "run") == 2
    line = error_line(capsys)
    assert "labeled-000000.tar: sha256 differs from dataset.json" in line


def _not_an_image(i, s):
    if i == 3:
        s["png"] = b"this is text, not a png"
    return s


def test_member_that_is_not_an_image_fails_or_is_skipped_and_counted(digits_dir, tmp_path, capsys):
    rewrite_shard(digits_dir, "labeled", _not_an_image)
    assert train(digits_dir, tmp_path / "a") == 2
    line = error_line(capsys)
    assert (
        "labeled-000000.tar: sample" in line and "not a readable image" in line and "--skip-corrupt" in line
    )
    assert_nothing_looks_done(tmp_path / "a")

    assert train(digits_dir, tmp_path / "b", "--skip-corrupt") == 0
    card = json.loads((tmp_path / "b" / "iter-000" / "model.json").read_text())
    assert card["skipped_samples"] == 1


def test_label_id_beyond_the_classes(digits_dir, tmp_path, capsys):
    rewrite_shard(digits_dir, "labeled", lambda i, s: {**s, "cls": b"12"} if i == 0 else s)
    assert train(digits_dir, tmp_path / "run") == 2
    line = error_line(capsys)
    assert "label 12 but the data set has 10 classes (0-9)" in line and "labeled-000000.tar" in line


def test_empty_split(digits_dir, tmp_path, capsys):
    edit_index(digits_dir, lambda ix: ix["splits"]["labeled"].update(shards=[]))
    assert train(digits_dir, tmp_path / "run") == 2
    assert "split 'labeled' has no samples" in error_line(capsys)


@pytest.mark.parametrize(
    ("field", "message"),
    [("classes", "classes: required field is missing"), ("channels", "channels: required field is missing")],
)
def test_missing_index_field(digits_dir, tmp_path, capsys, field, message):
    edit_index(digits_dir, lambda ix: ix.pop(field))
    assert train(digits_dir, tmp_path / "run") == 2
    line = error_line(capsys)
    assert "dataset.json" in line and message in line


def test_missing_dataset(tmp_path, capsys):
    assert train(tmp_path / "nowhere", tmp_path / "run") == 2
    assert "dataset.json: not found; build a data set with `selftrain data digits" in error_line(capsys)


def test_bad_config_value_from_the_command_line(digits_dir, tmp_path, capsys):
    assert train(digits_dir, tmp_path / "run", "--set", "teacher.optimizer=lamb") == 2
    assert "teacher.optimizer: Input should be 'adamw' or 'sgd'" in error_line(capsys)
    assert not (tmp_path / "run").exists()  # nothing created for a run that never started


def test_missing_checkpoint_or_model_for_eval(digits_dir, tmp_path, capsys):
    assert main(["eval", "--run-dir", str(tmp_path / "none"), "--iteration", "0"]) == 2
    assert "not a run directory" in error_line(capsys)


def test_eval_of_an_untrained_iteration_says_what_to_train(digits_dir, tmp_path, capsys):
    assert train(digits_dir, tmp_path / "run") == 0
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(tmp_path / "run"), "--iteration", "2"]) == 2
    assert "iteration 2 has no trained model; trained iterations: [0]" in error_line(capsys)


def test_resuming_with_another_config_is_refused(digits_dir, tmp_path, capsys):
    assert train(digits_dir, tmp_path / "run") == 0
    capsys.readouterr()
    assert train(digits_dir, tmp_path / "run", "--set", "teacher.lr=0.1") == 2
    assert "other values for teacher.lr" in error_line(capsys)
    assert train(digits_dir, tmp_path / "run", "--device", "cpu") == 0  # runtime settings may change
    assert "already trained; nothing to do" in capsys.readouterr().out


def test_a_run_continues_on_another_task_runner(digits_dir, tmp_path):
    """Where labeling runs (threads or a Dask cluster) does not change results, so it may change."""
    assert train(digits_dir, tmp_path / "run") == 0
    store = RunStore(tmp_path / "run")
    extra = ["pseudolabel.task_runner=dask", "pseudolabel.dask_workers=2"]
    cfg = store.open(digits_dir, None, [*QUICK_TEACHER, *extra])
    assert (cfg.pseudolabel.task_runner, cfg.pseudolabel.dask_workers) == ("dask", 2)
    assert store.config().pseudolabel.task_runner == "threads"  # the saved config is unchanged
