"""One object per hub process, shared by every spawner (the hub makes one spawner per server).

The registry client (its image cache and tokens), the repository policy and
its resolve cache, the orphan-build sweeper and the local-mode environment
builder each exist once per process, made by the first spawner that needs
them, with that spawner's configuration (the hub's, the same for all).
:func:`one_per_process` is the only place that keeps them.
"""

_objects = {}


def one_per_process(key, make):
    """The object kept under ``key``; ``make()`` makes it the first time.

    ``key`` names what is shared and for whom, e.g.
    ``(BinderSpawner, "registry_client")``: subclasses with other settings
    get their own.
    """
    try:
        return _objects[key]
    except KeyError:
        made = _objects[key] = make()
        return made
