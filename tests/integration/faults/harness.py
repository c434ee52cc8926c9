"""Running a deployment under faults: worker pools, load, kills, and collecting the evidence.

Every process a test starts is tracked and killed *by pid* when the test ends (never by
name): the API and the supervisor through their `Popen`, a supervisor's children through
`psutil` (checked to be a worker process of *this* deployment by its key prefix before any
signal is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import psutil

from tests.integration.faults.checker import (
    TERMINAL,
    JobState,
    Kill,
    LedgerReader,
    Report,
    check,
    read_ledger,
)
from tests.integration.processes import Conveyor, service_env

# The short test parameters of reliability.md §7.1: production values scale.
LEASE_S = 5.0
RECOVER_TICK_S = 1.0
PATCHES_DIR = Path(__file__).parent / "patches"


def fault_env(redis_url: str, ledger: Path, **extra: str) -> dict[str, str]:
    """A deployment's environment: own key prefix, short lease and reaper tick, a ledger."""
    return service_env(
        redis_url,
        CONVEYOR_LEASE_SECONDS=str(LEASE_S),
        CONVEYOR_RECOVER_INTERVAL_SECONDS=str(RECOVER_TICK_S),
        CONVEYOR_AUDIT_LOG=str(ledger),
        CONVEYOR_REDIS_TIMEOUT="0.5",
        **extra,
    )


def with_patch(env: dict[str, str], name: str, report: Path) -> dict[str, str]:
    """`env` with the test-only `sitecustomize` of ``patches/<name>`` loaded by every Python
    process started with it (the supervisor and its children inherit it).

    The patch writes ``applied ...`` (or why it could not apply) to `report`; a negative
    control asserts it applied, so a patch broken by a refactoring fails loudly instead of
    testing nothing.
    """
    path = str(PATCHES_DIR / name)
    inherited = env.get("PYTHONPATH")
    return {
        **env,
        "PYTHONPATH": path if not inherited else f"{path}{os.pathsep}{inherited}",
        "CONVEYOR_TEST_PATCH_REPORT": str(report),
    }


# -- processes --------------------------------------------------------------------------------


def _is_ours(proc: psutil.Process, prefix: str) -> bool:
    """Whether `proc` is a Conveyor process of the deployment with this key prefix."""
    try:
        return (
            "entrypoints" in " ".join(proc.cmdline())
            and proc.environ().get("CONVEYOR_KEY_PREFIX") == prefix
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _live(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class Pool(Conveyor):
    """``conveyor worker --processes N --concurrency C``: a supervisor and its children."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        *,
        processes: int,
        concurrency: int,
        queues: str | None = None,
    ) -> None:
        args = ["worker", "--processes", str(processes), "--concurrency", str(concurrency)]
        if queues is not None:
            args += ["--queues", queues]
        super().__init__(args, env, log_dir)
        self.processes = processes
        self.prefix = env["CONVEYOR_KEY_PREFIX"]
        self._seen: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[psutil.Process]:
        """The supervisor's live (not zombie) worker children: the ones it forked itself
        (its first), and its fork server's (the replacements); not the fork server, nor the
        resource tracker the fork server starts."""
        found: list[psutil.Process] = []
        try:
            for child in psutil.Process(self.pid).children():
                with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                    command = " ".join(child.cmdline())
                    if "multiprocessing.forkserver" in command:
                        found.extend(child.children())
                    elif "multiprocessing.resource_tracker" not in command:
                        found.append(child)
        except psutil.NoSuchProcess:
            return []
        live = [c for c in found if _live(c)]
        self._seen.update(c.pid for c in live)
        return live

    def wait_children(self, count: int, within: float = 20.0) -> list[psutil.Process]:
        deadline = time.monotonic() + within
        while True:
            assert self.proc is not None
            assert self.proc.poll() is None, f"supervisor exited:\n{self.output()[-3000:]}"
            children = self.children()
            if len(children) == count:
                return children
            assert time.monotonic() < deadline, f"{len(children)} children, wanted {count}"
            time.sleep(0.05)

    def kill_tree(self) -> None:
        """SIGKILL the supervisor and every worker child it ever had that is still alive.

        The supervisor is frozen first so it cannot start a replacement meanwhile. Children
        live in their own sessions, so they are found by pid, not by process group.
        """
        if self.proc is None:
            return
        supervisor_alive = self.proc.poll() is None
        if supervisor_alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGSTOP)
            self.children()  # records the current pids in _seen
        for pid in sorted(self._seen):
            try:
                child = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            if _is_ours(child, self.prefix):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.send_signal(signal.SIGCONT)
                    child.kill()
        if supervisor_alive:
            self.proc.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
        self.proc.wait()

    def remember(self, pids: Iterable[int]) -> None:
        """Pids seen elsewhere (the ledger) to check and kill at the end."""
        self._seen.update(pids)

    def __exit__(self, *exc: object) -> None:
        self.kill_tree()


@dataclass
class PoolWatch:
    """Samples a pool's children every few ms: when each child vanished, and how long the
    pool took to be back to its size."""

    pool: Pool
    period: float = 0.01
    samples: list[tuple[float, frozenset[int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = frozenset(c.pid for c in self.pool.children())
            self.samples.append((time.time(), pids))
            time.sleep(self.period)

    def deaths(self) -> list[tuple[int, float, float | None]]:
        """``(pid, vanished_at, back_to_size_at)`` for every child that vanished."""
        found: list[tuple[int, float, float | None]] = []
        for (_, before), (ts, after) in zip(self.samples, self.samples[1:], strict=False):
            for pid in sorted(before - after):
                back = next(
                    (t for t, pids in self.samples if t >= ts and len(pids) >= self.pool.processes),
                    None,
                )
                found.append((pid, ts, back))
        return found


# -- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One `POST /jobs` as the client saw it."""

    sent: float
    received: float
    status: int | None  # None: no answer (transport error or client timeout)
    job_id: str | None
    retry_after: str | None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.received - self.sent


def post_job(client: httpx.Client, body: Mapping[str, Any]) -> Sent:
    sent = time.time()
    try:
        response = client.post("/jobs", json=body)
    except httpx.HTTPError as exc:
        return Sent(sent, time.time(), None, None, None, f"{type(exc).__name__}: {exc}")
    received = time.time()
    job_id = response.json().get("id") if response.status_code == 202 else None
    return Sent(sent, received, response.status_code, job_id, response.headers.get("retry-after"))


def submit(client: httpx.Client, body: Mapping[str, Any]) -> str:
    sent = post_job(client, body)
    assert sent.status == 202, sent
    assert sent.job_id is not None, sent
    return sent.job_id


class Load:
    """Submits jobs at a steady rate from a few threads, recording every answer (the
    client-side ledger: the acked set is the jobs answered 202).

    Several senders keep the rate while answers are slow (a Redis outage makes each one
    wait for the API's Redis timeout); each sends every ``senders / rate`` seconds.
    """

    def __init__(
        self,
        base_url: str,
        body: Callable[[int], Mapping[str, Any]],
        *,
        rate: float,
        count: int | None = None,
        senders: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self._base_url = base_url
        self._body = body
        self._rate = rate
        self._count = count
        self._senders = senders
        self._timeout = timeout
        self._lock = threading.Lock()
        self._issued = 0
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        for k in range(self._senders):
            thread = threading.Thread(target=self._run, args=(k,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout + 5)

    def wait(self, within: float) -> None:
        """Wait for a counted load to have sent everything."""
        deadline = time.monotonic() + within
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), (
            f"load not done after {within} s ({len(self.sent)} sent)"
        )

    def _next(self) -> int | None:
        with self._lock:
            if self._count is not None and self._issued >= self._count:
                return None
            self._issued += 1
            return self._issued - 1

    def _run(self, k: int) -> None:
        interval = self._senders / self._rate
        timeout = httpx.Timeout(self._timeout, connect=2.0)
        with httpx.Client(base_url=self._base_url, timeout=timeout) as client:
            next_at = time.monotonic() + k / self._rate
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                n = self._next()
                if n is None:
                    return
                answer = post_job(client, self._body(n))
                with self._lock:
                    self.sent.append(answer)
                next_at += interval
                if next_at < time.monotonic():
                    next_at = time.monotonic()  # behind: do not burst to catch up

    @property
    def acked(self) -> list[str]:
        with self._lock:
            return [s.job_id for s in self.sent if s.status == 202 and s.job_id is not None]


# -- evidence ---------------------------------------------------------------------------------


def job_states(client: httpx.Client, ids: Iterable[str]) -> dict[str, JobState]:
    """The current state of each job, read through the API (a few requests at a time)."""

    def one(job_id: str) -> tuple[str, JobState]:
        response = client.get(f"/jobs/{job_id}")
        if response.status_code == 404:
            return job_id, JobState("missing")
        response.raise_for_status()
        view = response.json()
        return job_id, JobState(view["status"], view["attempts"], view)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(one, list(ids)))


def wait_settled(
    client: httpx.Client,
    ids: Iterable[str],
    within: float,
    statuses: frozenset[str] = TERMINAL,
) -> dict[str, JobState]:
    """Poll until every job is in one of `statuses` or `within` seconds passed; answers the
    last states seen (the caller's checker reports the ones that never got there)."""
    pending = set(ids)
    states: dict[str, JobState] = {}
    deadline = time.monotonic() + within
    while True:
        fresh = job_states(client, pending)
        states.update(fresh)
        pending = {j for j, s in fresh.items() if s.status not in statuses}
        if not pending or time.monotonic() >= deadline:
            return states
        time.sleep(0.25)


def stale_writes(redis_url: str, prefix: str) -> int:
    """Writes Redis refused for a stale lease token, over every queue of the deployment."""
    from adapters.redis_client import create_redis
    from adapters.redis_queue import redis_backend
    from adapters.redis_queue import stale_writes as count_stale

    async def count() -> int:
        client = create_redis(redis_url, connect_timeout=2.0, socket_timeout=5.0)
        backend = redis_backend(client, prefix=prefix)
        try:
            return await count_stale(backend)
        finally:
            await backend.connection.close()

    return asyncio.run(count())


def kill_busy_child(
    pool: Pool, ledger: LedgerReader, signum: int = signal.SIGKILL, within: float = 10.0
) -> Kill:
    """Signal a child of `pool` that is running jobs now (per the ledger: the one with the
    most executions started and not ended), waiting up to `within` s for one to be busy;
    answers the kill with the executions open in it once the signal has landed."""
    deadline = time.monotonic() + within
    while True:
        children = {c.pid for c in pool.children()}
        open_runs = ledger.open_executions()
        busy = sorted(
            (pid for pid in open_runs if pid in children), key=lambda p: -len(open_runs[p])
        )
        if busy:
            break
        assert time.monotonic() < deadline, f"no busy child among {sorted(children)}"
        time.sleep(0.02)
    pid = busy[0]
    ts = time.time()
    os.kill(pid, signum)
    _wait_halted(pid)
    # Look again: the child may have started a job between the look above and the signal.
    executions = ledger.open_executions().get(pid, [])
    return Kill(pid, ts, signal.Signals(signum).name, tuple(executions))


def _wait_halted(pid: int, within: float = 2.0) -> None:
    """Wait until a signalled process runs no more (stopped, dead or gone), so that it can
    write nothing more to the ledger."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            status = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return
        if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD, psutil.STATUS_STOPPED):
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} still runs {within} s after it was signalled")


@dataclass
class Evidence:
    """What a test gathered, handed to the checker in one go."""

    ledger_path: Path
    lease_seconds: float = LEASE_S
    kills: list[Kill] = field(default_factory=list)
    deaths: dict[int, float] = field(default_factory=dict)

    def report(
        self,
        acked: Iterable[str],
        final: Mapping[str, JobState],
        stale: int | None = None,
        **notes: Any,
    ) -> Report:
        events, garbled = read_ledger(self.ledger_path)
        report = check(
            acked=acked,
            final=final,
            events=events,
            lease_seconds=self.lease_seconds,
            kills=self.kills,
            deaths=self.deaths,
            garbled=garbled,
            stale_writes=stale,
        )
        report.notes.update(notes)
        return report


def print_figures(name: str, report: Report, **extra: Any) -> None:
    """One line per test for the run's output (pytest -s, or the captured stdout)."""
    figures = {**report.figures(), **extra}
    print(f"[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items() if v is not None))
