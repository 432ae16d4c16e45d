"""The flow config the UI would send; the session's Prefect test harness is in tests/conftest.py."""

from __future__ import annotations

import yaml

from tests.conftest import QUICK_TEACHER
from tests.students.conftest import QUICK_STUDENT

# As the UI or `--param config=...` would send it: a mapping of typed values.
FLOW_CONFIG = {
    o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in [*QUICK_TEACHER, *QUICK_STUDENT]
}
