"""Augmentation's own random generators, one pair per thread, seeded by the stream.

Augmentation used to draw from the process-global `random` and `np.random`. Inside a flow,
Prefect's background threads (event and log delivery, retry jitter) draw from those too, at
moments that depend on timing, so two runs with one seed trained different models. Every draw
the data pipeline makes now comes from this module's per-thread generators, which the training
stream seeds once per batch (`SplitStream`): nothing else in the process can move them, and a
DataLoader worker (a process) has its own.

Our transforms call `py()`; timm's RandAugment draws from the names `random` and `np.random` of
its `timm.data.auto_augment` module, which `route_timm_randaugment` points here (the ops
themselves are timm's, unchanged; the test suite checks the routing takes effect).
"""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np

_local = threading.local()


def _generators() -> tuple[random.Random, np.random.RandomState]:
    pair = getattr(_local, "pair", None)
    if pair is None:
        pair = _local.pair = (random.Random(0), np.random.RandomState(0))
    return pair


def py() -> random.Random:
    """The calling thread's Python generator (what the transforms draw from)."""
    return _generators()[0]


def seed(value: int) -> None:
    """Seed the calling thread's generators (both, so timm's numpy draws are covered)."""
    python, numpy = _generators()
    python.seed(value)
    numpy.seed(value % 2**32)


class _ThreadRandom:
    """Stands in for the `random` module: every function is the calling thread's generator's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_generators()[0], name)


class _ThreadNumpy:
    """Stands in for `numpy`: `.random` is the calling thread's RandomState, the rest is numpy."""

    @property
    def random(self) -> np.random.RandomState:
        return _generators()[1]

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def route_timm_randaugment() -> None:
    """Make timm's RandAugment draw from the per-thread generators (idempotent)."""
    import timm.data.auto_augment as auto_augment

    if not isinstance(auto_augment.random, _ThreadRandom):
        auto_augment.random = _ThreadRandom()
        auto_augment.np = _ThreadNumpy()
