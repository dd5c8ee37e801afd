"""Kubernetes calls under API faults, in process against the emulator.

- :class:`binder_spawner.kuberetry.ApiRetry` through injected 5xx, 429 and
  outages, with a real ``kubernetes_asyncio`` client;
- BinderSpawner's shared pod reflector after it failed to start during an
  outage (KubeSpawner keeps the dead one; the subclass replaces it);
- the emulator's fault controls, driven from another process;
- the orphan-build decisions (pure).
"""

import asyncio
import json
import logging
import secrets
import sys

import aiohttp
import pytest
from jupyterhub.objects import Hub
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException
from traitlets.config import Config

from binder_spawner.errors import SpawnException
from binder_spawner.kuberetry import CLUSTER_UNAVAILABLE_MESSAGE, ApiRetry, ClusterUnavailable
from binder_spawner.orphans import orphan_decisions
from binder_spawner.spawner import BinderSpawner, reflector_is_dead

from .k8s.faults import Fault
from .test_kubespawner_emulated import User
from .utils import REPO_ROOT, free_port, poll

log = logging.getLogger(__name__)

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "labels": {"component": "singleuser-server"}},
    "spec": {"containers": [{"name": "c", "image": "registry.example.org/notebook:1"}]},
}


@pytest.fixture
async def api(k8s_cluster):
    k8s_cluster.store.create("pods", dict(POD), namespace="default")
    await config.load_kube_config(config_file=str(k8s_cluster.kubeconfig_path))
    async with client.ApiClient() as api_client:
        yield client.CoreV1Api(api_client)


def retry(deadline=5):
    return ApiRetry(request_timeout=5, deadline=deadline, log=log)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_server_errors_are_retried(k8s_cluster, api, status):
    fault = k8s_cluster.faults.add(
        Fault(resource="pods", verbs={"get"}, error_rate=1.0, status=status, count=3)
    )
    pod = await retry().call(api.read_namespaced_pod, "p", "default", what="read pod")
    assert pod.metadata.name == "p"
    assert fault.injected == 3


async def test_answers_are_not_retried(k8s_cluster, api):
    before = k8s_cluster.api.request_count
    with pytest.raises(ApiException) as info:
        await retry().call(api.read_namespaced_pod, "nope", "default", what="read pod")
    assert info.value.status == 404
    assert k8s_cluster.api.request_count == before + 1


async def test_an_outage_longer_than_the_deadline_raises_cluster_unavailable(k8s_cluster, api):
    k8s_cluster.faults.outage(600)
    with pytest.raises(ClusterUnavailable) as info:
        await retry(deadline=0.5).call(api.read_namespaced_pod, "p", "default", what="read pod")
    assert info.value.last.status == 503
    assert "HTTP 503" in str(info.value)


async def test_a_refused_connection_is_retried_then_gives_up(k8s_cluster, api):
    api.api_client.configuration.host = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnavailable):
        await retry(deadline=0.5).call(api.read_namespaced_pod, "p", "default", what="read pod")


def make_spawner(name, **traits):
    cfg = Config()
    cfg.BinderSpawner.namespace = "default"
    cfg.BinderSpawner.image_prefix = "registry.example.org/binder-"
    for key, value in traits.items():
        setattr(cfg.BinderSpawner, key, value)
    return BinderSpawner(
        hub=Hub(ip="127.0.0.1", port=free_port(), base_url="/hub/"),
        user=User(name),
        config=cfg,
        api_token=secrets.token_hex(16),
        oauth_client_id=f"jupyterhub-user-{name}",
    )


async def test_a_reflector_that_failed_in_an_outage_is_replaced(k8s_cluster):
    spawner = make_spawner("alice", k8s_api_outage_timeout=0.5)
    k8s_cluster.faults.outage(600, status=500)
    with pytest.raises(SpawnException) as info:
        await spawner._start_watching_pods()
    assert CLUSTER_UNAVAILABLE_MESSAGE in str(info.value)
    dead = spawner.pod_reflector
    assert dead is not None and reflector_is_dead(dead)

    k8s_cluster.faults.clear()
    k8s_cluster.store.create("pods", dict(POD), namespace="default")
    reflector = await spawner._start_watching_pods()
    assert reflector is not dead and spawner.pod_reflector is reflector
    assert "default/p" in reflector.pods
    # and it follows the cluster from now on
    k8s_cluster.store.delete("pods", "default", "p", grace_period_seconds=0)
    await poll(lambda: "default/p" not in reflector.pods, timeout=10, message="pod deletion seen")


def build_pod(name, phase="Running"):
    return {"metadata": {"name": name}, "status": {"phase": phase}}


def test_orphan_decisions():
    since = {}
    pods = [build_pod("run"), build_pod("done", "Succeeded"), build_pod("watched")]
    assert orphan_decisions(pods, {"watched"}, since, now=100, grace_period=30) == [
        ("done", "succeeded")
    ]
    assert since == {"run": 100}
    # within the grace period: kept; a launch attaching resets the clock
    assert orphan_decisions(pods[:1], set(), since, now=120, grace_period=30) == []
    assert orphan_decisions(pods[:1], {"run"}, since, now=125, grace_period=30) == []
    assert since == {}
    assert orphan_decisions(pods[:1], set(), since, now=130, grace_period=30) == []
    [(name, reason)] = orphan_decisions(pods[:1], set(), since, now=160, grace_period=30)
    assert name == "run" and "30 s" in reason
    # gone pods are forgotten
    assert since == {}
    orphan_decisions([build_pod("x")], set(), since, now=0, grace_period=30)
    orphan_decisions([], set(), since, now=1, grace_period=30)
    assert since == {}


async def fault_cli(cluster, *args):
    """``python -m tests.k8s fault`` in another process, as a benchmark would run it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.k8s",
        "fault",
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return json.loads(out)


@pytest.mark.parametrize("k8s_cluster", [{"nodes": 1, "rbac": True}], indirect=True)
async def test_faults_are_driven_from_another_process(k8s_cluster, api):
    # an open watch, as a reflector keeps one
    watch = await api.list_namespaced_pod(
        "default", watch=True, timeout_seconds=600, _preload_content=False
    )
    shown = await fault_cli(k8s_cluster, "outage", "600")
    assert shown["outage_seconds_left"] > 500
    with pytest.raises(ApiException) as info:
        await api.read_namespaced_pod("p", "default")
    assert info.value.status == 503
    # the outage cut the open watch, as an API server that goes away does
    with pytest.raises(aiohttp.ClientPayloadError):
        async for _ in watch.content:
            pass

    shown = await fault_cli(k8s_cluster, "clear")
    assert shown == {"outage_seconds_left": 0.0, "outage_status": 503, "rules": []}
    shown = await fault_cli(
        k8s_cluster, "error", "--resource", "pods", "--verbs", "get", "--count", "1"
    )
    assert shown["rules"][0]["verbs"] == ["get"]
    with pytest.raises(ApiException) as info:
        await api.read_namespaced_pod("p", "default")
    assert info.value.status == 500
    assert (await api.read_namespaced_pod("p", "default")).metadata.name == "p"


@pytest.mark.parametrize("k8s_cluster", [{"nodes": 1, "rbac": True}], indirect=True)
async def test_fault_controls_need_the_admin_token(k8s_cluster):
    token = k8s_cluster.token_for("default", "hub")
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            async with session.post(
                k8s_cluster.url + "/emulator/faults",
                json={"outage": {"seconds": 60}},
                headers=headers,
            ) as resp:
                assert resp.status == 403
    assert not k8s_cluster.faults.describe()["outage_seconds_left"]


async def test_timeouts_fit_a_build(k8s_cluster):
    spawner = make_spawner("bob")
    assert (spawner.start_timeout, spawner.http_timeout) == (3900, 150)
    assert spawner.k8s_api_request_retry_timeout == 120
    spawner = make_spawner("carol", build_timeout=600, k8s_api_outage_timeout=30)
    assert spawner.start_timeout == 900
    assert spawner.k8s_api_request_retry_timeout == 30


@pytest.mark.parametrize("k8s_cluster", [{"nodes": 0}], indirect=True)
async def test_a_build_pod_is_followed_through_dropped_watches_and_410(k8s_cluster, api, caplog):
    from binder_spawner.builder import BuildPod

    caplog.set_level(logging.DEBUG, logger=__name__)

    store = k8s_cluster.store
    pod = BuildPod(
        api,
        "default",
        {"metadata": {"name": "p"}},
        log=log,
        emit=lambda *args: None,
        image_exists=lambda: None,
        retry=retry(),
        poll_interval=0.01,
    )
    # every watch ends after one event, as a flaky connection would, and
    # each reconnection takes a moment
    k8s_cluster.faults.add(Fault(resource="pods", verbs={"watch"}, drop_watch_after=1, latency=1.0))
    phases = []

    def done(obj):
        phases.append(obj["metadata"]["labels"].get("step"))
        return obj["status"].get("phase") == "Succeeded"

    follow = asyncio.ensure_future(pod.follow(done))
    await poll(lambda: phases, message="the first listing")
    for step in range(1, 4):
        store.patch("pods", "default", "p", {"metadata": {"labels": {"step": str(step)}}})
        if step == 3:
            # while the watch reconnects, the version it resumes from is
            # compacted away: 410, then a new listing
            store.compact()
        await poll(lambda step=step: str(step) in phases, timeout=10, message=f"step {step}")
    store.patch("pods", "default", "p", {"status": {"phase": "Succeeded"}}, subresource="status")
    finished = await asyncio.wait_for(follow, 10)
    assert finished["status"]["phase"] == "Succeeded"
    assert {"1", "2", "3"} <= set(phases)
    assert "expired, listing again" in caplog.text  # the 410 was met


@pytest.mark.parametrize("k8s_cluster", [{"nodes": 0}], indirect=True)
async def test_launches_attached_to_one_build_share_one_follower(k8s_cluster, api):
    """Ten launches of one image in one hub: the build pod's requests do not grow
    with the launches (one create, one list, one watch, one log stream, one delete)."""
    from binder_spawner.builder import WATCHED, BuildPod

    store = k8s_cluster.store
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "build-shared"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "builder", "image": "registry.example.org/r2d:1"}],
        },
    }

    async def launches(count):
        log_before = len(k8s_cluster.api.request_log)
        events = [[] for _ in range(count)]
        pods = [
            BuildPod(
                api,
                "default",
                manifest,
                log=log,
                emit=lambda phase, message, seen=seen: seen.append((phase, message)),
                image_exists=lambda: None,
                retry=retry(),
            )
            for seen in events
        ]
        runs = [asyncio.ensure_future(pod.run(60)) for pod in pods]
        await poll(lambda: WATCHED.get(("default", "build-shared")) == count, message="launches")
        await poll(lambda: store.get("pods", "default", "build-shared"), message="the pod")
        store.patch(
            "pods",
            "default",
            "build-shared",
            {"status": {"phase": "Running"}},
            subresource="status",
        )
        store.patch(
            "pods",
            "default",
            "build-shared",
            {"status": {"phase": "Succeeded"}},
            subresource="status",
        )
        await asyncio.wait_for(asyncio.gather(*runs), 30)
        requests = [
            info
            for info in list(k8s_cluster.api.request_log)[log_before:]
            if info.resource == "pods"
        ]
        return requests, events

    alone, (events,) = await launches(1)
    ten, all_events = await launches(10)
    verbs = sorted(info.verb for info in ten)
    print(f"pod requests: 1 launch {len(alone)}, 10 launches {len(ten)}: {verbs}")
    # as many as one launch makes, give or take a watch resumed
    assert len(ten) <= len(alone) + 2, verbs
    assert verbs.count("create") == 1 and verbs.count("watch") <= 2, verbs
    # every launch saw the build to its end
    for seen in all_events:
        assert seen[-1] == ("built", "Built image, launching..."), seen
    assert WATCHED.get(("default", "build-shared")) is None
