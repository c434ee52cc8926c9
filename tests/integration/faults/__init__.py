"""Fault tests of reliability.md §7 (issue 3): real API, supervisor and worker processes on a
real Redis, faults injected by signals, every outcome counted.

- `checker.py`: the witness ledger (``CONVEYOR_AUDIT_LOG``) and the checker: lost jobs,
  duplicate completions, extra runs, overlapping live leases, reclaim latency.
- `harness.py`: worker pools, paced load (the client-side ledger of acked jobs), kills,
  evidence gathering; every process started is killed by pid at the end.
- `scenarios.py`: W1 and W7, shared with the negative controls.
- `patches/`: test-only `sitecustomize` modules that make workers unsafe on purpose, for the
  negative controls; production code has no such switch.

Run them with their figures printed::

    python3 manage.py test tests/integration/faults -s
"""
