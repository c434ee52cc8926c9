"""How `conveyor worker` starts its children: the first forked from the supervisor itself,
held until it has checked the backend; the others from a preloaded fork server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from entrypoints.collector import START_UP_THRESHOLD
from entrypoints.worker import spawning
from entrypoints.worker.spawning import ChildSpec, HeldChildren, waited_to_go

_WENT, _REFUSED = 7, 3


def _probe_child(spec: ChildSpec, control: Any, environ: dict[str, str]) -> None:
    """In place of a worker: ends with whether the supervisor let it claim."""
    for fd in spec.inherited:
        os.close(fd)
    control.close()
    os._exit(_WENT if waited_to_go(spec.go) else _REFUSED)  # type: ignore[arg-type]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run in a fresh interpreter, which must succeed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


# What `conveyor worker` has loaded when it forks its first children.
_BEFORE_THE_FORK = "import entrypoints.cli, entrypoints.worker.main"


def _loaded(code: str, then: str = "") -> set[str]:
    """The modules loaded once `code` has run in a fresh interpreter (which then runs
    `then`, and must succeed)."""
    done = _python(f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))\n{then}")
    return set(done.stdout.split())


def _spec(slot: int) -> ChildSpec:
    return ChildSpec(worker_id=f"p/{slot}.1", concurrency=1, queues=("q",), weights=None, board="-")


@pytest.mark.parametrize(("word", "code"), [("go", _WENT), ("refuse", _REFUSED)])
def test_held_children_wait_for_the_supervisors_word(
    monkeypatch: pytest.MonkeyPatch, word: str, code: int
) -> None:
    monkeypatch.setattr(spawning, "_child", _probe_child)
    held = HeldChildren()
    forked = [held.fork(_spec(slot)) for slot in range(2)]
    time.sleep(0.3)
    assert [child.pid for child, _ in forked if os.waitpid(child.pid, os.WNOHANG)[0]] == []

    getattr(held, word)()

    for child, read_fd in forked:
        os.close(read_fd)
        process = child._process
        process.join(10)
        assert process.exitcode == code


def test_the_exit_code_of_a_child_forked_directly_is_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its sentinel is ready as it exits, a moment before its status can be reaped: the
    wait must not read that as an unknown end (255)."""
    monkeypatch.setattr(spawning, "_child", _probe_child)

    async def ends() -> list[int]:
        held = HeldChildren()
        forked = [held.fork(_spec(slot)) for slot in range(30)]
        waits = [child.wait() for child, _ in forked]
        held.go()
        codes = await asyncio.gather(*waits)
        for _, read_fd in forked:
            os.close(read_fd)
        return list(codes)

    assert asyncio.run(ends()) == [_WENT] * 30


def test_a_child_is_forked_directly_only_while_no_other_thread_runs() -> None:
    code = (
        "import threading\n"
        "from entrypoints.worker.spawning import can_fork_directly\n"
        "alone = can_fork_directly()\n"
        "release = threading.Event()\n"
        "thread = threading.Thread(target=release.wait)\n"
        "thread.start()\n"
        "beside = can_fork_directly()\n"
        "release.set()\n"
        "print(alone, beside)"
    )
    done = _python(code)
    assert done.stdout.split() == ["True", "False"]


def test_what_the_fork_server_preloads_leaves_out_what_no_worker_child_uses() -> None:
    """A child is forked from the fork server once it has loaded `PRELOAD`: every module
    loaded there is start-up time before the first job. The scheduler and its cron
    arithmetic (the supervisor's), the in-memory backend and prometheus-client (with metrics
    off) are loaded where they are used, and a worker child never uses them."""
    loaded = _loaded(
        "import importlib\n"
        "from entrypoints.worker.preload import PRELOAD\n"
        "for name in PRELOAD: importlib.import_module(name)"
    )
    assert "entrypoints.worker.main" in loaded
    assert "adapters.redis_queue" in loaded
    unused = {
        *("cronsim", "adapters.cron", "adapters.memory", "prometheus_client"),
        *("domain.scheduling", "entrypoints.scheduling"),
    }
    assert not loaded & unused


def test_the_supervisor_leaves_what_only_a_child_runs_to_the_children() -> None:
    """`conveyor worker` forks its first children once it has loaded the command line and
    the supervisor; the claim loop and uvloop run in children only, which load them after
    the fork (or have them from the fork server's preload)."""
    loaded = _loaded(_BEFORE_THE_FORK)
    assert "entrypoints.worker.supervisor" in loaded
    assert not loaded & {"uvloop", "entrypoints.worker.runner", "entrypoints.worker.child"}


def test_before_its_first_children_a_worker_loads_nothing_only_other_commands_use() -> None:
    """Every module loaded before the fork is start-up time before the first job. The API's
    views, the scheduler (the supervisor loads it after the fork) and PyYAML (which
    dependency-injector would load for a method Conveyor never calls) are left out; PyYAML
    is still there for anything that imports it later."""
    loaded = _loaded(
        _BEFORE_THE_FORK,
        then="import yaml, dependency_injector.providers as p\n"
        "assert yaml.safe_load('a: 1') == {'a': 1} and p.yaml is None",
    )
    assert "dependency_injector.providers" in loaded
    only_others = {"yaml", "entrypoints.api.schemas", "entrypoints.api.catalog"}
    assert not loaded & {*only_others, "domain.scheduling", "entrypoints.scheduling"}


def test_the_command_line_loads_without_young_collections() -> None:
    """Start-up's imports build objects that live as long as the process: the collector
    would run about 100 young collections over them, finding next to nothing. The command
    raises the threshold before it loads (`settle_collector` sets the serving one later)."""
    code = (
        "import gc, json, sys\n"
        "runs = []\n"
        "gc.callbacks.append(lambda phase, info: runs.append(phase == 'start'))\n"
        "sys.argv = ['conveyor', 'worker', '--help']\n"
        "from entrypoints import launch\n"
        "try:\n"
        "    launch.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps([sum(runs), gc.get_threshold()[0]]))"
    )
    runs, threshold = json.loads(_python(code).stdout.splitlines()[-1])
    assert threshold == START_UP_THRESHOLD
    assert runs < 10  # 117 without


def test_the_command_line_leaves_importlib_metadata_until_it_is_used() -> None:
    """redis-py imports `importlib.metadata` (with email, zipfile and csv) as it loads; the
    command loads it lazily, and names redis-py's version without reading the metadata, so
    none of it runs before the first children are forked. It runs on its first use."""
    code = (
        "import sys\n"
        "from entrypoints import launch\n"
        "launch._load_lazily('importlib.metadata')\n"
        "import entrypoints.cli, entrypoints.container, entrypoints.worker.main\n"
        "import adapters.redis_client\n"
        "print('importlib.metadata._meta' in sys.modules, 'csv' in sys.modules)\n"
        "from importlib import metadata\n"
        "import redis\n"
        "assert metadata.version('redis') == redis.__version__\n"
        "print('importlib.metadata._meta' in sys.modules)"
    )
    lines = _python(code).stdout.split()
    assert lines == ["False", "False", "True"]
