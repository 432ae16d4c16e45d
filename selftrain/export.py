"""Export a trained model for serving: ONNX or TorchScript, with its model card beside it.

    selftrain export --run-dir runs/demo --format onnx --out digits.onnx   # + digits.onnx.json

The exported graph takes a float32 NCHW batch of any size (the batch axis is dynamic) and returns
logits. What it expects of an image (color mode, resize, mean/std) and the class names travel in
the card `OUT.json`: the run's model card plus `export` and `preprocessing`.

ONNX goes through torch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`):
it needs only the `onnx` package, where the dynamo exporter also needs onnxscript, and it exports
timm's convolutional models exactly (tested against onnxruntime on real images).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from selftrain import atomic
from selftrain.errors import SelftrainError
from selftrain.saved_model import SavedModel, preprocessing

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
ONNX_OPSET = 17


def card_path(out: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`: an ONNX and a TorchScript export side by side keep their cards."""
    return out.with_name(out.name + ".json")


def _example(saved: SavedModel) -> torch.Tensor:
    size = saved.image_size
    return torch.zeros(2, saved.in_chans, size, size)  # 2, not 1: no batch-1 specialisation


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401 - torch.onnx needs it; a clear message beats its ImportError
    except ImportError:
        raise SelftrainError("--format onnx: the onnx package is missing; pip install onnx") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
    traced.save(str(path))


def export_model(saved: SavedModel, fmt: str, out: Path) -> dict[str, Any]:
    """Write the model to `out` and its card to `out`.json, each atomically."""
    if fmt not in FORMATS:
        raise SelftrainError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    card_out = card_path(out)
    model = saved.model.float().cpu().eval()
    example = _example(saved)
    with atomic.atomic_path(out) as tmp:
        (_export_onnx if fmt == "onnx" else _export_torchscript)(model, example, tmp)
    sha = atomic.sha256_file(out)
    card = {
        **saved.card,
        "export": {
            "format": fmt,
            "file": out.name,
            "sha256": sha,
            "from_iteration": saved.iteration,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "dynamic_batch": True,
            **({"opset": ONNX_OPSET} if fmt == "onnx" else {}),
            "torch": torch.__version__,
            "created": time.time(),
        },
        "preprocessing": preprocessing(saved.card),
    }
    atomic.write_json(card_out, card)
    return {
        "out": str(out),
        "card": str(card_out),
        "format": fmt,
        "iteration": saved.iteration,
        "sha256": sha,
    }
