"""benchmarks/quality.py's summary: the README's results table is printed from it."""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark


def _run(seed: int, per_iteration: list[float], mpl: float) -> dict:
    return {"seed": seed, "supervised": per_iteration[0], "noisy_student": per_iteration[-1],
            "per_iteration": per_iteration, "mpl": mpl, "ns_minutes": 10.0 + seed, "mpl_minutes": 5.0}  # fmt: skip


def test_summary_gives_mean_spread_gain_and_how_many_seeds_rose_every_iteration(capsys):
    quality = load_benchmark("quality")
    runs = [_run(0, [0.40, 0.44, 0.46, 0.48], 0.45), _run(1, [0.42, 0.46, 0.45, 0.47], 0.43)]
    out = quality.summarize(runs)
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
