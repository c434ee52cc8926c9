"""Tuning the garbage collector of a long-running process once it has started up."""

from __future__ import annotations

import gc
from typing import Final

# The first collection threshold while serving (Python's default is 700).
YOUNG_THRESHOLD: Final = 10_000
# The first collection threshold while a process starts up, until it settles.
START_UP_THRESHOLD: Final = 100_000


def defer_collection() -> None:
    """Collect young objects rarely while the process starts up.

    A process's imports build tens of thousands of objects that live as long as it does
    (modules, classes, functions). With Python's default threshold the collector runs about
    100 young collections meanwhile in `conveyor worker` (13-20 ms before its first children
    are forked), and finds next to nothing to free. `settle_collector` sets the threshold
    for serving once start-up is over; a process that never calls it (a command that prints
    and exits) keeps this one, which still collects, less often.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(START_UP_THRESHOLD, older, oldest)


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
