"""The pieces the multi-host URLs (``redis+sentinel://``, ``redis+cluster://``) share: the
userinfo and the comma-separated ``host[:port]`` list. Their messages quote no credential."""

from __future__ import annotations

from urllib.parse import unquote


def split_userinfo(rest: str) -> tuple[str | None, str | None, str]:
    """``[user][:password]@rest`` -> (user, password, rest); everything up to the *last*
    '@' is userinfo, as urllib reads it (a password may hold an '@')."""
    userinfo, at, rest = rest.rpartition("@")
    if not at:
        return None, None, rest
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None, rest


def host_list(hosts: str, *, kind: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """``host[:port],host[:port]...`` (IPv6 in brackets) -> ((host, port), ...); `kind`
    names the URL in the messages ("a cluster URL")."""
    return tuple(_address(item, kind, default_port) for item in hosts.split(","))


def _address(item: str, kind: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    bare = ":" not in item or item.endswith("]")  # no port, or a bare IPv6 address
    host, colon, port = (item, "", "") if bare else item.rpartition(":")
    if not host:
        raise ValueError(f"{kind} lists host[:port] pairs separated by commas")
    if not colon:
        return host.strip("[]"), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{kind}'s port must be a number from 1 to 65535, not {port!r}")
    return host.strip("[]"), int(port)
