"""Serve the deployments `noisy-student/iter` and `meta-pseudo-labels/train`.

    prefect server start                       # or any Prefect API: PREFECT_API_URL=...
    selftrain serve                            # this module, against that API
    prefect deployment run noisy-student/iter --param run_dir=runs/demo --param data=data/digits --watch

`prefect.serve` runs each flow run in a spawned subprocess of this process: no work pool or worker
to configure, and a killed run's subprocess takes nothing else down. (For GPU fleets, the same
flows run from a process or Kubernetes work pool; see docker/.)
"""

from __future__ import annotations

from prefect import serve

from flows.meta_pseudo_labels import meta_pseudo_labels
from flows.noisy_student import noisy_student


def deployments() -> list:
    return [
        noisy_student.to_deployment(
            name="iter",
            description="Run the next Noisy Student iteration of `run_dir` (the teacher first, if it has none).",
            tags=["selftrain", "noisy-student"],
        ),
        meta_pseudo_labels.to_deployment(
            name="train",
            description="Meta Pseudo Labels on `run_dir`: teacher and student together, then the finetune.",
            tags=["selftrain", "meta-pseudo-labels"],
        ),
    ]


def serve_deployments(limit: int | None = None) -> None:
    serve(*deployments(), limit=limit)


if __name__ == "__main__":
    serve_deployments()
