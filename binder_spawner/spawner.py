"""BinderSpawner: build or reuse a repository's image, then launch it with KubeSpawner."""

from kubespawner import KubeSpawner


class BinderSpawner(KubeSpawner):
    """A KubeSpawner that launches servers from git repositories."""
