"""The `conveyor` command's first step: a worker's fork server starts before the CLI loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from entrypoints.launch import forks_workers
from entrypoints.settings import QueueBackend

# Runs `main` in a fresh interpreter with the fork server's start replaced by a note of
# which of the heavy modules were loaded when it was called. `--processes x` makes the
# command line refuse the arguments (exit 2) right after, so no worker runs.
_PROBE = """
import json, sys
import entrypoints.worker.preload as preload
calls = []
heavy = ("entrypoints.cli", "entrypoints.container", "redis", "asyncio", "attrs")
preload.start_fork_server = lambda: calls.append([m for m in heavy if m in sys.modules])
sys.argv = ["conveyor", *sys.argv[1:]]
from entrypoints.launch import main
try:
    main()
except SystemExit as exc:
    print(json.dumps({"calls": calls, "code": exc.code}))
"""


def _probe(*argv: str, backend: str | None = None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "QUEUE_BACKEND"}
    if backend is not None:
        env["QUEUE_BACKEND"] = backend
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_worker_starts_its_fork_server_before_the_command_line_loads_anything_heavy() -> None:
    result = _probe("worker", "--processes", "x")

    assert result == {"calls": [[]], "code": 2}


def test_an_rq_worker_and_other_commands_start_no_fork_server() -> None:
    assert _probe("worker", "--processes", "x", backend="rq") == {"calls": [], "code": 2}
    assert _probe("api", "--port", "x") == {"calls": [], "code": 2}


@pytest.mark.parametrize(
    ("argv", "backend", "forks"),
    [
        (["worker"], None, True),
        (["worker", "--processes", "2", "--concurrency", "50"], "redis", True),
        (["worker"], " redis ", True),
        (["worker"], "memory", True),
        (["worker"], "rq", False),
        (["worker"], " rq", False),
        (["worker", "--help"], None, False),
        (["worker", "-h"], None, False),
        (["api"], None, False),
        (["dev"], None, False),
        (["submit", "worker"], None, False),
        ([], None, False),
    ],
)
def test_which_commands_fork_workers(argv: list[str], backend: str | None, forks: bool) -> None:
    environ = {} if backend is None else {"QUEUE_BACKEND": backend}

    assert forks_workers(argv, environ) is forks


def test_the_launcher_names_rq_as_the_settings_do() -> None:
    """The launcher cannot import the settings (they load what it starts before), so it
    reads QUEUE_BACKEND itself: the name it skips is the settings' own."""
    assert not forks_workers(["worker"], {"QUEUE_BACKEND": QueueBackend.RQ.value})
    assert all(
        forks_workers(["worker"], {"QUEUE_BACKEND": backend.value})
        for backend in QueueBackend
        if backend is not QueueBackend.RQ
    )


def test_the_launcher_and_the_fork_server_start_import_only_the_standard_library() -> None:
    code = (
        "import sys, entrypoints.launch, entrypoints.worker.preload;"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert "multiprocessing" in loaded
    assert not loaded & {"redis", "asyncio", "attrs", "domain", "adapters", "uvloop", "msgspec"}


def test_what_the_fork_server_preloads_leaves_out_what_no_worker_child_uses() -> None:
    """A child is forked from the fork server once it has loaded `PRELOAD`: every module
    loaded there is start-up time before the first job. The scheduler and its cron
    arithmetic (the supervisor's), the in-memory backend and prometheus-client (with metrics
    off) are loaded where they are used, and a worker child never uses them."""
    code = (
        "import importlib, sys\n"
        "from entrypoints.worker.preload import PRELOAD\n"
        "for name in PRELOAD: importlib.import_module(name)\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "entrypoints.worker.main" in loaded
    assert "adapters.redis_queue" in loaded
    unused = {
        *("cronsim", "adapters.cron", "adapters.memory", "prometheus_client"),
        *("domain.scheduling", "entrypoints.scheduling"),
    }
    assert not loaded & unused


def test_the_supervisor_leaves_what_only_a_child_runs_to_the_children() -> None:
    """`conveyor worker` asks for its first child once it has loaded the command line and
    the supervisor; the claim loop and uvloop run in children only, which the fork server
    has loaded them for."""
    code = (
        "import sys, entrypoints.cli, entrypoints.worker.main\nprint(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "entrypoints.worker.supervisor" in loaded
    assert not loaded & {"uvloop", "entrypoints.worker.runner", "entrypoints.worker.child"}
