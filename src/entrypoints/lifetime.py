"""Child processes that end with their parent, even when the parent is SIGKILLed."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def parent_death_signal(signum: int, parent_pid: int) -> Callable[[], None] | None:
    """A function that makes the calling process get `signum` when `parent_pid` dies.

    Call it in the child: in-process, or as `preexec_fn` between fork and exec (prctl is
    resolved here, before any fork). If the parent is already gone the child exits at once.
    Linux only; elsewhere there is nothing to call (None). Linux sends the signal when the
    *thread* that forked the child exits, so start children from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def follow_parent() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return follow_parent


def follow_parent(signum: int) -> None:
    """Make this process get `signum` when its parent dies (exit now if it already has)."""
    hook = parent_death_signal(signum, os.getppid())
    if hook is not None:
        hook()
