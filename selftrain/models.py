"""Models by name: timm's registry, always built with `pretrained=False` (no downloads here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import timm
import torch

from selftrain.errors import SelftrainError


def _register_project_models() -> None:
    """The project's own named models (the EfficientNet ladder, the deeper resnet10t copies) join
    timm's registry on import."""
    import selftrain.ladder
    import selftrain.resnet_ladder  # noqa: F401


def build_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    field: str = "model",
) -> torch.nn.Module:
    _register_project_models()
    if not timm.is_model(name):
        raise SelftrainError(
            f"{field}: unknown model {name!r}; use a timm model name such as resnet10t or efficientnet_b0"
        )
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        raise SelftrainError(f"{field}: {name} does not accept these options ({exc})") from None


def load_matching(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Copy every tensor whose name and shape match into `model`; returns how many were copied.

    A student that grows from its teacher (resnet10t -> resnet18t) starts as the teacher's function:
    the shared tensors are copied and the added blocks are zero-initialised residuals.
    """
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return len(matching)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode for the block, then back in the mode it was in, even on an exception.

    Evaluation runs in the middle of training (val checks, MPL's reward, FLOP counts): leaving a
    model in eval mode there would silently switch its dropout and batch-norm updates off.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, in_chans: int, resolution: int) -> int:
    """Forward FLOPs of one image, counted by torch's own FlopCounterMode (not estimated)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(torch.zeros(1, in_chans, resolution, resolution, device=next(model.parameters()).device))
    return int(counter.get_total_flops())
