"""One Prefect test harness per session (it takes seconds to start), with PREFECT_HOME in a temp dir."""

from __future__ import annotations

import os
import tempfile

import pytest
import yaml

from tests.conftest import QUICK_TEACHER
from tests.students.conftest import QUICK_STUDENT

# As the UI or `--param config=...` would send it: a mapping of typed values.
FLOW_CONFIG = {
    o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in [*QUICK_TEACHER, *QUICK_STUDENT]
}


@pytest.fixture(scope="session")
def prefect_api():
    home = tempfile.mkdtemp(prefix="prefect-home-")
    os.environ["PREFECT_HOME"] = home
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # 30 s is not enough on a busy machine
        yield PREFECT_API_URL.value()
