"""Small helpers of binder_service: the clock seam and time parsing."""

from datetime import datetime, timedelta, timezone


def utcnow():
    """The current time, timezone-aware UTC.

    The one place binder_service reads the wall clock: in-process tests patch
    ``binder_service.utils.utcnow``; a running service is moved in time with
    :class:`Clock` and ``BinderService.clock_offset_file``.
    """
    return datetime.now(timezone.utc)


def parse_date(value):
    """A JupyterHub ISO 8601 timestamp (``...Z``) as an aware datetime, or None."""
    if not value:
        return None
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def isoformat(dt):
    """An aware datetime as JupyterHub writes it: ISO 8601 with ``Z``."""
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class Clock:
    """``utcnow()`` plus an offset in seconds read from a file at each call.

    The offset file is for tests of a running service (a subprocess cannot be
    patched): it is off unless the operator configures a path, and only who
    can write that path can move the service's clock. A missing, empty or
    unreadable file means no offset.
    """

    def __init__(self, offset_file=""):
        self.offset_file = offset_file

    def offset(self):
        if not self.offset_file:
            return 0.0
        try:
            with open(self.offset_file) as f:
                text = f.read().strip()
        except OSError:
            return 0.0
        try:
            return float(text) if text else 0.0
        except ValueError:
            return 0.0

    def __call__(self):
        offset = self.offset()
        now = utcnow()
        return now + timedelta(seconds=offset) if offset else now
