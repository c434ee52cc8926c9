"""The API against its own OpenAPI document: schemathesis generates requests from the document
served at /schema/openapi.json, valid and invalid ones, sends them to the real API process on a
real Redis, and checks every answer (no 5xx, documented statuses, headers and bodies, invalid
data refused, valid data accepted, Allow headers, resources that stay available...).

The seed and the number of examples are fixed, so a run is repeatable and bounded. What a JSON
Schema cannot state is said next to this file: times judged against the clock and idempotency
keys judged against earlier requests in `schemathesis_hooks.py`, the body size limit (in bytes,
not characters) in `schemathesis.toml`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from tests.integration.processes import Api, service_env

ST: Final = Path(sys.executable).parent / "st"
HOOKS: Final = Path(__file__).with_name("schemathesis_hooks.py")
CONFIG: Final = Path(__file__).with_name("schemathesis.toml")
SEED: Final = 1
EXAMPLES_PER_OPERATION: Final = 50
# About 30 s on two idle cores; the rest is room for a busy machine.
BUDGET_SECONDS: Final = 150


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_the_api_answers_as_its_openapi_document_says(redis_url: str, tmp_path: Path) -> None:
    env = service_env(
        redis_url,
        # Long polls are capped at this, so `?wait=` costs the run little time.
        CONVEYOR_WAIT_MAX_SECONDS="0.2",
        LOG_LEVEL="WARNING",
    )
    with Api(env, tmp_path) as api:
        command = [
            str(ST),
            "--no-color",
            "--config-file",
            str(CONFIG),
            "run",
            f"{api.base}/schema/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
        ]
        try:
            run = subprocess.run(
                command,
                cwd=tmp_path,
                env={**env, "SCHEMATHESIS_HOOKS": str(HOOKS)},
                capture_output=True,
                text=True,
                timeout=BUDGET_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as late:
            pytest.fail(f"schemathesis overran {BUDGET_SECONDS} s:\n{_text(late.stdout)}")
        api_output = api.output()

    report = f"{run.stdout}\n{run.stderr}\n--- API log ---\n{api_output[-5000:]}"
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout, report
    assert "19 selected / 19 total" in run.stdout, report


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
