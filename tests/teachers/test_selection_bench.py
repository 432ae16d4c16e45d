"""benchmarks/selection.py: the best-on-val vs last-weights figures docs/results.md reports."""

from __future__ import annotations

import json

from tests.conftest import QUICK_TEACHER
from tests.helpers import load_benchmark


def test_trace_sees_every_evaluation_and_matches_what_the_teacher_kept(digits_dir, tmp_path):
    run = tmp_path / "run"
    trace = load_benchmark("selection").train_and_trace(digits_dir, run, 0, QUICK_TEACHER)
    # teacher.steps=30, eval_every=15: one (val, test) pair per evaluation, none missed.
    assert len(trace) == 2
    assert all(0.0 <= v <= 1.0 and 0.0 <= t <= 1.0 for v, t in trace)
    card = json.loads((run / "iter-000" / "model.json").read_text())
    # The digits' val split is large enough to select on: the card's test accuracy is the one at
    # the best val evaluation (the last on ties), the rule the benchmark calls `best_val`.
    best = max(range(len(trace)), key=lambda i: (trace[i][0], i))
    assert card["val_count"] >= 100
    assert card["test_accuracy"] == trace[best][1]
    assert card["val_accuracy"] == trace[best][0]
