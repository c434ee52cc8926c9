"""The bad-request corpus (reliability.md §7.4, I4): every request is refused with a 4xx
problem that says why, nothing reaches the queue, and nothing is a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from litestar.types import Message, ReceiveMessage, Scope

from entrypoints.api.app import create_app
from entrypoints.api.body import MAX_DEPTH, decode_json
from entrypoints.api.problems import ProblemError
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings
from tests.unit import backends

LIMIT: Final = Settings().max_body_bytes
JSON: Final = {"content-type": "application/json"}
EMAIL: Final = {"to": "user@example.com", "subject": "Hello", "body": "Hi"}


def envelope(**fields: Any) -> bytes:
    return compact({"type": "email", "payload": EMAIL, **fields})


def compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def raw(text: str) -> bytes:
    return text.encode()


def padded_to(size: int) -> bytes:
    """A valid submission, padded with spaces to exactly `size` bytes."""
    body = envelope()
    return body + b" " * (size - len(body))


def deep(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


class Case:
    def __init__(
        self,
        status: int,
        body: bytes | Callable[[], Iterator[bytes]],
        headers: dict[str, str] | None = None,
        *,
        mentions: str = "",
        paths: tuple[str, ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.headers = JSON if headers is None else headers
        self.mentions = mentions  # a word the detail must contain, to be useful
        self.paths = paths  # field paths the problem's `errors` must name


def chunks_of(body: bytes, size: int = 16 * 1024) -> Callable[[], Iterator[bytes]]:
    def stream() -> Iterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    return stream


HUGE_DIGITS: Final = "1" * 100_000

CORPUS: Final[dict[str, Case]] = {
    # -- not JSON, or not strict JSON: 400
    "malformed json": Case(400, b'{"type": "email", "payload": ', mentions="JSON"),
    "not json at all": Case(400, b"type=email&payload=x", mentions="JSON"),
    "empty body": Case(400, b"", mentions="empty"),
    "whitespace body": Case(400, b" \n\t ", mentions="empty"),
    "trailing garbage": Case(400, envelope() + b" {}", mentions="JSON"),
    "single quotes": Case(400, b"{'type': 'email'}", mentions="JSON"),
    "comments": Case(400, b'{"type": "email" /* hi */, "payload": {}}', mentions="JSON"),
    "byte order mark": Case(400, b"\xef\xbb\xbf" + envelope(), mentions="JSON"),
    "not utf-8": Case(400, b'{"type": "\xff\xfe"}', mentions="UTF-8"),
    "lone surrogate": Case(400, raw('{"type": "email", "payload": {"to": "\\ud800"}}')),
    "NaN": Case(400, raw('{"type": "dummy", "payload": {"mode": "cpu", "seconds": NaN}}')),
    "Infinity": Case(400, raw('{"type": "dummy", "payload": {}, "timeout": Infinity}')),
    "-Infinity": Case(400, raw('{"type": "email", "payload": {}, "timeout": -Infinity}')),
    "float overflow": Case(400, raw('{"type": "email", "payload": {}, "timeout": 1e999}')),
    "100,000-digit integer": Case(
        400, raw(f'{{"type": "report", "payload": {{"name": "x", "rows": {HUGE_DIGITS}}}}}')
    ),
    "10,000-deep nesting at the top": Case(400, raw(deep(10_000)), mentions="nested"),
    "10,000-deep nesting in the payload": Case(
        400,
        raw(f'{{"type": "dummy", "payload": {{"mode": "succeed", "result": {deep(10_000)}}}}}'),
        mentions="nested",
    ),
    "33-deep nesting in the payload": Case(
        400,
        raw(f'{{"type": "dummy", "payload": {{"mode": "succeed", "result": {deep(31)}}}}}'),
        mentions="nested",
    ),
    "duplicate top-level key": Case(
        400, raw('{"type": "dummy", "type": "email", "payload": {}}'), mentions="type"
    ),
    "duplicate payload key": Case(
        400,
        raw('{"type": "email", "payload": {"to": "a@b.co", "to": "c@d.co"}}'),
        mentions="to",
    ),
    # -- not JSON by its media type: 415
    "wrong content type": Case(415, envelope(), {"content-type": "text/plain"}),
    "no content type": Case(415, envelope(), {}, mentions="Content-Type"),
    "form content type": Case(
        415, envelope(), {"content-type": "application/x-www-form-urlencoded"}
    ),
    "multipart content type": Case(
        415, envelope(), {"content-type": "multipart/form-data; boundary=x"}
    ),
    "json lookalike content type": Case(415, envelope(), {"content-type": "application/jsonp"}),
    "non-utf-8 charset": Case(
        415, envelope(), {"content-type": "application/json; charset=latin-1"}, mentions="UTF-8"
    ),
    # -- too large: 413
    "one byte over the limit, with Content-Length": Case(413, padded_to(LIMIT + 1)),
    "one byte over the limit, chunked": Case(413, chunks_of(padded_to(LIMIT + 1))),
    "far over the limit, chunked": Case(413, chunks_of(b"[" * (4 * LIMIT))),
    # -- JSON, but not a submission: 422
    "top level is an array": Case(422, b"[]", mentions="object"),
    "top level is a 100,000-element array": Case(422, compact([0] * 100_000), mentions="object"),
    "top level is a string": Case(422, b'"email"', mentions="object"),
    "top level is a number": Case(422, b"42", mentions="object"),
    "top level is null": Case(422, b"null", mentions="object"),
    "top level is true": Case(422, b"true", mentions="object"),
    "missing type": Case(422, raw(json.dumps({"payload": EMAIL})), paths=("type",)),
    "missing payload": Case(422, raw(json.dumps({"type": "email"})), paths=("payload",)),
    "missing everything": Case(422, b"{}", paths=("type", "payload")),
    "extra top-level field": Case(422, envelope(colour="red"), paths=("colour",)),
    "extra top-level fields with a bad payload": Case(
        422,
        raw(json.dumps({"type": "email", "payload": {}, "colour": "x", "when": 1})),
        paths=("colour", "when"),
    ),
    "idempotency_key in a single submission's body": Case(
        422, envelope(idempotency_key="k"), paths=("idempotency_key",)
    ),
    "payload is null": Case(422, envelope(payload=None), paths=("payload",)),
    "payload is a list": Case(422, envelope(payload=[EMAIL]), paths=("payload",)),
    "payload is a string": Case(422, envelope(payload="to=a@b.co"), paths=("payload",)),
    "extra payload field": Case(
        422, envelope(payload={**EMAIL, "cc": "x@y.co"}), paths=("payload.cc",)
    ),
    "missing payload field": Case(
        422, envelope(payload={"to": "a@b.co"}), paths=("payload.subject", "payload.body")
    ),
    "wrong payload field types": Case(
        422,
        envelope(payload={"to": 123, "subject": ["x"], "body": None}),
        paths=("payload.to", "payload.subject", "payload.body"),
    ),
    "100,000-element array as a string field": Case(
        422, envelope(payload={**EMAIL, "to": [0] * 100_000}), paths=("payload.to",)
    ),
    "address with a trailing newline": Case(
        422, envelope(payload={**EMAIL, "to": "user@example.com\n"}), paths=("payload.to",)
    ),
    "address with a host label ending in a hyphen": Case(
        422, envelope(payload={**EMAIL, "to": "user@exa-.com"}), paths=("payload.to",)
    ),
    "string over its length limit": Case(
        422, envelope(payload={**EMAIL, "subject": "x" * 201}), paths=("payload.subject",)
    ),
    "huge integer in the payload": Case(
        422,
        raw(f'{{"type": "report", "payload": {{"name": "x", "rows": 1{"0" * 400}}}}}'),
        paths=("payload.rows",),
    ),
    "bool where an integer belongs": Case(
        422,
        raw(json.dumps({"type": "report", "payload": {"name": "x", "rows": True}})),
        paths=("payload.rows",),
    ),
    "field that does not fit the mode": Case(
        422,
        raw(json.dumps({"type": "dummy", "payload": {"mode": "succeed", "how": "exit"}})),
        paths=("payload.how",),
    ),
    "max_attempts 0": Case(422, envelope(max_attempts=0), paths=("max_attempts",)),
    "max_attempts -1": Case(422, envelope(max_attempts=-1), paths=("max_attempts",)),
    "max_attempts 10**6": Case(422, envelope(max_attempts=10**6), paths=("max_attempts",)),
    "max_attempts 10**400": Case(
        422,
        raw(f'{{"type": "email", "payload": {json.dumps(EMAIL)}, "max_attempts": 1{"0" * 400}}}'),
        paths=("max_attempts",),
    ),
    'max_attempts "3"': Case(422, envelope(max_attempts="3"), paths=("max_attempts",)),
    "max_attempts true": Case(422, envelope(max_attempts=True), paths=("max_attempts",)),
    "max_attempts 2.5": Case(422, envelope(max_attempts=2.5), paths=("max_attempts",)),
    "timeout 0": Case(422, envelope(timeout=0), paths=("timeout",)),
    "timeout -1": Case(422, envelope(timeout=-1), paths=("timeout",)),
    "timeout 10**9": Case(422, envelope(timeout=10**9), paths=("timeout",)),
    'timeout "10"': Case(422, envelope(timeout="10"), paths=("timeout",)),
    "timeout false": Case(422, envelope(timeout=False), paths=("timeout",)),
    # -- the options: queue, priority, schedule, deadline
    "queue with upper case": Case(422, envelope(queue="Default"), paths=("queue",)),
    "queue that could break a key": Case(422, envelope(queue="a}:{b"), paths=("queue",)),
    "queue is a number": Case(422, envelope(queue=7), paths=("queue",)),
    "queue 65 characters": Case(422, envelope(queue="q" * 65), paths=("queue",)),
    "priority 101": Case(422, envelope(priority=101), paths=("priority",)),
    "priority -101": Case(422, envelope(priority=-101), paths=("priority",)),
    'priority "1"': Case(422, envelope(priority="1"), paths=("priority",)),
    "priority 1.5": Case(422, envelope(priority=1.5), paths=("priority",)),
    "priority true": Case(422, envelope(priority=True), paths=("priority",)),
    "priority 10**400": Case(
        422,
        raw(f'{{"type": "email", "payload": {json.dumps(EMAIL)}, "priority": 1{"0" * 400}}}'),
        paths=("priority",),
    ),
    "delay -1": Case(422, envelope(delay=-1), paths=("delay",)),
    "delay over a year": Case(422, envelope(delay=400 * 86400), paths=("delay",)),
    'delay "5"': Case(422, envelope(delay="5"), paths=("delay",)),
    "delay and run_at together": Case(
        422, envelope(delay=5, run_at="2030-01-01T00:00:00Z"), paths=("run_at",)
    ),
    "run_at a number": Case(422, envelope(run_at=1_700_000_000), paths=("run_at",)),
    "run_at without an offset": Case(
        422, envelope(run_at="2030-01-01T00:00:00"), paths=("run_at",)
    ),
    "run_at a date only": Case(422, envelope(run_at="2030-01-01"), paths=("run_at",)),
    "run_at nonsense": Case(422, envelope(run_at="tomorrow at noon"), paths=("run_at",)),
    "run_at in ten years": Case(422, envelope(run_at="2099-01-01T00:00:00Z"), paths=("run_at",)),
    "run_at 10,000 characters": Case(422, envelope(run_at="2" * 10_000), paths=("run_at",)),
    "deadline in the past": Case(
        422, envelope(deadline="2000-01-01T00:00:00Z"), paths=("deadline",)
    ),
    "deadline 0 seconds": Case(422, envelope(deadline=0), paths=("deadline",)),
    "deadline -5 seconds": Case(422, envelope(deadline=-5), paths=("deadline",)),
    "deadline true": Case(422, envelope(deadline=True), paths=("deadline",)),
    "deadline an object": Case(422, envelope(deadline={"in": 5}), paths=("deadline",)),
    "deadline before the job may start": Case(
        422, envelope(delay=600, deadline=60), paths=("deadline",)
    ),
    "every option wrong at once": Case(
        422,
        envelope(queue="", priority=None, delay="x", deadline="y", max_attempts=0),
        paths=("queue", "delay", "deadline", "max_attempts"),
    ),
}

# Names that must never be taken for code, a path or another type: each is an unknown type.
UNKNOWN_TYPES: Final = {
    "unknown": "nope",
    "os.system": "os.system",
    "builtins.eval": "builtins.eval",
    "__import__": "__import__",
    "../x": "../x",
    "rq.job.Job": "rq.job.Job",
    "module:function": "domain.job_types.email:email_job_type",
    "cyrillic e": "\u0435mail",
    "fullwidth": "\uff45\uff4d\uff41\uff49\uff4c",
    "zero-width space": "email\u200b",
    "combining accent": "e\u0301mail",
    "upper case": "EMAIL",
    "trailing space": "email ",
    "trailing newline": "email\n",
    "nul byte": "email\u0000",
    "empty": "",
    "long": "x" * 10_000,
}
for label, name in UNKNOWN_TYPES.items():
    CORPUS[f"type {label}"] = Case(
        422, raw(json.dumps({"type": name, "payload": {}})), mentions="known types", paths=("type",)
    )
NOT_STRINGS: Final = {"int": 1, "null": None, "list": ["email"], "object": {"name": "email"}}
for label, value in NOT_STRINGS.items():
    CORPUS[f"type is {label}"] = Case(
        422, raw(json.dumps({"type": value, "payload": EMAIL})), paths=("type",)
    )


def stored_jobs(container: Container) -> int:
    return len(backends.stored_jobs(container.backend()))


@pytest.mark.parametrize("case", CORPUS.values(), ids=CORPUS.keys())
def test_a_bad_request_is_refused_with_a_problem_and_stores_nothing(
    client: TestClient[Litestar], container: Container, case: Case
) -> None:
    body = case.body if isinstance(case.body, bytes) else case.body()

    response = client.post("/jobs", content=body, headers=case.headers)

    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == case.status
    assert problem["type"]
    assert problem["title"]
    assert len(problem["detail"]) > 10
    assert case.mentions.lower() in problem["detail"].lower()
    assert len(response.content) < 20_000, "a refusal must not echo the request back"
    named = {error["path"] for error in problem.get("errors", [])}
    assert set(case.paths) <= named, named
    assert stored_jobs(container) == 0


BATCH_CORPUS: Final[dict[str, Case]] = {
    "malformed json": Case(400, b'{"jobs": [', mentions="JSON"),
    "empty body": Case(400, b"", mentions="empty"),
    "duplicate key in an item": Case(
        400, raw('{"jobs": [{"type": "email", "type": "dummy", "payload": {}}]}'), mentions="type"
    ),
    "NaN in an item": Case(400, raw('{"jobs": [{"type": "dummy", "payload": {}, "delay": NaN}]}')),
    "deep nesting in an item": Case(
        400, raw(f'{{"jobs": [{{"type": "dummy", "payload": {deep(40)}}}]}}'), mentions="nested"
    ),
    "wrong content type": Case(415, compact({"jobs": []}), {"content-type": "text/plain"}),
    "far over the batch limit, chunked": Case(413, chunks_of(b"[" * (8 * LIMIT))),
    "over the batch limit, with Content-Length": Case(
        413, compact({"jobs": []}) + b" " * (4 * LIMIT)
    ),
    "top level is an array": Case(422, compact([{"type": "email", "payload": EMAIL}])),
    "no jobs": Case(422, b"{}", paths=("jobs",)),
    "jobs is an object": Case(422, compact({"jobs": {"type": "email"}}), paths=("jobs",)),
    "jobs is empty": Case(422, compact({"jobs": []}), paths=("jobs",)),
    "1001 jobs": Case(
        422, compact({"jobs": [{"type": "dummy", "payload": {}}] * 1001}), paths=("jobs",)
    ),
    "an extra top-level field": Case(
        422, compact({"jobs": [{"type": "email", "payload": EMAIL}], "x": 1}), paths=("x",)
    ),
    "an item is a string": Case(422, compact({"jobs": ["email"]}), paths=("jobs[0]",)),
    "an item of an unknown type": Case(
        422, compact({"jobs": [{"type": "os.system", "payload": {}}]}), paths=("jobs[0].type",)
    ),
    "an item's key is a number": Case(
        422,
        compact({"jobs": [{"type": "email", "payload": EMAIL, "idempotency_key": 7}]}),
        paths=("jobs[0].idempotency_key",),
    ),
    "an item's key has a space": Case(
        422,
        compact({"jobs": [{"type": "email", "payload": EMAIL, "idempotency_key": "a b"}]}),
        paths=("jobs[0].idempotency_key",),
    ),
    "the last of many items is bad": Case(
        422,
        compact({"jobs": [{"type": "email", "payload": EMAIL}] * 999 + [{"type": "email"}]}),
        paths=("jobs[999].payload",),
    ),
}


@pytest.mark.parametrize("case", BATCH_CORPUS.values(), ids=BATCH_CORPUS.keys())
def test_a_bad_batch_is_refused_with_a_problem_and_stores_nothing(
    client: TestClient[Litestar], container: Container, case: Case
) -> None:
    body = case.body if isinstance(case.body, bytes) else case.body()

    response = client.post("/jobs/batch", content=body, headers=case.headers)

    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == case.status
    assert len(problem["detail"]) > 10
    assert case.mentions.lower() in problem["detail"].lower()
    assert len(response.content) < 20_000, "a refusal must not echo the request back"
    assert set(case.paths) <= {error["path"] for error in problem.get("errors", [])}
    assert stored_jobs(container) == 0


@pytest.mark.parametrize(
    "key", [b"", b" ", b"a b", b"x" * 201, b"\x7f", "\u00e9".encode(), b"k\x00"]
)
def test_a_bad_idempotency_key_is_refused_and_stores_nothing(
    client: TestClient[Litestar], container: Container, key: bytes
) -> None:
    headers = {b"content-type": b"application/json", b"idempotency-key": key}
    response = client.post("/jobs", content=envelope(), headers=headers)

    assert response.status_code == 422, response.text[:500]
    assert response.json()["errors"] == [
        {"path": "Idempotency-Key", "message": response.json()["errors"][0]["message"]}
    ]
    assert stored_jobs(container) == 0


def test_the_corpus_leaves_the_api_serving(client: TestClient[Litestar]) -> None:
    for case in CORPUS.values():
        body = case.body if isinstance(case.body, bytes) else case.body()
        client.post("/jobs", content=body, headers=case.headers)
    for case in BATCH_CORPUS.values():
        body = case.body if isinstance(case.body, bytes) else case.body()
        client.post("/jobs/batch", content=body, headers=case.headers)

    response = client.post("/jobs", content=envelope(), headers=JSON)

    assert response.status_code == 202


def test_a_body_exactly_at_the_limit_is_accepted(client: TestClient[Litestar]) -> None:
    response = client.post("/jobs", content=padded_to(LIMIT), headers=JSON)

    assert response.status_code == 202, response.text


def test_the_limit_follows_the_settings() -> None:
    container = build_container(Settings(queue_backend=QueueBackend.MEMORY, max_body_bytes=1024))
    with TestClient(create_app(container)) as client:
        at_limit = client.post("/jobs", content=padded_to(1024), headers=JSON)
        over = client.post("/jobs", content=padded_to(1025), headers=JSON)

    assert at_limit.status_code == 202
    assert over.status_code == 413
    assert "1024 bytes" in over.json()["detail"]


# -- the size limit at the ASGI level: what is read, and when it stops ----------------------


def asgi_post(
    app: Litestar, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, int]:
    """POST /jobs straight through ASGI; answers (status, body chunks the app pulled)."""
    pulled = 0
    sent: list[Message] = []

    async def receive() -> ReceiveMessage:
        nonlocal pulled
        if pulled == len(chunks):
            return {"type": "http.disconnect"}
        pulled += 1
        return {
            "type": "http.request",
            "body": chunks[pulled - 1],
            "more_body": pulled < len(chunks),
        }

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/jobs",
        "raw_path": b"/jobs",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    asyncio.run(app(cast("Scope", scope), receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], pulled


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(
    container: Container,
) -> None:
    app = create_app(container)
    body = padded_to(LIMIT + 1)

    status, pulled = asgi_post(app, [(b"content-length", str(len(body)).encode())], [body])

    assert (status, pulled) == (413, 0)


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(container: Container) -> None:
    app = create_app(container)
    chunk = b" " * (64 * 1024)
    chunks = [chunk] * 64  # 4 MiB offered, 16x the limit

    status, pulled = asgi_post(app, [(b"transfer-encoding", b"chunked")], chunks)

    assert status == 413
    assert pulled == LIMIT // len(chunk) + 1  # it stopped at the first chunk over the limit
    assert stored_jobs(container) == 0


# -- strict decoding, as properties ---------------------------------------------------------

# Strings full of the characters that could confuse a reading of JSON's structure.
tricky_text = st.text(alphabet=st.sampled_from('ab"\\/[]{}:, \n\u00e9\u2028\U0001f600'), max_size=8)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4)
    ),
    max_leaves=30,
)


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


@given(json_values, st.booleans())
def test_strict_decoding_accepts_every_shallow_document_as_it_is(
    value: object, ascii_only: bool
) -> None:
    assume(depth_of(value) <= MAX_DEPTH)
    body = json.dumps(value, ensure_ascii=ascii_only).encode()

    assert decode_json(body) == value


@given(json_values)
def test_strict_decoding_refuses_a_document_one_level_too_deep(value: object) -> None:
    too_deep = value
    for _ in range(MAX_DEPTH + 1 - depth_of(value)):
        too_deep = [too_deep]

    with pytest.raises(ProblemError, match="nested too deeply"):
        decode_json(json.dumps(too_deep).encode())


@given(st.dictionaries(st.text(max_size=5), json_values, min_size=1), st.data())
def test_strict_decoding_refuses_a_repeated_key_at_any_depth(
    obj: dict[str, object], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    repeated = "{" + json.dumps(key) + ": 0, " + json.dumps(obj)[1:]
    body = data.draw(st.sampled_from([repeated, f"[{repeated}]", f'{{"x": {repeated}}}']))
    assume(depth_of(json.loads(body)) <= MAX_DEPTH)

    with pytest.raises(ProblemError, match="repeats the key"):
        decode_json(body.encode())
