"""benchmarks/quality.py's summary: the README's results table is printed from it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import BENCHMARKS, load_benchmark


def _run(seed: int, per_iteration: list[float], mpl: float) -> dict:
    return {"seed": seed, "supervised": per_iteration[0], "noisy_student": per_iteration[-1],
            "per_iteration": per_iteration, "mpl": mpl, "ns_minutes": 10.0 + seed, "mpl_minutes": 5.0}  # fmt: skip


def _two_seeds(seed0: dict | None = None, seed1: dict | None = None) -> list[dict]:
    """Two seeds' runs (NS ends 48 and 47%, MPL 45 and 43%), with extra keys per seed."""
    return [
        _run(0, [0.40, 0.44, 0.46, 0.48], 0.45) | (seed0 or {}),
        _run(1, [0.42, 0.46, 0.45, 0.47], 0.43) | (seed1 or {}),
    ]


def test_summary_gives_mean_spread_gain_and_how_many_seeds_rose_every_iteration(capsys):
    quality = load_benchmark("quality")
    out = quality.summarize(_two_seeds())
    ns = out["noisy_student"]
    assert ns["test_accuracy_mean"] == pytest.approx(0.475)
    assert ns["test_accuracy_std"] == pytest.approx(0.0071, abs=1e-4)
    assert ns["per_iteration_mean"] == [0.41, 0.45, 0.455, 0.475]
    assert ns["gain_points_mean"] == pytest.approx(6.5)
    assert ns["minutes"] == pytest.approx(10.5)
    assert ns["seeds_rising_every_iteration"] == 1  # seed 1 fell in its third iteration
    assert out["mpl"]["gain_points_mean"] == pytest.approx(3.0)
    assert out["supervised"]["minutes"] is None  # the teacher is the Noisy Student run's iteration 0
    quality.print_table({"photos": out})
    table = capsys.readouterr().out
    assert (
        "47.50 ± 0.71%" in table and "(+6.50)" in table and "rising every iteration in 1 of 2 seeds" in table
    )


def test_control_row_says_what_pseudo_labels_add_beyond_more_training_on_the_labels(capsys):
    quality = load_benchmark("quality")
    out = quality.summarize(
        _two_seeds(
            {"no_pseudo_labels": 0.44, "control_minutes": 9.0},
            {"no_pseudo_labels": 0.45, "control_minutes": 11.0},
        )
    )
    assert out["no_pseudo_labels"]["test_accuracy_mean"] == pytest.approx(0.445)
    assert out["no_pseudo_labels"]["gain_points_mean"] == pytest.approx(3.5)  # over the teacher
    assert out["no_pseudo_labels"]["minutes"] == pytest.approx(10.0)  # its own runs, not NS's
    assert out["noisy_student"]["pseudo_label_gain_points_mean"] == pytest.approx(3.0)  # 47.5 - 44.5
    quality.print_table({"photos": out})
    table = capsys.readouterr().out
    assert "NS without pseudo-labels" in table and "44.50 ± 0.71%" in table
    assert "pseudo-labels add" in table and "+3.00 points" in table


def test_mpl_control_row_says_what_the_teachers_feedback_adds(capsys):
    quality = load_benchmark("quality")
    out = quality.summarize(
        _two_seeds(
            {"mpl_no_feedback": 0.46, "mpl_control_minutes": 4.0},
            {"mpl_no_feedback": 0.44, "mpl_control_minutes": 6.0},
        )
    )
    assert out["mpl_no_feedback"]["test_accuracy_mean"] == pytest.approx(0.45)
    assert out["mpl_no_feedback"]["minutes"] == pytest.approx(5.0)
    assert out["mpl"]["feedback_gain_points_mean"] == pytest.approx(-1.0)  # 44.0 - 45.0: it cost a point
    quality.print_table({"photos": out})
    table = capsys.readouterr().out
    assert "MPL without feedback" in table and "45.00 ± 1.41%" in table
    assert "MPL feedback adds" in table and "-1.00 points" in table


def test_summary_without_the_control_has_no_control_row(capsys):
    quality = load_benchmark("quality")
    out = quality.summarize([_run(0, [0.40, 0.48], 0.45)])
    assert "no_pseudo_labels" not in out and "pseudo_label_gain_points_mean" not in out["noisy_student"]
    quality.print_table({"photos": out})
    table = capsys.readouterr().out
    assert "pseudo-labels add" not in table and "MPL feedback adds" not in table


def _output(
    runs: list[dict],
    *,
    control: str | None = None,
    overrides: list[str] | None = None,
    unlabeled_fraction: float = 1.0,
    labels_per_class: int = 25,
) -> dict:
    """What `benchmarks/quality.py --json` prints for these runs of the photos."""
    quality = load_benchmark("quality")
    config = {"seeds": [r["seed"] for r in runs], "iterations": len(runs[0]["per_iteration"]) - 1,
              "overrides": overrides or [], "control": control, "mpl_control": None,
              "unlabeled_fraction": unlabeled_fraction, "labels_per_class": labels_per_class}  # fmt: skip
    labeled = labels_per_class * 10
    pool = round((1957 - labeled) * unlabeled_fraction)
    counts = {"labeled_images": labeled, "val_images": 0, "unlabeled_images": pool}
    return {"config": config, "photos": quality.summarize(runs) | counts}


def test_merge_pools_seeds_run_on_different_days_into_one_summary():
    quality = load_benchmark("quality")
    seed0, seed1 = _two_seeds({"no_pseudo_labels": 0.44, "control_minutes": 9.0})
    merged = quality.merge_results([_output([seed1]), _output([seed0], control=quality.CONTROL)])
    assert merged["config"]["seeds"] == [0, 1]
    # Only one of the two outputs ran the control: a pooled control row would be one seed's figure.
    assert merged["config"]["control"] is None and "no_pseudo_labels" not in merged["photos"]
    expected = quality.summarize(_two_seeds())
    for method in ("supervised", "noisy_student", "mpl"):
        assert merged["photos"][method] == expected[method]
    assert [r["seed"] for r in merged["photos"]["runs"]] == [0, 1]
    # the splits both outputs trained on
    assert [merged["photos"][k] for k in quality.SPLIT_COUNTS] == [250, 0, 1707]


def test_merge_accepts_outputs_from_before_the_split_sizes_were_recorded():
    quality = load_benchmark("quality")
    seed0, seed1 = _two_seeds()
    old = _output([seed0])
    del old["config"]["unlabeled_fraction"], old["config"]["labels_per_class"]  # an older --json
    for split in quality.SPLIT_COUNTS:
        del old["photos"][split]
    merged = quality.merge_results([old, _output([seed1])])  # older outputs: 25 per class, whole pool
    assert merged["config"]["seeds"] == [0, 1]
    assert not set(quality.SPLIT_COUNTS) & merged["photos"].keys()  # counts only one output recorded
    with pytest.raises(ValueError, match=r"config\.labels_per_class differs \(25 vs 10\)"):
        quality.merge_results([old, _output([seed1], labels_per_class=10)])


def test_table_says_how_many_labeled_and_unlabeled_images_the_runs_trained_on(capsys):
    quality = load_benchmark("quality")
    quality.print_table({"photos": _output(_two_seeds(), unlabeled_fraction=0.5)["photos"]})
    lines = capsys.readouterr().out.splitlines()
    assert next(ln for ln in lines if "unlabeled pool" in ln).endswith(" 854 images")
    assert next(ln for ln in lines if "labels (val)" in ln).endswith(" 250 (0) images")


@pytest.mark.parametrize(
    ("second_seed", "second_overrides", "fraction", "labels", "field"),
    [
        (0, [], 1.0, 25, "config.seeds"),  # the same seed twice would count it double
        (1, ["student.steps=800"], 1.0, 25, "config.overrides"),  # a different recipe is not more seeds
        (1, [], 0.5, 25, "config.unlabeled_fraction"),  # a smaller pool is another point of a curve
        (1, [], 1.0, 100, "config.labels_per_class"),  # so are more labels
    ],
)
def test_merge_refuses_outputs_that_cannot_be_pooled_naming_the_field(
    tmp_path, second_seed, second_overrides, fraction, labels, field
):
    runs = _two_seeds()
    first = tmp_path / "a.json"
    first.write_text(json.dumps(_output([runs[0]])))
    other = tmp_path / "b.json"
    other.write_text(
        json.dumps(
            _output(
                [runs[second_seed]],
                overrides=second_overrides,
                unlabeled_fraction=fraction,
                labels_per_class=labels,
            )
        )
    )
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "quality.py"), "--merge", str(first), str(other)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert field in done.stderr.splitlines()[-1] and "Traceback" not in done.stderr


def test_merge_of_a_file_that_is_not_a_benchmark_output_says_which_file(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text("{not json")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "quality.py"), "--merge", str(bad)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and str(bad) in done.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--unlabeled-fraction", "1.5"], "--unlabeled-fraction must be in (0, 1]"),
        (["--unlabeled-fraction", "0.5", "--only", "digits"], "give --data an .npz"),
        (["--labels-per-class", "0"], "--labels-per-class must be at least 1"),
        (["--labels-per-class", "10", "--only", "digits"], "--labels-per-class splits photos from an .npz"),
    ],
)
def test_a_split_it_cannot_apply_is_refused_before_anything_trains(tmp_path, args, says):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "quality.py"), "--keep", str(tmp_path / "work"), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and says in done.stderr.splitlines()[-1]
    assert not (tmp_path / "work").exists()  # refused before any data set was built


def test_more_labels_per_class_than_the_photos_hold_is_one_line_naming_the_count(tmp_path):
    photos = tmp_path / "photos.npz"
    rng = np.random.default_rng(0)
    np.savez(photos, images=rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8),
             labels=np.repeat([0, 1], 10), classes=np.array(["cat", "dog"]))  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "quality.py"), "--only", "photos", "--data", str(photos),
         "--labels-per-class", "8", "--keep", str(tmp_path / "work")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "labels_per_class 8: class 0 has only 7 images outside test" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "work" / "photos-labels8").exists()  # nothing imported
