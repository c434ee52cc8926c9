"""The job types this service knows, wired to the ports they need."""

from __future__ import annotations

from domain.job_types import JobTypeRegistry
from domain.job_types.dummy import dummy_job_type
from domain.job_types.email import email_job_type
from domain.job_types.report import report_job_type
from domain.ports import EmailSender

# The names `default_registry` registers, known without building it (settings check the
# types they name against them).
JOB_TYPE_NAMES = frozenset({"email", "report", "dummy"})


def default_registry(email_sender: EmailSender, *, dummy_faults: bool = False) -> JobTypeRegistry:
    """Every type; `dummy`'s fault modes only with `dummy_faults` (CONVEYOR_DUMMY_FAULTS)."""
    return JobTypeRegistry(
        [email_job_type(email_sender), report_job_type(), dummy_job_type(faults=dummy_faults)]
    )
