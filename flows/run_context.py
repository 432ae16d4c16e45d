"""The flows' side of opening a run: who holds the lock, and input errors as a Failed state.

Opening itself is plain code (`selftrain.run_inputs`), shared with `selftrain run`, which checks
the same inputs before any Prefect server or flow starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Failed

from selftrain.errors import SelftrainError
from selftrain.run_inputs import RunContext, config_arguments, open_run, reopen

__all__ = [
    "RunContext",
    "config_arguments",
    "flow_run_holder",
    "input_errors_fail_the_run",
    "open_run",
    "reopen",
]


def flow_run_holder() -> str:
    """How a run directory's lock names this flow run to a refused writer."""
    kind = "deployment run" if deployment.id else "flow run"  # deployment.id is None outside one
    where = f"{kind} of {flow_run.flow_name}"
    return f"{where} '{flow_run.name}' (id {flow_run.id})"


def input_errors_fail_the_run(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A `SelftrainError` ends the flow run Failed with its one line as the state message.

    So the UI shows what to fix without opening logs, and no traceback is logged for bad input.
    Anything else is a bug and keeps Prefect's usual handling (traceback included).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SelftrainError as exc:
            get_run_logger().error("error: %s", exc)
            return Failed(message=str(exc), data=exc)

    return wrapper
