"""`eval_mode`: evaluation in the middle of training must hand the model back in its own mode."""

import pytest
import torch

from selftrain.models import eval_mode


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(4))


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_is_eval_inside_and_restores_the_mode(training):
    net = _net().train(training)
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert all(m.training == training for m in net.modules())


def test_eval_mode_restores_training_after_an_exception():
    net = _net().train()
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("evaluation failed")
    assert all(m.training for m in net.modules())


def test_eval_mode_freezes_batch_norm_statistics():
    """A val pass inside training must not move the running statistics the next step uses."""
    net = _net().train()
    before = net[2].running_mean.clone()
    with eval_mode(net), torch.no_grad():
        net(torch.randn(8, 4) * 10 + 5)
    assert torch.equal(net[2].running_mean, before)
