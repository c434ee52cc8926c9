"""Starting worker processes cheaply: forked from a process that has the code loaded.

A worker's first children are forked from `conveyor worker` itself (`HeldChildren`), as soon
as it has loaded the supervisor: before it opens a connection, starts an event loop or runs a
second thread, so a fork copies nothing that could be shared by mistake. A child imports only
what a child alone runs, and waits for the supervisor to find the backend safe before its
first claim. Starting each in an interpreter of its own would cost a third of a CPU second
in imports, most of them the supervisor's own again, on the way to the first job.

Every later child (a replacement for one that died, or retired) is forked from a fork server
that has the code loaded (`ForkServer`): the supervisor then holds connections and runs an
event loop, which a child must not inherit. Starting a fresh interpreter for each would let a
supervisor replace only a few per second: a burst of jobs that crash their process (a bad
native library, a poison input) would keep the pool replacing children instead of running
other work queued behind them. Forking from a process that has already imported everything
costs a few milliseconds.

The fork server is the standard library's (`multiprocessing`'s `forkserver` start method): a
single-threaded process that preloads the worker's modules and forks each child on request,
then reports its exit status. It starts with the first child asked of it, so a pool whose
first children never end never starts it; that first replacement waits for its preload
(about a third of a second). It holds no connection and runs no event loop; each child builds
its own container, loop and Redis connections, exactly as a child started by `exec` does.
What crosses to it is our own arguments (a list of strings and the control pipe), over a
socket in a directory only this user can enter.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Final

import attrs

from entrypoints.worker.preload import PRELOAD

# The exit status reported when the fork server itself is gone and cannot say.
UNKNOWN_EXIT: Final = 255


class ForkedChild:
    """A worker process forked by the supervisor or its fork server, with the part of
    `asyncio.subprocess.Process` the supervisor uses."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid
        self._exited: asyncio.Future[int] | None = None

    def wait(self) -> asyncio.Future[int]:
        """Its exit code once it has ended (negative: the signal that ended it)."""
        if self._exited is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[int] = loop.create_future()
            self._exited = exited
            sentinel = self._process.sentinel

            def ended() -> None:
                loop.remove_reader(sentinel)
                # Not join(0): a child forked from this process closes its end of the
                # sentinel as it exits, a moment before the kernel has its status to reap.
                self._process.join(1.0)
                code = self._process.exitcode
                if not exited.done():
                    exited.set_result(UNKNOWN_EXIT if code is None else int(code))

            loop.add_reader(sentinel, ended)
        # Shielded: a caller that stops waiting (a timeout) must not cancel the others' wait.
        return asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is not None:
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@attrs.frozen(kw_only=True)
class ChildSpec:
    """What one worker child is to do (its settings come from the environment)."""

    worker_id: str
    concurrency: int
    queues: tuple[str, ...]
    weights: tuple[int, ...] | None
    board: str
    # A child forked by `HeldChildren`: the pipe it waits on before its first claim, and the
    # descriptors of the supervisor's it closes (a fork copies them all).
    go: int | None = None
    inherited: tuple[int, ...] = ()


class ForkServer:
    """Forks worker children from one preloaded process."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(PRELOAD))

    def spawn(self, spec: ChildSpec, control_fd: int) -> ForkedChild:
        """A child running `spec`, writing to its own copy of `control_fd` (the caller keeps
        and closes its own)."""
        control = multiprocessing.connection.Connection(os.dup(control_fd), readable=False)
        return ForkedChild(_started(self._context, spec, control))


def can_fork_directly() -> bool:
    """Whether this process may fork a worker child from itself: only while no other thread
    runs (a fork copies the calling thread alone, and a lock another one held stays held)."""
    return threading.active_count() == 1


class HeldChildren:
    """Worker children forked from this process itself, each held before its first claim
    until `go` (or ending at `refuse`): the supervisor forks them before it has checked the
    backend, which must not see a claim from a pool that refuses it."""

    def __init__(self) -> None:
        self._go_read, self._go_write = os.pipe()
        self._processes: list[Any] = []
        self._kept: list[int] = []  # this process's ends of the children's control pipes

    def fork(self, spec: ChildSpec) -> tuple[ForkedChild, int]:
        """A child running `spec`, and the end of its control pipe to read it from."""
        read_fd, write_fd = os.pipe()
        held = attrs.evolve(spec, go=self._go_read, inherited=(self._go_write, *self._kept))
        control = multiprocessing.connection.Connection(write_fd, readable=False)
        process = _started(_FORK, held, control)
        self._processes.append(process)
        self._kept.append(read_fd)
        return ForkedChild(process), read_fd

    def go(self) -> None:
        """Let every child claim: one byte each, then the pipe is closed."""
        with contextlib.suppress(OSError):  # a child gone already
            os.write(self._go_write, b"g" * len(self._processes))
        self._close()

    def refuse(self, within: float = 5.0) -> None:
        """End every child before its first claim (each reads the closed pipe and exits),
        and wait for them; one still there after `within` seconds is killed."""
        self._close()
        for process in self._processes:
            process.join(within)
            if process.exitcode is None:
                process.kill()
                process.join()

    def _close(self) -> None:
        for fd in (self._go_read, self._go_write):
            with contextlib.suppress(OSError):
                os.close(fd)


def waited_to_go(go_fd: int) -> bool:
    """In a held child: wait until the supervisor lets it claim; False when it will not (it
    refused the backend, or is gone)."""
    try:
        return os.read(go_fd, 1) == b"g"
    finally:
        os.close(go_fd)


_FORK: Final = multiprocessing.get_context("fork")


def _started(context: Any, spec: ChildSpec, control: multiprocessing.connection.Connection) -> Any:
    """The process of a child running `spec`, started in `context` (fork server or fork),
    writing to `control`, which is closed here (the child has its own copy)."""
    try:
        process = context.Process(
            target=_child,
            args=(spec, control, dict(os.environ)),
            daemon=True,
            name="conveyor-worker",
        )
        process.start()
    finally:
        control.close()
    return process


def _child(
    spec: ChildSpec, control: multiprocessing.connection.Connection, environ: dict[str, str]
) -> None:
    """In the forked child: run one worker process, as if started on its own."""
    code = 1
    try:
        for fd in spec.inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        # The supervisor's environment now, not the fork server's from its start (the
        # supervisor may have set some since: the metrics directory).
        os.environ.clear()
        os.environ.update(environ)
        fd = os.dup(control.fileno())
        control.close()
        # Its own session, as the supervisor gives every child: a terminal's Ctrl-C reaches
        # the supervisor only, which then asks each child once.
        os.setsid()
        from entrypoints.logs import configure_logging
        from entrypoints.redaction import url_secrets
        from entrypoints.settings import Settings, SettingsError
        from entrypoints.worker.child import run_child
        from entrypoints.worker.supervisor import EXIT_CONFIG

        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            print(f"conveyor: {exc}", file=sys.stderr)
            code = EXIT_CONFIG
            return
        configure_logging(settings.log_level, settings.log_format, url_secrets(settings.redis_url))
        code = run_child(
            settings,
            worker_id=spec.worker_id,
            control_fd=fd,
            concurrency=spec.concurrency,
            queues=spec.queues,
            weights=spec.weights,
            board=Path(spec.board),
            go_fd=spec.go,
        )
    finally:
        os._exit(code)  # never back into the code of the process it was forked from
