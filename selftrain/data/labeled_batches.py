"""The endless, resumable labeled stream that every training stage draws its labeled batches from.

The supervised teacher, the Meta Pseudo Labels teacher and the Noisy Student student all train on
the labeled split the same way; the stream lives here, below the stage packages, so that none of
them imports another.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from selftrain import distributed
from selftrain.config import RunConfig, TrainConfig
from selftrain.data.dataset_info import Dataset
from selftrain.data.stream import SplitStream, make_loader


def labeled_batches(
    dataset: Dataset,
    cfg: RunConfig,
    train: TrainConfig,
    device: torch.device,
    seed: int,
    transform,
    field: str = "batch_size",
):
    """`start_step -> iterator of batches`: the endless, resumable labeled stream.

    `train.batch_size` is global; each rank draws its share (`field` names it in the error when
    the world size does not divide it). The stream position is global too: steps x global batch.
    """
    streams: list[SplitStream] = []
    per_rank = distributed.local_batch(train.batch_size, field)

    def batches(start_step: int) -> Iterator:
        stream = SplitStream(
            dataset,
            "labeled",
            transform,
            repeat=True,
            shuffle=True,
            seed=seed,
            start_sample=start_step * train.batch_size,
            shuffle_buffer=cfg.data.shuffle_buffer,
            verify_checksums=cfg.data.verify_checksums,
            skip_corrupt=cfg.data.skip_corrupt,
            batch_size=per_rank,
        )
        streams.append(stream)
        return iter(make_loader(stream, per_rank, cfg.data.num_workers, device))

    return batches, streams
