"""The random-kill soak (benchmarks/soak_kill.py) with 2 kills at seeded moments across a data
build, a Noisy Student run and an MPL run: the jobs, SIGKILLed and run again, end whole, verified,
and exactly as accurate as uninterrupted runs. N = 20 is in docs/robustness.md; each kill here costs CI about
30 s (a restarted run), so CI takes two."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_runs_killed_at_random_moments_complete_verified_and_as_accurate(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak_kill.py"), "--kills", "2", "--seed", "0", "--json",
         "--workdir", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=40 * 60,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["kills"] + result["kills_missed"] == 2, result
    assert result["kills"] >= 1, result  # at least one kill landed
    assert result["completed"] is True, result["details"]
    assert result["checksum_failures"] == 0, result["details"]["checksum_failures"]
    assert result["leftover_files"] == 0, result["details"]["leftover_files"]
    assert result["redone_stages"] == 0, result["details"]["redone"]
    # Resuming restores models, optimizers, RNG, data position and augmentation draws: a killed run
    # ends exactly where an uninterrupted one does.
    assert result["accuracy_delta"] == 0.0, result["accuracy"]
    # ...and the models learned (about 75% on digits, chance 10%): equal chance-level runs prove nothing.
    assert all(a["reference"] > 0.5 for a in result["accuracy"].values()), result["accuracy"]
    assert done.returncode == 0
