"""One writer per run directory: an exclusive OS lock on `RUN/.lock`, held while a run writes.

    selftrain run noisy-student --data data/digits --run-dir runs/demo     # takes runs/demo/.lock
    selftrain run noisy-student --run-dir runs/demo                        # meanwhile, elsewhere:
    error: runs/demo: in use by `selftrain run noisy-student` (pid 4242 on host-a, since 10:02:03); ...

Why `fcntl.flock`: the kernel releases the lock when the holding process dies, however it dies
(SIGKILL, OOM, a lost machine's reboot), so a killed run never blocks the next one and there is no
stale-lock cleanup to get wrong. The lock file itself stays; it holds the holder record (host,
pid, command or flow run, start time) so a refused writer can name who holds it.

Who takes it: the top-level writers only (`selftrain teacher train`, `selftrain pseudolabel`,
`selftrain run`, and the flows, in the process that runs the flow). Their helpers (Prefect tasks
in threads or Dask workers, torchrun ranks launched by `selftrain.launch`) write under their
parent's lock and never take it themselves. Inside one process the lock is re-entrant, so a CLI
command that holds it can call a flow that asks for it again. Readers (`status`, `report`,
`eval`) never take it: every file they read is replaced atomically.

The file descriptor is close-on-exec (Python's default), so exec'd subprocesses do not inherit
the lock; forked helpers (DataLoader workers) do until they exit, which they do shortly after
their parent. A refused writer whose recorded holder has already exited therefore waits a few
seconds for those to go before refusing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selftrain import atomic
from selftrain.errors import SelftrainError

LOCK_NAME = ".lock"
ORPHAN_WAIT_S = 15.0  # how long to wait when the holder has exited but its forked helpers have not


class RunDirInUse(SelftrainError):
    """Another process writes this run directory."""


@dataclass
class _Held:
    fd: int
    count: int


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOCK_NAME


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a stage marked running by a dead one was killed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_record(fd: int) -> list[dict[str, Any]]:
    try:
        data = os.pread(fd, 1 << 16, 0)
        holders = json.loads(data).get("holders", []) if data.strip() else []
        return [h for h in holders if isinstance(h, dict)]
    except (OSError, ValueError, AttributeError):
        return []


def _write_record(fd: int, holders: list[dict[str, Any]]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"holders": holders}) + "\n").encode(), 0)


def _live(holder: dict[str, Any]) -> bool:
    """A holder on another host cannot be checked and counts as live."""
    return holder.get("host") != socket.gethostname() or pid_alive(int(holder.get("pid", -1)))


def read_holders(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of the processes that hold (or last held) the lock, newest last."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return _read_record(fd)
    finally:
        os.close(fd)


def read_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The newest holder's record, or None."""
    holders = read_holders(run_dir)
    return holders[-1] if holders else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"{holder.get('by', 'a selftrain process')} (pid {holder.get('pid')} on {holder.get('host')}, since {since})"


def _refusal(run_dir: Path, holders: list[dict[str, Any]]) -> RunDirInUse:
    live = [h for h in holders if _live(h)] or holders[-1:]
    who = " and ".join(describe_holder(h) for h in live) if live else describe_holder(None)
    return RunDirInUse(
        f"{run_dir}: in use by {who}; wait for it to finish or stop it "
        "(the next run resumes where it stopped), or use another --run-dir"
    )


def _try_lock(fd: int, shared: bool = False) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _orphans_let_go(fd: int, holders: list[dict[str, Any]], shared: bool) -> bool:
    """When every recorded holder has exited, wait briefly for their forked children to let go."""
    if not holders or any(_live(h) for h in holders):
        return False
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if _try_lock(fd, shared):
            return True
    return False


def acquire(run_dir: str | os.PathLike, by: str, shared: bool = False) -> None:
    """Take the run directory's lock for this process or raise `RunDirInUse` at once.

    `by` names the writer for whoever is refused: a command line or a flow run. `shared`: a writer
    that may work beside others of its kind but not beside a run (`selftrain pseudolabel --shards`,
    whose processes label disjoint shards by design).
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    with _guard:
        held = _held.get(key)
        if held is not None:
            held.count += 1
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            if not _try_lock(fd, shared) and not _orphans_let_go(fd, _read_record(fd), shared):
                raise _refusal(run_dir, _read_record(fd))
            record = {"by": by, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            # Shared holders (labelers of disjoint shards) list themselves beside the live others.
            others = [h for h in _read_record(fd) if _live(h) and h.get("shared")] if shared else []
            _write_record(fd, [*others, {**record, "shared": shared}])
            if not shared:  # the only writer now: any temporary here is a write that died with its writer
                atomic.remove_stale_temporaries(run_dir, recursive=True)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = _Held(fd=fd, count=1)


def release(run_dir: str | os.PathLike) -> None:
    key = Path(run_dir).resolve()
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[key]
        with contextlib.suppress(OSError):  # a shared holder takes itself off the list
            others = [h for h in _read_record(held.fd) if h.get("pid") != os.getpid()]
            if others:
                _write_record(held.fd, others)
        os.close(held.fd)  # the record of the last exclusive writer stays; the lock goes


def holds(run_dir: str | os.PathLike) -> bool:
    """Whether this process holds the run directory's lock."""
    with _guard:
        return Path(run_dir).resolve() in _held


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike, by: str, shared: bool = False) -> Iterator[None]:
    """`with hold(run_dir, by="selftrain run noisy-student"):` the one writer of `run_dir`."""
    acquire(run_dir, by, shared)
    try:
        yield
    finally:
        release(run_dir)
