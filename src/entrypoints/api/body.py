"""Reading submissions from the raw request body, so the API decides every error itself.

Order matters: the media type is checked before anything is read; the body is read under
Litestar's `request_max_body_size` (a Content-Length over the limit is refused unread, a
chunked body is counted as it streams); the JSON is decoded strictly; only then is the
envelope checked and handed to the domain, which validates the job type, payload and options.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from itertools import accumulate
from typing import Any, Final

import attrs
import msgspec
from litestar import Request

from domain.errors import FieldError, InvalidJobError
from domain.jobs import IDEMPOTENCY_KEY_MAX, is_idempotency_key
from domain.submission import MAX_BATCH, Submission
from entrypoints.api.problems import ProblemError, clip

# Deeper documents are refused: they are never needed for a job, and a deep tree stored in
# the backend could exhaust the stack of whoever decodes it later.
MAX_DEPTH: Final = 32
ENVELOPE_FIELDS: Final = (
    "type",
    "payload",
    "max_attempts",
    "timeout",
    "queue",
    "priority",
    "delay",
    "run_at",
    "deadline",
    "unique_key",
    "unique_for",
)
# A batch item may name its own idempotency key (one request carries one header).
BATCH_ITEM_FIELDS: Final = (*ENVELOPE_FIELDS, "idempotency_key")
_REQUIRED: Final = ("type", "payload")
_SAFE_INTEGER: Final = 2**53
_WHITESPACE: Final = b" \t\r\n"
_NOT_BRACKETS: Final = bytes(c for c in range(256) if c not in b"[]{}")
_NESTING: Final = tuple(1 if c in b"[{" else -1 if c in b"]}" else 0 for c in range(256))
_JSON_MEDIA_TYPE: Final = re.compile(r"application/(?:[a-z0-9!#$&^_.-]+\+)?json")


def require_json(request: Request[Any, Any, Any]) -> None:
    """Refuse (415) anything but `application/json` or `application/*+json` in UTF-8."""
    raw = request.headers.get("content-type")
    if not raw:
        raise _unsupported("the request has no Content-Type; send application/json")
    media_type, options = request.content_type
    if not _JSON_MEDIA_TYPE.fullmatch(media_type.strip().lower()):
        raise _unsupported(f"expected application/json, got {clip(media_type)!r}")
    charset = options.get("charset", "utf-8").strip().strip('"').lower()
    if charset not in ("utf-8", "utf8"):
        raise _unsupported(f"expected a UTF-8 body, got charset {clip(charset)!r}")


def decode_json(body: bytes) -> object:
    """The JSON document in `body`; raises a 400 problem for anything that is not strict JSON.

    Strict means: UTF-8 without lone surrogates, no NaN or Infinity, numbers in range, at
    most MAX_DEPTH levels of nesting, and no key repeated within one object.
    """
    if not body.strip():
        raise _malformed("the request body is empty; send a JSON object")
    try:
        document = msgspec.json.decode(body)
    except RecursionError:
        raise _malformed(f"the JSON is nested too deeply (the limit is {MAX_DEPTH})") from None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError) as exc:
        raise _malformed(f"the body is not valid JSON: {_reason(exc)}") from None
    depth, keys = _shape(body)
    if depth > MAX_DEPTH:
        raise _malformed(f"the JSON is nested too deeply (the limit is {MAX_DEPTH})")
    # msgspec keeps the last of repeated keys silently; re-encoded, the document has fewer.
    if keys != _shape(msgspec.json.encode(document))[1]:
        raise _malformed(f"the JSON repeats the key {clip(_repeated_key(body))!r} in one object")
    return document


def submission_from(document: object) -> Submission:
    """The envelope as a domain Submission; raises InvalidJobError listing every bad field.

    Only the envelope is checked here (it must be an object with known fields, a string
    `type` and a `payload`); the job type, payload and options are the domain's to judge.
    """
    submission, _, errors = _item(document, ENVELOPE_FIELDS, prefix="")
    if submission is None:
        raise InvalidJobError(errors)
    return submission


@attrs.frozen
class BatchItem:
    """One item of a batch as read from the wire: its submission, unless its envelope is wrong
    (then `errors` says why, by `jobs[index].field` path), and its idempotency key."""

    submission: Submission | None
    idempotency_key: str | None
    errors: tuple[FieldError, ...]


def batch_from(document: object) -> list[BatchItem]:
    """The items of a `{"jobs": [...]}` batch; raises InvalidJobError when the batch itself is
    malformed (not an object, no `jobs` array, too few or too many items)."""
    if not isinstance(document, Mapping):
        raise InvalidJobError([FieldError("", "expected a JSON object with a `jobs` array")])
    errors = [FieldError(key, "unknown field") for key in document if key != "jobs"]
    items = document.get("jobs")
    if not isinstance(items, list):
        errors.append(FieldError("jobs", "expected an array of job submissions"))
    elif not 1 <= len(items) <= MAX_BATCH:
        errors.append(FieldError("jobs", f"expected 1 to {MAX_BATCH} job submissions"))
    if errors or not isinstance(items, list):
        raise InvalidJobError(errors)
    return [
        BatchItem(*_item(item, BATCH_ITEM_FIELDS, prefix=f"jobs[{index}]"))
        for index, item in enumerate(items)
    ]


def idempotency_key_from(header: str | None) -> str | None:
    """The `Idempotency-Key` header's value; raises a 422 problem for a malformed one."""
    if header is None:
        return None
    if not is_idempotency_key(header):
        message = f"expected 1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters, no spaces"
        raise ProblemError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "invalid-header",
            f"Idempotency-Key: {message}",
            errors=[FieldError("Idempotency-Key", message)],
        )
    return header


def _item(
    document: object, fields: tuple[str, ...], *, prefix: str
) -> tuple[Submission | None, str | None, tuple[FieldError, ...]]:
    """One submission envelope: (submission, idempotency key, errors); the submission is None
    when there are errors."""

    def at(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    if not isinstance(document, Mapping):
        expected = "expected a JSON object with `type` and `payload`"
        return None, None, (FieldError(prefix, expected),)
    errors = [FieldError(at(key), "unknown field") for key in document if key not in fields]
    errors += [FieldError(at(key), "field required") for key in _REQUIRED if key not in document]
    kind = document.get("type")
    if "type" in document and not isinstance(kind, str):
        errors.append(FieldError(at("type"), "expected a job type name (a string)"))
    key = document.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        errors.append(FieldError(at("idempotency_key"), "expected a string"))
    if errors:
        return None, None, tuple(errors)
    fields_of = {name: integral(value) for name, value in document.items()}
    submission = Submission(
        type=kind,
        payload=fields_of["payload"],
        max_attempts=fields_of.get("max_attempts"),
        timeout=fields_of.get("timeout"),
        queue=fields_of.get("queue"),
        priority=fields_of.get("priority"),
        delay=fields_of.get("delay"),
        run_at=fields_of.get("run_at"),
        deadline=fields_of.get("deadline"),
        unique_key=fields_of.get("unique_key"),
        unique_for=fields_of.get("unique_for"),
    )
    return submission, key, ()


def integral(value: object) -> object:
    """`value` with every whole number written as a float (`22.0`) made an int.

    JSON has one kind of number, and JSON Schema's `integer` is any number without a
    fraction; the decoder keeps the spelling apart, so the domain would see `22.0` as not
    an integer. Beyond 2**53 a float no longer says which integer it means: left alone.
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _SAFE_INTEGER else value
    if isinstance(value, list):
        return [integral(item) for item in value]
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    return value


def _unsupported(detail: str) -> ProblemError:
    return ProblemError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", detail)


def _malformed(detail: str) -> ProblemError:
    return ProblemError(HTTPStatus.BAD_REQUEST, "malformed-json", detail)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8"
    # msgspec's messages name the position, never the content ("invalid character (byte 6)").
    return clip(str(exc), 120)


def _shape(document: bytes) -> tuple[int, int]:
    """(nesting depth, number of object keys) of a valid JSON text, read from its bytes.

    Escaped backslashes and quotes are dropped first, so every quote left opens or closes a
    string; what lies between strings is the structure. All of it runs in C, which keeps a
    body at the size limit cheap to check.
    """
    unescaped = document.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b'""'.join(unescaped.split(b'"')[::2]).translate(None, _WHITESPACE)
    brackets = structure.translate(None, _NOT_BRACKETS)
    depth = max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)
    return depth, structure.count(b'"":')


class _RepeatedKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKeyError(key)
        seen.add(key)
    return dict(pairs)


def _repeated_key(body: bytes) -> str:
    """Which key is repeated (only asked once `_shape` found one), for the message."""
    try:
        json.loads(body, object_pairs_hook=_unique_pairs)
    except _RepeatedKeyError as exc:
        return exc.key
    except (ValueError, RecursionError):  # pragma: no cover - msgspec accepted the body
        pass
    return "?"  # pragma: no cover
