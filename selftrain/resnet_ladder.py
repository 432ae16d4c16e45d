"""Deeper copies of resnet10t: students that are larger than their teacher yet start as it.

Noisy Student's student is equal or larger than its teacher (Xie et al. 2020, section 2). A larger
timm model (resnet18, resnet26) trained from scratch needs far more steps than a CPU run has: on
the CIFAR-10 dev photos a resnet18 student scored below its resnet10t teacher (docs/results.md).
These models keep resnet10t's stem, widths and downsampling (deep-tiered stem, average-pool
shortcut) and only add BasicBlocks per stage, so every teacher tensor has a same-named, same-shaped
place in the student (`init_from_teacher` copies all of them), and timm's zero-initialised last
BatchNorm makes each added block an identity at the start: the student begins as the teacher's
function with more capacity (the Net2Net "deeper" idea, Chen et al. 2016).

    resnet10t  [1, 1, 1, 1]  (timm's)     4.9M parameters
    resnet18t  [2, 2, 2, 2]              11.2M
    resnet26t_basic [3, 3, 3, 3]        16.0M  (timm's resnet26t uses Bottleneck blocks)
    resnet34t  [3, 4, 6, 3]              21.3M
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet

DEPTHS = {"resnet18t": (2, 2, 2, 2), "resnet26t_basic": (3, 3, 3, 3), "resnet34t": (3, 4, 6, 3)}


def build_deeper_resnet10t(layers: tuple[int, ...], pretrained: bool = False, **kwargs) -> ResNet:
    if pretrained:
        raise ValueError("these models have no pretrained weights; start them from a teacher")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm factory extras
        kwargs.pop(key, None)
    return ResNet(
        block=BasicBlock, layers=layers, stem_width=32, stem_type="deep_tiered", avg_down=True, **kwargs
    )


def _register(name: str, layers: tuple[int, ...]) -> None:
    def entry(pretrained: bool = False, **kwargs) -> ResNet:
        return build_deeper_resnet10t(layers, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    register_model(entry)


for _name, _layers in DEPTHS.items():
    _register(_name, _layers)
