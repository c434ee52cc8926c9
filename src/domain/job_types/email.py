"""`email`: send one message through the EmailSender port."""

from __future__ import annotations

from domain.job_types import JobContext, JobType
from domain.jobs import JSONObject, JSONValue
from domain.ports import EmailMessage, EmailSender
from domain.retry import RetryPolicy
from domain.schema import Field, Kind, PayloadSchema

SCHEMA = PayloadSchema(
    (
        Field(
            name="to",
            kind=Kind.STRING,
            required=True,
            email=True,
            max_length=254,
            description="Recipient address, e.g. user@example.com.",
        ),
        Field(
            name="subject",
            kind=Kind.STRING,
            required=True,
            min_length=1,
            max_length=200,
            description="Subject line.",
        ),
        Field(
            name="body",
            kind=Kind.STRING,
            required=True,
            max_length=100_000,
            description="Plain-text body.",
        ),
    )
)


def email_job_type(sender: EmailSender) -> JobType:
    async def send_email(payload: JSONObject, context: JobContext) -> JSONValue:
        message_id = await sender.send(
            EmailMessage(to=payload["to"], subject=payload["subject"], body=payload["body"])
        )
        return {"message_id": message_id}

    return JobType(
        name="email",
        description="Send an email (simulated: the console sender prints one line).",
        schema=SCHEMA,
        handler=send_email,
        queue="default",
        retry=RetryPolicy(max_attempts=5, base=1.0, cap=60.0),
        timeout=30.0,
        timeout_limit=300.0,
    )
