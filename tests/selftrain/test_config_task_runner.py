"""`pseudolabel.task_runner` and its Dask settings: accepted combinations and one-line refusals."""

from __future__ import annotations

import pytest

from selftrain.config import load_config
from selftrain.errors import SelftrainError


def test_threads_is_the_default_and_dask_settings_are_typed():
    assert load_config(None).pseudolabel.task_runner == "threads"
    cfg = load_config(None, ["pseudolabel.task_runner=dask", "pseudolabel.dask_workers=2"])
    assert (cfg.pseudolabel.task_runner, cfg.pseudolabel.dask_workers, cfg.pseudolabel.dask_address) == (
        "dask",
        2,
        None,
    )
    cfg = load_config(None, ["pseudolabel.task_runner=dask", "pseudolabel.dask_address=tcp://10.0.0.5:8786"])
    assert cfg.pseudolabel.dask_address == "tcp://10.0.0.5:8786"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["pseudolabel.task_runner=ray"], "pseudolabel.task_runner: Input should be 'threads' or 'dask'"),
        (
            ["pseudolabel.task_runner=dask", "pseudolabel.dask_workers=0"],
            "pseudolabel.dask_workers: Input should be",
        ),
        (
            ["pseudolabel.dask_workers=2"],
            "pseudolabel: Value error, dask_workers is used only with task_runner dask",
        ),
        (
            ["pseudolabel.dask_address=tcp://10.0.0.5:8786"],
            "pseudolabel: Value error, dask_address is used only with task_runner dask",
        ),
        (
            [
                "pseudolabel.task_runner=dask",
                "pseudolabel.dask_address=tcp://h:8786",
                "pseudolabel.dask_workers=2",
            ],
            "dask_workers sizes a local cluster",
        ),
    ],
)
def test_bad_task_runner_settings_give_one_line_naming_the_field(overrides, expected):
    with pytest.raises(SelftrainError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
