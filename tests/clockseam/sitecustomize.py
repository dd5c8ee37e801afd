"""Moves the clock of a binder_service process the tests start (Python loads this at start).

The tests start the service as the hub and the chart do (``python -m
binder_service``) and add this directory to its ``PYTHONPATH`` with
``BINDER_TEST_CLOCK_OFFSET_FILE`` naming a file of seconds. The service reads
time only through ``binder_service.utils.utcnow`` (as jupyterhub-idle-culler
does through its ``utcnow``); this replaces that seam by one that adds the
file's seconds, read at every call (missing, empty or bad: no offset).
Production code knows nothing of it. See :func:`clock_env`.
"""

import os

_path = os.environ.get("BINDER_TEST_CLOCK_OFFSET_FILE")

if _path:
    from datetime import timedelta

    import binder_service.utils as _utils

    _real_utcnow = _utils.utcnow

    def _offset():
        try:
            with open(_path) as f:
                return float(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def utcnow():
        return _real_utcnow() + timedelta(seconds=_offset())

    _utils.utcnow = utcnow
