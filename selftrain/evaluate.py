"""Top-1 accuracy, per class, of a model on one labeled split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selftrain import distributed
from selftrain.device import autocast, to_device
from selftrain.models import eval_mode


@dataclass
class EvalResult:
    top1: float | None  # None: nothing to measure on (a data set imported without val)
    loss: float | None
    count: int
    per_class: list[float | None]  # None where the split has no sample of that class

    @classmethod
    def nothing(cls, num_classes: int) -> EvalResult:
        """The result on an absent split: cards say val_accuracy null rather than a made-up 0."""
        return cls(top1=None, loss=None, count=0, per_class=[None] * num_classes)

    def as_dict(self, classes: list[str]) -> dict:
        return {
            "top1": self.top1,
            "loss": self.loss,
            "count": self.count,
            "per_class": {c: a for c, a in zip(classes, self.per_class, strict=True)},
        }


def describe(top1: float | None) -> str:
    """An accuracy for a log line: four decimals, or "-" where there was nothing to measure."""
    return "-" if top1 is None else f"{top1:.4f}"


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, num_classes: int, device: torch.device) -> EvalResult:
    correct = torch.zeros(num_classes, dtype=torch.long)
    total = torch.zeros(num_classes, dtype=torch.long)
    loss_sum = 0.0
    with eval_mode(model):
        for x, y in loader:
            x, y = to_device(x, device), y.to(device)
            with autocast(device):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            hit = (logits.argmax(1) == y).cpu()
            y = y.cpu()
            total += torch.bincount(y, minlength=num_classes)
            correct += torch.bincount(y[hit], minlength=num_classes)
    # Under torchrun each rank saw its share of the split: the sums make it the whole split's result.
    if distributed.active():
        packed = torch.cat([correct, total]).double()
        packed = distributed.sum_(torch.cat([packed, torch.tensor([loss_sum], dtype=torch.float64)]))
        correct, total = packed[:num_classes].long(), packed[num_classes : 2 * num_classes].long()
        loss_sum = float(packed[-1])
    n = int(total.sum())
    per_class = [(int(c) / int(t)) if t else None for c, t in zip(correct, total, strict=True)]
    return EvalResult(
        top1=int(correct.sum()) / max(n, 1), loss=loss_sum / max(n, 1), count=n, per_class=per_class
    )
