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

import base64
import bisect
import collections
import itertools
import json
import logging
import random
import time
import uuid

from . import errors
from .deletion import DeletionMixin
from .errors import ApiError
from .logs import LogBuffer, PodLogsMixin  # noqa: F401
from .patch import STRATEGIC_MERGE_PATCH, apply_patch
from .resources import RESOURCES, apply_defaults, random_suffix
from .selectors import Selector
from .util import clone, micro_timestamp, timestamp  # noqa: F401
from .watch import ADDED, BOOKMARK, DELETED, ERROR, MODIFIED, Change, Watch  # noqa: F401

log = logging.getLogger(__name__)

__all__ = [
    "Store",
    "Watch",
    "clone",
    "timestamp",
    "micro_timestamp",
    "ADDED",
    "MODIFIED",
    "DELETED",
]


class Store(DeletionMixin, PodLogsMixin):
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
