"""Pseudo-labeling: the teacher labels the unlabeled shards; the labels are filtered and balanced.

Noisy Student (Xie et al. 2020), Algorithm 1 step 2 and section 3 (data filtering and balancing):

    selftrain pseudolabel --run-dir runs/demo --iteration 0

Files, in the order data flows through them:

    teacher_model.py   iteration K's model, frozen in eval mode, checked against the data set
    shard_batches.py   unlabeled shards -> uint8 batches that never span two shards
    sidecar.py         the per-shard label archive (`*.labels.tar.gz`) and its completeness record
    label_shards.py    `label_shards`: label a list of shards, the unit of parallel work
    balance.py         `filter_and_balance`: confidence filter + N copies per class (pure NumPy)
    report.py          stats, pseudo-label accuracy, `confidence.png`
    selection.py       `write_selection`: all sidecars -> `selection.json` (key -> copies)
    iteration.py       `pseudolabel_iteration`: label, then select, in one process (the CLI)

Plain PyTorch/NumPy: `flows/` wires these into Prefect tasks. Importing this package is cheap.
"""
