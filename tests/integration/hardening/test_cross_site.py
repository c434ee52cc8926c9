"""Cross-site writes against a running API: what a page on another site can make a visitor's
browser send (a form post, with the page's `Origin`) changes nothing; what curl and the SDKs
send (JSON, no `Origin`) works; a page at an origin the operator lists may use JSON.

The requests are written out as a browser sends them, headers included.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.integration.processes import Api, service_env

# What a browser sends for `<form method=post action=http://api/queues/default/pause>` on
# https://evil.example, submitted by script the moment the page loads.
CROSS_SITE_FORM = {
    "content-type": "application/x-www-form-urlencoded",
    "origin": "https://evil.example",
    "referer": "https://evil.example/",
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "navigate",
}
TEXT_FETCH = {  # fetch(url, {method: "POST", mode: "no-cors", body: "..."})
    "content-type": "text/plain;charset=UTF-8",
    "origin": "https://evil.example",
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "no-cors",
}
JOB = {"type": "dummy", "payload": {"mode": "succeed"}, "delay": 600}
LISTED = "https://jobs.example.com"


def paused(client: httpx.Client) -> bool:
    answer: bool = client.get("/queues/default").json()["paused"]
    return answer


def test_a_cross_site_pause_is_refused_and_json_without_origin_still_works(
    redis_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_url)
    listing = {**env, "CONVEYOR_ALLOWED_ORIGINS": LISTED}
    with (
        Api(env, tmp_path) as api,
        Api(listing, tmp_path) as listed_api,
        api.client() as client,
        listed_api.client() as listed_client,
    ):
        form = client.post("/queues/default/pause", content=b"paused=1", headers=CROSS_SITE_FORM)
        unpaused_after_form = not paused(client)
        text = client.post("/jobs", content=b'{"type": "dummy"}', headers=TEXT_FETCH)
        jobs_after_text = client.get("/jobs").json()["jobs"]
        no_origin_form = client.post(
            "/queues/default/pause",
            content=b"paused=1",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        unpaused_after_all = not paused(client)

        submitted = client.post("/jobs", json=JOB)
        job_id = submitted.json()["id"]
        cancelled = client.post(f"/jobs/{job_id}/cancel")
        retried = client.post(f"/jobs/{job_id}/retry")
        pause = client.post("/queues/default/pause")
        paused_by_json = paused(client)
        resume = client.post("/queues/default/resume")

        listed_form = listed_client.post(
            "/queues/default/pause",
            content=b"paused=1",
            headers={**CROSS_SITE_FORM, "origin": LISTED},
        )
        listed_json = listed_client.post("/jobs", json=JOB, headers={"origin": LISTED})
        foreign_json = listed_client.post(
            "/jobs", json=JOB, headers={"origin": "https://evil.example"}
        )
    print(
        f"[cross-site] form pause with foreign Origin={form.status_code}, "
        f"text/plain submit={text.status_code}, form without Origin={no_origin_form.status_code}, "
        f"queue paused by them={not unpaused_after_all}; JSON without Origin: "
        f"submit={submitted.status_code} cancel={cancelled.status_code} "
        f"retry={retried.status_code} pause={pause.status_code} resume={resume.status_code}; "
        f"listed origin: form={listed_form.status_code} json={listed_json.status_code}, "
        f"foreign json={foreign_json.status_code}"
    )

    assert form.status_code == 403, form.text
    assert form.headers["content-type"].startswith("application/problem+json")
    assert form.json()["type"] == "urn:conveyor:problem:origin-not-allowed"
    assert unpaused_after_form
    assert text.status_code == 403, text.text
    assert jobs_after_text == []
    assert no_origin_form.status_code == 415, no_origin_form.text
    assert unpaused_after_all
    assert submitted.status_code == 202, submitted.text
    assert (cancelled.status_code, retried.status_code) == (200, 202)
    assert (pause.status_code, resume.status_code) == (200, 200)
    assert paused_by_json
    assert listed_form.status_code == 415, listed_form.text
    assert listed_json.status_code == 202, listed_json.text
    assert foreign_json.status_code == 403, foreign_json.text
