"""LocalBinderSpawner: the Binder launch flow on one machine, without Kubernetes."""

from jupyterhub.spawner import LocalProcessSpawner


class LocalBinderSpawner(LocalProcessSpawner):
    """Builds a repository into a local environment and runs the server as a local process."""
