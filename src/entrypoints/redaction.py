"""Keeping credentials out of what Conveyor writes: log lines, messages, reprs.

`REDIS_URL` carries credentials in every form redis-py reads from a URL: the userinfo
(`redis://user:password@host`, `redis://:password@host`), the `username` and `password`
query parameters, `ssl_password` (the passphrase of the TLS key), and a Sentinel URL's
`sentinel_username` and `sentinel_password`. redis-py hands any query
parameter it does not know to the connection as a keyword argument, so the value of an
unknown one is treated as a secret too: only the parameters listed in `_SHOWN` are shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote, unquote_plus

MASK: Final = "***"
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Query parameters whose values are settings, not secrets: shown as given (when they look
# like a plain value).
_SHOWN: Final = frozenset(
    {
        "db",
        "protocol",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_read_size",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "timeout",
        "client_name",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
        "legacy_responses",
    }
)
_PLAIN_VALUE: Final = re.compile(r"[A-Za-z0-9_.-]*")
_PARAMETER_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DB_PATH: Final = re.compile(r"/?[0-9]*")
# Parameters whose value is a password: masked wherever it appears in a log line as well.
_PASSWORDS: Final = frozenset({"password", "ssl_password", "sentinel_password"})
# Shorter secrets are left to the structural redaction: masking every occurrence of a short
# string would garble the logs (and a password that short is no secret anyway).
MIN_MASKED_SECRET: Final = 6

# Credentials in free text (an exception's message, a library's log line): a URL's userinfo,
# and the credential query parameters.
_TEXT_USERINFO: Final = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]*://)(?!(?:\*\*\*)?(?::\*\*\*)?@)[^\s/@'\"<>]*@"
)
_TEXT_PARAMETER: Final = re.compile(
    r"(?i)([?&;](?:password|username|ssl_password|sentinel_password|sentinel_username)=)[^&#\s'\"]*"
)


def redact_url(url: str) -> str:
    """The URL with every credential masked, fit for a log line: the userinfo, the values
    of query parameters not known to be harmless, a path that is not a database number, and
    any fragment. Something that is not a URL at all is masked whole."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return MASK
    rest = url[scheme.end() :]
    # Everything up to the *last* '@' is userinfo, as urllib reads it: a password may hold
    # an '@'. An '@' further on means a password with an unencoded '/', '?' or '#' in it,
    # so this masks up to that '@' too.
    userinfo, at, after = rest.rpartition("@")
    credentials = ""
    if at:
        user, colon, _ = userinfo.partition(":")
        credentials = (MASK if user else "") + (f":{MASK}" if colon else "") + "@"
        rest = after
    rest, hash_sign, _ = rest.partition("#")
    rest, question, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    shown = f"{scheme.group(0)}{credentials}{authority}"
    if slash:
        unix = scheme.group(0).lower() == "unix://"
        shown += "/" + (path if unix or _shown_path(scheme.group(0), path) else MASK)
    if question:
        shown += "?" + "&".join(_parameter(item) for item in query.split("&"))
    if hash_sign:
        shown += "#" + MASK
    return shown


def _shown_path(scheme: str, path: str) -> bool:
    """A database number, or a Sentinel URL's service name (and database number)."""
    if _DB_PATH.fullmatch(path):
        return True
    service, _, db = path.partition("/")
    sentinel = scheme.lower() == "redis+sentinel://"
    return sentinel and bool(_PLAIN_VALUE.fullmatch(service)) and bool(_DB_PATH.fullmatch(db))


def _parameter(item: str) -> str:
    raw_name, equals, value = item.partition("=")
    name = unquote_plus(raw_name)
    if not _PARAMETER_NAME.fullmatch(name):
        return MASK
    if not equals:
        return name
    if name in _SHOWN and _PLAIN_VALUE.fullmatch(value):
        return f"{name}={value}"
    return f"{name}={MASK}"


def url_secrets(url: str | None) -> frozenset[str]:
    """The passwords `url` holds, in every spelling a log line may carry them (as written,
    decoded, JSON-escaped), for `redact_text` to mask wherever they appear."""
    scheme = _SCHEME.match(url) if url else None
    if url is None or scheme is None:
        return frozenset()
    userinfo, at, _ = url[scheme.end() :].rpartition("@")
    found: list[str] = []
    if at and ":" in userinfo:
        password = userinfo.partition(":")[2]
        found += [password, unquote(password)]
    query = url.partition("?")[2].partition("#")[0]
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if unquote_plus(name) in _PASSWORDS:
            found += [value, unquote_plus(value)]
    spellings = {s for secret in found for s in (secret, json.dumps(secret)[1:-1])}
    return frozenset(s for s in spellings if len(s) >= MIN_MASKED_SECRET)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials in URLs masked, and each of `secrets` wherever it appears."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _TEXT_USERINFO.sub(rf"\g<1>{MASK}@", text)
    # `_TEXT_PARAMETER` starts with one of "?&;" and holds a "=": most lines have neither.
    if "=" in text and ("?" in text or "&" in text or ";" in text):
        text = _TEXT_PARAMETER.sub(rf"\g<1>{MASK}", text)
    return text
