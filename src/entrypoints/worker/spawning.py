"""Starting worker processes cheaply: forked from a fork server that has the code loaded.

Starting a fresh interpreter costs a worker process about a third of a CPU second in imports
alone, so a supervisor that replaces each crashed child that way can replace only a few per
second: a burst of jobs that crash their process (a bad native library, a poison input) then
keeps the pool replacing children instead of running other work queued behind them. Forking
from a process that has already imported everything costs a few milliseconds.

The fork server is the standard library's (`multiprocessing`'s `forkserver` start method): a
single-threaded process, started once, that preloads the worker's modules and forks each child
on request, then reports its exit status. It holds no connection and runs no event loop, so a
fork copies nothing that could be shared by mistake; each child builds its own container,
loop and Redis connections, exactly as a child started by `exec` does. What crosses to it is
our own arguments (a list of strings and the control pipe), over a socket in a directory only
this user can enter.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from pathlib import Path
from typing import Any, Final

import attrs

from entrypoints.worker.preload import PRELOAD

# The exit status reported when the fork server itself is gone and cannot say.
UNKNOWN_EXIT: Final = 255


class ForkedChild:
    """A worker process forked by the fork server, with the part of
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
                self._process.join(0)
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


class ForkServer:
    """Forks worker children from one preloaded process."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(PRELOAD))

    def spawn(self, spec: ChildSpec, control_fd: int) -> ForkedChild:
        """A child running `spec`, writing to its own copy of `control_fd` (the caller keeps
        and closes its own)."""
        control = multiprocessing.connection.Connection(os.dup(control_fd), readable=False)
        try:
            process = self._context.Process(
                target=_child,
                args=(spec, control, dict(os.environ)),
                daemon=True,
                name="conveyor-worker",
            )
            process.start()
        finally:
            control.close()
        return ForkedChild(process)


def _child(
    spec: ChildSpec, control: multiprocessing.connection.Connection, environ: dict[str, str]
) -> None:
    """In the forked child: run one worker process, as if started on its own."""
    code = 1
    try:
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
        )
    finally:
        os._exit(code)  # never back into the fork server's code
