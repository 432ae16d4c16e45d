"""JPEG images decoded and resized in batches on the model's device (the GPU), for labeling and eval.

    x = decode_resize(jpeg_bytes_list, size=224, channels=3, device=torch.device("cuda"))

Full-size photos cost far more to decode than small PNGs: a 224x224 JPEG takes about 1 ms of CPU
in PIL, five times a small model's forward pass on a GPU, so a CPU-decoding pipeline feeding an
H200 is bound by its cores. torchvision's `decode_jpeg` on a list of encoded images with
`device="cuda"` decodes the whole batch with nvJPEG; the resize to the model's input then runs
there too (bilinear with antialiasing, which is how PIL's bilinear resize filters, so the two paths
agree within a few grey levels: tested). The host only reads the tar and hands over bytes.

The same code runs on the CPU (torchvision's libjpeg-turbo decoder): that is the parity reference
the tests use on machines without a GPU. Everything that is not a JPEG, or a JPEG the batched
decoder refuses (CMYK on some nvJPEG versions, a damaged file), goes through `fallback`, which is
the PIL path of the CPU pipeline, so a mixed or odd shard still labels, and a corrupt sample fails
(or is skipped) with the same one-line error either way.

`data.decode` chooses: `auto` (batched on CUDA, PIL on the CPU), `pil`, or `batched`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger("selftrain.data")

JPEG_EXTS = ("jpg", "jpeg")


def use_batched_decode(choice: str, device: torch.device) -> bool:
    """`data.decode` -> whether JPEGs are decoded in batches by torchvision on `device`."""
    return choice == "batched" or (choice == "auto" and device.type == "cuda")


def jpeg_member(raw: dict) -> bytes | None:
    """The sample's JPEG bytes when its image member is a JPEG (by name and magic), else None."""
    for ext in JPEG_EXTS:
        data = raw.get(ext)
        if data is not None:
            return data if data[:2] == b"\xff\xd8" else None  # a .jpg holding a PNG goes to PIL
    return None


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (n, C, H, W) -> uint8 (n, C, size, size), bilinear with antialiasing (PIL's filter)."""
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _decode(datas: list[torch.Tensor], channels: int, device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    out = decode_jpeg(datas, mode=mode, device=device)
    return out if isinstance(out, list) else [out]


def decode_resize(
    encoded: list[bytes],
    *,
    size: int,
    channels: int,
    device: torch.device,
    fallback: Callable[[int], torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Decode JPEGs on `device` and resize them to `size`; returns (uint8 batch, kept indices).

    One call decodes the whole list. When the batch call fails, images are decoded one by one and
    each one the decoder refuses goes to `fallback(i)` (a uint8 (C, size, size) tensor, or None to
    drop image i, e.g. a corrupt sample skipped under --skip-corrupt); without a fallback the
    decoder's error propagates.
    """
    if not encoded:
        return torch.zeros((0, channels, size, size), dtype=torch.uint8, device=device), []
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
    try:
        images: list[torch.Tensor | None] = list(_decode(datas, channels, device))
    except RuntimeError:
        if fallback is None:
            raise
        images = []
        for i, data in enumerate(datas):
            try:
                images.append(_decode([data], channels, device)[0])
            except RuntimeError as exc:
                log.debug("image %d: batched JPEG decode refused it (%s); decoding with PIL", i, exc)
                got = fallback(i)
                images.append(None if got is None else got.to(device))
    kept = [i for i, im in enumerate(images) if im is not None]
    out = torch.empty((len(kept), channels, size, size), dtype=torch.uint8, device=device)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for row, i in enumerate(kept):
        by_shape.setdefault(tuple(images[i].shape), []).append(row)  # type: ignore[union-attr]
    for rows in by_shape.values():  # one resize per distinct stored size
        group = torch.stack([images[kept[r]] for r in rows])  # type: ignore[misc]
        out[rows] = resize_batch(group, size)
    return out, kept
