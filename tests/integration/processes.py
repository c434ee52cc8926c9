"""Run Conveyor's own entry points as real processes, the way an operator would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for a test deployment: its own key prefix, so tests never share keys."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "CONVEYOR_KEY_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
        "LOG_FORMAT": "json",
        **extra,
    }


class Conveyor:
    """One `conveyor ...` process with its output kept in a file for the failure message."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.args = args
        self._env = env
        self.log_path = log_dir / f"{args[0]}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", *self.args],
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the process's output holds `text`; fails if it exits first or `timeout`
        passes (a worker's child, for one, may take seconds to start on a loaded machine)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"exited before {text!r}: {self.output()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"no {text!r} in {timeout} s: {self.output()[-3000:]}"
            )
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; answers the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Api(Conveyor):
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        super().__init__(["api", "--port", str(self.port)], env, log_dir)
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        super().start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"API exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.base}/health/live", timeout=0.5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"API did not come up:\n{self.output()}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=5.0)


def wait_for_job(
    client: httpx.Client, job_id: str, statuses: set[str], within: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        view: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if view.get("status") in statuses:
            return view
        assert time.monotonic() < deadline, f"job never reached {statuses}: {view}"
        time.sleep(0.05)
