"""What the fork server loads before it forks a worker child (`spawning.ForkServer`)."""

from __future__ import annotations

from typing import Final

# What a worker child imports, loaded once in the fork server.
PRELOAD: Final = (
    "entrypoints.worker.child",
    "entrypoints.worker.spawning",
    "adapters.redis_queue",
    "uvloop",
)
