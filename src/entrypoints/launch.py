"""The `conveyor` command's entry point (`pyproject.toml`'s script, and `python -m
entrypoints`).

A worker forks its first children from its own process once it has loaded the supervisor
(`entrypoints.worker.spawning`), so nothing needs to start before the command line loads.
"""

from __future__ import annotations

import sys


def main() -> int:
    from entrypoints.collector import defer_collection

    defer_collection()  # before the imports of the command line and what it runs
    from entrypoints.cli import main as run

    return run(sys.argv[1:])
