import numpy as np
import pytest
import torch

from selftrain.mixing import mix_batch, mix_soft


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


def _soft(n=6, classes=4, seed=0):
    return torch.softmax(torch.randn(n, classes, generator=torch.Generator().manual_seed(seed)), 1)


@pytest.mark.parametrize("step", range(6))
def test_soft_targets_such_as_pseudo_labels_are_mixed_with_the_share_each_image_shows(step):
    x, _ = _batch()
    target = _soft()
    mixed, out = mix_soft(x, target, seed=7, step=step, part=1, mixup_alpha=0.8, cutmix_alpha=1.0)
    # Each image i is filled with the value i: its own share is where the pixels still read i
    # (CutMix), or the blend weight read off any pixel (Mixup).
    own = (mixed == x).float().mean(dim=(1, 2, 3))
    if own.max() < 1e-6:
        own = (mixed[:, 0, 0, 0] - x.flip(0)[:, 0, 0, 0]) / (x[:, 0, 0, 0] - x.flip(0)[:, 0, 0, 0])
    lam = float(own[0])
    assert torch.allclose(out, lam * target + (1 - lam) * target.flip(0), atol=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(6)) and out.min() >= 0


def test_soft_mixing_repeats_per_step_and_part_and_parts_draw_apart():
    x, _ = _batch()
    target = _soft()

    def mix(step, part):
        return mix_soft(x, target, seed=3, step=step, part=part, mixup_alpha=0.8, cutmix_alpha=1.0)

    for step in range(5):
        a, b = mix(step, 0), mix(step, 0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert any(not torch.equal(mix(s, 0)[1], mix(s, 1)[1]) for s in range(5))
