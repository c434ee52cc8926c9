"""What the fork server loads, and starting it: importable before anything else is.

`conveyor worker` starts the fork server first of all (`entrypoints.launch`), so this module
imports only the standard library's `multiprocessing`; `spawning` forks children from it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from typing import Final

# What a worker child imports, loaded once in the fork server.
PRELOAD: Final = (
    "entrypoints.worker.child",
    "entrypoints.worker.spawning",
    "adapters.redis_queue",
    "uvloop",
)


def start_fork_server() -> None:
    """Start the fork server now, without waiting for it: its interpreter then imports the
    worker's modules while this process still imports and sets up its own, on another core,
    instead of after (most of the time from `conveyor worker` to its first job done). A
    second call finds it running and does nothing.

    A child still sees this process's environment as it is when the child is forked (the
    fork server's own is copied at this call), see `ForkServer.spawn`.
    """
    multiprocessing.set_forkserver_preload(list(PRELOAD))
    multiprocessing.forkserver.ensure_running()
