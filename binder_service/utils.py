"""Small helpers of binder_service: the clock seam and time parsing."""

from datetime import datetime, timezone


def utcnow():
    """The current time, timezone-aware UTC.

    The one place binder_service reads the wall clock, the seam tests patch
    (in process with monkeypatch; in a service subprocess through
    ``tests/clockseam``), as jupyterhub-idle-culler's ``utcnow``.
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
