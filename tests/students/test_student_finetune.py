"""`student.finetune`: the noised student trained on labeled data alone, inside its own stage."""

from __future__ import annotations

import shutil

import pytest
import torch

from selftrain.config import load_config
from selftrain.data.dataset_info import load_dataset
from selftrain.report import format_table
from selftrain.runstore import RunStore
from students.noisy_student import train_student
from tests.conftest import QUICK_TEACHER
from tests.students.conftest import QUICK_STUDENT

FINETUNE = [
    "student.finetune.steps=8",
    "student.finetune.warmup_steps=2",
    "student.finetune.eval_every=4",
    "student.finetune.checkpoint_every=4",
    "student.finetune.batch_size=8",
]


def _train(run, overrides, hooks=None):
    store = RunStore(run)
    cfg = load_config(None, [*QUICK_TEACHER, *QUICK_STUDENT, *overrides])
    return train_student(store, load_dataset(store.data_dir()), cfg, torch.device("cpu"), 1, hooks)


def _weights(run):
    return RunStore(run).load_weights(1)[0]


@pytest.fixture(scope="module")
def finetuned(labeled_run, tmp_path_factory):
    """The fixture's teacher's student, trained and finetuned without interruption."""
    run = tmp_path_factory.mktemp("finetuned") / "run"
    shutil.copytree(labeled_run, run)
    return run, _train(run, FINETUNE)


def test_finetune_starts_from_the_noised_student_and_changes_it(run_copy, finetuned):
    without = _train(run_copy, [])
    finetuned_run, card = finetuned

    # Same seed, CPU: the noised part is the run without a finetune, step for step.
    assert card["test_accuracy_before_finetune"] == without["test_accuracy"]
    assert card["val_accuracy_before_finetune"] == without["val_accuracy"]
    assert card["loss_curve"][:2] == without["loss_curve"]
    assert (card["steps"], card["finetune_steps"], card["finetune_from_step"]) == (20, 8, 12)
    # The finetune's curve follows on: its starting point, then its own evaluations.
    assert [r["step"] for r in card["loss_curve"]] == [6, 12, 12, 16, 20]
    assert "pseudo_samples" not in card["loss_curve"][-1]  # labeled batches only
    # The saved model is the finetuned one, and it is the next iteration's teacher.
    after, noised = _weights(finetuned_run), _weights(run_copy)
    assert after.keys() == noised.keys()
    assert any(not torch.equal(after[k], noised[k]) for k in after)
    assert RunStore(finetuned_run).stage_state(1, "train") == "done"
    # `selftrain status` / `report` show what the finetune added; runs without one keep their table.
    rows = RunStore(finetuned_run).status_rows()
    assert rows[1]["test_accuracy_before_finetune"] == without["test_accuracy"]
    assert "test acc before finetune" in format_table(rows)
    assert "before finetune" not in format_table(RunStore(run_copy).status_rows())
    assert not (finetuned_run / "iter-001" / "checkpoints").exists()


def test_killed_during_the_finetune_resumes_it_without_redoing_the_noised_training(run_copy, finetuned):
    straight, reference = finetuned

    def stop_in_the_finetune(done, total, metrics):
        if total == 8 and done == 6:  # after the finetune's checkpoint at its step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(run_copy, FINETUNE, [stop_in_the_finetune])
    checkpoints = run_copy / "iter-001" / "checkpoints"
    assert sorted(p.name for p in (checkpoints / "finetune").iterdir() if p.name.startswith("step-")) == [
        "step-00000004"
    ]

    card = _train(run_copy, FINETUNE)
    assert card["resumed_from_step"] == 12 + 4
    assert card["loss_curve"] == reference["loss_curve"]  # every step after the resume is the same step
    assert card["test_accuracy"] == reference["test_accuracy"]
    resumed, uninterrupted = _weights(run_copy), _weights(straight)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_finetune_steps_zero_is_off_and_a_warmup_longer_than_the_steps_is_refused():
    from selftrain.errors import SelftrainError

    assert load_config(None, []).student.finetune.steps == 0
    with pytest.raises(SelftrainError, match=r"student\.finetune.*warmup_steps \(10\).*steps \(5\)"):
        load_config(None, ["student.finetune.steps=5"])
