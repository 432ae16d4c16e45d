"""Resumable training checkpoints without pickle.

A checkpoint is a folder, written whole or not at all (`atomic_dir`): `tensors.safetensors` holds
every tensor (model weights, optimizer moments, RNG states, the best weights so far) and
`state.json` everything else (step, optimizer hyper-parameters, scheduler position, history).
Nothing is unpickled on load, so a checkpoint handed over by someone else cannot run code.
`checksums.json`, written last inside the folder, holds both files' sha256: a checkpoint damaged
after it was written (a truncated or altered file) is refused on load, and the trainer falls back
to the previous one (`selftrain.engine`), which the model card then records.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from selftrain import atomic
from selftrain.errors import SelftrainError

PREFIX = "step-"
CHECKSUMS = "checksums.json"
FILES = ("tensors.safetensors", "state.json")


def _split_optimizer(name: str, sd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, entry = key[len(prefix) :].split(".", 1)
            state.setdefault(int(pid), {})[entry] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give each restored state tensor its parameter's memory layout.

    Checkpoints store tensors contiguous (safetensors has no strides); the parameters of a
    channels_last model are not. A fused optimizer walks state and parameter as flat memory, so a
    layout mismatch pairs the wrong elements and silently corrupts every resumed update (found by
    the finetune's resume test); other implementations are only slower.
    """
    for group in opt.param_groups:
        for param in group["params"]:
            for key, value in opt.state.get(param, {}).items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    opt.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64)),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {"python": random.getstate(), "numpy": [np_state[0], *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items()}


def save_checkpoint(
    root: Path,
    step: int,
    *,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    state: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"step": step, "state": state, "optimizers": {}, "schedulers": {}}
    for name, module in modules.items():
        tensors.update({f"model.{name}.{k}": v for k, v in _cpu(module.state_dict()).items()})
    for name, opt in optimizers.items():
        t, m = _split_optimizer(name, opt.state_dict())
        tensors.update(_cpu(t))
        meta["optimizers"][name] = m
    for name, sched in schedulers.items():
        meta["schedulers"][name] = sched.state_dict()
    for key, value in (extra_tensors or {}).items():
        tensors[f"extra.{key}"] = value.detach().to("cpu").clone().contiguous()
    rng_tensors, meta["rng"] = rng_state()
    tensors.update(rng_tensors)

    target = root / f"{PREFIX}{step:08d}"
    with atomic.atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))
        sums = {name: atomic.sha256_file(tmp / name) for name in FILES}
        (tmp / CHECKSUMS).write_text(json.dumps(sums))
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify_checkpoint(path: Path) -> None:
    """Raise a one-line `SelftrainError` unless every file matches the sha256 recorded with it."""
    sums_path = path / CHECKSUMS
    if not sums_path.is_file():  # checkpoints written before checksums were recorded
        return
    try:
        sums = json.loads(sums_path.read_text())
    except ValueError:
        sums = None
    if not isinstance(sums, dict):
        raise SelftrainError(f"{sums_path}: unreadable; delete {path} to resume from the previous checkpoint")
    for name in FILES:
        file = path / name
        if not file.is_file() or atomic.sha256_file(file) != sums.get(name):
            raise SelftrainError(
                f"{file}: {'missing' if not file.is_file() else 'sha256 differs from ' + CHECKSUMS} "
                f"(damaged after it was written); delete {path} to resume from the previous checkpoint"
            )


def load_checkpoint(
    path: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
) -> tuple[int, dict[str, Any], dict[str, torch.Tensor]]:
    """Restore everything in place; return (step, state, extra tensors)."""
    verify_checkpoint(path)
    try:
        tensors = load_file(str(path / "tensors.safetensors"))
        meta = json.loads((path / "state.json").read_text())
        for name, module in modules.items():
            prefix = f"model.{name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        for name, opt in optimizers.items():
            opt.load_state_dict(_join_optimizer(name, tensors, meta["optimizers"][name]))
            _match_param_layout(opt)
        for name, sched in schedulers.items():
            sched.load_state_dict(meta["schedulers"][name])
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise SelftrainError(
            f"{path}: checkpoint cannot be loaded ({type(exc).__name__}: {str(exc)[:120]}); "
            "delete this folder to resume from the previous checkpoint"
        ) from None
    set_rng_state(tensors, meta["rng"])
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return int(meta["step"]), meta["state"], extra
