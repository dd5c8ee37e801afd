"""Deletion in the object store: graceful pod deletion, finalizers, namespaces, garbage collection.

- Pods bound to a node get ``deletionTimestamp`` and ``deletionGracePeriodSeconds``
  and stay until the kubelet confirms (a zero-grace delete) or the grace period
  ends; unbound or finished pods go at once (pkg/registry/core/pod/strategy.go).
- Objects with finalizers stay, marked, until their finalizers are removed.
- A namespace turns Terminating, its contents are deleted, then it goes.
- Removing an owner deletes dependents whose owners are all gone (Background),
  or strips the reference (Orphan), or deletes dependents first (Foreground).
"""

import asyncio
import time

from . import errors
from .resources import RESOURCES
from .util import clone, timestamp
from .watch import DELETED, MODIFIED


class DeletionMixin:
    """The deletion part of :class:`~tests.k8s.store.Store`."""

    def delete(
        self,
        resource,
        namespace,
        name,
        grace_period_seconds=None,
        preconditions=None,
        propagation_policy=None,
    ):
        """DELETE. Returns the object as the API server does (with deletionTimestamp if graceful)."""
        rt = self.resource_type(resource)
        current = self._internal(rt, namespace, name)
        meta = current["metadata"]
        preconditions = preconditions or {}
        if preconditions.get("uid") and preconditions["uid"] != meta["uid"]:
            raise errors.conflict(
                rt.plural,
                name,
                rt.group,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta['uid']}",
            )
        if (
            preconditions.get("resourceVersion")
            and preconditions["resourceVersion"] != meta["resourceVersion"]
        ):
            raise errors.conflict(
                rt.plural,
                name,
                rt.group,
                f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if propagation_policy not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid(
                "DeleteOptions",
                "",
                [("propagationPolicy", f"Unsupported value: {propagation_policy!r}")],
            )
        grace = self._grace_period(rt, current, grace_period_seconds)
        key = (rt.plural, meta.get("namespace", ""), name, meta["uid"])
        if propagation_policy == "Orphan":
            self._orphan_dependents(meta["uid"])
        if rt.plural == "namespaces":
            return self._delete_namespace(rt, current)
        if grace == 0:
            self._grace_done.add(key)
        foreground = propagation_policy == "Foreground" and any(
            self.exists(*d) for d in self._dependents.get(meta["uid"], ())
        )
        if grace == 0 and not meta.get("finalizers") and not foreground:
            return self._remove(rt, current)
        # Graceful deletion and/or finalizers: mark, keep the object.
        new = clone(current)
        new_meta = new["metadata"]
        if not new_meta.get("deletionTimestamp") or (
            grace is not None and grace < new_meta.get("deletionGracePeriodSeconds", grace + 1)
        ):
            new_meta["deletionTimestamp"] = timestamp(time.time() + (grace or 0))
            new_meta["deletionGracePeriodSeconds"] = grace or 0
            if foreground:
                new_meta.setdefault("finalizers", []).append("foregroundDeletion")
            new_meta["resourceVersion"] = self._next_rv()
            self._objects[rt.plural][self._key(rt, new_meta.get("namespace"), name)] = new
            self._notify(rt, MODIFIED, new, current)
            if grace:
                self._start_grace_timer(rt, new, grace)
        if "foregroundDeletion" in (new_meta.get("finalizers") or []):
            self._foreground(rt, new)
        return clone(new)

    def _grace_period(self, rt, obj, requested):
        if rt.plural != "pods":
            return 0
        # pkg/registry/core/pod/strategy.go CheckGracefulDelete: unscheduled or
        # finished pods go at once; otherwise the request's period, else the spec's.
        if not obj.get("spec", {}).get("nodeName"):
            return 0
        if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(0, int(requested))
        return int(obj["spec"].get("terminationGracePeriodSeconds", 30))

    def _start_grace_timer(self, rt, obj, grace):
        if not self.remove_after_grace:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        meta = obj["metadata"]
        key = (rt.plural, meta.get("namespace", ""), meta["name"], meta["uid"])
        old = self._timers.pop(key, None)
        if old:
            old.cancel()
        self._timers[key] = loop.call_later(grace, self._grace_expired, key)

    def _grace_expired(self, key):
        self._timers.pop(key, None)
        resource, ns, name, uid = key
        rt = RESOURCES[resource]
        obj = self._objects[resource].get(self._key(rt, ns, name))
        if obj is None or obj["metadata"]["uid"] != uid:
            return
        self._grace_done.add(key)
        self._maybe_remove(rt, obj)

    def _maybe_remove(self, rt, obj):
        meta = obj["metadata"]
        key = (rt.plural, meta.get("namespace", ""), meta["name"], meta["uid"])
        if meta.get("finalizers"):
            return
        if (
            rt.plural == "pods"
            and meta.get("deletionGracePeriodSeconds")
            and key not in self._grace_done
        ):
            return
        self._remove(rt, obj)

    def _remove(self, rt, obj):
        meta = obj["metadata"]
        key = self._key(rt, meta.get("namespace"), meta["name"])
        if self._objects[rt.plural].get(key) is not obj:
            return clone(obj)
        del self._objects[rt.plural][key]
        self._sorted_keys.pop(rt.plural, None)
        self._track_owners(rt, obj, add=False)
        timer = self._timers.pop(
            (rt.plural, meta.get("namespace", ""), meta["name"], meta["uid"]), None
        )
        if timer:
            timer.cancel()
        self._grace_done.discard((rt.plural, meta.get("namespace", ""), meta["name"], meta["uid"]))
        removed = clone(obj)
        removed["metadata"]["resourceVersion"] = self._next_rv()
        self._notify(rt, DELETED, removed, obj)
        if rt.plural == "pods":
            self._drop_logs(meta.get("namespace"), meta["name"])
        self._collect_garbage(meta["uid"])
        # An owner deleted in the foreground goes once its last dependent has gone.
        for ref in meta.get("ownerReferences") or []:
            for owner_rt in RESOURCES.values():
                if owner_rt.kind != ref.get("kind"):
                    continue
                owner = self._objects[owner_rt.plural].get(
                    self._key(owner_rt, meta.get("namespace"), ref.get("name"))
                )
                if owner is not None and "foregroundDeletion" in (
                    owner["metadata"].get("finalizers") or []
                ):
                    self._foreground(owner_rt, owner)
        if rt.namespaced:
            self._maybe_finish_namespace(meta.get("namespace"))
        return clone(removed)

    def _collect_garbage(self, owner_uid):
        """Background propagation: delete dependents whose owners are all gone."""
        dependents = self._dependents.pop(owner_uid, set())
        live_uids = None
        for resource, ns, name in sorted(dependents):
            rt = RESOURCES[resource]
            obj = self._objects[resource].get(self._key(rt, ns, name))
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            if live_uids is None:
                live_uids = {
                    o["metadata"]["uid"] for objs in self._objects.values() for o in objs.values()
                }
            if any(r.get("uid") in live_uids for r in refs if r.get("uid") != owner_uid):
                continue
            self.delete(resource, ns, name)

    def _orphan_dependents(self, owner_uid):
        for resource, ns, name in sorted(self._dependents.get(owner_uid, set())):
            rt = RESOURCES[resource]
            obj = self._objects[resource].get(self._key(rt, ns, name))
            if obj is None:
                continue
            refs = [
                r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != owner_uid
            ]
            self.patch(
                resource,
                ns,
                name,
                [{"op": "replace", "path": "/metadata/ownerReferences", "value": refs}],
                "application/json-patch+json",
            )

    def _foreground(self, rt, owner):
        uid = owner["metadata"]["uid"]
        for resource, ns, name in sorted(self._dependents.get(uid, set())):
            if self.exists(resource, ns, name):
                self.delete(resource, ns, name, propagation_policy="Foreground")
        if not any(self.exists(*d) for d in self._dependents.get(uid, set())):
            finalizers = [
                f for f in owner["metadata"].get("finalizers", []) if f != "foregroundDeletion"
            ]
            meta = owner["metadata"]
            self.patch(
                rt.plural,
                meta.get("namespace"),
                meta["name"],
                {"metadata": {"finalizers": finalizers or None}},
                "application/merge-patch+json",
            )

    def _delete_namespace(self, rt, ns):
        name = ns["metadata"]["name"]
        if ns.get("status", {}).get("phase") != "Terminating":
            new = clone(ns)
            new["metadata"]["deletionTimestamp"] = timestamp()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._objects["namespaces"][("", name)] = new
            self._notify(rt, MODIFIED, new, ns)
            for plural, objects in self._objects.items():
                if RESOURCES[plural].namespaced:
                    for key in sorted(k for k in objects if k[0] == name):
                        if key in objects:
                            self.delete(plural, name, key[1])
        self._maybe_finish_namespace(name)
        obj = self._objects["namespaces"].get(("", name))
        return (
            clone(obj)
            if obj
            else {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}}
        )

    def _maybe_finish_namespace(self, name):
        ns = self._objects["namespaces"].get(("", name))
        if ns is None or ns.get("status", {}).get("phase") != "Terminating":
            return
        for plural, objects in self._objects.items():
            if RESOURCES[plural].namespaced and any(k[0] == name for k in objects):
                return
        self._remove(RESOURCES["namespaces"], ns)

    def delete_collection(
        self,
        resource,
        namespace=None,
        label_selector=None,
        field_selector=None,
        grace_period_seconds=None,
        propagation_policy=None,
    ):
        rt = self.resource_type(resource)
        deleted = []
        for obj in list(self.select(resource, namespace, label_selector, field_selector)):
            meta = obj["metadata"]
            if self.exists(resource, meta.get("namespace"), meta["name"]):
                deleted.append(
                    self.delete(
                        rt.plural,
                        meta.get("namespace"),
                        meta["name"],
                        grace_period_seconds,
                        propagation_policy=propagation_policy,
                    )
                )
        return deleted
