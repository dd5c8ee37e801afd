"""jupyterhub-binder: Binder inside any JupyterHub.

Hub-side plugins: :class:`~binder_spawner.spawner.BinderSpawner` (Kubernetes),
:class:`~binder_spawner.local.LocalBinderSpawner` (one machine) and
:class:`~binder_spawner.auth.AnonymousAuthenticator`.
"""

__version__ = "0.1.0.dev0"
