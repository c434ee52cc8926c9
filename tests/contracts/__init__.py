"""The port contracts, written once and run against every backend.

One module per role or topic, each defining one contract class; `all.AllContracts` inherits
them all. A backend's test module subclasses it and provides a `backend_factory` fixture
(`base.BackendFactory`). Each scenario names the roles it needs, and runs on a backend that
plays them or is skipped with the reason (the backend lacks the role), so nothing passes by
being refused.

Counting the scenarios a backend runs: `pytest --collect-only -q <its runner> | tail -1`
counts them all; a run's summary line says how many were skipped, and `-rs` says why.
"""

import pkgutil

import pytest

# The modules here are not test modules, yet they hold the scenarios: let pytest explain
# their failed asserts as it does in test modules. (Named one by one: this package itself is
# imported already, and registering it would warn.)
pytest.register_assert_rewrite(*(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)))
