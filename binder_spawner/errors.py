"""Errors a user sees when a launch is refused.

JupyterHub 6 has :class:`jupyterhub.spawner.SpawnException`: raised from a
spawner, the hub shows its message and status code on the spawn page, logs no
traceback and counts the spawn as a policy failure. JupyterHub 5.5 (the z2jh
4.4.0 hub image) lacks it, but treats any ``tornado.web.HTTPError`` the same
way for the page and the log (jupyterhub 5.5.0 ``user.py``, ``User.spawn``:
``elif isinstance(e, web.HTTPError)``), so the shim is an ``HTTPError`` with
the same attributes.
"""

from tornado import web

try:
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub < 6

    class SpawnException(web.HTTPError):
        """Stand-in for ``jupyterhub.spawner.SpawnException`` (JupyterHub 6) on JupyterHub 5."""

        def __init__(self, message, *, reason, log_message="", message_html="", status_code=400):
            # tornado's HTTPError owns ``log_message``: pass it through.
            super().__init__(status_code, log_message or message, reason=reason)
            self.message = message
            self.message_html = message_html

        def __str__(self):
            return self.message


def spawn_error(message, *, status_code=400, reason="invalid", log_message=""):
    """A :class:`SpawnException` carrying one user-facing sentence and an HTTP status.

    ``jupyterhub_message`` is what the spawn progress ("Spawn failed: ...") and the
    "server not running" page show (``jupyterhub.utils.format_exception``, 5.5 and
    6.1); without it JupyterHub 6 shows ``str(exc)``, which SpawnException
    prefixes with "429 SpawnException(reason=limit):".
    """
    error = SpawnException(message, reason=reason, status_code=status_code, log_message=log_message)
    error.jupyterhub_message = message
    return error
