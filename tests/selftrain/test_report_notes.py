"""`selftrain report` says plainly when self-training did not pay (README: "say honestly when it
does not"): a loss against the teacher, a gain inside the test split's noise, and a later iteration
worse than an earlier one, with the iteration to keep."""

from __future__ import annotations

import pytest

from selftrain.report import accuracy_noise_points, gain_notes, summary_markdown


def _row(iteration: int, test: float, count: int | None = 839, role: str | None = None) -> dict:
    role = role or ("teacher" if iteration == 0 else "student")
    return {"iteration": iteration, "role": role, "test_accuracy": test, "test_count": count, "state": "done"}


def test_noise_is_one_binomial_standard_error_in_points():
    assert accuracy_noise_points(0.5, 100) == pytest.approx(5.0)
    assert accuracy_noise_points(0.5, None) is None


def test_a_clear_gain_rising_each_iteration_gets_no_note():
    rows = [_row(0, 0.40), _row(1, 0.44), _row(2, 0.46), _row(3, 0.48)]
    assert gain_notes(rows) == []


def test_a_loss_against_the_teacher_is_said_to_not_pay():
    (note,) = gain_notes([_row(0, 0.4148), _row(1, 0.4100)])
    assert note.startswith("self-training did not pay here: iteration 1 is -0.48 points")


def test_a_gain_within_the_test_noise_is_named_so():
    (note,) = gain_notes([_row(0, 0.4148), _row(1, 0.4291)])
    assert "+1.43 points" in note and "1.70 points on 839 images" in note


def test_a_peak_before_the_last_iteration_names_the_iteration_to_keep():
    rows = [_row(0, 0.4148), _row(1, 0.4493), _row(2, 0.4350), _row(3, 0.4291)]
    notes = gain_notes(rows)
    assert len(notes) == 2  # the final gain is within the noise, and iteration 1 was better
    assert "peaked at iteration 1 (44.93%)" in notes[1] and "--iteration 1" in notes[1]


def test_a_last_iteration_that_ties_the_peak_gets_no_peak_note():
    # digits, seed 0: 97.22% -> 98.89, 98.61, 98.89 (356 of 360 right in iterations 1 and 3)
    rows = [
        _row(0, 350 / 360, 360),
        _row(1, 356 / 360, 360),
        _row(2, 355 / 360, 360),
        _row(3, 356 / 360, 360),
    ]
    assert gain_notes(rows) == []


def test_an_mpl_run_is_judged_by_its_finetuned_student_only():
    rows = [_row(0, 0.4148), _row(1, 0.46, role="mpl-teacher"), _row(2, 0.35, role="mpl-student")]
    rows.append(_row(3, 0.4100, role="mpl-finetuned"))
    notes = gain_notes(rows)  # no "peak" at the MPL teacher: it is not a student of this loop
    assert notes[0].startswith("self-training did not pay here: iteration 3 is -0.48 points")
    assert len(notes) == 3 and "MPL student read 35.00%, 6.48 points below its teacher" in notes[1]
    assert "MPL teacher (iteration 1) tests 46.00%, 5.00 points above the finetuned student" in notes[2]


@pytest.mark.parametrize(("mpl_teacher", "said"), [(0.5912, True), (0.5730, False), (0.55, False)])
def test_an_mpl_teacher_ahead_of_its_finetuned_student_beyond_the_noise_is_the_model_to_keep(
    mpl_teacher, said
):
    # photos with 100 labels per class, seed 1 (session 43): teacher 54.71%, MPL teacher 59.12%,
    # finetuned student 56.38%; 0.92 points ahead is inside one standard error (1.72 on 839 images)
    rows = [_row(0, 0.5471), _row(1, mpl_teacher, role="mpl-teacher"), _row(2, 0.5387, role="mpl-student")]
    rows.append(_row(3, 0.5638, role="mpl-finetuned"))
    notes = [n for n in gain_notes(rows) if "MPL teacher (iteration 1)" in n]
    assert bool(notes) is said
    if said:
        assert "59.12%, 2.74 points above the finetuned student" in notes[0] and "--iteration 1" in notes[0]


def test_an_mpl_teacher_below_the_supervised_one_is_not_offered_as_the_model_to_keep():
    rows = [_row(0, 0.60), _row(1, 0.5912, role="mpl-teacher"), _row(2, 0.5387, role="mpl-student")]
    rows.append(_row(3, 0.5638, role="mpl-finetuned"))
    assert not [n for n in gain_notes(rows) if "--iteration 1" in n]


def test_an_mpl_gain_carried_by_the_finetune_alone_is_named_so():
    # photos, seed 1 (session 12): teacher 41.95%, MPL student 37.54%, finetuned 43.98%
    rows = [_row(0, 0.4195), _row(1, 0.3659, role="mpl-teacher"), _row(2, 0.3754, role="mpl-student")]
    rows.append(_row(3, 0.4398, role="mpl-finetuned"))
    teacher_note, note = gain_notes(rows)
    assert "read 37.54%, 4.41 points below its teacher" in note and "to 43.98%" in note
    assert "MPL teacher ended at 36.59%, 5.36 points below the supervised teacher" in teacher_note


@pytest.mark.parametrize(("mpl_teacher", "said"), [(0.2551, True), (0.3200, False), (0.36, False)])
def test_an_mpl_teacher_that_fell_beyond_the_test_noise_is_named(mpl_teacher, said):
    # photos with 10 labels per class, seed 0 (session 40): teacher 32.54%, MPL teacher 25.51%;
    # a fall of 0.54 points is inside one standard error (1.62 points on 839 images)
    rows = [_row(0, 0.3254), _row(1, mpl_teacher, role="mpl-teacher"), _row(2, 0.40, role="mpl-student")]
    rows.append(_row(3, 0.42, role="mpl-finetuned"))
    notes = gain_notes(rows)
    assert any("MPL teacher ended at" in n for n in notes) is said
    if said:
        assert "25.51%, 7.03 points below the supervised teacher" in notes[0] and "noisy-student" in notes[0]


def test_an_mpl_student_above_its_teacher_gets_no_note():
    rows = [_row(0, 0.40), _row(1, 0.44, role="mpl-teacher"), _row(2, 0.45, role="mpl-student")]
    rows.append(_row(3, 0.48, role="mpl-finetuned"))
    assert gain_notes(rows) == []


def test_no_student_yet_means_no_notes():
    assert gain_notes([_row(0, 0.5)]) == []
    assert gain_notes([]) == []


def test_the_prefect_summary_carries_the_same_notes(tmp_path):
    """Someone watching the Prefect UI learns as plainly as `selftrain report` that a loop did not pay."""
    rows = [_row(0, 0.4148), _row(1, 0.4100)]
    for r in rows:
        r.update(model="resnet10t", val_accuracy=0.5)
    md = summary_markdown(rows, "noisy-student", tmp_path / "run")
    assert "- **Note:** self-training did not pay here: iteration 1 is -0.48 points" in md
    assert "Latest model: iteration 1 (student, resnet10t)" in md and "data:image/png;base64," in md
    rows[1]["test_accuracy"] = 0.48
    assert "Note:" not in summary_markdown(rows, "noisy-student", tmp_path / "run")
