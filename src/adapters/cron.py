"""Cron arithmetic and time zones, for `domain.schedules`: cronsim (which follows Debian's
cron, DST quirks included) over the zoneinfo database."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from cronsim import CronSim, CronSimError

from domain.errors import FieldError, InvalidScheduleError
from domain.schedules import CronParser, Recurrence


@attrs.frozen
class CronRecurrence(Recurrence):
    """The matches of a cron expression in a time zone. A time that exists twice (clocks
    going back) matches once for a fixed hour, as Debian's cron runs it; a time that does
    not exist (clocks going forward) runs right after the jump."""

    expression: str
    zone: ZoneInfo

    def next_after(self, moment: datetime) -> datetime | None:
        try:
            return _utc(next(CronSim(self.expression, moment.astimezone(self.zone))))
        except StopIteration:  # no match within cronsim's horizon (50 years)
            return None

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        # Reverse iteration starts strictly before a whole second, and at it when the
        # start has a fraction: a microsecond past the second makes it "at or before".
        start = moment.astimezone(self.zone).replace(microsecond=0) + timedelta(microseconds=1)
        try:
            return _utc(next(CronSim(self.expression, start, reverse=True)))
        except StopIteration:
            return None


def _utc(moment: datetime) -> datetime:
    # Ticks are compared and stored as instants; their zone only mattered for matching.
    return moment.astimezone(UTC)


_NO_ZONE = "not an IANA time zone name (like Europe/Paris or UTC)"
_FIVE_FIELDS = "expected 5 fields: minute hour day-of-month month day-of-week"


class CronsimParser(CronParser):
    def parse(self, expression: str, timezone: str) -> Recurrence:
        errors: list[FieldError] = []
        zone = _zone(timezone)
        if zone is None:
            errors.append(FieldError("timezone", _NO_ZONE))
        if len(expression.split()) != 5:
            errors.append(FieldError("cron", _FIVE_FIELDS))
        else:
            try:
                CronSim(expression, datetime(2000, 1, 1, tzinfo=zone or UTC))
            except (CronSimError, ValueError, ArithmeticError, IndexError) as exc:
                errors.append(FieldError("cron", f"not a cron expression: {exc}"))
        if errors or zone is None:
            raise InvalidScheduleError(errors)
        return CronRecurrence(expression, zone)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
