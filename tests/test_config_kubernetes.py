"""The root ``jupyterhub_config.py`` in Kubernetes mode, from a kubeconfig, as the README says.

A real hub, proxy and binder_service on the emulated cluster (``k8s_cluster``),
a registry and a git server on loopback; the settings come only from the
documented environment variables.
"""

import contextlib
import os
import subprocess
import sys

import aiohttp

from binder_spawner import build

from .utils import REPO_ROOT, free_port, poll

ROOT_CONFIG = str(REPO_ROOT / "jupyterhub_config.py")


def _env(tmp_path, kubeconfig, **extra):
    env = {
        "BINDER_PORT": str(free_port()),
        "BINDER_HUB_PORT": str(free_port()),
        "BINDER_PROXY_API_PORT": str(free_port()),
        "BINDER_SERVICE_PORT": str(free_port()),
        "BINDER_STATE_DIR": str(tmp_path / "state"),
        "KUBECONFIG": str(kubeconfig),
    }
    env.update(extra)
    return env


async def test_kubernetes_mode_starts_and_launches_build(
    k8s_cluster, registry, git_server, hub_factory, tmp_path
):
    repo = git_server.create_repo("org/demo")
    env = _env(
        tmp_path,
        k8s_cluster.kubeconfig_path,
        BINDER_IMAGE_PREFIX=f"{registry.host}/binder-",
        BINDER_REGISTRY=registry.url,
        BINDER_ALLOWED_HOSTS=git_server.host,
    )
    hub = await hub_factory(
        f"load_subconfig({ROOT_CONFIG!r})\n", env=env, port=int(env["BINDER_PORT"]), timeout=90
    )
    assert "Using Spawner: binder_spawner" in hub.log()

    async def service_health():
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session:
                async with session.get(hub.url + "/services/binder/health") as resp:
                    return resp.status == 200 and await resp.json()

    health = await poll(service_health, timeout=60, message="binder_service to answer")
    # the service reads the cluster through the hub's KUBECONFIG
    assert {"service": "kubernetes", "ok": True} in health["checks"]

    # a launch gets a slot from the service, misses the registry and builds
    build_pods = []

    def record(type_, resource, obj):
        labels = obj.get("metadata", {}).get("labels") or {}
        if resource == "pods" and labels.get(build.COMPONENT_LABEL) == build.BUILD_COMPONENT:
            build_pods.append(obj)

    k8s_cluster.store.on_change(record)
    status, _ = await hub.api("POST", "/users/visitor")
    assert status == 201
    status, body = await hub.api(
        "POST", "/users/visitor/server", json={"repo": repo, "ref": "main"}
    )
    assert status in (201, 202), body
    await poll(lambda: build_pods, timeout=60, message="a build pod")
    assert f"{registry.host}/binder-" in str(build_pods[0]["spec"])


def test_kubernetes_mode_without_image_prefix_refuses_to_start(k8s_cluster, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "-f", ROOT_CONFIG],
        cwd=tmp_path,
        env={**os.environ, **_env(tmp_path, k8s_cluster.kubeconfig_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "BINDER_IMAGE_PREFIX" in result.stderr + result.stdout
