"""binder_service placement answers from an emulated cluster's pods and nodes."""

import asyncio
import threading

import pytest

from binder_service.metrics import build_pod_states
from binder_service.placement_source import PlacementSource
from tests.k8s.faults import Fault

GiB = 2**30


def user_pod(name, node, image):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "jupyterhub"}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "notebook",
                    "image": image,
                    "resources": {"requests": {"memory": "1Gi"}},
                }
            ],
        },
    }


@pytest.fixture
async def cluster(k8s_cluster_factory):
    cluster = await k8s_cluster_factory(scheduler=False, kubelets=False)
    cluster.add_node("node-1", memory="8Gi", images={"registry/held-by-status:abc": GiB})
    cluster.add_node("node-2", memory="8Gi")
    cluster.add_node("full", memory="1Gi")
    cluster.store.create("pods", user_pod("p1", "node-2", "registry/ran-here:abc"), "default")
    cluster.store.create("pods", user_pod("p2", "full", "registry/on-full:abc"), "default")
    return cluster


@pytest.fixture
async def source():
    sources = []

    async def make():
        placement = PlacementSource(enabled=True, namespace="default", refresh_every=0)
        await placement.start()
        sources.append(placement)
        return placement

    yield make
    for placement in sources:
        await placement.stop()


async def test_nodes_holding_the_image_come_first(cluster, source):
    placement = await source()
    from_status = await placement.rank("registry/held-by-status:abc")
    assert from_status[0] == ("node-1", 100)
    # node-2's complete image list, newer than the pod, lacks the pod's image: evicted
    assert ("node-2", 100) not in await placement.rank("registry/ran-here:abc")
    # the full node holds its image but has no room: not recommended
    on_full = await placement.rank("registry/on-full:abc")
    assert "full" not in [n for n, _ in on_full] and on_full
    # an unknown image: a stable choice, weights below the holders'
    unknown = await placement.rank("registry/new:abc")
    assert unknown == await placement.rank("registry/new:abc")
    assert all(1 <= w <= 50 for _, w in unknown)
    assert await placement.healthy()


async def test_refresh_updates_in_a_thread_and_answers_wait_for_it(cluster):
    threads = []

    class Recording(PlacementSource):
        def _update(self, pods, nodes):
            threads.append(threading.get_ident())
            return super()._update(pods, nodes)

    placement = Recording(enabled=True, namespace="default", refresh_every=3600)
    await placement.start()
    try:
        assert (await placement.rank("registry/held-by-status:abc"))[0] == ("node-1", 100)
        cluster.store.create("pods", user_pod("p3", "node-2", "registry/later:abc"), "default")
        cluster.store.patch(
            "pods", "default", "p3", {"status": {"phase": "Running"}}, subresource="status"
        )
        # A forced refresh (as the build metrics do) and an answer at once: the
        # answer waits for the listing that shows the new pod.
        pods, answer = await asyncio.gather(
            placement.refresh(max_age=0), placement.rank("registry/later:abc")
        )
        assert len(pods) == 3
        assert answer[0] == ("node-2", 100)
        # Both updates ran off the event loop's thread.
        assert len(threads) == 2 and threading.get_ident() not in threads
    finally:
        await placement.stop()


async def test_without_permission_to_read_nodes_it_uses_pods(cluster, source):
    cluster.faults.add(Fault(resource="nodes", status=403, error_rate=1.0))
    placement = await source()
    answer = await placement.rank("registry/ran-here:abc")
    assert answer[0] == ("node-2", 100)
    # nodes no pod ran on are unknown without node access
    assert {n for n, _ in answer} <= {"node-2", "full"}


async def test_unreachable_cluster_gives_no_answer(cluster, source):
    placement = await source()
    cluster.faults.outage(30)
    assert await placement.rank("registry/ran-here:abc") == []
    assert not await placement.healthy()


async def test_disabled_answers_nothing():
    placement = PlacementSource(enabled=False)
    await placement.start()
    assert await placement.rank("registry/x:1") == []


def build_pod(name, phase, started=None, finished=None):
    pod = user_pod(name, "node-1", "builder:1")
    pod["metadata"]["labels"] = {"app.kubernetes.io/component": "binder-build"}
    pod["metadata"]["uid"] = f"uid-{name}"
    status = {"phase": phase}
    if started:
        status["startTime"] = started
    if finished:
        status["containerStatuses"] = [
            {"name": "build", "state": {"terminated": {"exitCode": 0, "finishedAt": finished}}}
        ]
    pod["status"] = status
    return pod


def test_build_pod_states():
    pods = [
        build_pod("b1", "Running", "2026-01-01T00:00:00Z"),
        build_pod("b2", "Pending"),
        build_pod("b3", "Succeeded", "2026-01-01T00:00:00Z", "2026-01-01T00:02:30Z"),
        build_pod("b4", "Failed", "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z"),
        user_pod("notebook", "node-1", "image:1"),
    ]
    running, finished = build_pod_states(pods)
    assert running == 2
    assert finished == [("uid-b3", "success", 150.0), ("uid-b4", "failure", 10.0)]


async def test_build_metrics_from_the_cluster(cluster, tmp_path):
    from binder_service.app import BinderService

    pod = build_pod("b1", "Running", "2026-01-01T00:00:00Z")
    cluster.store.create("pods", pod, "default")
    app = BinderService()
    app.initialize(["--kubernetes", "--namespace=default"])
    await app.placement_source.start()
    try:
        await app.observe_builds()
        assert app.metrics.inprogress_builds._value.get() == 1
    finally:
        await app.placement_source.stop()
