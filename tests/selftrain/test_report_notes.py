"""`selftrain report` says plainly when self-training did not pay (README: "say honestly when it
does not"): a loss against the teacher, a gain inside the test split's noise, and a later iteration
worse than an earlier one, with the iteration to keep."""

from __future__ import annotations

import pytest

from selftrain.report import accuracy_noise_points, gain_notes


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
    (note,) = gain_notes(rows)  # no "peak" at the MPL teacher: it is not a student of this loop
    assert note.startswith("self-training did not pay here: iteration 3 is -0.48 points")


def test_no_student_yet_means_no_notes():
    assert gain_notes([_row(0, 0.5)]) == []
    assert gain_notes([]) == []
