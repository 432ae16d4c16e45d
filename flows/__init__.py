"""Prefect flows, tasks and deployments: the only package that imports Prefect.

Importing it starts nothing (no server, no training, no CUDA). The domain code it wires together
(`teachers/`, `students/`, `pseudolabel/`) logs through the `selftrain` and `pseudolabel`
loggers; they are made Prefect "extra loggers" here (the package's `__init__` runs before any of
its flow modules import Prefect), so their lines reach the flow run's logs in the UI.
"""

import logging
import os
import sys

_OURS = ("selftrain", "pseudolabel")
_extra = [n for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n]
os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(dict.fromkeys([*_extra, *_OURS]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from offline machines
# The same domain code also runs outside flows (CLI, tests): there its lines just stay local.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
_prefect_was_imported = "prefect" in sys.modules

from prefect.logging.handlers import APILogHandler  # noqa: E402

# If Prefect was imported before this package, its logging setup missed the variable above.
for _name in _OURS:
    _logger = logging.getLogger(_name)
    if _prefect_was_imported and not any(isinstance(h, APILogHandler) for h in _logger.handlers):
        _logger.addHandler(APILogHandler())
    _logger.setLevel(min(_logger.getEffectiveLevel(), logging.INFO))
