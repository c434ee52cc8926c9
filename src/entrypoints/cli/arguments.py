"""How the commands read their arguments."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TypeAlias

from domain.jobs import is_name

if TYPE_CHECKING:
    # What `add_subparsers` answers; each command group adds its commands to it.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def name(raw: str) -> str:
    if not is_name(raw):
        raise argparse.ArgumentTypeError("expected 1-64 of a-z, 0-9, '_' or '-', from a letter")
    return raw


def page_size(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 500:
        raise argparse.ArgumentTypeError("must be 1 to 500")
    return value


def deadline(raw: str) -> str | float:
    try:
        return float(raw)
    except ValueError:
        return raw  # an RFC 3339 time, or nonsense the domain names


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
