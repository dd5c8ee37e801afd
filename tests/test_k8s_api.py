"""The emulated Kubernetes API server, over HTTP as clients see it.

Raw HTTP (aiohttp) checks the JSON a real API server sends; kubernetes_asyncio
checks that the client KubeSpawner uses works unmodified. Kubelets and the
scheduler are off here: pods stay where the test puts them.
"""

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from tests.k8s.faults import Fault
from tests.k8s.patch import strategic_merge_patch
from tests.utils import REPO_ROOT, poll

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "labels": {"app": "x"}},
    "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "1000"]}]},
}


def pod(name, labels=None, node=None, **spec):
    body = json.loads(json.dumps(POD))
    body["metadata"] = {"name": name, "labels": labels or {}}
    if node:
        body["spec"]["nodeName"] = node
    body["spec"].update(spec)
    return body


def container_pod(**container):
    body = pod("x")
    body["spec"]["containers"][0].update(container)
    return body


class Api:
    """A tiny raw HTTP client: ``status, body = await api.get(path)``."""

    def __init__(self, cluster, session, token=None):
        self.cluster = cluster
        self.session = session
        self.token = token if token is not None else cluster.admin_token

    async def request(
        self, method, path, body=None, content_type="application/json", token=None, **params
    ):
        headers = {}
        token = self.token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = content_type
        params = {k: str(v) for k, v in params.items()}
        async with self.session.request(
            method, self.cluster.url + path, data=data, headers=headers, params=params
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    def get(self, path, **params):
        return self.request("GET", path, **params)

    def post(self, path, body, **params):
        return self.request("POST", path, body, **params)

    def put(self, path, body, **params):
        return self.request("PUT", path, body, **params)

    def patch(self, path, body, content_type="application/strategic-merge-patch+json", **params):
        return self.request("PATCH", path, body, content_type=content_type, **params)

    def delete(self, path, body=None, **params):
        return self.request("DELETE", path, body, **params)

    async def watch_lines(self, path, until=None, **params):
        """Events of a watch request until the server ends it (or ``until(events)``)."""
        params = {"watch": "true", **{k: str(v) for k, v in params.items()}}
        headers = {"Authorization": f"Bearer {self.token}"}
        events = []
        async with self.session.get(self.cluster.url + path, params=params, headers=headers) as r:
            assert r.status == 200
            async for line in r.content:
                if line.strip():
                    events.append(json.loads(line))
                    if until and until(events):
                        break
        return events


@pytest.fixture
async def cluster(k8s_cluster_factory):
    return await k8s_cluster_factory(
        nodes=0, scheduler=False, kubelets=False, bookmark_interval=0.2
    )


@pytest.fixture
async def api(cluster):
    async with aiohttp.ClientSession() as session:
        yield Api(cluster, session)


@pytest.fixture
async def core(cluster):
    await config.load_kube_config(config_file=str(cluster.kubeconfig_path))
    async with client.ApiClient() as api_client:
        yield client.CoreV1Api(api_client)


NS = "/api/v1/namespaces/default"


# ------------------------------------------------------------------ discovery and metadata


async def test_discovery(api):
    status, version = await api.get("/version")
    assert status == 200 and version["major"] == "1" and version["minor"] == "30"
    assert (await api.get("/api"))[1]["versions"] == ["v1"]
    groups = (await api.get("/apis"))[1]
    assert groups["kind"] == "APIGroupList"
    assert [g["name"] for g in groups["groups"]] == ["rbac.authorization.k8s.io"]
    names = {r["name"] for r in (await api.get("/api/v1"))[1]["resources"]}
    assert {
        "pods",
        "pods/log",
        "pods/status",
        "events",
        "services",
        "secrets",
        "nodes",
        "namespaces",
    } <= names
    rbac = (await api.get("/apis/rbac.authorization.k8s.io/v1"))[1]
    assert {r["name"] for r in rbac["resources"]} == {
        "roles",
        "rolebindings",
        "clusterroles",
        "clusterrolebindings",
    }
    status, body = await api.get("/api/v1/widgets")
    assert status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
    assert (await api.get("/apis/rbac.authorization.k8s.io/v1/pods"))[0] == 404  # wrong group
    assert (await api.post("/api/v1/pods", POD))[0] == 405  # create needs a namespace
    assert (await api.post(NS + "/pods/p", POD))[0] == 405
    assert (await api.put(NS + "/pods", POD))[0] == 405
    assert (await api.request("POST", NS + "/pods/p/log"))[0] == 405


async def test_binding_subresource(api):
    _, p = await api.post(NS + "/pods", pod("b"))
    binding = {
        "metadata": {"name": "b", "uid": p["metadata"]["uid"]},
        "target": {"kind": "Node", "name": "node-7"},
    }
    status, body = await api.post(NS + "/pods/b/binding", binding)
    assert status == 201 and body["status"] == "Success"
    _, bound = await api.get(NS + "/pods/b")
    assert bound["spec"]["nodeName"] == "node-7"
    assert {"type": "PodScheduled", "status": "True"}.items() <= bound["status"]["conditions"][
        0
    ].items()
    status, error = await api.post(NS + "/pods/b/binding", binding)
    assert status == 409 and 'is already assigned to node "node-7"' in error["message"]


async def test_server_filled_metadata_and_lists(api):
    status, a = await api.post(NS + "/pods", pod("a"))
    assert status == 201
    meta = a["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    assert a["status"]["phase"] == "Pending" and a["spec"]["restartPolicy"] == "Always"
    status, b = await api.post(
        NS + "/secrets", {"metadata": {"generateName": "tok-"}, "stringData": {"k": "v"}}
    )
    assert status == 201
    assert b["metadata"]["name"].startswith("tok-") and len(b["metadata"]["name"]) == 9
    assert b["data"] == {"k": "dg=="} and "stringData" not in b
    # one cluster-wide, increasing resourceVersion
    assert int(b["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    status, listing = await api.get(NS + "/pods")
    assert listing["kind"] == "PodList" and listing["apiVersion"] == "v1"
    assert int(listing["metadata"]["resourceVersion"]) >= int(b["metadata"]["resourceVersion"])
    assert [p["metadata"]["name"] for p in listing["items"]] == ["a"]
    assert "kind" not in listing["items"][0]  # as from a real API server
    # cluster-wide list, pagination
    for n in range(3):
        await api.post("/api/v1/namespaces/kube-system/pods", pod(f"k{n}"))
    page = (await api.get("/api/v1/pods", limit=2))[1]
    assert len(page["items"]) == 2 and page["metadata"]["remainingItemCount"] == 2
    rest = (await api.get("/api/v1/pods", limit=2, **{"continue": page["metadata"]["continue"]}))[1]
    names = [p["metadata"]["name"] for p in page["items"] + rest["items"]]
    assert names == ["a", "k0", "k1", "k2"]


@pytest.mark.parametrize(
    "path, body, code, reason, text",
    [
        pytest.param(
            NS + "/pods", pod("a"), 409, "AlreadyExists", 'pods "a" already exists', id="exists"
        ),
        pytest.param(
            "/api/v1/namespaces/nope/pods",
            pod("b"),
            404,
            "NotFound",
            'namespaces "nope" not found',
            id="no-namespace",
        ),
        pytest.param(
            NS + "/pods",
            {**pod("c"), "metadata": {"name": "c", "namespace": "other"}},
            400,
            "BadRequest",
            "does not match the namespace",
            id="namespace-mismatch",
        ),
        pytest.param(
            NS + "/pods",
            {**pod("d"), "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}},
            422,
            "Invalid",
            "spec.containers[0]: Additional properties are not allowed ('bogus' was unexpected)",
            id="unknown-field",
        ),
        pytest.param(
            NS + "/pods",
            pod("e", labels={"repo": "gh/org/repo"}),
            422,
            "Invalid",
            'Invalid value: "gh/org/repo"',
            id="bad-label-value",
        ),
        pytest.param(
            NS + "/pods", pod("Upper_Case"), 422, "Invalid", "RFC 1123 subdomain", id="bad-name"
        ),
        pytest.param(
            NS + "/services",
            {"metadata": {"name": "1-binder"}, "spec": {"ports": [{"port": 80}]}},
            422,
            "Invalid",
            "a DNS-1035 label",
            id="service-name-digit",
        ),
        pytest.param(
            NS + "/services",
            {"metadata": {"name": "s"}, "spec": {"ports": [{"port": "eighty"}]}},
            422,
            "Invalid",
            "spec.ports[0].port: 'eighty' is not of type 'integer'",
            id="wrong-type",
        ),
        pytest.param(
            NS + "/pods",
            {"metadata": {}, "spec": POD["spec"]},
            422,
            "Invalid",
            "name or generateName",
            id="no-name",
        ),
        pytest.param(
            NS + "/pods",
            container_pod(resources={"requests": {"memory": "3G"}, "limits": {"memory": "2G"}}),
            422,
            "Invalid",
            'Invalid value: "3G": must be less than or equal to memory limit of 2G',
            id="request-above-limit",
        ),
        pytest.param(
            NS + "/pods",
            container_pod(resources={"limits": {"memory": "2 GB"}}),
            422,
            "Invalid",
            "spec.containers[0].resources.limits[memory]",
            id="bad-quantity",
        ),
        pytest.param(
            NS + "/pods",
            container_pod(ports=[{"containerPort": 8888, "name": "notebook-port-http"}]),
            422,
            "Invalid",
            "spec.containers[0].ports[0].name",
            id="long-port-name",
        ),
        pytest.param(
            NS + "/pods",
            container_pod(env=[{"name": "1BAD", "value": "x"}]),
            422,
            "Invalid",
            "a valid environment variable name",
            id="env-name",
        ),
        pytest.param(
            NS + "/pods",
            container_pod(volumeMounts=[{"name": "home", "mountPath": "/home/jovyan"}]),
            422,
            "Invalid",
            'spec.containers[0].volumeMounts[0].name: Not found: "home"',
            id="undeclared-volume",
        ),
        pytest.param(
            NS + "/secrets",
            {"metadata": {"name": "s", "annotations": {"binder/repo url": "x"}}},
            422,
            "Invalid",
            "metadata.annotations",
            id="annotation-key",
        ),
    ],
)
async def test_create_errors(api, path, body, code, reason, text):
    await api.post(NS + "/pods", pod("a"))
    status, error = await api.post(path, body)
    assert status == code, error
    assert error["kind"] == "Status" and error["status"] == "Failure"
    assert error["code"] == code and error["reason"] == reason
    assert text in error["message"]


# ------------------------------------------------------------------ selectors


@pytest.mark.parametrize(
    "selector, expected",
    [
        pytest.param("app=web", {"w1", "w2"}, id="eq"),
        pytest.param("app==web", {"w1", "w2"}, id="eqeq"),
        pytest.param("app!=web", {"d1", "n1"}, id="neq-includes-unlabelled"),
        pytest.param("app in (web,db)", {"w1", "w2", "d1"}, id="in"),
        pytest.param("app notin (web)", {"d1", "n1"}, id="notin"),
        pytest.param("tier", {"w1", "d1"}, id="exists"),
        pytest.param("!tier", {"w2", "n1"}, id="not-exists"),
        pytest.param("app=web,tier=front", {"w1"}, id="and"),
        pytest.param("tier in (front, back),app!=db", {"w1"}, id="set-and-neq"),
    ],
)
async def test_label_selectors(api, selector, expected):
    for name, labels in [
        ("w1", {"app": "web", "tier": "front"}),
        ("w2", {"app": "web"}),
        ("d1", {"app": "db", "tier": "back"}),
        ("n1", {}),
    ]:
        assert (await api.post(NS + "/pods", pod(name, labels)))[0] == 201
    status, body = await api.get(NS + "/pods", labelSelector=selector)
    assert status == 200
    assert {p["metadata"]["name"] for p in body["items"]} == expected


async def test_field_selectors(api, cluster):
    await api.post(NS + "/pods", pod("on1", node="node-1"))
    await api.post(NS + "/pods", pod("on2", node="node-2"))
    await api.post(NS + "/pods", pod("none"))
    cluster.store.patch(
        "pods", "default", "on2", {"status": {"phase": "Running"}}, subresource="status"
    )

    async def names(path, selector):
        status, body = await api.get(path, fieldSelector=selector)
        assert status == 200, body
        return sorted(p["metadata"]["name"] for p in body["items"])

    assert await names(NS + "/pods", "spec.nodeName=node-1") == ["on1"]
    assert await names("/api/v1/pods", "spec.nodeName=") == ["none"]
    assert await names(NS + "/pods", "status.phase!=Running") == ["none", "on1"]
    assert await names(NS + "/pods", "metadata.name==on2,status.phase=Running") == ["on2"]
    assert await names("/api/v1/pods", "metadata.namespace=kube-system") == []
    p = cluster.store.get("pods", "default", "on1")
    cluster.store.record_event(p, "Scheduled", "assigned", component="default-scheduler")
    cluster.store.record_event(
        cluster.store.get("namespaces", None, "default") | {"kind": "Namespace"}, "X", "y"
    )
    assert len(await names(NS + "/events", "involvedObject.kind=Pod")) == 1
    assert len(await names(NS + "/events", "involvedObject.kind=Pod,involvedObject.name=on2")) == 0
    status, error = await api.get(NS + "/pods", fieldSelector="spec.image=x")
    assert status == 400 and error["message"] == "field label not supported: spec.image"
    status, error = await api.get(NS + "/pods", labelSelector="a in (")
    assert status == 400


# ------------------------------------------------------------------ update and patch


async def test_update_conflicts_and_status_subresource(api):
    _, created = await api.post(NS + "/pods", pod("u"))
    stale = json.loads(json.dumps(created))
    created["metadata"]["labels"]["v"] = "2"
    status, updated = await api.put(NS + "/pods/u", created)
    assert status == 200 and updated["metadata"]["labels"]["v"] == "2"
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    # stale resourceVersion: 409 Conflict
    stale["metadata"]["labels"]["v"] = "3"
    status, error = await api.put(NS + "/pods/u", stale)
    assert status == 409 and error["reason"] == "Conflict"
    assert "the object has been modified" in error["message"]
    # a no-op update keeps the version
    status, same = await api.put(NS + "/pods/u", updated)
    assert same["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    # the main resource ignores status; /status ignores everything else
    changed = json.loads(json.dumps(same))
    changed["status"]["phase"] = "Running"
    status, body = await api.put(NS + "/pods/u", changed)
    assert body["status"]["phase"] == "Pending"
    changed["metadata"]["labels"]["v"] = "9"
    status, body = await api.put(NS + "/pods/u/status", changed)
    assert body["status"]["phase"] == "Running" and body["metadata"]["labels"]["v"] == "2"
    # pod specs are immutable but for images
    body["spec"]["containers"][0]["command"] = ["true"]
    status, error = await api.put(NS + "/pods/u", body)
    assert status == 422 and "pod updates may not change fields" in error["message"]
    # a name mismatch is a 400
    status, error = await api.put(NS + "/pods/other", same)
    assert status == 400


async def test_generation_bumps_on_spec_change(api):
    _, svc = await api.post(
        NS + "/services", {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert svc["spec"]["ports"][0]["targetPort"] == 80 and svc["spec"]["clusterIP"].startswith(
        "10.96."
    )
    _, labelled = await api.patch(NS + "/services/s", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    _, changed = await api.patch(NS + "/services/s", {"spec": {"ports": [{"port": 81}]}})
    assert changed["metadata"]["generation"] == 2


async def test_patch_types(api):
    body = pod("m")
    body["spec"]["containers"][0]["env"] = [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "2"},
    ]
    body["spec"]["containers"].append({"name": "side", "image": "busybox:1.36"})
    await api.post(NS + "/pods", body)
    # strategic merge: containers merge by name (pods only allow image changes)
    status, p = await api.patch(
        NS + "/pods/m",
        {
            "metadata": {"labels": {"new": "1", "app": None}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]},
        },
    )
    assert status == 200, p
    assert p["metadata"]["labels"] == {"new": "1"}
    assert [c["name"] for c in p["spec"]["containers"]] == ["c", "side"]
    assert p["spec"]["containers"][0]["image"] == "busybox:1.37"
    assert p["spec"]["containers"][0]["env"] == body["spec"]["containers"][0]["env"]
    # env merges by name, $patch: delete removes an item, ports merge by containerPort
    merged = strategic_merge_patch(
        body["spec"],
        {
            "containers": [
                {
                    "name": "c",
                    "env": [{"name": "A", "$patch": "delete"}, {"name": "C", "value": "3"}],
                    "ports": [{"containerPort": 8888}],
                }
            ]
        },
    )
    assert merged["containers"][0]["env"] == [
        {"name": "B", "value": "2"},
        {"name": "C", "value": "3"},
    ]
    assert merged["containers"][0]["ports"] == [{"containerPort": 8888}]
    assert [c["name"] for c in merged["containers"]] == ["c", "side"]
    # merge patch replaces lists whole (here: the label map merges, the finalizer list is replaced)
    status, p = await api.patch(
        NS + "/pods/m", {"metadata": {"finalizers": ["a/b", "c/d"]}}, "application/merge-patch+json"
    )
    status, p = await api.patch(
        NS + "/pods/m", {"metadata": {"finalizers": ["e/f"]}}, "application/merge-patch+json"
    )
    assert p["metadata"]["finalizers"] == ["e/f"]
    # strategic merge treats finalizers as a set
    status, p = await api.patch(NS + "/pods/m", {"metadata": {"finalizers": ["g/h"]}})
    assert p["metadata"]["finalizers"] == ["e/f", "g/h"]
    # JSON patch, including a failing test op
    ops = [
        {"op": "add", "path": "/metadata/annotations", "value": {"x/y": "1"}},
        {"op": "remove", "path": "/metadata/finalizers"},
        {"op": "test", "path": "/metadata/name", "value": "m"},
    ]
    status, p = await api.patch(NS + "/pods/m", ops, "application/json-patch+json")
    assert (
        status == 200
        and p["metadata"]["annotations"] == {"x/y": "1"}
        and "finalizers" not in p["metadata"]
    )
    status, error = await api.patch(
        NS + "/pods/m",
        [{"op": "test", "path": "/metadata/name", "value": "z"}],
        "application/json-patch+json",
    )
    assert status == 422
    status, error = await api.patch(NS + "/pods/m", {"a": 1}, "application/apply-patch+yaml")
    assert status == 415
    # a patch result that is invalid is rejected like a create
    status, error = await api.patch(NS + "/pods/m", {"metadata": {"labels": {"bad": "a b"}}})
    assert status == 422
    status, error = await api.patch(NS + "/pods/missing", {"metadata": {}})
    assert status == 404 and error["message"] == 'pods "missing" not found'


# ------------------------------------------------------------------ watch


async def test_watch_snapshot_resume_and_selectors(api, cluster):
    await api.post(NS + "/pods", pod("w1", {"app": "x"}))
    _, w2 = await api.post(NS + "/pods", pod("w2", {"app": "y"}))
    # no resourceVersion (or "0"): the current objects as ADDED, here all spellings of watch=true
    for spelling in ("true", "True", "1"):
        events = await api.watch_lines(
            NS + "/pods", watch=spelling, timeoutSeconds=1, until=lambda e: len(e) == 2
        )
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "w1"),
            ("ADDED", "w2"),
        ]
        assert (
            events[0]["object"]["kind"] == "Pod"
            and events[0]["object"]["metadata"]["namespace"] == "default"
        )
    since = w2["metadata"]["resourceVersion"]
    await api.patch(
        NS + "/pods/w1", {"metadata": {"labels": {"app": "y"}}}
    )  # starts matching app=y
    await api.patch(NS + "/pods/w2", {"metadata": {"labels": {"app": "z"}}})  # stops matching
    await api.delete(NS + "/pods/w1")
    # resume after a version, with a label selector: transitions are ADDED / DELETED
    events = await api.watch_lines(
        NS + "/pods",
        resourceVersion=since,
        labelSelector="app=y",
        timeoutSeconds=2,
        until=lambda e: len(e) == 3,
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w1"),
        ("DELETED", "w2"),
        ("DELETED", "w1"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(since)
    # timeoutSeconds ends an idle watch: the loop ends without `until`
    assert (
        await api.watch_lines(
            NS + "/pods", resourceVersion=cluster.store.resource_version, timeoutSeconds=1
        )
        == []
    )


async def test_watch_live_events_and_bookmarks(api, cluster):
    rv = cluster.store.resource_version

    async def changes():
        await poll(lambda: cluster.store._watches["pods"], message="watch registered")
        await api.post(NS + "/pods", pod("live"))
        await api.delete(NS + "/pods/live")

    task = asyncio.create_task(changes())
    events = await api.watch_lines(
        NS + "/pods",
        resourceVersion=rv,
        allowWatchBookmarks="true",
        timeoutSeconds=10,
        until=lambda e: [x["type"] for x in e].count("BOOKMARK") >= 1 and len(e) >= 3,
    )
    await task
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["ADDED", "DELETED"] and "BOOKMARK" in kinds
    bookmark = events[kinds.index("BOOKMARK")]["object"]
    assert bookmark["kind"] == "Pod" and int(bookmark["metadata"]["resourceVersion"]) >= int(
        events[1]["object"]["metadata"]["resourceVersion"]
    )


async def test_watch_gone_after_compaction(api, cluster, core):
    _, p = await api.post(NS + "/pods", pod("old"))
    old = p["metadata"]["resourceVersion"]
    await api.patch(NS + "/pods/old", {"metadata": {"labels": {"b": "c"}}})
    cluster.store.compact()
    events = await api.watch_lines(NS + "/pods", resourceVersion=old, timeoutSeconds=5)
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    # kubernetes_asyncio turns it into an ApiException(410), as KubeSpawner's reflector expects
    w = watch.Watch()
    with pytest.raises(ApiException) as info:
        async for _ in w.stream(
            core.list_namespaced_pod, "default", resource_version=old, timeout_seconds=5
        ):
            pass
    assert info.value.status == 410
    # the current version still works
    current = cluster.store.resource_version
    assert await api.watch_lines(NS + "/pods", resourceVersion=current, timeoutSeconds=1) == []


# ------------------------------------------------------------------ deletion


async def test_graceful_pod_deletion_and_preconditions(api, cluster):
    _, p = await api.post(NS + "/pods", pod("g", node="node-1"))
    status, error = await api.delete(NS + "/pods/g", {"preconditions": {"uid": "not-the-uid"}})
    assert status == 409 and "Precondition failed" in error["message"]
    status, deleting = await api.delete(
        NS + "/pods/g", {"kind": "DeleteOptions", "gracePeriodSeconds": 600}
    )
    assert status == 200
    assert (
        deleting["metadata"]["deletionTimestamp"]
        and deleting["metadata"]["deletionGracePeriodSeconds"] == 600
    )
    assert (await api.get(NS + "/pods/g"))[0] == 200  # still there until the kubelet confirms
    # the kubelet confirms with a zero grace period and the uid precondition
    status, _ = await api.delete(
        NS + "/pods/g", {"gracePeriodSeconds": 0, "preconditions": {"uid": p["metadata"]["uid"]}}
    )
    assert status == 200
    assert (await api.get(NS + "/pods/g"))[0] == 404
    # a pod never scheduled goes at once; so does one whose grace period runs out
    await api.post(NS + "/pods", pod("unscheduled"))
    await api.delete(NS + "/pods/unscheduled")
    assert (await api.get(NS + "/pods/unscheduled"))[0] == 404
    await api.post(NS + "/pods", pod("short", node="node-1"))
    await api.delete(NS + "/pods/short", gracePeriodSeconds=1)
    await poll(
        lambda: not cluster.store.exists("pods", "default", "short"),
        timeout=10,
        message="grace expiry",
    )


async def test_finalizers_and_garbage_collection(api, cluster):
    _, owner = await api.post(NS + "/pods", pod("owner"))
    ref = {"apiVersion": "v1", "kind": "Pod", "name": "owner", "uid": owner["metadata"]["uid"]}
    await api.post(NS + "/secrets", {"metadata": {"name": "owned", "ownerReferences": [ref]}})
    await api.post(
        NS + "/configmaps",
        {"metadata": {"name": "held", "ownerReferences": [ref], "finalizers": ["x.io/hold"]}},
    )
    await api.post(NS + "/configmaps", {"metadata": {"name": "orphan", "ownerReferences": [ref]}})
    await api.delete(
        NS + "/configmaps/orphan", propagationPolicy="Orphan"
    )  # orphaning its own dependents: none
    await api.delete(NS + "/pods/owner")
    assert (await api.get(NS + "/secrets/owned"))[0] == 404
    # a finalizer keeps the object, marked for deletion, until it is removed
    status, gone = await api.delete(NS + "/configmaps/orphan")
    assert status == 404
    await api.post(NS + "/configmaps", {"metadata": {"name": "plain"}})
    status, body = await api.delete(NS + "/configmaps/plain")
    assert status == 200 and body["kind"] == "Status" and body["status"] == "Success"
    assert body["details"]["name"] == "plain" and body["details"]["kind"] == "configmaps"
    status, held = await api.get(NS + "/configmaps/held")
    assert status == 200 and held["metadata"]["deletionTimestamp"]
    status, error = await api.patch(
        NS + "/configmaps/held", {"metadata": {"finalizers": ["x.io/hold", "y.io/new"]}}
    )
    assert status == 422 and "no new finalizers" in error["message"]
    await api.patch(
        NS + "/configmaps/held", {"metadata": {"finalizers": None}}, "application/merge-patch+json"
    )
    assert (await api.get(NS + "/configmaps/held"))[0] == 404
    # Orphan propagation removes the owner reference instead
    _, owner = await api.post(NS + "/pods", pod("owner2"))
    ref = {"apiVersion": "v1", "kind": "Pod", "name": "owner2", "uid": owner["metadata"]["uid"]}
    await api.post(NS + "/secrets", {"metadata": {"name": "kept", "ownerReferences": [ref]}})
    await api.delete(NS + "/pods/owner2", {"propagationPolicy": "Orphan"})
    status, kept = await api.get(NS + "/secrets/kept")
    assert status == 200 and not kept["metadata"].get("ownerReferences")
    # Foreground: the owner waits, marked, until its dependents (here a terminating pod) are gone
    _, owner = await api.post(NS + "/configmaps", {"metadata": {"name": "owner3"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner3",
        "uid": owner["metadata"]["uid"],
    }
    await api.post(
        NS + "/pods",
        {
            **pod("dependent", node="node-1"),
            "metadata": {"name": "dependent", "ownerReferences": [ref]},
        },
    )
    status, deleting = await api.delete(
        NS + "/configmaps/owner3", {"propagationPolicy": "Foreground"}
    )
    assert status == 200 and deleting["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert (await api.get(NS + "/pods/dependent"))[1]["metadata"]["deletionTimestamp"]
    assert (await api.get(NS + "/configmaps/owner3"))[0] == 200
    cluster.store.delete(
        "pods", "default", "dependent", grace_period_seconds=0
    )  # the kubelet confirms
    assert (await api.get(NS + "/configmaps/owner3"))[0] == 404


async def test_deletecollection_and_namespace_deletion(api, cluster):
    await api.post("/api/v1/namespaces", {"metadata": {"name": "user-ns"}})
    for name, labels in [("a", {"k": "1"}), ("b", {"k": "1"}), ("c", {"k": "2"})]:
        await api.post("/api/v1/namespaces/user-ns/pods", pod(name, labels))
    status, body = await api.delete("/api/v1/namespaces/user-ns/pods", labelSelector="k=1")
    assert status == 200 and sorted(i["metadata"]["name"] for i in body["items"]) == ["a", "b"]
    assert [
        p["metadata"]["name"]
        for p in (await api.get("/api/v1/namespaces/user-ns/pods"))[1]["items"]
    ] == ["c"]
    await api.post("/api/v1/namespaces/user-ns/pods", pod("d", node="node-1"))
    status, ns = await api.delete("/api/v1/namespaces/user-ns")
    assert status == 200 and ns["status"]["phase"] == "Terminating"
    status, error = await api.post(
        "/api/v1/namespaces/user-ns/secrets", {"metadata": {"name": "s"}}
    )
    assert status == 403 and "being terminated" in error["message"]
    # the scheduled pod is terminating; the namespace goes when it does
    cluster.store.delete("pods", "user-ns", "d", grace_period_seconds=0)
    assert (await api.get("/api/v1/namespaces/user-ns"))[0] == 404


# ------------------------------------------------------------------ logs


async def test_pod_logs(api, cluster):
    body = pod("l")
    body["spec"]["containers"].append({"name": "two", "image": "busybox:1.36"})
    await api.post(NS + "/pods", body)
    status, error = await api.get(NS + "/pods/l/log", container="c")
    assert status == 400 and "is waiting to start" in error["message"]
    status, error = await api.get(NS + "/pods/l/log")
    assert (
        status == 400
        and "a container name must be specified for pod l, choose one of: [c two]"
        == error["message"]
    )
    for n in range(5):
        cluster.store.append_log("default", "l", "c", f"line {n}")
    status, text = await api.get(NS + "/pods/l/log", container="c")
    assert text == "".join(f"line {n}\n" for n in range(5))
    status, text = await api.get(NS + "/pods/l/log", container="c", tailLines=2, timestamps="true")
    lines = text.splitlines()
    assert len(lines) == 2 and lines[1].endswith("Z line 4") and lines[1][:4].isdigit()
    # follow: backlog, then live lines, until the container's log closes
    received = []

    async def follow():
        async with api.session.get(
            cluster.url + NS + "/pods/l/log",
            params={"container": "c", "follow": "true", "tailLines": "1"},
            headers={"Authorization": f"Bearer {api.token}"},
        ) as r:
            assert r.status == 200
            async for line in r.content:
                received.append(line.decode().rstrip("\n"))

    task = asyncio.create_task(follow())
    await poll(lambda: received == ["line 4"], message="backlog")
    cluster.store.append_log("default", "l", "c", "live")
    await poll(lambda: received == ["line 4", "live"], message="live line")
    cluster.store.close_log("default", "l", "c")
    await asyncio.wait_for(task, 10)
    assert received == ["line 4", "live"]
    assert (await api.get(NS + "/pods/missing/log"))[0] == 404


# ------------------------------------------------------------------ RBAC


async def test_rbac_enforcement(k8s_cluster_factory):
    cluster = await k8s_cluster_factory(nodes=0, scheduler=False, kubelets=False, rbac=True)
    async with aiohttp.ClientSession() as session:
        admin = Api(cluster, session)
        await admin.post("/api/v1/namespaces", {"metadata": {"name": "hub"}})
        user = Api(cluster, session, token=cluster.token_for("hub", "spawner"))
        status, error = await user.get("/api/v1/namespaces/hub/pods")
        assert status == 403 and error["reason"] == "Forbidden"
        assert error["message"] == (
            'pods is forbidden: User "system:serviceaccount:hub:spawner" cannot list resource "pods" '
            'in API group "" in the namespace "hub"'
        )
        assert (await Api(cluster, session, token="").get("/api/v1/namespaces/hub/pods"))[0] == 401
        assert (await Api(cluster, session, token="wrong").get("/api/v1/pods"))[0] == 401
        assert (await user.get("/version"))[0] == 200
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        await admin.post(
            rbac + "/namespaces/hub/roles",
            {
                "metadata": {"name": "spawner"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["pods"],
                        "verbs": ["get", "list", "watch", "create", "delete"],
                    },
                    {
                        "apiGroups": [""],
                        "resources": ["secrets"],
                        "verbs": ["get"],
                        "resourceNames": ["allowed"],
                    },
                ],
            },
        )
        await admin.post(
            rbac + "/namespaces/hub/rolebindings",
            {
                "metadata": {"name": "spawner"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "spawner",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "spawner", "namespace": "hub"}],
            },
        )
        assert (await user.get("/api/v1/namespaces/hub/pods"))[0] == 200
        assert (await user.post("/api/v1/namespaces/hub/pods", pod("p")))[0] == 201
        assert (await user.get("/api/v1/namespaces/hub/pods/p/log", container="c"))[
            0
        ] == 403  # pods/log not granted
        assert (await user.patch("/api/v1/namespaces/hub/pods/p", {"metadata": {}}))[0] == 403
        assert (await user.get("/api/v1/namespaces/default/pods"))[0] == 403  # other namespace
        assert (await user.get("/api/v1/pods"))[0] == 403  # cluster-wide
        assert (await user.get("/api/v1/namespaces/hub/secrets/allowed"))[
            0
        ] == 404  # allowed, absent
        assert (await user.get("/api/v1/namespaces/hub/secrets/other"))[0] == 403
        # a ClusterRole bound cluster-wide to the service accounts group
        await admin.post(
            rbac + "/clusterroles",
            {
                "metadata": {"name": "node-reader"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
            },
        )
        assert (await user.get("/api/v1/nodes"))[0] == 403
        await admin.post(
            rbac + "/clusterrolebindings",
            {
                "metadata": {"name": "node-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "node-reader",
                },
                "subjects": [{"kind": "Group", "name": "system:serviceaccounts:hub"}],
            },
        )
        assert (await user.get("/api/v1/nodes"))[0] == 200


# ------------------------------------------------------------------ fault injection


async def test_fault_injection(api, cluster):
    cluster.faults.add(
        Fault(resource="pods", verbs={"create"}, error_rate=1.0, status=500, count=2)
    )
    results = [(await api.post(NS + "/pods", pod(f"f{n}")))[0] for n in range(3)]
    assert results == [500, 500, 201]
    cluster.faults.add(Fault(resource="services", error_rate=1.0, status=429))
    status, error = await api.get(NS + "/services")
    assert status == 429 and error["reason"] == "TooManyRequests"
    assert (await api.get(NS + "/secrets"))[0] == 200  # other routes unaffected
    cluster.faults.clear()
    # an outage window fails everything, discovery included, until it ends
    cluster.faults.outage(600)
    assert (await api.get("/version"))[0] == 503 and (await api.get(NS + "/pods"))[0] == 503
    cluster.faults.clear()
    assert (await api.get(NS + "/pods"))[0] == 200
    # dropped watch: the stream ends after one event although more follow
    cluster.faults.add(Fault(resource="pods", verbs={"watch"}, drop_watch_after=1))
    events = await api.watch_lines(NS + "/pods", timeoutSeconds=30)
    assert len(events) == 1
    cluster.faults.clear()
    # stalled watch: open, silent despite a change after its version, until its timeout
    cluster.faults.add(Fault(resource="pods", verbs={"watch"}, stall_watch=True))
    rv = cluster.store.resource_version
    await api.post(NS + "/pods", pod("during-stall"))
    assert await api.watch_lines(NS + "/pods", resourceVersion=rv, timeoutSeconds=1) == []
    cluster.faults.clear()
    events = await api.watch_lines(NS + "/pods", resourceVersion=rv, timeoutSeconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "during-stall")
    ]
    # latency applies to matching requests only; the request still succeeds
    cluster.faults.clear()
    cluster.faults.add(Fault(resource="configmaps", latency=0.05))
    assert (await api.get(NS + "/configmaps"))[0] == 200


# ------------------------------------------------------------------ kubernetes_asyncio, as KubeSpawner uses it


async def test_kubernetes_asyncio_client(core, cluster):
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="jhub-user")))
    manifest = client.V1Pod(
        metadata=client.V1ObjectMeta(name="jupyter-a", labels={"component": "singleuser-server"}),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="notebook",
                    image="jupyterhub/singleuser:5",
                    ports=[client.V1ContainerPort(name="notebook-port", container_port=8888)],
                    resources=client.V1ResourceRequirements(
                        requests={"memory": "1G"}, limits={"memory": "2G"}
                    ),
                )
            ],
            automount_service_account_token=False,
        ),
    )
    created = await core.create_namespaced_pod("jhub-user", manifest)
    assert created.status.phase == "Pending" and created.status.qos_class == "Burstable"
    cluster.store.record_event(
        cluster.store.get("pods", "jhub-user", "jupyter-a"), "Scheduled", "assigned"
    )
    await core.create_namespaced_secret(
        "jhub-user", client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"a": "b"})
    )
    await core.create_namespaced_service(
        "jhub-user",
        client.V1Service(
            metadata=client.V1ObjectMeta(name="jupyter-a"),
            spec=client.V1ServiceSpec(
                selector={"a": "b"}, ports=[client.V1ServicePort(port=8888, target_port=8888)]
            ),
        ),
    )
    await core.create_namespaced_persistent_volume_claim(
        "jhub-user",
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="claim-a"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    with pytest.raises(ApiException) as info:
        await core.create_namespaced_pod("jhub-user", manifest)
    assert info.value.status == 409
    listing = await core.list_namespaced_pod(
        "jhub-user", label_selector="component=singleuser-server", _request_timeout=5
    )
    assert [p.metadata.name for p in listing.items] == ["jupyter-a"]
    # the reflector's list + watch with resource_version, as in kubespawner/reflector.py
    w = watch.Watch()
    events = []

    async def consume():
        async for event in w.stream(
            core.list_namespaced_pod,
            "jhub-user",
            label_selector="component=singleuser-server",
            resource_version=listing.metadata.resource_version,
            timeout_seconds=10,
            _request_timeout=15,
        ):
            events.append(event)
            if event["type"] == "DELETED":
                w.stop()

    task = asyncio.create_task(consume())
    await poll(lambda: cluster.store._watches["pods"], message="watch registered")
    cluster.store.patch(
        "pods", "jhub-user", "jupyter-a", {"status": {"phase": "Running"}}, subresource="status"
    )
    await core.delete_namespaced_pod(
        "jupyter-a",
        "jhub-user",
        body=client.V1DeleteOptions(grace_period_seconds=0),
        _request_timeout=5,
    )
    await asyncio.wait_for(task, 10)
    assert [(e["type"], e["object"].status.phase) for e in events] == [
        ("MODIFIED", "Running"),
        ("DELETED", "Running"),
    ]
    events = await core.list_namespaced_event("jhub-user", field_selector="involvedObject.kind=Pod")
    assert [(e.reason, e.involved_object.name) for e in events.items] == [
        ("Scheduled", "jupyter-a")
    ]
    await core.delete_namespaced_persistent_volume_claim(
        "claim-a", "jhub-user", body=client.V1DeleteOptions()
    )
    with pytest.raises(ApiException) as info:
        await core.read_namespaced_persistent_volume_claim("claim-a", "jhub-user")
    assert info.value.status == 404


# ------------------------------------------------------------------ standalone


async def test_standalone_serve(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.k8s",
        "serve",
        "--kubeconfig",
        str(kubeconfig),
        "--nodes",
        "2",
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert line.startswith("Kubernetes emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        assert json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
        await config.load_kube_config(config_file=str(kubeconfig))
        async with client.ApiClient() as api_client:
            nodes = await client.CoreV1Api(api_client).list_node()
        assert sorted(n.metadata.name for n in nodes.items) == ["node-1", "node-2"]
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


# ------------------------------------------------------------------ the in-process store API (controllers use it)


async def test_store_in_process_api(cluster):
    store = cluster.store
    changes = []
    store.on_change(
        lambda type_, resource, obj: changes.append((type_, resource, obj["metadata"]["name"]))
    )
    watch = store.watch("pods", field_selector="spec.nodeName=node-1")
    store.create("pods", pod("mine", node="node-1"), namespace="default")
    store.create("pods", pod("theirs", node="node-2"), namespace="default")
    store.patch("pods", "default", "mine", {"status": {"phase": "Running"}}, subresource="status")
    store.delete("pods", "default", "mine", grace_period_seconds=0)
    events = []
    async for event in watch:
        events.append((event["type"], event["object"]["status"]["phase"]))
        event["object"]["status"]["phase"] = "mutated"  # copies: the store is unaffected
        if len(events) == 3:
            watch.close()
    assert events == [("ADDED", "Pending"), ("MODIFIED", "Running"), ("DELETED", "Running")]
    assert ("ADDED", "pods", "theirs") in changes and ("DELETED", "pods", "mine") in changes
    # logs: read, follow in process, closed by the container's exit or the pod's deletion
    store.create("pods", pod("logger", node="node-1"), namespace="default")
    store.open_log("default", "logger", "c")
    assert store.read_log("default", "logger") == []
    store.append_log("default", "logger", "c", "one")
    lines = []

    async def follow():
        async for _, line in store.follow_log("default", "logger"):
            lines.append(line)

    task = asyncio.create_task(follow())
    await poll(lambda: lines == ["one"], message="backlog")
    store.append_log("default", "logger", "c", "two")
    store.delete("pods", "default", "logger", grace_period_seconds=0)
    await asyncio.wait_for(task, 10)
    assert lines == ["one", "two"]
    # stored objects are not shared with callers
    created = store.create(
        "configmaps", {"metadata": {"name": "cm"}, "data": {"a": "1"}}, namespace="default"
    )
    created["data"]["a"] = "2"
    assert store.get("configmaps", "default", "cm")["data"] == {"a": "1"}
