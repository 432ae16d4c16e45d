"""A loop's inputs (data set, config, run directory, options) checked and opened, without Prefect.

    selftrain run noisy-student --data data/digits --run-dir runs/demo --set teacher.stpes=3
    error: --set teacher.stpes: unknown key ...          # before any Prefect server or flow starts

`selftrain run` calls `open_run` and `check_loop_options` under the run directory's lock before it
imports the flows, so a typo costs one line and no traceback; the flows call the same functions
first thing, so a served deployment run fails on the same inputs with the same line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from selftrain.config import RunConfig, load_config
from selftrain.data.dataset_info import Dataset, load_dataset
from selftrain.device import resolve_device
from selftrain.errors import SelftrainError
from selftrain.runstore import RunStore
from selftrain.stage import no_val_to_choose_by

log = logging.getLogger(__name__)

# Above this input side a CPU run is told what its size costs (a step at 64 pixels takes about
# 4 times the compute of one at 32, the size every CPU figure in docs/results.md was measured at).
CPU_SIZE_NOTICE = 64


@dataclass
class RunContext:
    store: RunStore
    dataset: Dataset
    cfg: RunConfig
    device: torch.device


def config_arguments(config: str | dict[str, Any] | list[str] | None) -> tuple[str | None, list[str]]:
    """A flow's `config` parameter: a YAML path, or inline overrides as a mapping or `key=value` list."""
    if config is None or config == "" or config == {}:
        return None, []
    if isinstance(config, str):
        if "=" in config and not Path(config).exists():
            return None, [part.strip() for part in config.split(",") if part.strip()]
        return config, []
    if isinstance(config, dict):
        return None, [f"{k}={json.dumps(v)}" for k, v in config.items()]
    paths = [c for c in config if "=" not in c]
    if len(paths) > 1:
        raise SelftrainError(f"config: at most one config file, got {paths}")
    return (paths[0] if paths else None), [c for c in config if "=" in c]


def check_inputs(run_dir: str, data: str | None = None, config: str | dict | list | None = None) -> None:
    """Everything `open_run` checks that needs no writing: call it before taking the run's lock,
    so a typo does not even create the run directory."""
    store = RunStore(run_dir)
    if data is None and not store.exists():
        raise SelftrainError(
            f"data: required to start a new run in {run_dir} (a data set folder with dataset.json)"
        )
    dataset = load_dataset(data if data is not None else store.data_dir())
    check_selection(load_config(*config_arguments(config)), dataset)


def check_selection(cfg: RunConfig, dataset: Dataset) -> None:
    """A stage set to keep its best-on-val weights needs val images: say so before training starts.

    Without this a run on a data set imported with `--val-fraction 0` would train its teacher and
    only then stop at the stage that chooses by val.
    """
    if dataset.count("val"):
        return
    fields = _selection_fields(cfg, "")
    if fields:
        raise no_val_to_choose_by(fields[0], dataset)


def _selection_fields(section: BaseModel, prefix: str) -> list[str]:
    """Dotted names of every `selection` set to best_val in the config tree."""
    found = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            found += _selection_fields(value, f"{prefix}{name}.")
        elif name == "selection" and value == "best_val":
            found.append(f"{prefix}{name}")
    return found


def open_run(
    run_dir: str, data: str | None = None, config: str | dict | list | None = None, *, announce: bool = True
) -> RunContext:
    """Create or reopen `run_dir`; `data` may be omitted once the run directory records it.

    Creates the run directory when it is new: call it while holding the run's lock. `announce`
    logs the input size (`note_input_size`); `selftrain run` leaves that to the flow it starts,
    so the line appears once, and in the flow run's logs.
    """
    store = RunStore(run_dir)
    if data is None:
        if not store.exists():
            raise SelftrainError(
                f"data: required to start a new run in {run_dir} (a data set folder with dataset.json)"
            )
        data = str(store.data_dir())
    dataset = load_dataset(data)
    config_file, overrides = config_arguments(config)
    cfg = store.open(Path(data), config_file, overrides)
    check_selection(cfg, dataset)
    device = resolve_device(cfg.device)
    if announce:
        note_input_size(cfg, dataset, device)
    return RunContext(store=store, dataset=dataset, cfg=cfg, device=device)


def note_input_size(cfg: RunConfig, dataset: Dataset, device: torch.device) -> None:
    """Say at what size the images train when it is not their own, and what a large size costs on
    a CPU: a user with big photos should know before an hours-long run, not after."""
    height, width = dataset.info.image_size
    size = cfg.data.image_size
    if max(height, width) > size:
        log.info(
            "images stored at %dx%d train at %dx%d (data.image_size; --set data.image_size=N to change)",
            height,
            width,
            size,
            size,
        )
    if device.type == "cpu" and size > CPU_SIZE_NOTICE:
        log.warning(
            "data.image_size %d on a CPU: each training step takes about %d times the compute of one "
            "at 32 pixels; --set data.image_size=%d trains faster, with less detail",
            size,
            round((size / 32) ** 2),
            CPU_SIZE_NOTICE,
        )


def reopen(run_dir: str, cfg: RunConfig) -> RunContext:
    """Inside a task: the run exists and records its data; `cfg` is the flow's resolved config."""
    store = RunStore(run_dir)
    return RunContext(
        store=store, dataset=load_dataset(store.data_dir()), cfg=cfg, device=resolve_device(cfg.device)
    )


def check_loop_options(store: RunStore, iterations: int = 1, from_iteration: int | None = None) -> None:
    """The Noisy Student loop's own options, checked before anything is trained or moved."""
    # 0 trains no new student but still finishes what a killed run left (the teacher, the last
    # student's evaluation and promotion): `--iterations` counts students added, not a total.
    if iterations < 0:
        raise SelftrainError(f"iterations: must be 0 or more (got {iterations})")
    if from_iteration is not None and from_iteration not in store.iterations_done():
        raise SelftrainError(
            f"from_iteration={from_iteration}: iteration {from_iteration} has no trained model in "
            f"{store.root}; trained: {store.iterations_done()}"
        )
