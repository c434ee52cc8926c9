"""The `conveyor` command's entry point (`pyproject.toml`'s script, and `python -m
entrypoints`).

A worker forks its first children from its own process once it has loaded the supervisor
(`entrypoints.worker.spawning`), so nothing needs to start before the command line loads.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def main() -> int:
    from entrypoints.collector import defer_collection

    defer_collection()  # before the imports of the command line and what it runs
    _load_lazily("importlib.metadata")
    from entrypoints.cli import main as run

    return run(sys.argv[1:])


def _load_lazily(name: str) -> None:
    """Import `name` (a submodule of a package already imported) so that its code runs at
    its first use, not now: the standard library's `importlib.util.LazyLoader`, also bound
    on its package so that `from package import module` finds it without touching it.

    For `importlib.metadata`, which redis-py imports as it loads (for the version it names
    itself by, which Conveyor gives it: `adapters.redis_client`), and which imports email,
    zipfile and csv: about 16 ms of every start, a new worker's first job included.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    package, _, child = name.rpartition(".")
    setattr(sys.modules[package], child, module)
