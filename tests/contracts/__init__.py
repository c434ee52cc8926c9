"""The port contracts, written once and run against every backend.

One module per role or topic. A backend's test module subclasses the contract classes and
provides a `backend_factory` fixture (`base.BackendFactory`); each scenario names the roles it
needs, and runs on a backend that plays them or is skipped with the reason (the backend lacks
the role), so nothing passes by being refused.
"""
