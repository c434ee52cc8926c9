"""dependency-injector, loaded without PyYAML.

dependency-injector imports PyYAML whenever it is installed (litestar installs it), for
`Configuration.from_yaml`, which Conveyor never calls: about 10 ms of every process's start,
a new worker's first job included. A None in `sys.modules` makes that import fail as if
PyYAML were absent; it is taken out again once dependency-injector has loaded, so anything
else that imports PyYAML later gets it as usual.
"""

from __future__ import annotations

import sys

_held_back = "yaml" not in sys.modules
if _held_back:
    sys.modules["yaml"] = None  # type: ignore[assignment]
try:
    from dependency_injector import containers, providers
finally:
    if _held_back and "yaml" in sys.modules and sys.modules["yaml"] is None:
        del sys.modules["yaml"]

__all__ = ["containers", "providers"]
