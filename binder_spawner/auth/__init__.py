"""The anonymous authenticator (entry point ``binder-anonymous``).

- :mod:`.authenticator`: :class:`AnonymousAuthenticator`, who may get an
  identity and what it may do (rate limits, caps, the anonymous group).
- :mod:`.handlers`: the hub pages it replaces (login, logout, the launch-link
  router, the proxy's 503 page). They import nothing of the authenticator's;
  it hands itself to them when it registers them.

``binder_spawner.auth.AnonymousAuthenticator`` is the name to configure
(``c.JupyterHub.authenticator_class``); the entry point points here too.
"""

from .authenticator import AnonymousAuthenticator

__all__ = ["AnonymousAuthenticator"]
