"""Label a list of unlabeled shards with iteration K's teacher: the unit of parallel work.

    label_shards(store, dataset, k, [3, 4, 5], cfg, device)

writes `RUN/iter-K/pseudo/unlabeled-00000{3,4,5}.labels.tar.gz` (+ `.labels.json`), one sidecar
per source shard, each committed as soon as its last image is labeled. A flow fans out over shard
groups, one call per worker; calls on disjoint groups never touch the same file. Re-running skips
shards whose sidecar is complete and was made the same way (same source shard, teacher weights,
mode, temperature); a shard interrupted midway has no completeness record and is labeled again.

The pipeline streams: read shard -> decode -> resize (per image, in DataLoader workers when
`data.num_workers` > 0) -> normalize + forward + softmax (per batch) -> append to the sidecar.
Memory holds a few batches, whatever the number of images. On a GPU (`data.decode` auto or
batched), JPEG images skip the CPU decode: their bytes are decoded and resized in batches on the
device (`selftrain.data.batch_decode`), other formats take the path above.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pseudolabel.shard_batches import ShardBatches, split_eval_transform, yield_cpu_to_the_model
from pseudolabel.sidecar import (
    FORMAT_VERSION,
    LabelMode,
    SidecarWriter,
    incomplete_reason,
    meta_path,
    read_meta,
    sidecar_path,
)
from pseudolabel.teacher_model import Teacher, load_teacher
from selftrain import atomic
from selftrain.config import PseudoLabelConfig, RunConfig
from selftrain.data.batch_decode import decode_resize, use_batched_decode
from selftrain.data.dataset_info import Dataset, ShardEntry
from selftrain.data.shards import decode_sample, skip_or_raise
from selftrain.data.workers import resolve_workers
from selftrain.device import to_device
from selftrain.errors import CorruptSampleError, SelftrainError
from selftrain.runstore import RunStore

log = logging.getLogger("pseudolabel")

SPLIT = "unlabeled"
TOPK_ABOVE_CLASSES = 100  # mode auto: full soft labels up to this many classes, top-k sparse above


def pseudo_dir(store: RunStore, iteration: int) -> Path:
    return store.iter_dir(iteration) / "pseudo"


def shard_file_name(entry: ShardEntry) -> str:
    return Path(entry.path).name


@dataclass(frozen=True)
class LabelSpec:
    """Everything that determines a sidecar's contents besides the images themselves."""

    teacher_weights_sha256: str
    num_classes: int
    image_size: int
    mode: LabelMode
    temperature: float
    top_k: int | None
    hflip_average: bool

    @classmethod
    def from_card(cls, card: dict[str, Any], cfg: PseudoLabelConfig) -> LabelSpec:
        num_classes = int(card["num_classes"])
        mode: LabelMode
        mode = ("topk" if num_classes > TOPK_ABOVE_CLASSES else "soft") if cfg.mode == "auto" else cfg.mode
        return cls(
            teacher_weights_sha256=card["weights_sha256"],
            num_classes=num_classes,
            image_size=int(card["input_size"][-1]),
            mode=mode,
            temperature=float(cfg.temperature),
            top_k=min(cfg.top_k, num_classes) if mode == "topk" else None,
            hflip_average=bool(cfg.hflip_average),
        )

    @classmethod
    def for_teacher(cls, teacher: Teacher, cfg: PseudoLabelConfig) -> LabelSpec:
        card = {
            "weights_sha256": teacher.weights_sha256,
            "num_classes": teacher.num_classes,
            "input_size": [teacher.in_chans, teacher.image_size, teacher.image_size],
        }
        return cls.from_card(card, cfg)

    def expected_meta(self, entry: ShardEntry) -> dict[str, Any]:
        """The completeness record's fields that must match for a sidecar to be reused."""
        return {
            "source_shard": shard_file_name(entry),
            "source_sha256": entry.sha256,
            "source_samples": entry.samples,
            **asdict(self),
        }


def resolve_shards(dataset: Dataset, selectors: list[str] | None) -> list[int] | None:
    """`--shards` values (indices, `unlabeled-000003`, `unlabeled-000003.tar`) -> shard indices."""
    if not selectors:
        return None
    entries = dataset.split(SPLIT).shards
    by_name: dict[str, int] = {}
    for i, e in enumerate(entries):
        name = shard_file_name(e)
        by_name[name] = by_name[name.removesuffix(".tar")] = i
    out: list[int] = []
    for token in (t.strip() for s in selectors for t in s.split(",")):
        if not token:
            continue
        if token.isdigit() and int(token) < len(entries):
            index = int(token)
        elif Path(token).name in by_name:
            index = by_name[Path(token).name]
        else:
            raise SelftrainError(
                f"--shards {token!r}: no unlabeled shard by that index or name in {dataset.index_path} "
                f"(indices 0-{len(entries) - 1}, names like {shard_file_name(entries[0])})"
            )
        if index not in out:
            out.append(index)
    return out


@dataclass
class ShardOutcome:
    shard: str
    status: str  # "labeled" (this call) or "reused" (a complete sidecar was already there)
    samples: int
    skipped: int
    seconds: float = 0.0


@dataclass
class PhaseSeconds:
    """Where a labeling call's time went: waiting for decoded batches (`input`: reading,
    decoding and resizing, unless DataLoader workers do it ahead), the device (`model`: batched
    decoding there, forward, softmax, copy back) and the sidecars (`write`). Input well above
    model means the labeler starves the model: more `data.num_workers`, or batched decoding."""

    input: float = 0.0
    model: float = 0.0
    write: float = 0.0


@dataclass
class LabelingResult:
    iteration: int
    spec: LabelSpec
    shards: list[ShardOutcome] = field(default_factory=list)
    seconds: float = 0.0
    phases: PhaseSeconds = field(default_factory=PhaseSeconds)

    @property
    def labeled_images(self) -> int:
        """Images labeled by this call (not counting reused sidecars)."""
        return sum(s.samples for s in self.shards if s.status == "labeled")

    def as_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            **asdict(self.spec),
            "seconds": round(self.seconds, 3),
            "labeled_shards": sum(s.status == "labeled" for s in self.shards),
            "reused_shards": sum(s.status == "reused" for s in self.shards),
            "labeled_images": self.labeled_images,
            "skipped": sum(s.skipped for s in self.shards),
            "phase_seconds": {k: round(v, 3) for k, v in asdict(self.phases).items()},
            "shards": [asdict(s) for s in self.shards],
        }


def label_fields(probs: torch.Tensor, spec: LabelSpec) -> dict[str, np.ndarray]:
    """One batch's softmax -> the arrays a sidecar stores in `spec.mode`."""
    if spec.mode == "topk":
        assert spec.top_k is not None
        values, idx = probs.topk(spec.top_k, dim=1)  # sorted: column 0 is the argmax
        return {
            "cls": idx[:, 0].int().cpu().numpy(),
            "conf": values[:, 0].cpu().numpy(),
            "prob": values.half().cpu().numpy(),
            "idx": idx.int().cpu().numpy(),
        }
    conf, cls = probs.max(dim=1)
    out = {"cls": cls.int().cpu().numpy(), "conf": conf.cpu().numpy()}
    if spec.mode == "soft":
        out["prob"] = probs.half().cpu().numpy()
    return out


class _OpenSidecar:
    """One shard's sidecar being written: a temporary file until `commit`."""

    def __init__(self, out_dir: Path, entry: ShardEntry, spec: LabelSpec, teacher_iteration: int):
        self.out_dir, self.entry, self.spec = out_dir, entry, spec
        self.teacher_iteration = teacher_iteration
        self.name = shard_file_name(entry)
        self.tar = sidecar_path(out_dir, self.name)
        self.meta = meta_path(out_dir, self.name)
        self.started = time.perf_counter()
        # Drop the old record first: from here until commit the shard reads as incomplete.
        self.meta.unlink(missing_ok=True)
        for leftover in (self.tar, self.meta):  # temporaries of a killed run on this shard
            for tmp in out_dir.glob(f".{glob.escape(leftover.name)}.*.tmp"):
                tmp.unlink(missing_ok=True)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic.atomic_path(self.tar))
        self.writer = self._stack.enter_context(SidecarWriter(tmp, spec.mode, spec.num_classes, spec.top_k))

    def commit(self, skipped: int) -> ShardOutcome:
        self._stack.close()  # closes the archive, then fsyncs and renames it into place
        meta = {
            "format_version": FORMAT_VERSION,
            **self.spec.expected_meta(self.entry),
            "teacher_iteration": self.teacher_iteration,
            "samples": self.writer.count,
            "skipped": skipped,
            "sidecar": self.tar.name,
            "sidecar_sha256": atomic.sha256_file(self.tar),
            "sidecar_bytes": self.tar.stat().st_size,
        }
        atomic.write_json(self.meta, meta)  # last: its presence is what "complete" means
        seconds = time.perf_counter() - self.started
        log.info(
            "%s: %d images labeled (%.1f s)%s",
            self.name,
            self.writer.count,
            seconds,
            f", {skipped} skipped" if skipped else "",
        )
        return ShardOutcome(self.name, "labeled", self.writer.count, skipped, round(seconds, 3))

    def abort(self) -> None:
        """Remove the temporary file; nothing of this shard is committed."""
        with contextlib.suppress(BaseException):
            self._stack.__exit__(*sys.exc_info())


def label_shards(
    store: RunStore,
    dataset: Dataset,
    iteration: int,
    shard_indices: list[int] | None,
    cfg: RunConfig,
    device: torch.device,
    *,
    skip_corrupt: bool | None = None,
    num_workers: int | None = None,
    teacher: Teacher | None = None,
) -> LabelingResult:
    """Label `shard_indices` of the unlabeled split (all when None) with iteration `iteration`'s model.

    `skip_corrupt` and `num_workers` default to `cfg.data`; pass `teacher` to reuse a loaded one.
    Raises `SelftrainError` before writing anything if the teacher is missing or does not fit the
    data set; on a corrupt shard (without `skip_corrupt`) raises naming it, with every shard
    finished before it committed and nothing of it.
    """
    started = time.perf_counter()
    skip = cfg.data.skip_corrupt if skip_corrupt is None else skip_corrupt
    workers = resolve_workers(cfg.data.num_workers if num_workers is None else num_workers, device)
    teacher = teacher or load_teacher(store, iteration, dataset, device)
    spec = LabelSpec.for_teacher(teacher, cfg.pseudolabel)
    entries = dataset.split(SPLIT).shards
    indices = list(range(len(entries))) if shard_indices is None else list(shard_indices)
    for i in indices:
        if not 0 <= i < len(entries):
            raise SelftrainError(f"shard index {i}: {dataset.index_path} has {len(entries)} unlabeled shards")

    out_dir = pseudo_dir(store, iteration)
    outcomes: dict[int, ShardOutcome] = {}
    todo: list[tuple[int, ShardEntry]] = []
    for i in indices:
        entry = entries[i]
        reason = incomplete_reason(out_dir, shard_file_name(entry), spec.expected_meta(entry))
        if reason is None:
            meta = read_meta(meta_path(out_dir, shard_file_name(entry))) or {}
            outcomes[i] = ShardOutcome(shard_file_name(entry), "reused", meta.get("samples", 0), 0)
        else:
            log.debug("%s: labeling (%s)", shard_file_name(entry), reason)
            todo.append((i, entry))
    for _, entry in todo:
        if not dataset.shard_path(entry).is_file():
            raise SelftrainError(
                f"{dataset.shard_path(entry)}: shard listed in {dataset.index_path} does not exist; "
                "restore it or rebuild the data set"
            )

    phases = PhaseSeconds()
    if todo:
        out_dir.mkdir(parents=True, exist_ok=True)
        outcomes.update(_label(dataset, todo, teacher, spec, cfg, skip, workers, out_dir, phases))
    return LabelingResult(
        iteration=iteration,
        spec=spec,
        shards=[outcomes[i] for i in indices],
        seconds=time.perf_counter() - started,
        phases=phases,
    )


def _label(
    dataset: Dataset,
    todo: list[tuple[int, ShardEntry]],
    teacher: Teacher,
    spec: LabelSpec,
    cfg: RunConfig,
    skip_corrupt: bool,
    workers: int,
    out_dir: Path,
    phases: PhaseSeconds,
) -> dict[int, ShardOutcome]:
    per_image, per_batch = split_eval_transform(teacher.image_size, dataset.info.channels)
    batched = use_batched_decode(cfg.data.decode, teacher.device)
    stream = ShardBatches(
        dataset,
        todo,
        teacher.image_size,
        cfg.pseudolabel.batch_size,
        verify_checksums=cfg.data.verify_checksums,
        skip_corrupt=skip_corrupt,
        keep_jpeg=batched,
    )
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=min(workers, len(todo)),
        pin_memory=teacher.device.type == "cuda",
        prefetch_factor=4 if workers else None,
        worker_init_fn=yield_cpu_to_the_model,
    )
    entries = dict(todo)
    open_sidecars: dict[int, _OpenSidecar] = {}
    done: dict[int, ShardOutcome] = {}
    skipped_here: dict[int, int] = {}  # JPEGs that failed on the device and in PIL (--skip-corrupt)
    mark = time.perf_counter()

    def lap() -> float:
        nonlocal mark
        now = time.perf_counter()
        seconds, mark = now - mark, now
        return seconds

    try:
        for batch in loader:
            phases.input += lap()
            if batch.error is not None:
                raise SelftrainError(batch.error)
            sidecar = open_sidecars.get(batch.shard)
            if sidecar is None:
                sidecar = _OpenSidecar(out_dir, entries[batch.shard], spec, teacher.iteration)
                open_sidecars[batch.shard] = sidecar
            phases.write += lap()
            fields, keys = None, []
            if batch.size:
                images, keys = _batch_on_device(
                    batch, dataset, entries[batch.shard], teacher, per_image, skip_corrupt, skipped_here
                )
                if keys:
                    probs = teacher.probabilities(per_batch(images), spec.temperature, spec.hflip_average)
                    fields = label_fields(probs, spec)  # copies to the host: waits for the device
            phases.model += lap()
            if fields is not None:
                sidecar.writer.write(keys, **fields)
            if batch.last:
                skipped = batch.skipped + skipped_here.pop(batch.shard, 0)
                done[batch.shard] = open_sidecars.pop(batch.shard).commit(skipped)
            phases.write += lap()
        phases.input += lap()  # the loader's end (workers shutting down)
    except BaseException:
        for sidecar in open_sidecars.values():
            sidecar.abort()
        raise
    return done


def _batch_on_device(
    batch,
    dataset: Dataset,
    entry: ShardEntry,
    teacher: Teacher,
    per_image,
    skip_corrupt: bool,
    skipped: dict[int, int],
) -> tuple[torch.Tensor, list[str]]:
    """A ShardBatch as uint8 images on the teacher's device and their keys, in the same order.

    CPU-decoded images are moved; JPEG bytes (batched decoding) are decoded and resized there. A
    JPEG the batched decoder refuses goes through PIL, so a corrupt one fails, or is skipped and
    counted, exactly as on the CPU path.
    """
    info = dataset.info
    parts, keys = [], list(batch.keys)
    if batch.keys:
        parts.append(to_device(batch.images, teacher.device))
    if batch.jpegs:
        url = str(dataset.shard_path(entry))

        def with_pil(i: int) -> torch.Tensor | None:
            raw = {"__key__": batch.jpeg_keys[i], "__url__": url, "jpg": batch.jpegs[i]}
            try:
                sample = decode_sample(
                    raw, channels=info.channels, num_classes=info.num_classes, labeled=False
                )
            except CorruptSampleError as exc:
                skip_or_raise(exc, skip_corrupt, log)
                skipped[batch.shard] = skipped.get(batch.shard, 0) + 1
                return None
            return per_image(sample.image)

        decoded, kept = decode_resize(
            batch.jpegs,
            size=teacher.image_size,
            channels=info.channels,
            device=teacher.device,
            fallback=with_pil,
        )
        parts.append(to_device(decoded, teacher.device))
        keys += [batch.jpeg_keys[i] for i in kept]
    images = parts[0] if len(parts) == 1 else torch.cat(parts)
    return images, keys
