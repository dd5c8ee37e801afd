"""jupyterhub-binder: Binder inside any JupyterHub.

Hub-side plugins: :class:`~binder_spawner.spawner.BinderSpawner` (Kubernetes),
:class:`~binder_spawner.local.LocalBinderSpawner` (one machine) and
:class:`~binder_spawner.auth.AnonymousAuthenticator`.

The module map, a minute's read: docs/architecture.md. This package imports
nothing of binder_service (the service imports it); what both need (launch
specs, image names, node ranking) lives here.
"""

__version__ = "0.1.0.dev0"
