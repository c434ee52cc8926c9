"""Checks every long-running process makes before it serves."""

from __future__ import annotations

import logging

from domain.errors import QueueUnavailableError, UnsafeBackendError
from domain.ports import Connection


async def backend_is_safe(
    connection: Connection, log: logging.Logger, *, warnings: bool = True
) -> bool:
    """Log the backend's warnings (unless not `warnings`); False, with the reason logged,
    when it could lose jobs.

    A backend that cannot be asked right now passes: the process serves anyway (the API with
    503s, workers retrying) and the next start checks again.
    """
    try:
        for warning in await connection.verify():
            if warnings:
                log.warning(warning)
    except UnsafeBackendError as exc:
        log.error("refusing to start: %s", exc)
        return False
    except QueueUnavailableError as exc:
        if warnings:
            log.warning("could not check the backend's configuration yet: %s", exc.reason)
    return True
