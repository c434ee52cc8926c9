"""Each deployment on the RQ backend keeps RQ's keys in its own namespace."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import rq.defaults

from entrypoints.rq_keys import rq_key_prefix, use_rq_key_prefix
from entrypoints.settings import QueueBackend, Settings, SettingsError


def on_rq(prefix: str) -> Settings:
    return Settings(queue_backend=QueueBackend.RQ, key_prefix=prefix)


def test_the_default_prefix_keeps_rqs_own_namespace() -> None:
    assert rq_key_prefix(on_rq("conveyor"), {}) == "rq"


def test_any_other_prefix_puts_rqs_keys_under_it() -> None:
    assert rq_key_prefix(on_rq("blue"), {}) == "blue:rq"


def test_an_rq_key_prefix_set_by_the_operator_is_used_as_given() -> None:
    assert rq_key_prefix(on_rq("blue"), {"RQ_KEY_PREFIX": "legacy"}) == "legacy"


def test_a_prefix_rq_cannot_use_in_its_keys_stops_start_up_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match="CONVEYOR_KEY_PREFIX='caf\u00e9'"):
        use_rq_key_prefix(on_rq("caf\u00e9"))


def test_rq_loaded_with_another_deployments_namespace_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RQ_KEY_PREFIX", raising=False)
    assert rq.defaults.RQ_KEY_PREFIX == "rq"  # as this test process loaded it

    with pytest.raises(SettingsError, match="refusing to share"):
        use_rq_key_prefix(on_rq("blue"))
    assert use_rq_key_prefix(on_rq("conveyor")) == "rq"


def test_a_process_that_sets_the_namespace_first_gets_rqs_keys_under_its_prefix() -> None:
    script = (
        "from entrypoints.rq_keys import use_rq_key_prefix\n"
        "from entrypoints.settings import QueueBackend, Settings\n"
        "use_rq_key_prefix(Settings(queue_backend=QueueBackend.RQ, key_prefix='blue'))\n"
        "from rq.job import Job\n"
        "from rq.queue import Queue\n"
        "from rq.registry import StartedJobRegistry\n"
        "print(Job.key_for('j1'), Queue.redis_queue_namespace_prefix,"
        " StartedJobRegistry.key_template)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RQ_KEY_PREFIX"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout.split()

    assert out == ["blue:rq:job:j1", "blue:rq:queue:", "blue:rq:wip:{0}"]
