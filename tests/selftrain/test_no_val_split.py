"""`data import --val-fraction 0`: with a handful of labels per class every image trains.

A user with 10 labels per class loses a tenth of them to a val split too small to choose by
(stages keep their last weights under 100 val images anyway). Without val every stage must still
train, save and report, with val accuracy null rather than a made-up number, and a setting that
needs val (selection best_val) must stop before anything trains.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from commands.cli import main
from selftrain.data.dataset_info import load_dataset
from selftrain.runstore import RunStore
from tests.conftest import QUICK_TEACHER
from tests.teachers.test_mpl_training import QUICK_MPL


@pytest.fixture(scope="module")
def no_val_data(tmp_path_factory):
    """Two colour classes (8 labels each, 4 test each, 12 unlabeled) imported with --val-fraction 0."""
    root = tmp_path_factory.mktemp("noval")
    rng = np.random.default_rng(0)

    def save(path, tint):
        pixels = rng.integers(0, 120, (16, 16, 3)) + np.array(tint)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)

    tints = {"red": (120, 0, 0), "blue": (0, 0, 120)}
    for split, n in (("labeled", 8), ("test", 4)):
        for name, tint in tints.items():
            for i in range(n):
                save(root / "tree" / split / name / f"{i}.png", tint)
    for i in range(12):
        save(root / "tree" / "unlabeled" / f"u{i}.png", list(tints.values())[i % 2])
    out = root / "data"
    rc = main(["data", "import", "--labeled", str(root / "tree" / "labeled"),
               "--unlabeled", str(root / "tree" / "unlabeled"), "--test", str(root / "tree" / "test"),
               "--out", str(out), "--val-fraction", "0"])  # fmt: skip
    assert rc == 0
    return out


def test_every_label_trains_and_val_is_empty(no_val_data):
    ds = load_dataset(no_val_data)
    assert ds.split("labeled").counts == {"blue": 8, "red": 8}
    assert ds.count("val") == 0 and ds.info.splits["val"].shards == []
    ds.check_files(["labeled", "val", "test", "unlabeled"])  # an empty val is not a missing shard


@pytest.mark.integration
def test_teacher_mpl_and_student_train_without_val(no_val_data, tmp_path, capsys):
    from pseudolabel.iteration import pseudolabel_iteration
    from students.noisy_student import train_student
    from teachers.mpl_training import finetune_student, train_mpl
    from teachers.supervised import train_teacher

    quick_student = ["student.steps=6", "student.eval_every=3", "student.warmup_steps=1",
                     "student.batch_size=4", "student.unlabeled_ratio=[2]", "student.finetune.steps=4",
                     "student.finetune.warmup_steps=1", "student.finetune.eval_every=2",
                     "pseudolabel.confidence_threshold=0.0"]  # fmt: skip
    dataset, cpu = load_dataset(no_val_data), torch.device("cpu")
    mpl = RunStore(tmp_path / "mpl")
    cfg = mpl.open(no_val_data, None, [*QUICK_TEACHER, *QUICK_MPL])
    train_teacher(mpl, dataset, cfg, cpu)
    train_mpl(mpl, dataset, cfg, cpu)
    finetune_student(mpl, dataset, cfg, cpu)
    ns = RunStore(tmp_path / "ns")
    cfg = ns.open(no_val_data, None, [*QUICK_TEACHER, *quick_student])
    train_teacher(ns, dataset, cfg, cpu)
    pseudolabel_iteration(ns, 0, device=cpu)
    train_student(ns, dataset, cfg, cpu, 1)
    cards = [mpl.card(it) for it in range(4)] + [ns.card(1)]
    assert [c["role"] for c in cards] == ["teacher", "mpl-teacher", "mpl-student", "mpl-finetuned", "student"]
    for card in cards:
        assert card["val_accuracy"] is None and card["val_count"] == 0, card["role"]
        assert 0 <= card["test_accuracy"] <= 1 and card["test_count"] == 8
        # Each stage kept its final weights: nothing chose among checkpoints.
        assert card["best_step"] == card["steps"], card["role"]
        assert all(row["val_accuracy"] is None for row in card["loss_curve"])
    assert main(["status", "--run-dir", str(ns.root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["iterations"]
    assert [r["state"] for r in rows] == ["done", "done"]
    assert all(r["val_accuracy"] is None and r["test_accuracy"] is not None for r in rows)


def test_best_val_selection_stops_before_training(no_val_data, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["run", "meta-pseudo-labels", "--data", str(no_val_data), "--run-dir", str(run),
               "--set", "mpl.finetune.selection=best_val"])  # fmt: skip
    assert rc == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [
        f"error: mpl.finetune.selection=best_val: {no_val_data / 'dataset.json'} has no val images to "
        "choose by; set mpl.finetune.selection to last or auto, or import the data with --val-fraction above 0"
    ]
    assert not run.exists()
