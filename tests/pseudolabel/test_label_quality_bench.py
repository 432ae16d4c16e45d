"""benchmarks/label_quality.py: the figures docs/results.md chooses pseudo-label filters by."""

from __future__ import annotations

import json
import math

import numpy as np

from selftrain.data.dataset_info import load_dataset
from tests.helpers import load_benchmark, teacher_outputs


def test_label_quality_scores_the_teacher_against_the_report_only_truth(run, capsys):
    assert load_benchmark("label_quality").main([str(run.root), "--json", "--keep-fraction", "0.4"]) == 0
    (row,) = json.loads(capsys.readouterr().out)  # one trained iteration: the teacher
    dataset = load_dataset(run.data_dir())
    truth = dataset.unlabeled_truth()
    # The plain way: the saved teacher's argmax on every unlabeled image, against the truth file.
    right = [int(p.argmax()) == truth[k] for k, p in teacher_outputs(run).items()]
    assert row["plain"]["all"] == {"accuracy": round(float(np.mean(right)), 4), "count": len(truth)}
    assert row["plain"]["keep_fraction"]["count"] == math.ceil(0.4 * len(truth))
    assert row["plain"]["threshold"]["count"] < len(truth)
    # The most confident labels are the more accurate ones (what a filter relies on).
    assert row["plain"]["keep_fraction"]["accuracy"] > row["plain"]["all"]["accuracy"]
    assert row["hflip"]["all"] != row["plain"]["all"]
