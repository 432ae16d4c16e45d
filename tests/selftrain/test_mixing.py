import numpy as np
import pytest
import torch

from selftrain.mixing import mix_batch


def _batch(n=6, size=8):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return x, torch.arange(n) % 4


def _mix(x, y, step, mixup=0.0, cutmix=0.0, smoothing=0.0):
    return mix_batch(
        x,
        y,
        seed=7,
        step=step,
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        num_classes=4,
        label_smoothing=smoothing,
    )


@pytest.mark.parametrize("step", range(8))
def test_cutmix_target_weights_are_the_share_of_pixels_each_image_shows(step):
    x, y = _batch()
    mixed, target = _mix(x, y, step, cutmix=1.0)
    own = (mixed == x).float().mean(dim=(1, 2, 3))  # each image i is filled with the value i
    other = (mixed == x.flip(0)).float().mean(dim=(1, 2, 3))
    assert torch.allclose(own + other, torch.ones(6))  # every pixel comes from one of the two
    assert torch.allclose(target.sum(1), torch.ones(6))
    for i in range(6):
        j = 5 - i
        expected = torch.zeros(4)
        expected[y[i]] += own[i]
        expected[y[j]] += other[i]
        assert torch.allclose(target[i], expected, atol=1e-6)


def test_mixup_blends_each_image_with_its_partner_and_its_label_alike():
    x, y = _batch()
    mixed, target = _mix(x, y, 3, mixup=0.8)
    lam = float(mixed[0, 0, 0, 0] - x[5, 0, 0, 0]) / float(x[0, 0, 0, 0] - x[5, 0, 0, 0])
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    one_hot = torch.nn.functional.one_hot(y, 4).float()
    assert torch.allclose(target, lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-6)


def test_label_smoothing_is_kept_in_the_soft_targets():
    x, y = _batch()
    _, target = _mix(x, y, 0, mixup=0.8, smoothing=0.1)
    assert target.min() >= 0.1 / 4 - 1e-6 and torch.allclose(target.sum(1), torch.ones(6))


def test_draws_repeat_per_step_and_leave_global_random_state_alone():
    """A resumed stage must mix step k as the uninterrupted one did, whatever else drew before."""
    x, y = _batch()
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    first = [_mix(x, y, s, mixup=0.8, cutmix=1.0) for s in range(10)]
    assert (np.random.get_state()[1] == before).all()
    np.random.rand(5)
    torch.rand(5)
    again = [_mix(x, y, s, mixup=0.8, cutmix=1.0) for s in reversed(range(10))][::-1]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert len({round(float(t[1][0].max()), 6) for t in first}) > 1  # steps draw differently
