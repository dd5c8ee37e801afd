"""Fixtures: ``k8s_cluster`` (one emulated cluster) and ``k8s_cluster_factory``.

    async def test_x(k8s_cluster):            # a started Cluster, one node
        k8s_cluster.store.list("pods")

    @pytest.mark.parametrize("k8s_cluster", [{"nodes": 2, "rbac": True}], indirect=True)
    async def test_y(k8s_cluster): ...       # Cluster options via indirect parametrization

    async def test_z(k8s_cluster_factory):
        cluster = await k8s_cluster_factory(nodes=3, seed=1)

Every cluster is stopped after the test and, if the test failed, its objects
are printed. ``KUBECONFIG`` points at the newest cluster for the test's
duration and KubeSpawner's cached client configuration is reset, so
``kubespawner.clients.shared_client`` talks to it.
"""

import sys

import pytest

from .cluster import Cluster


def reset_kubespawner_config():
    """KubeSpawner loads the kubeconfig once per process (an lru_cache); forget it."""
    try:
        from kubespawner import clients
    except ImportError:
        return
    clients.load_config.cache_clear()


async def stop_kubespawner_reflectors():
    """KubeSpawner keeps its pod and event reflectors in a class attribute that
    outlives a test (and its cluster); stop them so the next test starts fresh."""
    try:
        from kubespawner import KubeSpawner
    except ImportError:
        return
    for reflector in list(KubeSpawner.reflectors.values()):
        try:
            await reflector.stop()
        except Exception:
            pass
    KubeSpawner.reflectors.clear()


@pytest.fixture
async def k8s_cluster_factory(tmp_path, monkeypatch, request):
    clusters = []

    async def factory(**options):
        options.setdefault("directory", tmp_path / f"k8s{len(clusters)}")
        cluster = Cluster(**options)
        await cluster.start()
        clusters.append(cluster)
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig_path))
        # kubernetes_asyncio reads KUBECONFIG once, when it is imported
        try:
            from kubernetes_asyncio.config import kube_config
        except ImportError:
            pass
        else:
            monkeypatch.setattr(
                kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig_path)
            )
        reset_kubespawner_config()
        return cluster

    yield factory
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    await stop_kubespawner_reflectors()
    for cluster in clusters:
        if failed:
            sys.stderr.write(
                f"\n===== k8s objects {cluster.url} =====\n{cluster.store.dump()[-20000:]}\n"
            )
        await cluster.stop()
    reset_kubespawner_config()


@pytest.fixture
async def k8s_cluster(k8s_cluster_factory, request):
    options = {"nodes": 1}
    options.update(getattr(request, "param", None) or {})
    return await k8s_cluster_factory(**options)
