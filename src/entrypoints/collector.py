"""Tuning the garbage collector of a long-running process once it has started up."""

from __future__ import annotations

import gc
from typing import Final

# The first collection threshold while serving (Python's default is 700).
YOUNG_THRESHOLD: Final = 10_000


def settle_collector() -> None:
    """Leave what start-up built to itself, and collect young objects less often.

    Start-up builds tens of thousands of long-lived objects (modules, an app and its
    schemas, a container) that every full collection would scan again, several times a
    second under load; frozen (`gc.freeze`), they are never scanned. A request or a job
    makes hundreds of short-lived objects; with a first threshold of 10,000 instead of 700
    young collections are rarer and no dearer per object. Measured in the README
    ("Benchmarks").
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
