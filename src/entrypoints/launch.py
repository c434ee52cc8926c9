"""The `conveyor` command's first step: a worker on the native backend starts its fork
server before the command line's own modules load.

The fork server imports the worker's modules in an interpreter of its own, about a quarter
of a second; the command line imports about as much again before it reaches `conveyor
worker`. Started here, the two load side by side on two cores instead of one after the
other, and a new worker's first job is done that much sooner. This module imports only the
standard library until it hands over to `entrypoints.cli`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence


def main() -> int:
    argv = sys.argv[1:]
    if forks_workers(argv, os.environ):
        from entrypoints.worker.preload import start_fork_server

        start_fork_server()
    from entrypoints.cli import main as run

    return run(argv)


def forks_workers(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether these arguments run a worker that forks its processes from a fork server:
    `conveyor worker` on any backend but RQ (whose workers are RQ's own), and not asked
    only for its help. Settings are read later, as ever: a wrong one is refused then, and
    a fork server started for nothing ends with this process."""
    if argv[:1] != ["worker"] or "-h" in argv or "--help" in argv:
        return False
    return environ.get("QUEUE_BACKEND", "").strip() != "rq"
