"""The deeper resnet10t copies: larger students that start as their teacher's function."""

from __future__ import annotations

import pytest
import torch

from selftrain.models import build_model, count_parameters


@pytest.mark.parametrize(("teacher", "student"), [("resnet10t", "resnet18t"), ("resnet18t", "resnet26t_basic"),
                                                  ("resnet26t_basic", "resnet34t")])  # fmt: skip
def test_student_holds_every_teacher_tensor_and_starts_as_the_teacher(teacher, student):
    torch.manual_seed(0)
    t = build_model(teacher, num_classes=10, in_chans=3).eval()
    s = build_model(student, num_classes=10, in_chans=3, drop_rate=0.3, drop_path_rate=0.1)
    s_state, t_state = s.state_dict(), t.state_dict()
    assert all(k in s_state and s_state[k].shape == v.shape for k, v in t_state.items())
    assert count_parameters(s) > count_parameters(t)
    s.load_state_dict({**s_state, **t_state})
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(s.eval()(x), t(x), atol=1e-5)  # the added blocks are identities at first
