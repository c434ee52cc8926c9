"""Negative controls (reliability.md §7.1): the checker must see a loss and a duplicate.

A fault test that passes proves nothing if the checker is blind. Here the same scenarios run
with workers made unsafe on purpose, by test-only `sitecustomize` patches (``patches/``)
put on the worker processes' PYTHONPATH; production code has no such switch. Each control
first checks that its patch really applied in every worker process.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.faults.harness import print_figures
from tests.integration.faults.scenarios import Run, sigkill_busy_children, stalled_holder


def _applied(run: Run, patch: str, at_least: int) -> None:
    lines = run.patch_lines()
    assert not [line for line in lines if line.startswith("FAILED")], lines
    applied = [line for line in lines if line.startswith(f"applied {patch}")]
    # The supervisor and each worker child load it (the API does not get it).
    assert len(applied) >= at_least, lines


def test_negative_control_a_fetch_without_a_lease_loses_jobs_the_checker_counts(
    redis_url: str, tmp_path: Path
) -> None:
    """W1 with a BRPOP-style fetch (a claimed job holds no lease that can lapse, and the
    supervisor cannot find what a dead child held): SIGKILLs of busy children lose jobs."""
    run = sigkill_busy_children(
        redis_url,
        tmp_path,
        jobs=40,
        rate=20.0,
        kills=2,
        every=1.0,
        processes=2,
        concurrency=4,
        job_seconds=1.0,
        settle_within=20.0,
        patch="no_lease",
    )
    report = run.report
    print_figures("control-a", report)
    _applied(run, "no_lease", at_least=3)
    killed = {r.job_id for r in report.reclaims}  # the jobs open in the killed children
    assert report.lost, report.summary()
    assert set(report.lost) <= killed, report.summary()
    assert report.unreclaimed, report.summary()


def test_negative_control_b_without_fencing_the_checker_counts_duplicate_completions(
    redis_url: str, tmp_path: Path
) -> None:
    """W7 with fencing disabled (a stale token's renewal counts as held, its completion is
    written anyway): the frozen holder's late completion lands on top of the new one's."""
    run = stalled_holder(redis_url, tmp_path, patch="no_fencing")
    report = run.report
    print_figures("control-b", report)
    _applied(run, "no_fencing", at_least=3)
    assert report.dup_completions, report.summary()
    assert set(report.dup_completions) <= run.facts["held"], report.summary()
