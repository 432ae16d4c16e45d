"""Batched JPEG decoding (the GPU path, run here on the CPU) against the PIL path it replaces."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from selftrain.data.batch_decode import decode_resize, jpeg_member, resize_batch, use_batched_decode
from selftrain.transforms import Resize, pil_to_uint8

CPU = torch.device("cpu")


def _photo(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """Smooth colour blobs plus noise: JPEG-like content, not flat colour."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.full((h, w, channels), 110.0)
    for _ in range(6):
        cx, cy, s = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.4)]
        img += rng.uniform(-90, 90, channels) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None]
    img += rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _pil_path(data: bytes, size: int, channels: int) -> torch.Tensor:
    image = Image.open(io.BytesIO(data), formats=("JPEG",)).convert("L" if channels == 1 else "RGB")
    return pil_to_uint8(Resize(size)(image))


@pytest.mark.parametrize(
    ("shapes", "size", "channels"),
    [
        ([(224, 224)] * 6, 32, 3),  # full-size photos down to a small model's input
        ([(224, 224), (180, 240), (96, 64)], 64, 3),  # mixed sizes: one resize per size
        ([(32, 32)] * 4, 64, 3),  # upsampled
        ([(48, 40)] * 4, 16, 1),  # grayscale
        ([(40, 40)] * 3, 40, 3),  # already the input size: decode only
    ],
)
def test_batched_decode_matches_pil_within_one_grey_level(shapes, size, channels):
    rng = np.random.default_rng(0)
    encoded = [_jpeg(_photo(rng, h, w, channels)) for h, w in shapes]
    batch, kept = decode_resize(encoded, size=size, channels=channels, device=CPU)
    reference = torch.stack([_pil_path(b, size, channels) for b in encoded])
    assert kept == list(range(len(encoded)))
    assert batch.dtype == torch.uint8 and batch.shape == reference.shape
    diff = (batch.int() - reference.int()).abs()
    assert diff.max().item() <= 2, diff.max()
    assert diff.float().mean().item() < 0.5


def test_refused_images_go_to_the_fallback_or_are_dropped():
    rng = np.random.default_rng(1)
    good = _jpeg(_photo(rng, 30, 30, 3))
    broken = good[:2] + b"\x00" * 40  # JPEG magic, garbage body
    calls = []

    def fallback(i: int):
        calls.append(i)
        return None if i == 1 else torch.full((3, 16, 16), 7, dtype=torch.uint8)

    batch, kept = decode_resize([good, broken, good], size=16, channels=3, device=CPU, fallback=fallback)
    assert calls == [1] and kept == [0, 2] and batch.shape == (2, 3, 16, 16)
    with pytest.raises(RuntimeError):
        decode_resize([good, broken], size=16, channels=3, device=CPU)


def test_only_real_jpegs_are_batched():
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    jpg = _jpeg(np.zeros((8, 8, 3), np.uint8))
    assert jpeg_member({"jpg": jpg}) == jpg and jpeg_member({"jpeg": jpg}) == jpg
    assert jpeg_member({"jpg": png.getvalue()}) is None  # misnamed PNG: PIL's path decodes it
    assert jpeg_member({"png": png.getvalue()}) is None
    assert use_batched_decode("auto", torch.device("cuda")) and not use_batched_decode("auto", CPU)
    assert use_batched_decode("batched", CPU) and not use_batched_decode("pil", torch.device("cuda"))


def test_resize_of_the_input_size_is_the_identity():
    x = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    assert resize_batch(x, 12) is x


@pytest.mark.gpu
@pytest.mark.parametrize(("side", "size", "channels"), [(224, 224, 3), (224, 32, 3), (96, 48, 1)])
def test_cuda_batched_decode_matches_pil(side, size, channels):
    """nvJPEG's decoder and upsampling differ from libjpeg-turbo's in rounding, not in content."""
    rng = np.random.default_rng(2)
    encoded = [_jpeg(_photo(rng, side, side, channels)) for _ in range(16)]
    batch, kept = decode_resize(encoded, size=size, channels=channels, device=torch.device("cuda"))
    assert batch.is_cuda and kept == list(range(16))
    reference = torch.stack([_pil_path(b, size, channels) for b in encoded])
    diff = (batch.cpu().int() - reference.int()).abs().float()
    assert diff.mean().item() < 1.5, diff.mean()
    assert diff.quantile(0.999).item() <= 12, diff.max()
