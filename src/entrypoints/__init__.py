"""Driving adapters (HTTP API, worker, command line) and their one composition root."""
