"""The emulator's HTTP API server: an aiohttp app over a :class:`~tests.k8s.store.Store`.

Serves the paths a Kubernetes client uses, with the real API server's JSON:

    /version  /api  /api/v1  /apis  /apis/{group}  /apis/{group}/{version}  /healthz
    /api/v1/{resource}                                   list / watch across namespaces
    /api/v1/namespaces/{ns}/{resource}[/{name}[/{sub}]]  namespaced collections and objects
    /api/v1/{resource}/{name}[/status]                   cluster-scoped objects (nodes, namespaces)
    /apis/rbac.authorization.k8s.io/v1/...               the same shapes for RBAC objects

Verbs: GET (get, list, watch), POST (create), PUT (update), PATCH (three content
types), DELETE (with a ``DeleteOptions`` body or query), DELETE on a collection
(deletecollection). ``pods/{name}/status`` and ``pods/{name}/log`` (``container``,
``follow``, ``tailLines``, ``timestamps``, ``sinceSeconds``). Errors are ``Status``
bodies. Authentication and authorization (rbac.py) and fault injection
(faults.py) are request middlewares.
"""

import asyncio
import base64
import collections
import json
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from . import errors
from .errors import ApiError
from .resources import RESOURCES, SUBRESOURCES
from .store import BOOKMARK, ERROR

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "1.30"

# Resources whose DELETE answers with the object even once it is gone; the others
# answer a Success Status (registry ReturnDeletedObject, pkg/registry/core/*/storage, v1.30).
RETURNS_DELETED_OBJECT = {"pods", "services", "namespaces", "nodes", "persistentvolumeclaims"}


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def json_response(body, status=200):
    return web.Response(body=_dumps(body).encode(), status=status, content_type="application/json")


def error_response(error):
    response = json_response(error.status(), error.code)
    if error.code in (429, 503):
        # as the API server's priority-and-fairness and unavailable answers do
        response.headers["Retry-After"] = "1"
    return response


@dataclass
class RequestInfo:
    """What a request is about, as the API server's RequestInfoResolver sees it."""

    verb: str
    api_group: str = ""
    api_version: str = "v1"
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    is_resource: bool = True
    #: the query parameters (label and field selectors, watch, ...)
    query: dict = field(default_factory=dict)


def _truthy(value):
    return value is not None and value.lower() in ("true", "1", "yes")


def parse_request(method, path, query):
    """Resolve a path into a :class:`RequestInfo` (raises 404 for unknown paths)."""
    parts = [p for p in path.split("/") if p]
    info = RequestInfo(verb=method.lower(), path=path, query=dict(query))
    if parts[:1] == ["api"] and len(parts) >= 2:
        info.api_group, info.api_version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        info.api_group, info.api_version, rest = parts[1], parts[2], parts[3:]
    else:
        info.is_resource = False
        return info
    if not rest:
        info.is_resource = False
        return info
    legacy_watch = False
    if rest[0] == "watch":
        legacy_watch, rest = True, rest[1:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        info.namespace = rest[1]
        rest = rest[2:]
    info.resource = rest[0]
    if len(rest) >= 2:
        info.name = rest[1]
    if len(rest) >= 3:
        info.subresource = rest[2]
    if len(rest) > 3:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    rt = RESOURCES.get(info.resource)
    if rt is None or rt.group != info.api_group or rt.version != info.api_version:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if info.subresource and not (
        (info.subresource == "status" and rt.status_subresource)
        or (rt.plural, info.subresource) in SUBRESOURCES
    ):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if info.namespace and not rt.namespaced:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    # verbs as RBAC names them (apiserver/pkg/endpoints/request/requestinfo.go)
    collection = not info.name
    if method == "GET":
        if legacy_watch or (collection and _truthy(query.get("watch"))):
            info.verb = "watch"
        else:
            info.verb = "list" if collection else "get"
    elif method == "POST":
        info.verb = "create"
    elif method == "PUT":
        info.verb = "update"
    elif method == "PATCH":
        info.verb = "patch"
    elif method == "DELETE":
        info.verb = "deletecollection" if collection else "delete"
    return info


class ApiServer:
    """The aiohttp application and its request handling; see the module docstring."""

    def __init__(
        self,
        store,
        *,
        authorizer=None,
        faults=None,
        bookmark_interval=60.0,
        default_watch_timeout=1800,
        kubernetes_version=KUBERNETES_VERSION,
    ):
        self.store = store
        self.authorizer = authorizer
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.kubernetes_version = kubernetes_version
        self.request_count = 0
        #: the :class:`RequestInfo` of every resource request, oldest first
        self.request_log = collections.deque(maxlen=100_000)
        #: id -> request, for the requests answered with a stream (watches, followed logs)
        self.streams = {}
        if faults is not None:
            faults.stream_cutters.append(self.cut_streams)
        self.app = web.Application(client_max_size=8 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def cut_streams(self):
        """Drop the connection of every open watch and followed log (an outage)."""
        for request in list(self.streams.values()):
            if request.transport is not None:
                request.transport.close()
        self.streams.clear()

    # ------------------------------------------------------------ entry point

    async def handle(self, request):
        self.request_count += 1
        if request.path.rstrip("/") == "/emulator/faults":
            return await self.fault_admin(request)
        try:
            info = parse_request(request.method, request.path, request.query)
            self.request_log.append(info)
            if self.faults is not None:
                injected = await self.faults.before(info)
                if injected is not None:
                    return error_response(injected)
            if self.authorizer is not None:
                user = self.authorizer.authenticate(request.headers.get("Authorization", ""))
                self.authorizer.authorize(user, info)
            if not info.is_resource:
                return self.discovery(request.path)
            return await self.dispatch(request, info)
        except ApiError as e:
            if e.code >= 500:
                log.warning("%s %s -> %s %s", request.method, request.path, e.code, e.message)
            return error_response(e)

    async def fault_admin(self, request):
        """``/emulator/faults``: GET the rules, POST one, DELETE all (see faults.py)."""
        try:
            if self.authorizer is not None and self.authorizer.enforce:
                header = request.headers.get("Authorization", "")
                if header != f"Bearer {self.authorizer.admin_token}":
                    raise ApiError(403, "Forbidden", "the fault controls need the admin token")
            if self.faults is None:
                raise ApiError(404, "NotFound", "this API server has no fault injection")
            if request.method == "POST":
                try:
                    self.faults.apply(await request.json())
                except (ValueError, TypeError, KeyError) as e:
                    raise errors.bad_request(f"bad fault request: {e}") from None
            elif request.method == "DELETE":
                self.faults.clear()
            elif request.method != "GET":
                raise ApiError(405, "MethodNotAllowed", "GET, POST or DELETE")
            return json_response(self.faults.describe())
        except ApiError as e:
            return error_response(e)

    async def dispatch(self, request, info):
        store, q = self.store, request.query
        rt = RESOURCES[info.resource]
        if info.subresource == "binding" and info.verb == "create":
            body = await self._body(request)
            target = (body.get("target") or {}).get("name")
            if not target:
                raise errors.invalid("Binding", info.name, [("target.name", "Required value")])
            uid = (body.get("metadata") or {}).get("uid")
            store.bind(info.namespace, info.name, target, uid=uid)
            return json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "code": 201,
                },
                201,
            )
        if (
            (info.verb == "create" and (info.name or (rt.namespaced and not info.namespace)))
            or (info.verb in ("update", "patch") and not info.name)
            or (info.subresource == "status" and info.verb not in ("get", "update", "patch"))
        ):
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if info.subresource == "log":
            if info.verb != "get":
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            return await self.pod_log(request, info)
        if info.verb in ("list", "watch"):
            label_selector, field_selector = q.get("labelSelector"), q.get("fieldSelector")
            if info.verb == "watch":
                return await self.watch(request, info, label_selector, field_selector)
            return self.list(info, label_selector, field_selector, q)
        if info.verb == "get":
            return json_response(store.get(info.resource, info.namespace, info.name))
        if info.verb == "create":
            if info.subresource:
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            body = await self._body(request)
            return json_response(
                store.create(info.resource, body, namespace=info.namespace or None), 201
            )
        if info.verb == "update":
            body = await self._body(request)
            return json_response(
                store.update(
                    info.resource,
                    info.namespace,
                    info.name,
                    body,
                    subresource=info.subresource or None,
                )
            )
        if info.verb == "patch":
            body = await self._body(request)
            return json_response(
                store.patch(
                    info.resource,
                    info.namespace,
                    info.name,
                    body,
                    content_type=request.headers.get("Content-Type", ""),
                    subresource=info.subresource or None,
                )
            )
        if info.verb in ("delete", "deletecollection"):
            options = await self._delete_options(request)
            if info.verb == "delete":
                deleted = store.delete(info.resource, info.namespace, info.name, **options)
                if info.resource in RETURNS_DELETED_OBJECT or store.exists(
                    info.resource, info.namespace, info.name
                ):
                    return json_response(deleted)
                return json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": info.name,
                            "group": rt.group,
                            "kind": info.resource,
                            "uid": deleted["metadata"]["uid"],
                        },
                    }
                )
            deleted = store.delete_collection(
                info.resource,
                info.namespace or None,
                q.get("labelSelector"),
                q.get("fieldSelector"),
                grace_period_seconds=options["grace_period_seconds"],
                propagation_policy=options["propagation_policy"],
            )
            rt = RESOURCES[info.resource]
            return json_response(
                {
                    "kind": rt.list_kind,
                    "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": store.resource_version},
                    "items": deleted,
                }
            )
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    async def _body(self, request):
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as e:
            raise errors.bad_request(f"the body of the request was not valid JSON: {e}") from None
        if body is None:
            raise errors.bad_request("the body of the request was empty")
        return body

    async def _delete_options(self, request):
        q = request.query
        body = {}
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw) or {}
            except ValueError as e:
                raise errors.bad_request(
                    f"the body of the request was not valid JSON: {e}"
                ) from None
        grace = body.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
        if grace is not None:
            try:
                grace = int(grace)
            except ValueError:
                raise errors.bad_request(f"invalid gracePeriodSeconds {grace!r}") from None
        return {
            "grace_period_seconds": grace,
            "preconditions": body.get("preconditions"),
            "propagation_policy": body.get("propagationPolicy", q.get("propagationPolicy")),
        }

    # ------------------------------------------------------------ list / watch

    def list(self, info, label_selector, field_selector, q):
        rt = RESOURCES[info.resource]
        items = self.store.select(
            info.resource, info.namespace or None, label_selector, field_selector
        )
        rv = self.store.resource_version
        metadata = {"resourceVersion": rv}
        start = None
        if q.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"]))
                rv, start = token["rv"], tuple(token["start"])
            except (ValueError, KeyError, TypeError):
                raise errors.bad_request("continue key is not valid") from None
            metadata["resourceVersion"] = rv
            items = [
                o
                for o in items
                if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start
            ]
        limit = int(q.get("limit") or 0)
        if limit and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            last = items[-1]["metadata"]
            token = {"rv": rv, "start": [last.get("namespace", ""), last["name"]]}
            metadata["continue"] = base64.urlsafe_b64encode(_dumps(token).encode()).decode()
            metadata["remainingItemCount"] = remaining
        # Items of a list carry no kind/apiVersion, as from the real API server.
        body = {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": metadata,
            "items": [
                {k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items
            ],
        }
        return json_response(body)

    async def watch(self, request, info, label_selector, field_selector):
        q = request.query
        timeout = float(q.get("timeoutSeconds") or self.default_watch_timeout)
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        )
        try:
            watch = self.store.watch(
                info.resource,
                info.namespace or None,
                label_selector,
                field_selector,
                resource_version=q.get("resourceVersion"),
                allow_bookmarks=_truthy(q.get("allowWatchBookmarks")),
            )
        except ApiError as e:
            if e.code != 410:
                raise
            # A too-old version is a 200 with one ERROR event (apiserver watch.go).
            await response.prepare(request)
            await response.write((_dumps({"type": ERROR, "object": e.status()}) + "\n").encode())
            await response.write_eof()
            return response
        fault = self.faults.watch_fault(info) if self.faults is not None else None
        deadline = time.monotonic() + timeout
        sent = 0
        self.streams[id(request)] = request
        try:
            await response.prepare(request)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if fault is not None and fault.stall:
                    await asyncio.sleep(remaining)
                    break
                wait = (
                    min(remaining, self.bookmark_interval) if watch.allow_bookmarks else remaining
                )
                item = await watch.next_raw(timeout=wait)
                if item is None:
                    break
                type_, obj = item
                if type_ == "TIMEOUT":
                    continue
                if type_ == BOOKMARK and time.monotonic() >= deadline:
                    break
                await response.write((_dumps({"type": type_, "object": obj}) + "\n").encode())
                sent += 1
                if fault is not None and fault.drop_after is not None and sent >= fault.drop_after:
                    break
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self.streams.pop(id(request), None)
            watch.close()
        return response

    # ------------------------------------------------------------ logs

    async def pod_log(self, request, info):
        q = request.query
        container = q.get("container")
        if _truthy(q.get("previous")):
            raise errors.bad_request(
                f'previous terminated container "{container or ""}" in pod "{info.name}" not found'
            )
        tail = q.get("tailLines")
        try:
            tail = int(tail) if tail is not None else None
        except ValueError:
            raise errors.bad_request(f"invalid tailLines {tail!r}") from None
        with_ts = _truthy(q.get("timestamps"))
        since = q.get("sinceSeconds")
        cutoff = None
        if since is not None:
            from .store import micro_timestamp

            cutoff = micro_timestamp(time.time() - int(since))

        def render(entry):
            ts, text = entry
            return (f"{ts} {text}\n" if with_ts else text + "\n").encode()

        def keep(entry):
            return cutoff is None or entry[0] >= cutoff

        if not _truthy(q.get("follow")):
            lines = self.store.read_log(info.namespace, info.name, container, tail)
            return web.Response(
                body=b"".join(render(e) for e in lines if keep(e)), content_type="text/plain"
            )
        # Errors (404, 400) surface before the response starts.
        self.store.read_log(info.namespace, info.name, container, 0)
        stream = self.store.follow_log(info.namespace, info.name, container, tail)
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain", "Transfer-Encoding": "chunked"}
        )
        self.streams[id(request)] = request
        try:
            await response.prepare(request)
            async for entry in stream:
                if keep(entry):
                    await response.write(render(entry))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self.streams.pop(id(request), None)
            await stream.aclose()
        return response

    # ------------------------------------------------------------ discovery

    def discovery(self, path):
        path = "/" + path.strip("/")
        major, minor = self.kubernetes_version.split(".")[:2]
        if path == "/version":
            return json_response(
                {
                    "major": major,
                    "minor": minor,
                    "gitVersion": f"v{major}.{minor}.0",
                    "gitCommit": "0" * 40,
                    "gitTreeState": "clean",
                    "buildDate": "2024-01-01T00:00:00Z",
                    "goVersion": "go1.22.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            )
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/api":
            return json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
                    ],
                }
            )
        groups = sorted({rt.group for rt in RESOURCES.values() if rt.group})
        if path == "/apis":
            return json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group(g) for g in groups],
                }
            )
        for group in groups:
            if path == f"/apis/{group}":
                return json_response(self._group(group) | {"kind": "APIGroup", "apiVersion": "v1"})
        for group, version in [("", "v1")] + [(g, "v1") for g in groups]:
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            if path == prefix:
                return json_response(self._resource_list(group, version))
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _group(self, group):
        gv = {"groupVersion": f"{group}/v1", "version": "v1"}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    def _resource_list(self, group, version):
        resources = []
        for rt in RESOURCES.values():
            if rt.group != group or rt.version != version:
                continue
            entry = {
                "name": rt.plural,
                "singularName": rt.kind.lower(),
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": rt.verbs,
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            resources.append(entry)
            if rt.status_subresource:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        for plural, sub in sorted(SUBRESOURCES):
            rt = RESOURCES[plural]
            if rt.group == group:
                resources.append(
                    {
                        "name": f"{plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": "Binding" if sub == "binding" else rt.kind,
                        "verbs": ["create"] if sub == "binding" else ["get"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }
