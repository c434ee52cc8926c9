"""Start-up through Sentinels (`LocalSentinelSet`, loopback): a service name the Sentinels do
not know is a mistake in REDIS_URL, said in one line; the right one serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints.local_topologies import LocalSentinelSet
from tests.integration.processes import Api, Conveyor, free_port, service_env


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinelSet]:
    with LocalSentinelSet(tmp_path_factory.mktemp("sentinel"), replicas=1) as servers:
        yield servers


def test_sentinels_that_know_no_such_primary_stop_start_up_with_one_line(
    sentinel_set: LocalSentinelSet, tmp_path: Path
) -> None:
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinel_set.sentinel_ports)
    env = service_env(f"redis+sentinel://{hosts}/no-such-service")
    said = "no Sentinel of REDIS_URL knows a primary named 'no-such-service'"
    worker = Conveyor(["worker"], env, tmp_path)
    with worker:
        code = worker.wait(timeout=30)
    output = worker.output()
    assert code != 0, output
    assert said in output, output
    assert "Traceback" not in output, output
    api = Conveyor(["api", "--port", str(free_port())], env, tmp_path)
    with api:
        code = api.wait(timeout=30)
    output = api.output()
    assert code != 0, output
    assert output.strip().splitlines()[-1].startswith(f"conveyor: {said}"), output
    assert "Traceback" not in output, output


def test_the_service_the_sentinels_know_serves(
    sentinel_set: LocalSentinelSet, tmp_path: Path
) -> None:
    with Api(service_env(sentinel_set.url), tmp_path) as api, api.client() as client:
        assert client.get("/health/ready").status_code == 200
        body = {"type": "dummy", "payload": {"mode": "succeed"}}
        assert client.post("/jobs", json=body).status_code == 202
