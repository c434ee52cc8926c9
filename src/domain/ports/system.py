"""What the domain needs besides a job backend: the time, and a way to send email."""

from __future__ import annotations

import abc
from datetime import datetime

import attrs


@attrs.frozen
class EmailMessage:
    to: str
    subject: str
    body: str


class EmailSender(abc.ABC):
    @abc.abstractmethod
    async def send(self, message: EmailMessage) -> str:
        """Send the message; answers the provider's message id."""


class Clock(abc.ABC):
    @abc.abstractmethod
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
