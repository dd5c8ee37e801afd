"""The JupyterHub role binder_service needs: one source for the config, the docs' checks and tests.

Each scope and why: docs/permissions.md. The hub API calls behind them are all
in :mod:`binder_service.hubapi`: ``GET /users?state=`` (``list:users``), the
user models' ``admin``, ``groups``, ``created`` and ``last_activity``
(``read:users``) and their servers (``read:servers``), ``DELETE`` of a server
(``delete:servers``) and of an anonymous user (``delete:users``, filtered to
the anonymous group). ``GET /user`` runs with the caller's token, ``GET /``
needs none.
"""

ANONYMOUS_GROUP = "binder-anonymous"


def service_scopes(anonymous_group=ANONYMOUS_GROUP):
    """The scopes of binder_service, no more; ``anonymous_group`` is ``Culler.anonymous_group``."""
    return [
        "list:users",
        "read:users",
        "read:servers",
        "delete:servers",
        f"delete:users!group={anonymous_group}",
    ]


def service_role(service="binder", anonymous_group=ANONYMOUS_GROUP):
    """An entry for ``c.JupyterHub.load_roles`` that gives ``service`` those scopes."""
    return {
        "name": "binder-service",
        "scopes": service_scopes(anonymous_group),
        "services": [service],
    }
