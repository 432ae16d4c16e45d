"""Serve the deployments `noisy-student/iter` and `meta-pseudo-labels/train`.

    prefect server start                       # or any Prefect API
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    selftrain serve                            # this module, against that API
    prefect deployment run noisy-student/iter --param run_dir=runs/demo --param data=data/digits --watch

`prefect.serve` runs each flow run in a spawned subprocess of this process: no work pool or worker
to configure, and a killed run's subprocess takes nothing else down. (For GPU fleets, the same
flows run from a process or Kubernetes work pool; see docker/.)
"""

from __future__ import annotations

from datetime import timedelta

from prefect import serve
from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import get_current_settings

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


ZOMBIE_AUTOMATION = "selftrain: mark unresponsive flow runs Crashed"


def ensure_zombie_automation(missed_heartbeats: int = 3) -> Automation:
    """A flow run whose process died (machine lost, serve killed) sends no more heartbeats.

    Without this, Prefect shows such a run as Running forever. This is Prefect's documented
    recipe: a proactive trigger that fires when a run's heartbeat is not followed by another
    heartbeat or a final state within a few heartbeat periods, and marks the run Crashed. The run
    directory is unaffected: the next `iter` run continues from its manifest either way.
    """
    try:
        return Automation.read(name=ZOMBIE_AUTOMATION)
    except ValueError:
        pass
    period = get_current_settings().flows.heartbeat_frequency or 180
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"No heartbeat for {missed_heartbeats} x {period} s: the run's process is gone.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=missed_heartbeats * period),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message="No heartbeat from the flow run's process: marked Crashed by selftrain serve.",
            )
        ],
    ).create()


def serve_deployments(limit: int | None = None) -> None:
    ensure_zombie_automation()
    serve(*deployments(), limit=limit)


if __name__ == "__main__":
    serve_deployments()
