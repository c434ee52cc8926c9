"""Where RQ keeps its keys: one namespace per deployment.

RQ names its keys from one prefix (`rq:job:<id>`, `rq:queue:<name>`, its registries, workers,
results, scheduler locks), read from `RQ_KEY_PREFIX` once, when rq is imported. Conveyor's
own prefix (CONVEYOR_KEY_PREFIX) names only RQ's queues and Conveyor's keys, so two
deployments with different prefixes on one Redis would share every job key: one could read,
cancel or retry the other's jobs by id. Each deployment therefore gets its own RQ namespace:

- the default prefix (`conveyor`) keeps RQ's own, `rq` (the keys Conveyor has always used,
  and where RQ's tools look: `rq info` works as it is);
- any other prefix P uses `P:rq`, so every key of the deployment starts with `P:` (RQ's key
  families there, `job:`, `queue:`, `workers`..., never meet Conveyor's, `jobs`, `seq`,
  `presence`, `idem:`).

An `RQ_KEY_PREFIX` set in the environment is used as given (an operator keeping RQ's keys where
they were); deployments that share it share RQ's keys.

rq must not have been imported before `use_rq_key_prefix` runs (the entry points call it before
anything loads rq); if it was, with another namespace, start-up stops with one line saying so.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Final

from entrypoints.settings import Settings, SettingsError

DEFAULT_KEY_PREFIX: Final = "conveyor"
RQ_DEFAULT: Final = "rq"
# What RQ accepts in its prefix (it splices it into templates and Lua).
_RQ_SAFE: Final = re.compile(r"[A-Za-z0-9_.:{}-]+")


def rq_key_prefix(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """The RQ namespace of the deployment `settings` describe."""
    env = os.environ if environ is None else environ
    explicit = env.get("RQ_KEY_PREFIX", "").strip()
    if explicit:
        return explicit
    if settings.key_prefix == DEFAULT_KEY_PREFIX:
        return RQ_DEFAULT
    return f"{settings.key_prefix}:rq"


def use_rq_key_prefix(settings: Settings) -> str:
    """Make rq use the deployment's namespace when it is imported; answers it.

    Raises SettingsError when the namespace is not one RQ accepts, or rq was already loaded
    with another one (its keys would be another deployment's).
    """
    wanted = rq_key_prefix(settings)
    if not _RQ_SAFE.fullmatch(wanted):
        raise SettingsError(
            f"CONVEYOR_KEY_PREFIX={settings.key_prefix!r} cannot name RQ's keys ({wanted!r}):"
            " with QUEUE_BACKEND=rq use letters, digits, '_', '.' and '-' only"
        )
    loaded = sys.modules.get("rq.defaults")
    if loaded is None:
        os.environ["RQ_KEY_PREFIX"] = wanted
        return wanted
    actual = getattr(loaded, "RQ_KEY_PREFIX", RQ_DEFAULT)
    if actual != wanted:
        raise SettingsError(
            f"CONVEYOR_KEY_PREFIX={settings.key_prefix!r} keeps RQ's keys under {wanted!r}, but"
            f" rq was loaded with RQ_KEY_PREFIX={actual!r}: refusing to share another"
            " deployment's job keys"
        )
    return wanted
