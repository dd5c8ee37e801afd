"""binder_service: the hub-managed service of jupyterhub-binder.

Culls idle and old servers, deletes anonymous users left behind, enforces
per-repository instance limits and tells the spawner which nodes hold an image.
"""
