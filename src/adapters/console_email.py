"""An EmailSender that prints one structured line per message instead of sending it."""

from __future__ import annotations

import json
import sys
import uuid
from typing import TextIO

from domain.ports import EmailMessage, EmailSender


class ConsoleEmailSender(EmailSender):
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def send(self, message: EmailMessage) -> str:
        message_id = uuid.uuid4().hex
        line = {
            "event": "email_sent",
            "message_id": message_id,
            "to": message.to,
            "subject": message.subject,
            "body_chars": len(message.body),
        }
        stream = self._stream or sys.stdout
        stream.write(json.dumps(line) + "\n")
        stream.flush()
        return message_id
