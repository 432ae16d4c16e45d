"""Training stages through torchrun, as a subprocess whose output is streamed line by line.

    selftrain teacher train --data data/digits --run-dir runs/ddp --nproc-per-node 2
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m commands.train_rank teacher \\
        --run-dir runs/ddp --config-json cfg.json          # what the line above runs

This is the parent side (`launch_training`): it writes the resolved config to a temporary file,
runs `python -m torch.distributed.run --standalone --nproc-per-node N -m commands.train_rank
STAGE ...` in its own process group, hands every output line to a callback (a Prefect task passes
its run logger, the CLI prints), and stops the whole group (torchrun, its ranks and their
DataLoader workers) on a timeout, an interrupt or any exception raised while it waits, e.g. the
TimeoutError Prefect raises in a task that outlives `timeout_seconds`. A Prefect timeout cannot
stop training running in the task's own thread; it can stop a subprocess, and the exit code says
how it ended.

The rank side (`commands/train_rank.py`, run by torchrun on every rank) joins the process group,
runs the same training function as the in-process path, and prints `progress DESC: STEP/TOTAL ...`
lines from rank 0 that the parent turns into progress. It imports the stage packages, so it sits
with the entry points above them; this side names it only as a module path, so shared plumbing
never imports a stage. The run directory records everything the stage produced; the parent reads
the model card back.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selftrain.errors import SelftrainError

log = logging.getLogger("selftrain.launch")

# Stage -> the iteration whose model card the stage writes (MPL's joint stage also writes 1).
STAGES = {"teacher": None, "student": None, "mpl": 2, "finetune": 3}
PROGRESS = re.compile(r"^progress (?P<desc>.*): (?P<step>\d+)/(?P<total>\d+)\b")
RANK_ERROR = re.compile(r"^\[rank \d+\] error: (?P<message>.*)")

# What torchrun runs on every rank: the entry point above the stage packages (`commands/`).
RANK_MODULE = "commands.train_rank"

LineCallback = Callable[[str], None]
ProgressCallback = Callable[[int, int, dict[str, float]], None]


# -- parent side ------------------------------------------------------------------------------
def training_command(
    stage: str,
    run_dir: Path,
    config_json: Path,
    nproc: int,
    iteration: int | None = None,
    log_dir: Path | None = None,
) -> list[str]:
    """The torchrun command line of one training stage (`--standalone`: one node, a free port).

    `log_dir`: where torchrun keeps its per-rank folders; without one it makes a
    `torchelastic_*` folder in the system temp folder and never removes it, one per stage.
    """
    if stage not in STAGES:
        raise SelftrainError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *([f"--log-dir={log_dir}"] if log_dir is not None else []),
        "-m",
        RANK_MODULE,
        stage,
        "--run-dir",
        str(run_dir),
        "--config-json",
        str(config_json),
    ]
    if iteration is not None:
        cmd += ["--iteration", str(iteration)]
    return cmd


def progress_of(line: str) -> tuple[int, int] | None:
    """(step, total) from a rank-0 progress line, else None."""
    m = PROGRESS.match(line)
    return (int(m["step"]), int(m["total"])) if m else None


def _pump(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the launching process dies, even by SIGKILL.

    The child has its own session (so Ctrl-C reaches only the launcher, which stops it in order);
    without this, a killed flow process would leave torchrun training beside the resumed run.
    torchrun handles the SIGTERM by stopping its ranks.
    """
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the subprocess's whole group (torchrun forwards it too), SIGKILL after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            # The leader has exited; ranks and DataLoader workers may still be in the group.
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def run_streaming(
    cmd: Sequence[str],
    on_line: LineCallback,
    *,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    grace_s: float = 10.0,
) -> list[str]:
    """Run `cmd` in a new process group, `on_line(line)` for each output line (stdout + stderr).

    Returns the last lines. Raises TimeoutError after `timeout_s` and SelftrainError on a non-zero
    exit; in both cases, and on any exception while waiting, the whole group is stopped first.
    The callback runs in the calling thread (Prefect's run logger needs the task's context); a
    helper thread only reads the pipe, so the caller wakes up at least every 0.2 s.
    """
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        env=env,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    tail: deque[str] = deque(maxlen=50)
    first_error: str | None = None
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])}: stopped after {timeout_s:g} s")
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            tail.append(line)
            m = RANK_ERROR.match(line)
            if m and first_error is None:  # the root cause; other ranks then fail on lost peers
                first_error = m["message"]
            on_line(line)
        rc = proc.wait()
    except BaseException:
        stop_process_group(proc, grace_s)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if rc != 0:
        reason = first_error or "see the lines logged above"
        raise SelftrainError(f"training subprocess exited with code {rc}: {reason}")
    return list(tail)


def _subprocess_env(nproc: int, device_type: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # torchrun sets 1 thread per rank when unset; on the CPU the ranks share the cores instead.
    if device_type == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TQDM_DISABLE", "1")  # progress comes as lines; bars do not survive a pipe
    return env


def launch_training(
    stage: str,
    run_dir: str | Path,
    cfg,
    *,
    iteration: int | None = None,
    on_line: LineCallback = print,
    on_progress: ProgressCallback | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Train one stage with `cfg.distributed.nproc_per_node` torchrun ranks; return its model card.

    `stage`: teacher (iteration 0), student (`iteration` >= 1), mpl (the joint stage, which
    writes iterations 1 and 2), finetune (iteration 3).
    """
    import torch

    from selftrain.device import resolve_device
    from selftrain.runstore import RunStore

    nproc = cfg.distributed.nproc_per_node
    device = resolve_device(cfg.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise SelftrainError(
            f"distributed.nproc_per_node: {nproc} processes but {torch.cuda.device_count()} GPU(s) visible; "
            "use at most one process per GPU"
        )
    if stage == "teacher":
        iteration = 0
    card_iteration = STAGES.get(stage) if STAGES.get(stage) is not None else iteration
    if card_iteration is None:
        raise SelftrainError(f"stage {stage}: needs an iteration")
    run_dir = Path(run_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="selftrain-launch-") as tmp:
        config_json = Path(tmp) / "config.json"
        config_json.write_text(cfg.model_dump_json())
        cmd = training_command(stage, run_dir, config_json, nproc, iteration, log_dir=Path(tmp) / "torchrun")

        def forward(line: str) -> None:
            on_line(line)
            done = progress_of(line)
            if done is not None and on_progress is not None:
                on_progress(done[0], done[1], {})

        log.info("launching %s with %d processes: %s", stage, nproc, " ".join(cmd))
        started = time.monotonic()
        run_streaming(cmd, forward, timeout_s=timeout_s, env=_subprocess_env(nproc, device.type))
        log.info("%s finished in %.1f s with %d processes", stage, time.monotonic() - started, nproc)
    return RunStore(run_dir).card(card_iteration)
