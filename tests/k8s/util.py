"""Small helpers shared by the emulator's modules: JSON copies and API timestamps (pure)."""

import datetime
import time


def clone(value):
    """A deep copy of JSON-like data (much faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def timestamp(seconds=None):
    """RFC 3339 in UTC with second precision, as metav1.Time serialises."""
    when = datetime.datetime.fromtimestamp(
        time.time() if seconds is None else seconds, datetime.timezone.utc
    )
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_timestamp(seconds=None):
    when = datetime.datetime.fromtimestamp(
        time.time() if seconds is None else seconds, datetime.timezone.utc
    )
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
