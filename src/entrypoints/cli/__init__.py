"""The `conveyor` command: run the API, a worker or the whole service; submit, inspect and
manage jobs, queues and schedules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from entrypoints.cli import jobs, queues, schedules, serve, submit, top
from entrypoints.cli.submit import follow
from entrypoints.logs import configure_logging
from entrypoints.redaction import url_secrets
from entrypoints.rq_keys import use_rq_key_prefix
from entrypoints.settings import QueueBackend, Settings, SettingsError

if TYPE_CHECKING:
    from entrypoints.container import Container

__all__ = ["follow", "main"]


def main(argv: Sequence[str] | None = None, *, container: Container | None = None) -> int:
    """Run one command. With `container`, the job and queue commands use it (and its
    settings) instead of building one from the environment."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.container = container
    if container is not None:
        settings: Settings = container.settings()
    else:
        try:
            settings = Settings.from_env()
            if settings.queue_backend is QueueBackend.RQ:
                use_rq_key_prefix(settings)  # before anything loads rq
        except SettingsError as exc:
            print(f"conveyor: {exc}", file=sys.stderr)
            return 2
        configure_logging(settings.log_level, settings.log_format, url_secrets(settings.redis_url))
    try:
        code: int = args.run(args, settings)
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    # In the order `conveyor --help` lists them.
    serve.add_commands(commands)
    submit.add_commands(commands)
    jobs.add_commands(commands)
    queues.add_commands(commands)
    schedules.add_commands(commands)
    top.add_commands(commands)
    return parser
