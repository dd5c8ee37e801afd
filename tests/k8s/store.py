"""The emulator's in-memory object store: the state behind the API server.

Everything the real API server does to stored objects happens here, so the
HTTP layer (apiserver.py) and the in-process controllers (scheduler loop,
kubelets) see exactly the same behaviour:

- one cluster-wide, increasing ``resourceVersion`` (also the list's version),
  ``uid``, ``creationTimestamp``, ``generation``, ``generateName``;
- label and field selectors on list, watch and deletecollection;
- watches that start from a snapshot (``resourceVersion`` absent or "0") or resume
  after a version, answer 410 Gone for versions older than the last compaction,
  and emit BOOKMARKs;
- optimistic concurrency (409 Conflict on a stale ``resourceVersion``), 409
  AlreadyExists, 404, 422 from the validator;
- graceful pod deletion (``deletionTimestamp``; removed when the kubelet confirms
  with a zero grace period, or when the grace period expires), finalizers,
  namespace termination, ownerReference garbage collection;
- pod log buffers the kubelet writes and ``pods/log`` reads.

In-process API (all methods run on the event loop thread; none block):

    store.create("pods", pod_dict, namespace="ns")            -> stored copy
    store.get("pods", "ns", "name")                            -> copy (ApiError 404)
    items, rv = store.list("pods", namespace=None, label_selector="a=b",
                           field_selector="spec.nodeName=node-1")
    store.update("pods", "ns", "name", obj)                    # PUT semantics
    store.patch("pods", "ns", "name", {"status": {...}}, subresource="status")
    store.patch("pods", "ns", "name", ops, content_type=JSON_PATCH)
    store.delete("pods", "ns", "name", grace_period_seconds=0) # kubelet confirms
    watch = store.watch("pods", field_selector="spec.nodeName=node-1")
    async for event in watch:   # {"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}
        ...
    watch.close()
    store.record_event(pod, "Pulled", "Successfully pulled image ...", component="kubelet")
    store.append_log("ns", "pod", "container", "a line")      # no trailing newline
    store.close_log("ns", "pod", "container")                 # ends follow=true readers
    store.on_change(callback)   # callback(type, resource, obj) after every change

Objects handed out are copies; mutate them freely. Errors are
:class:`tests.k8s.errors.ApiError` with the status the API server would send.
"""

import asyncio
import base64
import bisect
import collections
import datetime
import itertools
import json
import logging
import random
import time
import uuid

from . import errors
from .errors import ApiError
from .patch import STRATEGIC_MERGE_PATCH, apply_patch
from .resources import RESOURCES, apply_defaults, random_suffix
from .selectors import Selector

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


def clone(value):
    """A deep copy of JSON-like data (much faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def timestamp(seconds=None):
    """RFC 3339 in UTC with second precision, as metav1.Time serialises."""
    when = datetime.datetime.fromtimestamp(
        time.time() if seconds is None else seconds, datetime.timezone.utc
    )
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_timestamp(seconds=None):
    when = datetime.datetime.fromtimestamp(
        time.time() if seconds is None else seconds, datetime.timezone.utc
    )
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Change = collections.namedtuple("Change", "rv resource type obj old")


class Watch:
    """One watch: a queue of ``(type, object)`` pairs fed by the store.

    ``async for event in watch`` yields ``{"type", "object"}`` dicts (copies).
    The HTTP layer uses :meth:`next_raw`, which can also time out and emit
    bookmarks. ``close()`` ends the iteration.
    """

    def __init__(self, store, resource, namespace, selector, allow_bookmarks=False):
        self.store = store
        self.resource = resource
        self.namespace = namespace
        self.selector = selector
        self.allow_bookmarks = allow_bookmarks
        self.queue = asyncio.Queue()
        self.closed = False

    def _offer(self, change):
        if self.closed:
            return
        obj, old = change.obj, change.old
        if self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return
        if not self.selector:
            self.queue.put_nowait((change.type, obj))
            return
        # An object that starts or stops matching the selector is ADDED or
        # DELETED for this watcher (apiserver cacher.go, watchCacheEvent).
        now = self.selector.matches(obj)
        before = old is not None and self.selector.matches(old)
        if change.type == DELETED:
            if now or before:
                self.queue.put_nowait((DELETED, obj))
        elif now and before:
            self.queue.put_nowait((MODIFIED, obj))
        elif now:
            self.queue.put_nowait((ADDED, obj))
        elif before:
            self.queue.put_nowait((DELETED, obj))

    def close(self):
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)
            self.store._watches[self.resource].discard(self)

    async def next_raw(self, timeout=None):
        """The next ``(type, obj)`` (the stored object: do not mutate), or None when closed.

        With ``timeout``: a BOOKMARK if bookmarks are allowed, else ``("TIMEOUT", None)``.
        """
        try:
            item = (
                await asyncio.wait_for(self.queue.get(), timeout)
                if timeout
                else await self.queue.get()
            )
        except asyncio.TimeoutError:
            if self.allow_bookmarks:
                return BOOKMARK, self.store.bookmark_object(self.resource)
            return "TIMEOUT", None
        if item is None:
            self.closed = True
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.next_raw()
        if item is None:
            raise StopAsyncIteration
        return {"type": item[0], "object": clone(item[1])}

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()


class LogBuffer:
    def __init__(self):
        self.lines = []  # (timestamp string, text)
        self.closed = False
        self.followers = set()


class Store:
    """In-memory Kubernetes objects with the API server's semantics (see module docstring)."""

    def __init__(self, *, validator=None, max_history=20000, rng=None, remove_after_grace=True):
        #: callable(resource_type, obj) raising ApiError(422); None disables validation
        self.validator = validator
        self.max_history = max_history
        #: remove gracefully deleted pods after their grace period even without a kubelet
        self.remove_after_grace = remove_after_grace
        self.rng = rng or random.Random()
        self._rv = 0
        self._objects = {plural: {} for plural in RESOURCES}
        self._sorted_keys = {}  # resource -> sorted keys, dropped when one is added or removed
        self._watches = {plural: set() for plural in RESOURCES}
        self._history = collections.deque()
        self._compacted_rv = 0
        self._dependents = collections.defaultdict(set)  # owner uid -> {(resource, ns, name)}
        self._grace_done = set()  # (resource, ns, name, uid) whose grace period ended
        self._timers = {}
        self._logs = {}
        self._listeners = []
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create("namespaces", {"metadata": {"name": ns}})

    # ------------------------------------------------------------ helpers

    @property
    def resource_version(self):
        return str(self._rv)

    def resource_type(self, resource):
        try:
            return RESOURCES[resource]
        except KeyError:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({resource})"
            ) from None

    def _key(self, rt, namespace, name):
        return (namespace or "" if rt.namespaced else "", name)

    def _next_rv(self):
        self._rv += 1
        return str(self._rv)

    def on_change(self, callback):
        """Call ``callback(type, resource, obj)`` after every change (obj: do not mutate)."""
        self._listeners.append(callback)

    def bookmark_object(self, resource):
        rt = RESOURCES[resource]
        return {
            "kind": rt.kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": self.resource_version},
        }

    def _notify(self, rt, type_, obj, old):
        change = Change(self._rv, rt.plural, type_, obj, old)
        self._history.append(change)
        while len(self._history) > self.max_history:
            self._compacted_rv = self._history.popleft().rv
        for watch in list(self._watches[rt.plural]):
            watch._offer(change)
        for callback in self._listeners:
            try:
                callback(type_, rt.plural, obj)
            except Exception:
                log.exception("store listener failed")

    def compact(self):
        """Forget the change history: watches from any older version now get 410 Gone."""
        self._history.clear()
        self._compacted_rv = self._rv

    def _internal(self, rt, namespace, name):
        obj = self._objects[rt.plural].get(self._key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt.plural, name, rt.group)
        return obj

    def _validate(self, rt, obj, old=None):
        if self.validator is not None:
            if old is None:
                self.validator(rt, obj)
            else:
                self.validator(rt, obj, old)

    def _track_owners(self, rt, obj, add=True):
        key = (rt.plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        for ref in obj["metadata"].get("ownerReferences") or []:
            if add:
                self._dependents[ref.get("uid")].add(key)
            else:
                self._dependents[ref.get("uid")].discard(key)

    # ------------------------------------------------------------ read

    def get(self, resource, namespace, name):
        rt = self.resource_type(resource)
        return clone(self._internal(rt, namespace, name))

    def exists(self, resource, namespace, name):
        rt = self.resource_type(resource)
        return self._key(rt, namespace, name) in self._objects[rt.plural]

    def select(self, resource, namespace=None, label_selector=None, field_selector=None):
        """Matching stored objects (not copies), sorted by namespace and name."""
        rt = self.resource_type(resource)
        selector = Selector(rt.plural, label_selector, field_selector)
        objects = self._objects[rt.plural]
        keys = self._sorted_keys.get(rt.plural)
        if keys is None:
            keys = self._sorted_keys[rt.plural] = sorted(objects)
        if namespace and rt.namespaced:
            # keys are (namespace, name): one namespace is a contiguous slice
            keys = keys[
                bisect.bisect_left(keys, (namespace,)) : bisect.bisect_left(
                    keys, (namespace + "\0",)
                )
            ]
        if not selector:
            return [objects[key] for key in keys]
        return [objects[key] for key in keys if selector.matches(objects[key])]

    def list(self, resource, namespace=None, label_selector=None, field_selector=None):
        """``(items, resourceVersion)``: copies of the matching objects."""
        items = self.select(resource, namespace, label_selector, field_selector)
        return [clone(o) for o in items], self.resource_version

    # ------------------------------------------------------------ watch

    def watch(
        self,
        resource,
        namespace=None,
        label_selector=None,
        field_selector=None,
        resource_version=None,
        allow_bookmarks=False,
    ):
        """Start a watch. Raises ApiError 410 when ``resource_version`` is compacted away.

        ``resource_version`` None, "" or "0": every matching object first as ADDED.
        Otherwise every change after that version, then live changes.
        """
        rt = self.resource_type(resource)
        selector = Selector(rt.plural, label_selector, field_selector)
        watch = Watch(
            self, rt.plural, namespace if rt.namespaced else None, selector, allow_bookmarks
        )
        if resource_version in (None, "", "0"):
            for obj in self.select(resource, namespace, label_selector, field_selector):
                watch.queue.put_nowait((ADDED, obj))
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(f"invalid resource version {resource_version!r}") from None
            if since < self._compacted_rv:
                raise errors.gone(f"too old resource version: {since} ({self._compacted_rv + 1})")
            for change in self._history:
                if change.rv > since and change.resource == rt.plural:
                    watch._offer(change)
        self._watches[rt.plural].add(watch)
        return watch

    # ------------------------------------------------------------ create

    def create(self, resource, obj, namespace=None):
        rt = self.resource_type(resource)
        obj = clone(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if (
            obj.get("kind", rt.kind) != rt.kind
            or obj.get("apiVersion", rt.api_version) != rt.api_version
        ):
            raise errors.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API version "
                f"({rt.api_version}) or kind ({obj.get('kind')} vs {rt.kind})"
            )
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        if rt.namespaced:
            if namespace and meta.get("namespace") and meta["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
            ns = self._objects["namespaces"].get(("", namespace))
            if ns is None:
                raise errors.not_found("namespaces", namespace)
            if ns.get("status", {}).get("phase") == "Terminating":
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{rt.plural} "{meta.get("name") or meta.get("generateName", "")}" is forbidden: unable to '
                    f"create new content in namespace {namespace} because it is being terminated",
                )
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                for _ in range(8):
                    meta["name"] = meta["generateName"] + random_suffix(self.rng)
                    if self._key(rt, namespace, meta["name"]) not in self._objects[rt.plural]:
                        break
            else:
                raise errors.invalid(
                    rt.kind,
                    "",
                    [("metadata.name", "Required value: name or generateName is required")],
                )
        key = self._key(rt, namespace, meta["name"])
        if key in self._objects[rt.plural]:
            raise errors.already_exists(rt.plural, meta["name"], rt.group)
        for field in (
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            meta.pop(field, None)
        apply_defaults(rt.plural, obj, self.rng)
        self._validate(rt, obj)
        meta["uid"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        meta["creationTimestamp"] = timestamp()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        self._objects[rt.plural][key] = obj
        self._sorted_keys.pop(rt.plural, None)
        self._track_owners(rt, obj)
        self._notify(rt, ADDED, obj, None)
        return clone(obj)

    # ------------------------------------------------------------ update / patch

    def update(self, resource, namespace, name, obj, subresource=None):
        """PUT: replace the object (or only its status with ``subresource="status"``)."""
        rt = self.resource_type(resource)
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        body_meta = obj.get("metadata") or {}
        if body_meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({body_meta.get('name')}) does not match the name on the URL ({name})"
            )
        current = self._internal(rt, namespace, name)
        rv = body_meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.plural, name, rt.group)
        return self._replace(rt, current, clone(obj), subresource)

    def patch(
        self, resource, namespace, name, patch, content_type=STRATEGIC_MERGE_PATCH, subresource=None
    ):
        """PATCH with one of the three patch content types (strategic merge by default)."""
        rt = self.resource_type(resource)
        current = self._internal(rt, namespace, name)
        patched = apply_patch(current, patch, content_type)
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch did not produce a JSON object")
        meta = patched.get("metadata") or {}
        if meta.get("name", name) != name:
            raise errors.bad_request("metadata.name cannot be changed by a patch")
        if (
            meta.get("resourceVersion")
            and meta["resourceVersion"] != current["metadata"]["resourceVersion"]
        ):
            raise errors.conflict(rt.plural, name, rt.group)
        return self._replace(rt, current, patched, subresource)

    def bind(self, namespace, name, node_name, uid=None):
        """``pods/{name}/binding``: set ``spec.nodeName`` of an unbound pod (the scheduler's call).

        Like pkg/registry/core/pod/storage/storage.go (v1.30) assignPod: 409 when
        the pod is already bound or being deleted, and the PodScheduled
        condition becomes True.
        """
        rt = RESOURCES["pods"]
        current = self._internal(rt, namespace, name)
        meta = current["metadata"]
        bound = current.get("spec", {}).get("nodeName")
        if bound or meta.get("deletionTimestamp") or (uid and meta.get("uid") != uid):
            why = f'is already assigned to node "{bound}"' if bound else "is being deleted"
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} {why}',
                details={"name": name, "kind": "pods/binding"},
            )
        new = clone(current)
        new["spec"]["nodeName"] = node_name
        conditions = [
            c
            for c in new.setdefault("status", {}).get("conditions") or []
            if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": timestamp(),
            }
        )
        new["status"]["conditions"] = conditions
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[rt.plural][self._key(rt, namespace, name)] = new
        self._notify(rt, MODIFIED, new, current)
        return clone(new)

    def _replace(self, rt, current, new, subresource):
        if subresource not in (None, "status"):
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({subresource})"
            )
        if subresource == "status":
            status = new.get("status")
            new = clone(current)
            new["status"] = status if status is not None else {}
        else:
            if rt.status_subresource:
                if "status" in current:
                    new["status"] = clone(current["status"])
                else:
                    new.pop("status", None)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        old_meta = current["metadata"]
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        new["kind"], new["apiVersion"] = rt.kind, rt.api_version
        if rt.plural == "secrets" and new.get("stringData"):
            data = new.setdefault("data", {})
            for k, v in new.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        if new == current:
            return clone(current)  # a no-op update keeps the resourceVersion
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    rt.kind,
                    meta["name"],
                    [
                        (
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being deleted",
                        )
                    ],
                )
        if rt.plural == "pods" and subresource is None:
            _check_pod_update(current, new)
        if subresource is None and new.get("spec") != current.get("spec") and "spec" in current:
            meta["generation"] = old_meta.get("generation", 1) + 1
        self._validate(rt, new, current)
        meta["resourceVersion"] = self._next_rv()
        self._track_owners(rt, current, add=False)
        self._objects[rt.plural][self._key(rt, meta.get("namespace"), meta["name"])] = new
        self._track_owners(rt, new)
        self._notify(rt, MODIFIED, new, current)
        if meta.get("deletionTimestamp"):
            self._maybe_remove(rt, new)
        return clone(new)

    # ------------------------------------------------------------ delete

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
        if grace == 0 and not meta.get("finalizers"):
            return self._remove(rt, current)
        # Graceful deletion and/or finalizers: mark, keep the object.
        new = clone(current)
        new_meta = new["metadata"]
        if not new_meta.get("deletionTimestamp") or (
            grace is not None and grace < new_meta.get("deletionGracePeriodSeconds", grace + 1)
        ):
            new_meta["deletionTimestamp"] = timestamp(time.time() + (grace or 0))
            new_meta["deletionGracePeriodSeconds"] = grace or 0
            if propagation_policy == "Foreground":
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

    # ------------------------------------------------------------ events

    _event_counter = itertools.count()

    def record_event(
        self, obj, reason, message, type="Normal", component="kubelet", host=None, field_path=None
    ):
        """Post a core/v1 Event about ``obj`` (e.g. a pod), as a controller would."""
        meta = obj["metadata"]
        now = timestamp()
        involved = {
            "kind": obj.get("kind", "Pod"),
            "apiVersion": obj.get("apiVersion", "v1"),
            "namespace": meta.get("namespace", "default"),
            "name": meta["name"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        if field_path:
            involved["fieldPath"] = field_path
        source = {"component": component}
        if host:
            source["host"] = host
        event = {
            "metadata": {
                "name": f"{meta['name']}.{int(time.time() * 1e9) + next(self._event_counter):x}",
                "namespace": meta.get("namespace", "default"),
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": type,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": host or "",
        }
        return self.create("events", event)

    # ------------------------------------------------------------ logs

    def _log_key(self, namespace, pod, container):
        return (namespace, pod, container)

    def append_log(self, namespace, pod, container, line, when=None):
        """Add one line (without its newline) to a container's log."""
        buffer = self._logs.setdefault(self._log_key(namespace, pod, container), LogBuffer())
        entry = (micro_timestamp(when), line)
        buffer.lines.append(entry)
        for queue in list(buffer.followers):
            queue.put_nowait(entry)

    def open_log(self, namespace, pod, container):
        """Mark a container as started: its (possibly empty) log can be read."""
        self._logs.setdefault(self._log_key(namespace, pod, container), LogBuffer())

    def close_log(self, namespace, pod, container):
        """The container exited: followers reach the end of the log."""
        buffer = self._logs.setdefault(self._log_key(namespace, pod, container), LogBuffer())
        buffer.closed = True
        for queue in list(buffer.followers):
            queue.put_nowait(None)
        buffer.followers.clear()

    def _drop_logs(self, namespace, pod):
        for key in [k for k in self._logs if k[:2] == (namespace, pod)]:
            buffer = self._logs.pop(key)
            for queue in buffer.followers:
                queue.put_nowait(None)

    def _log_buffer(self, namespace, pod, container):
        obj = self._internal(RESOURCES["pods"], namespace, pod)
        names = [c["name"] for c in obj["spec"].get("containers", [])]
        names += [c["name"] for c in obj["spec"].get("initContainers") or []]
        if container is None:
            if len(obj["spec"].get("containers", [])) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {pod}, choose one of: [{' '.join(names)}]"
                )
            container = names[0]
        elif container not in names:
            raise errors.bad_request(f"container {container} is not valid for pod {pod}")
        buffer = self._logs.get(self._log_key(namespace, pod, container))
        if buffer is None:
            raise errors.bad_request(
                f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating'
            )
        return buffer

    def read_log(self, namespace, pod, container=None, tail_lines=None):
        """``[(timestamp, line), ...]``; ApiError 400/404 as ``pods/log`` answers."""
        lines = self._log_buffer(namespace, pod, container).lines
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        return list(lines)

    async def follow_log(self, namespace, pod, container=None, tail_lines=None):
        """Yield ``(timestamp, line)`` until the container's log is closed or the pod is gone."""
        buffer = self._log_buffer(namespace, pod, container)
        lines = buffer.lines
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        backlog = list(lines)
        queue = asyncio.Queue()
        if buffer.closed:
            queue.put_nowait(None)
        else:
            buffer.followers.add(queue)
        try:
            for entry in backlog:
                yield entry
            while True:
                entry = await queue.get()
                if entry is None:
                    return
                yield entry
        finally:
            buffer.followers.discard(queue)

    # ------------------------------------------------------------ lifecycle

    def close(self):
        """End every watch and log follower (at shutdown)."""
        for watches in self._watches.values():
            for watch in list(watches):
                watch.close()
        for buffer in self._logs.values():
            for queue in buffer.followers:
                queue.put_nowait(None)
            buffer.followers.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def dump(self):
        """All objects as JSON text (diagnostics on test failure)."""
        return json.dumps(
            {p: list(objs.values()) for p, objs in self._objects.items() if objs}, indent=1
        )


def _strip_images(spec):
    spec = clone(spec)
    for field in ("containers", "initContainers"):
        for c in spec.get(field) or []:
            c.pop("image", None)
    spec.pop("activeDeadlineSeconds", None)
    spec.pop("tolerations", None)
    return spec


def _check_pod_update(current, new):
    """Pod specs are immutable but for images, activeDeadlineSeconds and added tolerations
    (pkg/apis/core/validation/validation.go ValidatePodUpdate)."""
    old_spec, new_spec = current.get("spec") or {}, new.get("spec") or {}
    if _strip_images(old_spec) != _strip_images(new_spec):
        raise errors.invalid(
            "Pod",
            current["metadata"]["name"],
            [
                (
                    "spec",
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
                    "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
                    "(only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`",
                )
            ],
        )
    old_tol = old_spec.get("tolerations") or []
    if any(t not in (new_spec.get("tolerations") or []) for t in old_tol):
        raise errors.invalid(
            "Pod",
            current["metadata"]["name"],
            [
                (
                    "spec.tolerations",
                    "Forbidden: existing toleration can not be modified except its tolerationSeconds",
                )
            ],
        )
