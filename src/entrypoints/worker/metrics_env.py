"""Whether a worker's processes keep metrics, and where, as the environment says: read
without loading prometheus-client (`entrypoints.worker.metrics`), which a worker serving no
metrics never needs, and which a child forked from the fork server then starts without."""

from __future__ import annotations

import os
from typing import Final

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def metrics_off() -> None:
    """No figures in this worker, even if the environment names a directory for them."""
    os.environ.pop(MULTIPROC_ENV, None)


def shared_directory() -> str | None:
    """The directory this worker's processes write their figures to; None: metrics are off."""
    return os.environ.get(MULTIPROC_ENV) or None
