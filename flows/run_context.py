"""Opening a run directory from flow parameters (plain code; the flows call it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selftrain.config import RunConfig
from selftrain.data.dataset_info import Dataset, load_dataset
from selftrain.device import resolve_device
from selftrain.errors import SelftrainError
from selftrain.runstore import RunStore


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


def open_run(run_dir: str, data: str | None = None, config: str | dict | list | None = None) -> RunContext:
    """Create or reopen `run_dir`; `data` may be omitted once the run directory records it."""
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
    return RunContext(store=store, dataset=dataset, cfg=cfg, device=resolve_device(cfg.device))


def reopen(run_dir: str, cfg: RunConfig) -> RunContext:
    """Inside a task: the run exists and records its data; `cfg` is the flow's resolved config."""
    store = RunStore(run_dir)
    return RunContext(
        store=store, dataset=load_dataset(store.data_dir()), cfg=cfg, device=resolve_device(cfg.device)
    )
