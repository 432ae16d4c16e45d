"""Random-kill soak: SIGKILL real runs at seeded random moments, run them again, check what is left.

    python benchmarks/soak_kill.py [--kills 20] [--seed 0] [--json] [--workdir DIR]

Three jobs, each the real command line: `data digits` (building the shards), a 2-iteration
`run noisy-student` and a `run meta-pseudo-labels`, with step counts that train in seconds. Each
is first run once uninterrupted (the reference: its duration and final test accuracy). Then N
kill moments are drawn, uniform over the three jobs' measured work, and each job is run again in
a fresh folder: every attempt starts in its own process group (with all its helpers), is
SIGKILLed as a group at its moment, and the same command is run again, until an attempt ends by
itself. The attempts talk to one `prefect server start` that the soak runs (as served runs do);
with `--ephemeral` each starts its own ephemeral server, killed with it, as a plain `selftrain
run` does (on a loaded 2-core machine that server alone can take longer than 5 minutes to start). Right after each kill the manifest says which stage was hit.

At the end it checks what a user relies on after a crash:
- `completed`: the last attempt of each job exited 0 and every stage of both runs is `done`;
  the rebuilt data set's `dataset.json` is byte-identical to the reference's.
- `checksum_failures`: every artifact the manifests list (weights, model cards, selections,
  plots, and the sidecars each selection lists), every shard `dataset.json` lists, and each
  manifest's own checksum, against their sha256.
- `leftover_files`: the atomic writer's temporaries (`.NAME.XXXX.tmp`), checkpoints of a stage
  already done, files in the data folder that `dataset.json` does not list, TensorBoard event
  files that end in a cut record.
- `accuracy_delta`: final test accuracy of the killed-and-resumed run minus the reference, in
  points, per loop (`accuracy`) and the larger in size.
- `redone_stages`: a stage recorded `done` before a rerun whose record or artifact files (sha256,
  mtime) changed during it.

Noisy Student's `--iterations K` trains K more students each time it runs (README), so "the same
command" is `--iterations` = the students still missing (0 finishes a killed last iteration's
evaluation and promotion without training another). The data builder starts over after a kill
(it has nothing to resume); the kills that hit it check that a rebuilt folder is whole.
JSON keys: `kills` (landed), `kills_requested`, `kills_missed` (the attempt ended before its
moment), `kills_by_stage`, `completed`, `checksum_failures`, `leftover_files`, `accuracy_delta`,
`accuracy`, `redone_stages`, `failed_attempts` (ended nonzero without a kill), `details`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NS_ITERATIONS = 2
# Short enough to train in seconds, long enough that the models are far from chance (final models
# 74-79% on digits, chance 10%): at chance, "the same accuracy after a kill" would hold whatever the
# resume did.
QUICK = [
    "data.image_size=16",  # the digits are 8x8: 16 loses nothing and trains about 3x faster than 32
    "teacher.steps=100",
    "teacher.eval_every=25",
    "teacher.checkpoint_every=25",
    "teacher.warmup_steps=5",
    "teacher.batch_size=32",
    "student.steps=12",
    "student.eval_every=6",
    "student.checkpoint_every=6",
    "student.warmup_steps=2",
    "student.batch_size=4",
    "student.unlabeled_ratio=[3, 5]",
    "student.models=[resnet10t, resnet10t]",
    "pseudolabel.confidence_threshold=0.1",
    "mpl.steps=24",
    "mpl.batch_size=8",
    "mpl.unlabeled_ratio=2",
    "mpl.warmup_steps=2",
    "mpl.student_wait_steps=4",
    "mpl.uda_warmup_steps=4",
    "mpl.eval_every=6",
    "mpl.checkpoint_every=6",
    "mpl.finetune.steps=60",
    "mpl.finetune.batch_size=16",
    "mpl.finetune.warmup_steps=2",
    "mpl.finetune.eval_every=20",
    "mpl.finetune.checkpoint_every=20",
]
# Stage order as each flow records it; a kill is attributed to the stage recorded `running`, else
# to the first one not yet done (evaluate, pseudo-labeling and promote are recorded only when done).
NS_STAGES = [(0, "train"), (0, "evaluate"), (0, "pseudolabel")] + [
    s
    for k in range(1, NS_ITERATIONS + 1)
    for s in [(k, "train"), (k, "evaluate"), (k, "promote")]
    + ([(k, "pseudolabel")] if k < NS_ITERATIONS else [])
]
MPL_STAGES = [(0, "train"), (2, "train"), (1, "train"), (3, "train")] + [(k, "evaluate") for k in range(4)]
FINAL = {"noisy-student": NS_ITERATIONS, "meta-pseudo-labels": 3}
ARTIFACT_FOLDER = {"train": "", "pseudolabel": "pseudo"}  # where each stage's artifacts live


# -- processes --------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc, so that a helper in its own session dies too."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    below = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(p) for p in below):
        time.sleep(0.1)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead child waits for init to reap it, which may take a while)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_attempt(
    argv: list[str], env: dict[str, str], log: Path, kill_after: float | None
) -> tuple[int, bool, float]:
    """Run `argv` in its own process group; SIGKILL the group after `kill_after` s if still running.

    Returns (exit code, killed, seconds).
    """
    start = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}  (kill after {kill_after})\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
        try:
            rc = proc.wait(timeout=kill_after)
            return rc, False, time.monotonic() - start
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return -signal.SIGKILL, True, time.monotonic() - start


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "commands.cli", *args]


# -- the run directory as the flows left it -----------------------------------------------------------
def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stage_record(manifest: dict[str, Any] | None, k: int, stage: str) -> dict[str, Any]:
    if manifest is None:
        return {}
    return manifest.get("iterations", {}).get(str(k), {}).get("stages", {}).get(stage, {})


def stage_hit(run_dir: Path, order: list[tuple[int, str]]) -> str:
    manifest = read_manifest(run_dir)
    if manifest is None or not any(it.get("stages") for it in manifest.get("iterations", {}).values()):
        return "start-up (imports, Prefect server, run directory)"
    for k, stage in order:
        if stage_record(manifest, k, stage).get("state") == "running":
            return f"iter-{k} {stage}"
    for k, stage in order:
        if stage_record(manifest, k, stage).get("state") != "done":
            return f"iter-{k} {stage}"
    return "after the last stage (report, exit)"


def students_done(run_dir: Path) -> int:
    manifest = read_manifest(run_dir)
    return sum(stage_record(manifest, k, "train").get("state") == "done" for k in range(1, NS_ITERATIONS + 1))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def listed_artifacts(run_dir: Path) -> dict[Path, str]:
    """Every file the manifest gives a sha256 for, and the sidecars each selection lists."""
    manifest = read_manifest(run_dir) or {}
    listed: dict[Path, str] = {}
    for k, it in manifest.get("iterations", {}).items():
        for stage, record in it.get("stages", {}).items():
            for name, digest in record.get("artifacts", {}).items():
                folder = run_dir / f"iter-{int(k):03d}" / ARTIFACT_FOLDER.get(stage, f"?{stage}")
                listed[folder / name] = digest
    for selection in run_dir.glob("iter-*/pseudo/selection.json"):
        for name, digest in json.loads(selection.read_text()).get("sidecars", {}).items():
            listed[selection.parent / name] = digest
    return listed


def manifest_checksum_ok(run_dir: Path) -> bool:
    manifest = read_manifest(run_dir)
    if manifest is None:
        return False
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return manifest.get("checksum") == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def done_snapshot(run_dir: Path) -> dict[str, Any]:
    """What a stage recorded done looks like now: its record and its files' sha256 and mtime."""
    manifest = read_manifest(run_dir) or {}
    files = {str(p): (sha256(p), p.stat().st_mtime_ns) for p in listed_artifacts(run_dir) if p.is_file()}
    stages = {
        f"iter-{k} {stage}": record
        for k, it in manifest.get("iterations", {}).items()
        for stage, record in it.get("stages", {}).items()
        if record.get("state") == "done"
    }
    return {"stages": stages, "files": files}


def redone_since(before: dict[str, Any], run_dir: Path) -> list[str]:
    after = done_snapshot(run_dir)
    changed = [
        f"{name}: record changed"
        for name, rec in before["stages"].items()
        if after["stages"].get(name) != rec
    ]
    changed += [
        f"{path}: rewritten" for path, seen in before["files"].items() if after["files"].get(path) != seen
    ]
    return changed


def tfrecord_cut(path: Path) -> bool:
    """Whether a TensorBoard event file ends inside a record (length, crc, data, crc)."""
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            return True
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        pos += 12 + length + 4
    return pos != len(data)


def leftovers(folder: Path, done_iterations: list[int]) -> list[str]:
    found = [str(p) for p in folder.rglob(".*.tmp")]
    found += [
        str(folder / f"iter-{k:03d}" / "checkpoints")
        for k in done_iterations
        if (folder / f"iter-{k:03d}" / "checkpoints").exists()
    ]
    found += [str(p) for p in folder.rglob("*tfevents*") if p.is_file() and tfrecord_cut(p)]
    return sorted(found)


def test_accuracy(run_dir: Path, k: int) -> float | None:
    value = stage_record(read_manifest(run_dir), k, "evaluate").get("test_accuracy")
    return None if value is None else float(value)


# -- jobs -------------------------------------------------------------------------------------------
@dataclass
class Job:
    name: str
    order: list[tuple[int, str]] = field(default_factory=list)

    def argv(self, data: Path, out: Path) -> list[str]:
        if self.name == "data":
            return cli("data", "digits", "--out", str(out))
        sets = [f"--set={s}" for s in QUICK]
        extra = []
        if self.name == "noisy-student":
            extra = ["--iterations", str(max(NS_ITERATIONS - students_done(out), 0))]
        return cli("run", self.name, "--data", str(data), "--run-dir", str(out), *extra, *sets)

    def complete(self, out: Path) -> bool:
        if self.name == "data":
            return (out / "dataset.json").is_file()
        manifest = read_manifest(out)
        return all(stage_record(manifest, k, s).get("state") == "done" for k, s in self.order)


JOBS = [Job("data"), Job("noisy-student", NS_STAGES), Job("meta-pseudo-labels", MPL_STAGES)]


def run_reference(run_dir: Path, log: Path, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run to the end, watching the manifest: (seconds until the first stage began, total seconds)."""
    start = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}  (reference)\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
        began = None
        while proc.poll() is None:
            manifest = read_manifest(run_dir)
            if began is None and manifest and any(it.get("stages") for it in manifest["iterations"].values()):
                began = time.monotonic() - start
            time.sleep(0.5)
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"error: reference run `{' '.join(argv)}` failed (exit {proc.returncode}); see {log}"
        )
    return (began if began is not None else 0.0), total


def start_server(env: dict[str, str], log: Path, say) -> tuple[subprocess.Popen, str]:
    """One `prefect server start` for every attempt: on a loaded machine the ephemeral server each
    attempt would start can take longer than Prefect's start-up limit (seen here at 300 s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        server = subprocess.Popen(argv, env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: `prefect server start` exited {server.returncode}; see {log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
            if reply.status == 200:
                say(f"Prefect server at {url}")
                return server, url
        time.sleep(2)
    _kill_group(server)
    raise SystemExit(f"error: `prefect server start` did not answer within 30 minutes; see {log}")


def soak(kills: int, seed: int, work: Path, say, ephemeral: bool = False) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900",
        "TQDM_DISABLE": "1",
    }
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    server = None
    if not ephemeral:
        server, env["PREFECT_API_URL"] = start_server(env, work / "server.log", say)
    try:
        return _soak(kills, seed, work, say, env, log)
    finally:
        if server is not None:
            _kill_group(server)


def _soak(kills: int, seed: int, work: Path, say, env: dict[str, str], log: Path) -> dict[str, Any]:
    ref, soaked = work / "reference", work / "soak"
    ref.mkdir(parents=True, exist_ok=True)
    soaked.mkdir(parents=True, exist_ok=True)

    # 1. The uninterrupted reference: durations (start-up apart from work) and accuracies.
    startup, work_s = {}, {}
    for job in JOBS:
        out = ref / job.name
        began, total = run_reference(out, log, job.argv(ref / "data", out), env)
        startup[job.name] = began if job.name != "data" else 0.0
        work_s[job.name] = max(total - startup[job.name], 1.0)
        say(f"reference {job.name}: {total:.0f} s (start-up {startup[job.name]:.0f} s)")

    # 2. N moments, uniform over the jobs' work laid end to end; per job, the gaps between them.
    rng = random.Random(seed)
    moments = sorted(rng.uniform(0, sum(work_s.values())) for _ in range(kills))
    plan: dict[str, list[float]] = {job.name: [] for job in JOBS}
    offset = 0.0
    for job in JOBS:
        mine = [m - offset for m in moments if offset <= m < offset + work_s[job.name]]
        if job.name == "data":  # a rebuild starts over: each kill is an offset from its start
            plan[job.name] = mine
        else:  # a rerun resumes: each kill is the next stretch of work after the start-up
            plan[job.name] = [startup[job.name] + b - a for a, b in zip([0.0, *mine], mine, strict=False)]
        offset += work_s[job.name]

    # 3. Kill, rerun, until an attempt ends by itself.
    hits: list[dict[str, Any]] = []
    redone: list[str] = []
    failed: list[str] = []
    missed = 0
    last_rc = {}
    for job in JOBS:
        out = soaked / job.name
        delays = list(plan[job.name])
        consecutive_failures = 0
        while True:
            before = done_snapshot(out) if job.name != "data" else None
            delay = delays.pop(0) if delays else None
            rc, killed, seconds = run_attempt(job.argv(soaked / "data", out), env, log, delay)
            if before is not None:
                redone += redone_since(before, out)
            progress = {"hits": hits, "redone": redone, "failed": failed, "missed": missed, "plan": plan}
            (work / "progress.json").write_text(json.dumps(progress, indent=1))
            if killed:
                stage = "data build" if job.name == "data" else stage_hit(out, job.order)
                hits.append({"job": job.name, "after_s": round(seconds, 1), "stage": stage})
                say(f"kill {len(hits)}: {job.name} after {seconds:.1f} s, in {stage}")
                continue
            if delay is not None:
                missed += 1
            if rc == 0 or consecutive_failures >= 2:
                last_rc[job.name] = rc
                if rc != 0:
                    failed.append(f"{job.name}: exit {rc} three times in a row; see {log}")
                missed += len(delays)
                break
            consecutive_failures += 1
            failed.append(f"{job.name}: exit {rc} without a kill; ran it again (see {log})")

    # 4. What is left.
    checksum_failures: list[str] = []
    leftover: list[str] = []
    accuracy: dict[str, Any] = {}
    data_dir = soaked / "data"
    shards = (
        json.loads((data_dir / "dataset.json").read_text()) if (data_dir / "dataset.json").is_file() else {}
    )
    listed = {"dataset.json"} | ({shards["unlabeled_truth"]} if shards.get("unlabeled_truth") else set())
    for split in shards.get("splits", {}).values():
        for entry in split["shards"]:
            listed.add(entry["path"])
            if (
                not (data_dir / entry["path"]).is_file()
                or sha256(data_dir / entry["path"]) != entry["sha256"]
            ):
                checksum_failures.append(str(data_dir / entry["path"]))
    leftover += [str(p) for p in data_dir.iterdir() if p.name not in listed]
    data_identical = (data_dir / "dataset.json").is_file() and (data_dir / "dataset.json").read_bytes() == (
        ref / "data" / "dataset.json"
    ).read_bytes()
    for job in JOBS[1:]:
        out = soaked / job.name
        if not manifest_checksum_ok(out):
            checksum_failures.append(str(out / "manifest.json"))
        for path, digest in listed_artifacts(out).items():
            if not path.is_file() or sha256(path) != digest:
                checksum_failures.append(str(path))
        done = sorted(
            {k for k, s in job.order if stage_record(read_manifest(out), k, "train").get("state") == "done"}
        )
        leftover += leftovers(out, done)
        k = FINAL[job.name]
        reference, resumed = test_accuracy(ref / job.name, k), test_accuracy(out, k)
        delta = None if reference is None or resumed is None else round(100 * (resumed - reference), 2)
        accuracy[job.name] = {"reference": reference, "killed_and_resumed": resumed, "delta_points": delta}
    deltas = [a["delta_points"] for a in accuracy.values()]
    completed = (
        all(rc == 0 for rc in last_rc.values())
        and all(job.complete(soaked / job.name) for job in JOBS)
        and data_identical
    )
    return {
        "kills": len(hits),
        "kills_requested": kills,
        "kills_missed": missed,
        "kills_by_stage": dict(Counter(f"{h['job']}: {h['stage']}" for h in hits).most_common()),
        "completed": completed,
        "checksum_failures": len(checksum_failures),
        "leftover_files": len(leftover),
        "accuracy_delta": None if None in deltas else max(deltas, key=abs),
        "accuracy": accuracy,
        "redone_stages": len(redone),
        "failed_attempts": len(failed),
        "seed": seed,
        "details": {
            "kills": hits,
            "checksum_failures": checksum_failures,
            "leftover_files": leftover,
            "redone": redone,
            "failed_attempts": failed,
            "data_identical_to_reference": data_identical,
            "reference_seconds": {n: round(startup[n] + work_s[n], 1) for n in work_s},
            "workdir": str(work),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="each attempt starts (and is killed with) its own ephemeral Prefect server, as a plain "
        "`selftrain run` does; default: one `prefect server start` for all attempts",
    )
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.kills < 0:
        parser.error("--kills: must be at least 0")
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak-kill-"))
    if args.workdir and any(args.workdir.iterdir() if args.workdir.exists() else []):
        parser.error(f"--workdir {args.workdir}: must be empty or new")
    try:
        result = soak(args.kills, args.seed, work, say, ephemeral=args.ephemeral)
    finally:
        if args.workdir is None and not os.environ.get("SOAK_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
        for name in ("checksum_failures", "leftover_files", "redone", "failed_attempts"):
            for line in result["details"][name]:
                print(f"{name}: {line}")
    ok = result["completed"] and not (
        result["checksum_failures"] or result["leftover_files"] or result["redone_stages"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
