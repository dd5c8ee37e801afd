"""The emulator's scheduler loop: binds pending pods with tests/k8s/scheduler.py.

Like kube-scheduler, it handles the pods whose ``spec.schedulerName`` it is
responsible for and that have no ``spec.nodeName``, one at a time in creation
order: :func:`~tests.k8s.scheduler.schedule` picks a node from the current
nodes and the pods bound to them, and the loop binds the pod
(``pods/binding``; the PodScheduled condition becomes True) and posts a
``Scheduled`` event. A pod that fits nowhere keeps ``PodScheduled=False``
(reason ``Unschedulable``) and gets a ``FailedScheduling`` event; it is tried
again whenever pods or nodes change (pkg/scheduler/internal/queue moves
unschedulable pods back on such cluster events).

``profiles`` maps scheduler names to :class:`~tests.k8s.scheduler.SchedulerProfile`
(or a profile's name, e.g. ``"z2jh-user-scheduler"``); the default is
kube-scheduler's default profile under ``default-scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from .errors import ApiError
from .scheduler import KUBE_DEFAULT, PROFILES, failed_scheduling_message, schedule
from .store import timestamp

log = logging.getLogger(__name__)


def normalise_profiles(profiles) -> dict:
    """``{schedulerName: SchedulerProfile}`` from a dict, one profile, or None."""
    if profiles is None:
        return {"default-scheduler": KUBE_DEFAULT}
    if not isinstance(profiles, dict):
        profiles = {"default-scheduler": profiles}
    return {name: PROFILES[p] if isinstance(p, str) else p for name, p in profiles.items()}


class SchedulerLoop:
    """Binds pending pods to nodes; see the module docstring."""

    def __init__(self, store, profiles=None, *, seed=None):
        self.store = store
        self.profiles = normalise_profiles(profiles)
        # selectHost breaks ties at random, as upstream does
        self.rng = random.Random(seed)
        self._wake = asyncio.Event()
        self._task = None
        self._stopped = False
        #: (pod uid) -> last FailedScheduling message, to post each message once
        self._reported: dict[str, str] = {}
        self.decisions = 0
        #: (namespace, name) of pending pods to try next (kube-scheduler's activeQ)
        self._active: set = set()
        #: pods that fit nowhere, parked until a node changes or a pod goes
        #: (pkg/scheduler/internal/queue: unschedulablePods and cluster events)
        self._unschedulable: set = set()

    def _on_change(self, type_, resource, obj):
        if self._stopped:
            return
        if resource == "pods":
            meta = obj["metadata"]
            key = (meta.get("namespace"), meta["name"])
            if type_ != "DELETED" and self._is_pending(obj):
                if key not in self._unschedulable:
                    self._active.add(key)
                    self._wake.set()
                return
            self._active.discard(key)
            self._unschedulable.discard(key)
            if type_ == "DELETED" or obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                self._retry_unschedulable()  # resources were freed
        elif resource == "nodes":
            self._retry_unschedulable()

    def _retry_unschedulable(self):
        """Move parked pods back to the active queue (a cluster event that may help them)."""
        if self._unschedulable:
            self._active |= self._unschedulable
            self._unschedulable.clear()
            self._wake.set()

    def _is_pending(self, pod):
        return (
            not pod["spec"].get("nodeName")
            and not pod["metadata"].get("deletionTimestamp")
            and pod["spec"].get("schedulerName", "default-scheduler") in self.profiles
            and pod.get("status", {}).get("phase", "Pending") == "Pending"
        )

    def start(self):
        self._active = {
            (p["metadata"]["namespace"], p["metadata"]["name"])
            for p in self.store.select("pods")
            if self._is_pending(p)
        }
        self.store.on_change(self._on_change)
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="scheduler")
        return self

    async def stop(self):
        self._stopped = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self):
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.cycle()
            except Exception:
                log.exception("scheduler cycle failed")
            # let API requests in between cycles when many pods are pending
            await asyncio.sleep(0)

    def pending(self):
        """The pods of the active queue that still wait, in scheduling order (priority, age)."""
        keys, self._active = self._active, set()
        pending = []
        for namespace, name in keys:
            try:
                pod = self.store.get("pods", namespace, name)
            except ApiError:
                continue
            if self._is_pending(pod):
                pending.append(pod)
        pending.sort(
            key=lambda p: (
                -(p["spec"].get("priority") or 0),
                p["metadata"]["creationTimestamp"],
                p["metadata"]["name"],
            )
        )
        return pending

    def cycle(self):
        """One pass over the pending pods; returns how many were bound."""
        pending = self.pending()
        if not pending:
            return 0
        nodes = self.store.select("nodes")
        by_node: dict[str, list] = {}
        if nodes:
            for pod in self.store.select("pods"):
                node = pod["spec"].get("nodeName")
                if node:
                    by_node.setdefault(node, []).append(pod)
        bound = 0
        for pod in pending:
            profile = self.profiles[pod["spec"].get("schedulerName", "default-scheduler")]
            choice, reasons = schedule(pod, nodes, by_node, profile, rng=self.rng)
            self.decisions += 1
            meta = pod["metadata"]
            if choice is None:
                self._unschedulable.add((meta["namespace"], meta["name"]))
                self._report_unschedulable(pod, failed_scheduling_message(reasons, len(nodes)))
                continue
            try:
                bound_pod = self.store.bind(
                    meta["namespace"], meta["name"], choice, uid=meta["uid"]
                )
            except ApiError as e:
                log.debug("scheduler: binding %s/%s failed: %s", meta["namespace"], meta["name"], e)
                continue
            self._reported.pop(meta["uid"], None)
            by_node.setdefault(choice, []).append(bound_pod)
            bound += 1
            self._event(
                pod,
                "Scheduled",
                f"Successfully assigned {meta['namespace']}/{meta['name']} to {choice}",
                "Normal",
            )
        return bound

    def _report_unschedulable(self, pod, message):
        meta = pod["metadata"]
        if self._reported.get(meta["uid"]) == message:
            return
        self._reported[meta["uid"]] = message
        self._event(pod, "FailedScheduling", message, "Warning")
        status = pod.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if c["type"] != "PodScheduled"]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": timestamp(),
            }
        )
        status["conditions"] = conditions
        with contextlib.suppress(ApiError):
            self.store.update(
                "pods",
                meta["namespace"],
                meta["name"],
                {"metadata": {"name": meta["name"]}, "status": status},
                subresource="status",
            )

    def _event(self, pod, reason, message, type_):
        name = pod["spec"].get("schedulerName", "default-scheduler")
        try:
            self.store.record_event(pod, reason, message, type=type_, component=name)
        except ApiError as e:
            log.warning("scheduler: event %s not recorded: %s", reason, e)
