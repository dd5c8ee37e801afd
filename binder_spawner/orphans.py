"""Remove build pods that no launch waits for.

A build pod outlives the launch that created it when the hub restarts (or
crashes) during the build: the next launch of the same image attaches to it
(its name is derived from the image), but if nobody launches that image
again the pod would run, and then sit ``Succeeded``, forever. One sweeper per
hub process and build namespace lists the build pods now and then and
compares them with :data:`binder_spawner.builder.WATCHED`, the builds the
launches of this process wait for:

- a finished build pod nobody waits for is deleted at once (its image is in
  the registry, or it failed and the next launch builds again);
- a running one is deleted after ``grace_period`` seconds without a watcher,
  so that a visitor told "start it again" after a restart can re-attach.

JupyterHub runs one hub process, so "nobody in this process waits" means
nobody waits. :func:`orphan_decisions` is the pure core.
"""

from __future__ import annotations

import asyncio
import time

from kubernetes_asyncio.client.rest import ApiException

from .build import BUILD_COMPONENT, COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, pod_outcome
from .builder import WATCHED


def orphan_decisions(pods, watched, unwatched_since, now, grace_period):
    """Which build pods to delete now.

    ``pods``: build pod dicts of one namespace; ``watched``: names some launch
    waits for; ``unwatched_since``: name -> when it was first seen without a
    watcher (updated in place: entries added, and dropped for pods that are
    watched or gone). Returns ``[(name, reason)]``.
    """
    delete = []
    present = set()
    for pod in pods:
        name = pod["metadata"]["name"]
        present.add(name)
        if name in watched or (pod["metadata"].get("deletionTimestamp")):
            unwatched_since.pop(name, None)
            continue
        finished, succeeded, _ = pod_outcome(pod)
        if finished:
            delete.append((name, "succeeded" if succeeded else "failed"))
            continue
        since = unwatched_since.setdefault(name, now)
        if now - since >= grace_period:
            delete.append((name, f"no launch waited for it for {now - since:.0f} s"))
    for name in list(unwatched_since):
        if name not in present:
            del unwatched_since[name]
    for name, _ in delete:
        unwatched_since.pop(name, None)
    return delete


class OrphanBuildSweeper:
    """Deletes the build pods of ``namespace`` nobody waits for; see the module docstring."""

    def __init__(self, api, namespace, *, grace_period, retry, log, clock=time.monotonic):
        self.api = api
        self.namespace = namespace
        self.grace_period = grace_period
        #: seconds between sweeps: a few per grace period, at most a minute
        self.interval = min(60.0, max(1.0, grace_period / 4))
        self.retry = retry
        self.log = log
        self.clock = clock
        self.unwatched_since = {}
        self.task = None

    def start(self):
        self.task = asyncio.ensure_future(self.run())

    async def run(self):
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.warning("Sweep of build pods in %s failed: %s", self.namespace, e)
            await asyncio.sleep(self.interval)

    async def sweep(self):
        selector = f"{COMPONENT_LABEL}={BUILD_COMPONENT},{MANAGED_BY_LABEL}={MANAGED_BY}"
        response = await self.retry.call(
            self.api.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
            what=f"list build pods in {self.namespace}",
        )
        pods = self.api.api_client.sanitize_for_serialization(response.items or [])
        watched = {name for namespace, name in WATCHED if namespace == self.namespace}
        for name, reason in orphan_decisions(
            pods, watched, self.unwatched_since, self.clock(), self.grace_period
        ):
            if (self.namespace, name) in WATCHED:
                continue  # a launch attached while we listed
            try:
                await self.retry.call(
                    self.api.delete_namespaced_pod,
                    name,
                    self.namespace,
                    grace_period_seconds=0,
                    what=f"delete build pod {self.namespace}/{name}",
                )
            except ApiException as e:
                if e.status != 404:
                    self.log.warning(
                        "Could not delete build pod %s/%s: %s", self.namespace, name, e.reason
                    )
                continue
            self.log.info("Deleted build pod %s/%s: %s", self.namespace, name, reason)
