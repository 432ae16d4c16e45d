"""A compound-scaled EfficientNet ladder for Noisy Student's "equal-or-larger" students.

EfficientNet (Tan & Le 2019, section 3.3) scales depth by alpha^phi, width by beta^phi and input
resolution by gamma^phi with alpha=1.2, beta=1.1, gamma=1.15. Noisy Student (Xie et al. 2020,
section 3) grows the student at each iteration; climbing this ladder one step per iteration does
that in a principled way. Step 0 is EfficientNet-B0's block layout at half width and half depth
and 32 px, sized for small images such as digits; it is built from timm's EfficientNet builder
(`decode_arch_def`, `round_channels`) and registered with timm, so `timm.create_model` builds
`effnet_ladder_0` ... `effnet_ladder_7` like any other model name. It sits beside
`selftrain/models.py`, which registers it, because any stage may build a ladder model by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from timm.models import register_model
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_DEPTH, BASE_WIDTH, BASE_RESOLUTION = 0.5, 0.5, 32
STEPS = 8
PREFIX = "effnet_ladder_"

# EfficientNet-B0 stages (timm's string notation: block type, repeats, kernel, stride, expansion,
# channels, squeeze-excite ratio).
B0_STAGES = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]


@dataclass(frozen=True)
class LadderStep:
    phi: int
    depth: float
    width: float
    resolution: int

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.phi}"


def ladder_step(phi: int) -> LadderStep:
    return LadderStep(
        phi=phi,
        depth=BASE_DEPTH * ALPHA**phi,
        width=BASE_WIDTH * BETA**phi,
        resolution=round(BASE_RESOLUTION * GAMMA**phi),
    )


def ladder_phi(name: str) -> int | None:
    """phi of a ladder model name, None for any other model."""
    if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit():
        return int(name[len(PREFIX) :])
    return None


def build_ladder_model(phi: int, pretrained: bool = False, **kwargs) -> EfficientNet:
    if pretrained:
        raise ValueError("the ladder has no pretrained weights")
    step = ladder_step(phi)
    chs = partial(round_channels, multiplier=step.width, divisor=8)
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm factory extras
        kwargs.pop(key, None)
    return EfficientNet(
        block_args=decode_arch_def(B0_STAGES, step.depth),
        num_features=chs(1280),
        stem_size=32,
        round_chs_fn=chs,
        **kwargs,
    )


def _register(phi: int) -> None:
    def entry(pretrained: bool = False, **kwargs) -> EfficientNet:
        return build_ladder_model(phi, pretrained=pretrained, **kwargs)

    entry.__name__ = f"{PREFIX}{phi}"
    entry.__qualname__ = entry.__name__
    entry.__module__ = __name__
    register_model(entry)


for _phi in range(STEPS):
    _register(_phi)
