"""Weights the user already has: read them without unpickling, fit them onto a timm model.

`teacher.init_weights: PATH` starts the teacher's backbone from a safetensors file or a timm /
PyTorch checkpoint (`torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary objects); the classifier is always made anew for the data set's classes, and a first
convolution trained on another number of channels is adapted the way timm adapts it (summed to
grayscale, repeated to RGB). `selftrain teacher import` instead needs every tensor to fit: the
model must already be a classifier for this data set.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from selftrain.errors import SelftrainError

# Where training scripts keep the weights inside a checkpoint, most preferred first (timm's train.py
# writes `state_dict` and, with --model-ema, `state_dict_ema`, which timm itself loads first).
_NESTED = ("state_dict_ema", "state_dict", "model", "model_state_dict")


def read_weights(path: str | Path, field: str) -> dict[str, torch.Tensor]:
    """Name -> tensor from a .safetensors file or a checkpoint loaded with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise SelftrainError(f"{field} {path}: file not found")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise SelftrainError(f"{field} {path}: not a valid safetensors file ({exc})") from None
    else:
        try:
            # timm's train.py stores its argparse Namespace beside the weights: allow that one plain type.
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SelftrainError(
                f"{field} {path}: cannot be read as weights without unpickling code ({first}); "
                "save it with safetensors or torch.save(model.state_dict())"
            ) from None
        if isinstance(state, dict):
            nested = next((k for k in _NESTED if isinstance(state.get(k), dict)), None)
            state = state[nested] if nested else state
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise SelftrainError(f"{field} {path}: holds no named tensors (expected a state dict)")
    out = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[name.removeprefix("module.")] = value  # DDP-wrapped checkpoints
    return out


def _classifier_prefixes(model: torch.nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or []
    return [f"{n}." for n in ([names] if isinstance(names, str) else names)]


def _adapt_first_conv(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A first conv trained on RGB (or gray) made to take the model's channels, as timm does."""
    from timm.models import adapt_input_conv

    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    own = model.state_dict()
    for name in [first] if isinstance(first, str) else first or []:
        key = f"{name}.weight"
        if key in state and key in own and state[key].dim() == 4 and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key].float()).to(state[key].dtype)


def _names(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def init_backbone(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, num_classes: int
) -> str:
    """Load every tensor of `state` that fits `model` except the classifier; return a one-line report."""
    prefixes = _classifier_prefixes(model)
    head = [k for k in state if any(k.startswith(p) for p in prefixes)]
    state = {k: v for k, v in state.items() if k not in head}
    _adapt_first_conv(model, state)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    other_shape = [k for k in state if k in own and k not in fits]
    unused = [k for k in state if k not in own]
    missing = [k for k in own if k not in fits and not any(k.startswith(p) for p in prefixes)]
    if not fits:
        raise SelftrainError(
            f"teacher.init_weights {source}: none of its {len(state)} tensors fit {type(model).__name__} "
            "(other names or shapes); use weights saved from the same architecture as teacher.model"
        )
    model.load_state_dict(fits, strict=False)
    parts = [
        f"teacher.init_weights: {len(fits)} of {len(state) + len(head)} tensors loaded from {source}",
        f"classifier made anew for {num_classes} classes ({len(head)} tensors not used)",
    ]
    if other_shape:
        parts.append(f"other shapes, not loaded: {_names(other_shape)}")
    if missing:
        parts.append(f"not in the file, left as initialised: {_names(missing)}")
    if unused:
        parts.append(f"not in the model: {_names(unused)}")
    return "; ".join(parts)


def require_exact_fit(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Load `state` into `model`, refusing (one line) unless every tensor is there with its shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    other_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    unused = [k for k in state if k not in own]
    if missing or other_shape or unused:
        detail = "; ".join(
            f"{what}: {_names(keys)}"
            for what, keys in (
                (
                    "other shapes",
                    [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in other_shape],
                ),
                ("missing", missing),
                ("not in the model", unused),
            )
            if keys
        )
        raise SelftrainError(
            f"--weights {source}: does not fit {name} for this data set ({detail}); pass the --model it "
            "was trained as, for this data set's classes and channels"
        )
    model.load_state_dict(state)
