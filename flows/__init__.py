"""Prefect flows, tasks and deployments: the only package that imports Prefect.

Importing it starts nothing (no server, no training, no CUDA). The domain code it wires together
(`teachers/`, `students/`, `pseudolabel/`) logs through the `selftrain` logger, which is added to
Prefect's extra loggers here, before Prefect is imported, so those lines reach the run's logs.
"""

import os

_extra = os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "")
if "selftrain" not in _extra.split(","):
    os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(filter(None, [_extra, "selftrain", "pseudolabel"]))
