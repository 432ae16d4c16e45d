import itertools

import pytest
import timm
import torch

from selftrain.ladder import ALPHA, BETA, GAMMA, ladder_phi, ladder_step
from selftrain.models import build_model, count_flops, count_parameters


def test_compound_scaling_coefficients():
    s0, s2 = ladder_step(0), ladder_step(2)
    assert s2.depth == pytest.approx(s0.depth * ALPHA**2)
    assert s2.width == pytest.approx(s0.width * BETA**2)
    assert s2.resolution == round(s0.resolution * GAMMA**2)


def test_the_ladder_grows_in_parameters_flops_and_resolution():
    sizes = []
    for phi in range(4):
        model = build_model(f"effnet_ladder_{phi}", num_classes=10, in_chans=1)
        res = ladder_step(phi).resolution
        sizes.append((count_parameters(model), count_flops(model, 1, res), res))
        assert model(torch.zeros(2, 1, res, res)).shape == (2, 10)
    for small, big in itertools.pairwise(sizes):
        assert all(b > s for s, b in zip(small, big, strict=True)), sizes


def test_ladder_models_are_timm_models_with_noise_options():
    model = build_model("effnet_ladder_1", num_classes=3, in_chans=3, drop_rate=0.3, drop_path_rate=0.2)
    assert timm.is_model("effnet_ladder_1") and model.drop_rate == 0.3
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    assert ladder_phi("effnet_ladder_5") == 5 and ladder_phi("resnet18") is None
