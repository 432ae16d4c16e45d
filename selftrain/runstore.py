"""The run directory: the record of what a run has done, and the only one.

    RUN/
      config.yaml          resolved RunConfig (what produced everything below)
      manifest.json        data set, and per iteration: role, model, stage states, artifact sha256
      iter-000/            teacher: model.safetensors, model.json (model card), checkpoints/
      iter-001/ ...        students (later issues)

Every stage reads its inputs from here and writes its outputs here atomically; a stage is done
when, and only when, the manifest says so, which happens after its artifacts are in place. Resuming
is reading the manifest. Prefect state is a convenience on top, never the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from selftrain import atomic
from selftrain.config import RunConfig, config_differences, config_to_yaml, load_config, load_run_config
from selftrain.errors import SelftrainError
from selftrain.runlock import pid_alive

MANIFEST = "manifest.json"
PREVIOUS_MANIFEST = "manifest.prev.json"  # the version before the last write, for a damaged manifest
CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
CARD = "model.json"
# Settings that may change between a run and its resumption without changing the results' meaning.
# Where and how the work runs, not what it computes: a run may continue with other values.
RUNTIME_KEYS = {
    "device",
    "data.num_workers",
    "data.skip_corrupt",
    "distributed.nproc_per_node",
    "pseudolabel.task_runner",
    "pseudolabel.dask_address",
    "pseudolabel.dask_workers",
    "tensorboard.enabled",
}


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content (all but this field), so an altered manifest is noticed."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- layout -------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    def iter_dir(self, k: int) -> Path:
        return self.root / f"iter-{k:03d}"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # -- manifest -----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest, checked: a truncated or altered one is refused, never used."""
        if not self.exists():
            raise SelftrainError(
                f"{self.root}: not a run directory (no {MANIFEST}); start one with `selftrain teacher train`"
            )
        try:
            manifest = json.loads(self.manifest_path.read_text())
            damaged = not isinstance(manifest, dict) or (
                "checksum" in manifest and manifest["checksum"] != _manifest_checksum(manifest)
            )
        except (json.JSONDecodeError, UnicodeDecodeError):
            damaged = True
        if damaged:
            fix = (
                f"the version before the last update is {PREVIOUS_MANIFEST}: copy it over {MANIFEST} and run "
                "again (the last recorded step is redone)"
                if (self.root / PREVIOUS_MANIFEST).is_file()
                else "restore it from a backup or start a new --run-dir"
            )
            raise SelftrainError(f"{self.manifest_path}: damaged (truncated or altered); {fix}")
        return manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        """Keep the current manifest as manifest.prev.json, then write the new one, both atomic."""
        if self.manifest_path.is_file():
            atomic.write_bytes(self.root / PREVIOUS_MANIFEST, self.manifest_path.read_bytes())
        manifest = {k: v for k, v in manifest.items() if k != "checksum"}
        atomic.write_json(self.manifest_path, {**manifest, "checksum": _manifest_checksum(manifest)})

    def open(self, data_dir: Path, config_file: str | None, overrides: list[str]) -> RunConfig:
        """Create the run directory, or reopen it and check the config and data agree."""
        from selftrain.data.dataset_info import load_dataset
        from selftrain.recipes import recipe_for

        data_dir = Path(data_dir).resolve()
        info = load_dataset(data_dir).info
        requested = load_config(
            config_file, overrides, recipe=recipe_for(info.channels), stored_size=info.image_size
        )
        if not self.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.config_path, config_to_yaml(requested))
            self._write_manifest(
                {"format_version": 1, "data": str(data_dir), "created": time.time(), "iterations": {}}
            )
            return requested
        manifest = self.manifest()
        self._remove_finished_checkpoints()
        if Path(manifest["data"]) != data_dir:
            raise SelftrainError(
                f"{self.root}: this run uses data {manifest['data']}, not {data_dir}; pass the same --data "
                "or a new --run-dir"
            )
        saved = self.config()
        if config_file or overrides:
            differ = [k for k in config_differences(saved, requested) if k not in RUNTIME_KEYS]
            if differ:
                raise SelftrainError(
                    f"{self.config_path}: the run was started with other values for {', '.join(differ)}; "
                    "drop --config/--set to continue it, or use a new --run-dir"
                )
            runtime = {k: v for k, v in requested.model_dump().items() if k == "device"}
            return saved.model_copy(
                update={
                    **runtime,
                    "data": saved.data.model_copy(
                        update={
                            "num_workers": requested.data.num_workers,
                            "skip_corrupt": requested.data.skip_corrupt,
                        }
                    ),
                    "distributed": requested.distributed,
                    "tensorboard": requested.tensorboard,
                    "pseudolabel": saved.pseudolabel.model_copy(
                        update={
                            "task_runner": requested.pseudolabel.task_runner,
                            "dask_address": requested.pseudolabel.dask_address,
                            "dask_workers": requested.pseudolabel.dask_workers,
                        }
                    ),
                }
            )
        return saved

    def _remove_finished_checkpoints(self) -> None:
        """A stage deletes its checkpoints after it is recorded done; a kill in between leaves them."""
        for k in self.iterations_done():
            shutil.rmtree(self.iter_dir(k) / "checkpoints", ignore_errors=True)

    def config(self) -> RunConfig:
        self.manifest()  # a clear "not a run directory" before "config.yaml not found"
        return load_run_config(self.config_path)

    def data_dir(self) -> Path:
        return Path(self.manifest()["data"])

    def point_at_data(self, data_dir: Path) -> None:
        """Record another data set for this run (a copy of a run that labels other shards with the
        same classes, as the benchmarks make). Through the store, so the manifest's checksum holds."""
        self._write_manifest({**self.manifest(), "data": str(data_dir)})

    def iteration(self, k: int) -> dict[str, Any]:
        return self.manifest()["iterations"].get(str(k), {})

    def stage_state(self, k: int, stage: str) -> str:
        info = self.iteration(k).get("stages", {}).get(stage)
        if not info:
            return "pending"
        if info["state"] == "running" and not pid_alive(info.get("pid", -1)):
            return "interrupted"
        return info["state"]

    def mark_stage(self, k: int, stage: str, state: str, **fields: Any) -> None:
        manifest = self.manifest()
        it = manifest["iterations"].setdefault(str(k), {"stages": {}})
        for key in ("role", "model"):
            if key in fields:
                it[key] = fields.pop(key)
        entry = it["stages"].setdefault(stage, {})
        entry.update(state=state, updated=time.time(), **fields)
        if state == "running":
            entry["pid"] = os.getpid()
        self._write_manifest(manifest)

    # -- models -------------------------------------------------------------------------------
    def save_model(self, k: int, state_dict: dict[str, torch.Tensor], card: dict[str, Any]) -> dict[str, str]:
        """Weights then card, each atomic; returns their checksums for the manifest."""
        d = self.iter_dir(k)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.detach().cpu().contiguous() for n, t in state_dict.items()}
        with atomic.atomic_path(d / WEIGHTS) as tmp:
            save_file(tensors, str(tmp), metadata={"architecture": card["architecture"]})
        weights_sha = atomic.sha256_file(d / WEIGHTS)
        card = {**card, "weights": WEIGHTS, "weights_sha256": weights_sha}
        card_sha = atomic.write_json(d / CARD, card)
        return {WEIGHTS: weights_sha, CARD: card_sha}

    def card(self, k: int) -> dict[str, Any]:
        """Iteration k's model card, checked against the sha256 the manifest recorded for it."""
        path = self.iter_dir(k) / CARD
        if not path.is_file():
            raise SelftrainError(self._missing_model(k))
        data = path.read_bytes()
        expected = self.iteration(k).get("stages", {}).get("train", {}).get("artifacts", {}).get(CARD)
        try:
            card = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            card = None
        if card is None or (expected and hashlib.sha256(data).hexdigest() != expected):
            raise SelftrainError(
                f"{path}: damaged (sha256 differs from {self.manifest_path}); retrain iteration {k} in a new "
                "run directory, or branch before it with --from-iteration"
            )
        return card

    def _missing_model(self, k: int) -> str:
        done = [
            int(i)
            for i, it in self.manifest()["iterations"].items()
            if it.get("stages", {}).get("train", {}).get("state") == "done"
        ]
        hint = (
            f"trained iterations: {sorted(done)}"
            if done
            else "train the teacher first: `selftrain teacher train`"
        )
        return f"{self.iter_dir(k)}: iteration {k} has no trained model; {hint}"

    def load_weights(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Weights of iteration k, checked against the checksum the manifest recorded."""
        if self.stage_state(k, "train") != "done":
            raise SelftrainError(self._missing_model(k))
        card = self.card(k)
        path = self.iter_dir(k) / WEIGHTS
        expected = self.iteration(k)["stages"]["train"].get("artifacts", {}).get(WEIGHTS)
        if not path.is_file():
            raise SelftrainError(
                f"{path}: weights file is missing; retrain iteration {k} in a new run directory"
            )
        if expected and atomic.sha256_file(path) != expected:
            raise SelftrainError(
                f"{path}: sha256 differs from {self.manifest_path}; the file was changed or corrupted"
            )
        try:
            return load_file(str(path)), card
        except SafetensorError as exc:
            raise SelftrainError(f"{path}: not a valid safetensors file ({exc})") from None

    # -- the Noisy Student loop ---------------------------------------------------------------
    def iterations_done(self) -> list[int]:
        return sorted(
            int(k)
            for k, it in self.manifest()["iterations"].items()
            if it.get("stages", {}).get("train", {}).get("state") == "done"
        )

    def next_iteration(self) -> int:
        """The first iteration whose model is not trained yet (0 = the teacher)."""
        done = set(self.iterations_done())
        k = 0
        while k in done:
            k += 1
        return k

    def promote(self, k: int) -> None:
        """Iteration k's student becomes the teacher that labels data for iteration k + 1."""
        manifest = self.manifest()
        manifest["teacher_iteration"] = k
        manifest["iterations"][str(k)]["stages"]["promote"] = {"state": "done", "updated": time.time()}
        self._write_manifest(manifest)

    def branch_from(self, k: int) -> Path | None:
        """Keep iterations <= k; move later ones to RUN/branches/ (results are never deleted)."""
        done = self.iterations_done()
        if k not in done:
            raise SelftrainError(
                f"from_iteration={k}: iteration {k} has no trained model in {self.root}; trained: {done}"
            )
        manifest = self.manifest()
        later = sorted(int(i) for i in manifest["iterations"] if int(i) > k)
        if not later and not (self.iter_dir(k) / "pseudo").exists():
            return None
        archive = self.root / "branches" / f"after-{k:03d}-{time.strftime('%Y%m%d-%H%M%S')}"
        archive.mkdir(parents=True)
        for i in later:
            if self.iter_dir(i).exists():
                os.replace(self.iter_dir(i), archive / self.iter_dir(i).name)
            manifest["iterations"].pop(str(i))
        # Iteration k's pseudo-labels fed the old k+1; the new branch labels afresh.
        if (self.iter_dir(k) / "pseudo").exists():
            os.replace(self.iter_dir(k) / "pseudo", archive / f"{self.iter_dir(k).name}-pseudo")
        manifest["iterations"][str(k)].get("stages", {}).pop("pseudolabel", None)
        manifest["teacher_iteration"] = k
        atomic.write_json(archive / MANIFEST, {"branched_from": k, "iterations": later})
        self._write_manifest(manifest)
        return archive

    # -- status -------------------------------------------------------------------------------
    def status_rows(self) -> list[dict[str, Any]]:
        rows = []
        for key, it in sorted(self.manifest()["iterations"].items(), key=lambda kv: int(kv[0])):
            k = int(key)
            state = self.stage_state(k, "train")
            row: dict[str, Any] = {
                "iteration": k,
                "role": it.get("role"),
                "model": it.get("model"),
                "params": None,
                "val_accuracy": None,
                "test_accuracy": None,
                "state": state,
                "flops": None,
                "labeled_batch": None,
                "unlabeled_batch": None,
                "unlabeled_ratio": None,
                "pseudo_label_accuracy": None,
                "test_accuracy_before_finetune": None,  # a student with `student.finetune` on
                "test_count": None,
            }
            if state == "done":
                card = self.card(k)
                fixed = ("iteration", "role", "state")
                row.update({f: card[f] for f in row if f in card and f not in fixed})
                row["model"] = card["architecture"]
            rows.append(row)
        return rows
