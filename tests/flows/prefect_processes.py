"""A real Prefect server and `selftrain serve` as subprocesses, for end-to-end tests.

Each process gets its own session (process group) so a test can kill a process *and* the flow
runs it spawned, as a crashed machine would, and so nothing outlives the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal the whole process group; escalate to SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
    return proc.wait()


class PrefectServer:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME (SQLite)."""

    def __init__(self, home: Path, log_dir: Path, auth: str | None = None):
        self.home, self.log_dir, self.auth = home, log_dir, auth
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.proc: subprocess.Popen | None = None

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        return env

    def client_env(self, auth: str | None = None) -> dict[str, str]:
        """What a client process (serve, `prefect deployment run`) needs to reach this server."""
        env = self.base_env()
        env["PREFECT_API_URL"] = self.api_url
        if auth or self.auth:
            env["PREFECT_API_AUTH_STRING"] = auth or self.auth
        return env

    def start(self, timeout: float = 90) -> PrefectServer:
        env = self.base_env()
        # Without this the UI's JavaScript calls the default port 4200, not this one.
        env["PREFECT_UI_API_URL"] = self.api_url
        if self.auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth
        log = open(self.log_dir / "server.log", "wb")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited: {(self.log_dir / 'server.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer /api/health within {timeout} s")

    def stop(self) -> int:
        return _stop(self.proc) if self.proc else 0

    def api(self, method: str, path: str, body: Any = None, auth: str | None = "default") -> httpx.Response:
        headers = {}
        credentials = self.auth if auth == "default" else auth
        if credentials:
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        return httpx.request(method, f"{self.api_url}{path}", json=body, headers=headers, timeout=30)

    def post(self, path: str, body: Any = None) -> Any:
        response = self.api("POST", path, body or {})
        response.raise_for_status()
        return response.json()

    def deployments(self) -> dict[str, dict]:
        found = {}
        for d in self.post("/deployments/filter"):
            flow = self.api("GET", f"/flows/{d['flow_id']}")
            flow.raise_for_status()
            found[f"{flow.json()['name']}/{d['name']}"] = d
        return found

    def flow_run(self, run_id: str) -> dict:
        response = self.api("GET", f"/flow_runs/{run_id}")
        response.raise_for_status()
        return response.json()

    def subflow_runs(self, run_id: str) -> list[dict]:
        return self.post("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})

    def task_run_names(self, run_id: str) -> list[str]:
        """Names (without Prefect's suffix) of the run's task runs and those of its subflows."""
        ids = [run_id, *(r["id"] for r in self.subflow_runs(run_id))]
        runs = self.post("/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": ids}}})
        return [r["name"].rsplit("-", 1)[0] for r in runs]

    def artifacts(self, run_id: str) -> list[dict]:
        return self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})


class ServeProcess:
    """`selftrain serve` against a server: registers the deployments and runs their flow runs."""

    def __init__(self, server: PrefectServer, log_dir: Path, name: str = "serve"):
        self.server, self.log_path = server, log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> ServeProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [str(BIN / "selftrain"), "serve"],
            cwd=REPO,  # deployments record entrypoints relative to this folder
            # The shortest heartbeat Prefect allows, so a killed run is marked Crashed within 90 s.
            env={**self.server.client_env(), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_until_served(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_served(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {"noisy-student/iter", "meta-pseudo-labels/train"}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"selftrain serve exited: {self.log_path.read_text()[-2000:]}")
            if "being served" in self.log_path.read_text() and wanted <= set(self.server.deployments()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"deployments not served within {timeout} s: {self.log_path.read_text()[-2000:]}")

    def crash(self) -> None:
        """SIGKILL the serve process and the flow runs it spawned: a machine that died."""
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> int:
        return _stop(self.proc) if self.proc else 0


def run_deployment(
    server: PrefectServer, name: str, params: dict[str, Any], watch: bool = True, timeout: float = 600
) -> tuple[int, str, str]:
    """`prefect deployment run NAME --params JSON [--watch]` -> (exit code, flow run id, output)."""
    cmd = [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params)]
    if watch:
        cmd += ["--watch", "--watch-timeout", str(int(timeout))]
    done = subprocess.run(
        cmd, env=server.client_env(), capture_output=True, text=True, timeout=timeout + 60, cwd=REPO
    )
    output = done.stdout + done.stderr
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    if match is None:
        raise AssertionError(f"no flow run created by {' '.join(cmd)}:\n{output[-3000:]}")
    return done.returncode, match.group(1), output
