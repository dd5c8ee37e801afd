"""Where images are cached: the cluster I/O behind ``GET api/placement``.

Lists the user and build pods of the namespace (image, node, start time) and,
when the service's RBAC role may read them, the nodes (capacity and
``status.images``), then ranks nodes with the pure functions of
:mod:`binder_service.placement`. Without permission to read nodes (403) it
still answers from the pods: the nodes they ran on, capacity unknown. Off
unless enabled (``--kubernetes``): then the answer is empty and the spawner
falls back to its own stable choice.
"""

import asyncio
import json
import os
import time

from traitlets import Bool, Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from . import placement

UNKNOWN_ROOM = 2**62


def _items(body):
    return json.loads(body)["items"]


class Forbidden(Exception):
    """The service's RBAC role does not allow the request (HTTP 403)."""


class PlacementSource(LoggingConfigurable):
    """Kubernetes inventory for placement answers, refreshed at most every ``refresh_every``."""

    enabled = Bool(
        False,
        help="""
        Read pods and nodes from Kubernetes (in-cluster configuration, else
        ``KUBECONFIG``) for placement answers and the health check. Default
        False; ``--kubernetes`` on the command line.

        Example: ``c.PlacementSource.enabled = True``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    namespace = Unicode(
        help="""
        Namespace of the user and build pods. Default: ``POD_NAMESPACE`` (set
        by the zero-to-jupyterhub chart in the hub pod), else the in-cluster
        service account's namespace, else ``default``.

        Example: ``c.PlacementSource.namespace = "binder"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("namespace")
    def _default_namespace(self):
        if os.environ.get("POD_NAMESPACE"):
            return os.environ["POD_NAMESPACE"]
        path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        return "default"

    refresh_every = Float(
        15.0,
        help="""
        Seconds an inventory of pods and nodes is reused before the next
        placement request lists them again. Default 15.

        Example: ``c.PlacementSource.refresh_every = 30``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    pod_memory = Integer(
        2**30,
        help="""
        Bytes of memory one user pod requests, to leave out nodes without room
        for one more. Default 1 GiB.

        Set by the hub when it starts the service: the spawner's
        ``mem_guarantee`` (the chart's ``singleuser.memory.guarantee``).

        Example: ``c.PlacementSource.pod_memory = 2 * 2**30``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    max_nodes = Integer(
        4,
        help="""
        Nodes named in one placement answer. Default 4.

        Example: ``c.PlacementSource.max_nodes = 8``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    request_timeout = Float(
        10.0,
        help="""
        Seconds one Kubernetes API call may take. Default 10.

        Example: ``c.PlacementSource.request_timeout = 5``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._api = None
        # One inventory for the service's life: it remembers where images ran
        # and when they were last used after their pods are gone.
        self._inventory = placement.ImageInventory()
        self._snapshot = None  # (monotonic time, rooms, estimates, in_use, pods)
        self._lock = asyncio.Lock()
        self._nodes_forbidden = False

    async def start(self):
        if not self.enabled:
            return
        from kubernetes_asyncio import client, config

        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            await config.load_kube_config()
        self._api = client.CoreV1Api()

    async def stop(self):
        if self._api is not None:
            await self._api.api_client.close()
            self._api = None

    async def _list(self, call, *args):
        response = await asyncio.wait_for(
            call(*args, _preload_content=False, _request_timeout=self.request_timeout),
            self.request_timeout,
        )
        # without _preload_content the client does not raise on an error status
        status = getattr(response, "status", 200)
        body = await response.read()
        if status == 403:
            raise Forbidden()
        if not 200 <= status < 300:
            raise OSError(f"Kubernetes API answered {status}")
        # Parsing thousands of pods takes a while: not on the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, _items, body)

    async def _refresh(self):
        pods = await self._list(self._api.list_namespaced_pod, self.namespace)
        nodes = None
        if not self._nodes_forbidden:
            try:
                nodes = await self._list(self._api.list_node)
            except Forbidden:
                self._nodes_forbidden = True
                self.log.warning("No permission to list nodes: placing from pods only")
        # The update is linear in pods and nodes (a large cluster takes a
        # sizeable fraction of a second): it runs in a thread, so the event
        # loop keeps serving. Answers wait for it on the lock (rank), so the
        # inventory is never read while it changes.
        await asyncio.get_running_loop().run_in_executor(None, self._update, pods, nodes)

    def _update(self, pods, nodes):
        """Update the inventory and take a new snapshot from one listing (no I/O)."""
        now = time.time()
        in_use = placement.observe_cluster(self._inventory, pods, nodes, now=now)
        if nodes is not None:
            rooms = placement.node_room(nodes, pods)
        else:
            names = {(p.get("spec") or {}).get("nodeName") for p in pods} - {None}
            rooms = {n: placement.NodeRoom(n, UNKNOWN_ROOM, UNKNOWN_ROOM) for n in names}
        # What each node's image cache holds, least recently used first: the
        # part of a placement answer that does not depend on the image.
        estimates = self._inventory.cache_estimates(rooms, now)
        self._snapshot = (time.monotonic(), rooms, estimates, in_use, pods)

    async def refresh(self, max_age=None):
        """List pods and nodes unless the last listing is younger than ``max_age`` seconds.

        Returns the pods of the namespace, or None when disabled or unreachable.
        """
        if not self.enabled or self._api is None:
            return None
        max_age = self.refresh_every if max_age is None else max_age
        async with self._lock:
            if self._snapshot is None or time.monotonic() - self._snapshot[0] > max_age:
                try:
                    await self._refresh()
                except Exception as e:
                    self.log.error("Cannot list pods in %s: %s", self.namespace, e)
                    return None
        return self._snapshot[4]

    async def rank(self, image):
        """``[(node, weight)]`` for ``image``; empty when disabled or the cluster is unreachable."""
        await self.refresh()
        # A refresh started meanwhile updates the inventory in a thread:
        # answer before it starts or after it ends.
        async with self._lock:
            if self._snapshot is None:
                return []
            return self.rank_snapshot(image, time.time())

    def rank_snapshot(self, image, now):
        """The placement answer for ``image`` from the last listing (no I/O)."""
        _, rooms, estimates, in_use, _ = self._snapshot
        holders = self._inventory.holders(image, now)
        costs = None
        if estimates:
            size = self._inventory.size(image) or self._inventory.typical_size()
            costs = placement.pull_costs(estimates, size, in_use)
        return placement.rank_nodes(
            image,
            rooms,
            holders,
            pod_memory=self.pod_memory,
            max_nodes=self.max_nodes,
            pull_costs=costs,
        )

    async def healthy(self):
        """True if the Kubernetes API answers a namespaced pod list."""
        if self._api is None:
            return False
        try:
            await asyncio.wait_for(
                self._api.list_namespaced_pod(
                    self.namespace, limit=1, _request_timeout=self.request_timeout
                ),
                self.request_timeout,
            )
        except Exception as e:
            self.log.warning("Health: Kubernetes API unreachable: %s", e)
            return False
        return True
