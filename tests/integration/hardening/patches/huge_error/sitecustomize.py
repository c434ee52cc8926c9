"""TEST-ONLY patch: the dummy type's `fail` mode raises an exception whose message is 10 MB.

Loaded only by the worker of `test_admission_and_sizes`, through PYTHONPATH. It writes
``applied huge_error`` (or why it could not apply) to CONVEYOR_TEST_PATCH_REPORT, which the
test checks, so a refactoring that breaks it fails loudly instead of testing nothing.
"""

from __future__ import annotations

import os

MESSAGE_CHARACTERS = 10 * 1024 * 1024


def _report(line: str) -> None:
    path = os.environ.get("CONVEYOR_TEST_PATCH_REPORT")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} pid={os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _apply() -> None:
    from domain.job_types import dummy

    class HugeFailureError(dummy.DummyFailureError):
        def __init__(self, message: str) -> None:
            super().__init__(message + " " + "x" * (MESSAGE_CHARACTERS - len(message) - 1))

    HugeFailureError.__name__ = "DummyFailureError"
    dummy.DummyFailureError = HugeFailureError  # type: ignore[misc, assignment]


try:
    _apply()
except Exception as exc:
    _report(f"FAILED huge_error: {type(exc).__name__}: {exc}")
else:
    _report("applied huge_error")
