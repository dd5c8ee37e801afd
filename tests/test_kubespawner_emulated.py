"""Plain KubeSpawner (no subclass) against the Kubernetes emulator.

1. In process: KubeSpawner starts a pod, reports progress from the kubelet's
   events, polls, and stops it; the single-user server answers on the pod IP.
2. Through a real JupyterHub + configurable-http-proxy: a user's server is
   spawned by a plain KubeSpawner configured with ``c.KubeSpawner.*`` only,
   and the test reaches it through the proxy, with ``enable_user_namespaces``,
   ``services_enabled`` and ``events_enabled`` on and off.

Both dependency sets run this (KubeSpawner 7.0 / JupyterHub 5.5 and
KubeSpawner 7.1 / JupyterHub 6).
"""

import asyncio
import json
import secrets
import signal

import aiohttp
import pytest
from jupyterhub.objects import Hub, Server
from kubespawner import KubeSpawner
from traitlets.config import Config

from .k8s.catalog import GENERIC
from .utils import REPO_ROOT, free_port, poll

SINGLEUSER_IMAGE = "quay.io/jupyterhub/singleuser:5.2.1"
NOTEBOOK_IMAGE = "registry.example.org/notebook:1"
NODE = {"time_scale": 0.02}


class User:
    """The parts of a JupyterHub User a spawner reads."""

    def __init__(self, name):
        self.name = name
        self.escaped_name = name
        self.id = 1
        self.server = Server(base_url=f"/user/{name}/")
        self.url = self.server.base_url
        self.base_url = "/"


def make_spawner(name, hub_port, **traits):
    config = Config()
    config.KubeSpawner.image = SINGLEUSER_IMAGE
    config.KubeSpawner.start_timeout = 60
    config.KubeSpawner.http_timeout = 60
    config.KubeSpawner.namespace = "default"
    for key, value in traits.items():
        setattr(config.KubeSpawner, key, value)
    hub = Hub(ip="127.0.0.1", port=hub_port, base_url="/hub/")
    spawner = KubeSpawner(
        hub=hub,
        user=User(name),
        config=config,
        api_token=secrets.token_hex(16),
        oauth_client_id=f"jupyterhub-user-{name}",
    )
    return spawner


async def http_status(url):
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, allow_redirects=False) as response:
                return response.status
    except aiohttp.ClientError:
        return None


@pytest.fixture
async def cluster(k8s_cluster_factory):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=NODE)
    # In process there is no hub for jupyterhub-singleuser to talk to, so the
    # pod runs a stand-in image that serves HTTP on its port 8888.
    cluster.catalog.add(NOTEBOOK_IMAGE, GENERIC, size=300 * 1024 * 1024)
    return cluster


async def test_kubespawner_start_progress_poll_stop(cluster):
    store = cluster.store
    spawner = make_spawner("alice", free_port(), image=NOTEBOOK_IMAGE, events_enabled=True)
    assert isinstance(await spawner.poll(), int)  # nothing started yet

    messages = []

    async def watch_progress():
        # progress() follows _start_future, which start() sets right away
        await poll(lambda: spawner._start_future is not None, message="start() to begin")
        async for event in spawner.progress():
            messages.append(event["message"])

    progress = asyncio.create_task(watch_progress())
    url = await spawner.start()
    await asyncio.wait_for(progress, 30)

    pod = store.get("pods", "default", spawner.pod_name)
    ip = pod["status"]["podIP"]
    assert url == f"http://{ip}:8888"
    assert ip.startswith("127.") and ip != "127.0.0.1"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and "running" in status["state"]
    assert status["imageID"].startswith("registry.example.org/notebook@sha256:")
    text = "\n".join(messages)
    for expected in (
        "Successfully assigned default/jupyter-alice to node-1",
        f'Pulling image "{NOTEBOOK_IMAGE}"',
        f'Successfully pulled image "{NOTEBOOK_IMAGE}"',
        "Started container notebook",
    ):
        assert expected in text
    assert await spawner.poll() is None
    assert await poll(lambda: http_status(url), timeout=30) == 200

    await spawner.stop()
    assert not store.exists("pods", "default", spawner.pod_name)
    assert isinstance(await spawner.poll(), int)
    assert await http_status(url) is None  # the process is gone
    reasons = [e["reason"] for e in store.list("events", namespace="default")[0]]
    assert "Killing" in reasons


async def test_kubespawner_poll_reports_exit(cluster):
    spawner = make_spawner("bob", free_port(), image=NOTEBOOK_IMAGE, events_enabled=False)
    url = await spawner.start()
    assert await poll(lambda: http_status(url), timeout=30) == 200
    pod = cluster.store.get("pods", "default", spawner.pod_name)
    worker = cluster.kubelets["node-1"].workers[pod["metadata"]["uid"]]
    # the server exits cleanly by itself: with KubeSpawner's restartPolicy
    # OnFailure the container is not restarted and poll() reports exit code 0
    worker.processes["notebook"].signal(signal.SIGTERM)
    assert await poll(spawner.poll, timeout=30, message="poll() to report the exit") is not None
    assert await spawner.poll() == 1  # delete_stopped_pods removed the pod
    assert not cluster.store.exists("pods", "default", spawner.pod_name)


HUB_CONFIG = """
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "pw"
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.image = {image!r}
c.KubeSpawner.namespace = "default"
c.KubeSpawner.hub_connect_ip = "127.0.0.1"
c.KubeSpawner.start_timeout = 60
c.KubeSpawner.http_timeout = 60
c.KubeSpawner.enable_user_namespaces = {namespaces!r}
c.KubeSpawner.services_enabled = {services!r}
c.KubeSpawner.events_enabled = {events!r}
"""


@pytest.mark.parametrize(
    "namespaces, services, events",
    [
        pytest.param(False, False, True, id="defaults"),
        pytest.param(True, True, False, id="namespaces-services-no-events"),
    ],
)
async def test_real_hub_spawns_through_proxy(
    k8s_cluster_factory, hub_factory, namespaces, services, events
):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=NODE)
    config = HUB_CONFIG.format(
        image=SINGLEUSER_IMAGE, namespaces=namespaces, services=services, events=events
    )
    env = {"KUBECONFIG": str(cluster.kubeconfig_path)}
    if services:
        # the hub and its proxy resolve <pod>.<namespace>.svc.cluster.local
        env.update(cluster.dns_environment(pythonpath=str(REPO_ROOT)))
    hub = await hub_factory(config, env=env)
    browser = hub.browser()
    async with browser.get(hub.url + "/hub/login") as r:
        xsrf = r.cookies.get("_xsrf")
    data = {"username": "carol", "password": "pw"}
    if xsrf is not None:
        data["_xsrf"] = xsrf.value
    async with browser.post(hub.url + "/hub/login?next=", data=data) as r:
        assert r.status < 400, await r.text()

    status, _ = await hub.api("POST", "/users/carol/server")
    assert status in (201, 202)

    async def ready():
        _, model = await hub.api("GET", "/users/carol")
        server = (model.get("servers") or {}).get("")
        return server and server.get("ready")

    await poll(ready, timeout=90, interval=0.2, message="carol's server to be ready")

    pods, _ = cluster.store.list("pods", field_selector="metadata.name=jupyter-carol")
    assert len(pods) == 1
    namespace = pods[0]["metadata"]["namespace"]
    assert (namespace != "default") == namespaces  # a namespace of carol's own
    services_found, _ = cluster.store.list("services", namespace=namespace)
    assert bool(services_found) == services
    events_seen, _ = cluster.store.list("events", namespace=namespace)
    assert any(e["reason"] == "Started" for e in events_seen)

    # through configurable-http-proxy: the OAuth dance with the hub, then the API
    async with browser.get(hub.url + "/user/carol/lab") as r:
        assert r.status == 200, await r.text()
        assert str(r.url).startswith(hub.url + "/user/carol/")
    async with browser.get(hub.url + "/user/carol/api/status") as r:
        assert r.status == 200, await r.text()
        assert "started" in json.loads(await r.text())

    status, _ = await hub.api("DELETE", "/users/carol/server")
    assert status in (202, 204)

    async def stopped():
        _, model = await hub.api("GET", "/users/carol")
        return not model.get("servers")

    await poll(stopped, timeout=60, interval=0.2, message="carol's server to stop")
    await poll(lambda: not cluster.store.exists("pods", namespace, "jupyter-carol"), timeout=30)
