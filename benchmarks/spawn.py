"""Benchmark: spawn-to-ready of BinderSpawner versus plain KubeSpawner, image already built.

One emulated cluster (two nodes), one OCI registry holding the image, one git
repository. Two real hubs run one after the other against the same cluster:

- ``binder``: BinderSpawner with the real binder_service, each server
  launched with ``{"repo": <git URL>, "ref": "main"}`` (resolve, reservation,
  registry check, placement, then KubeSpawner);
- ``kube``: KubeSpawner with ``image`` set to the same image.

Each hub starts N servers one after the other (``POST /users/<u>/server``,
then the spawn's progress stream is followed until its "ready" event), and
stops each before the next. The first spawn of each hub warms caches (kubelet image
pull, ref resolution, KubeSpawner reflectors) and is not counted.

Reported: the median spawn-to-ready of each (client side and the hub's own
"took N seconds to start"), their ratio, and the median time BinderSpawner
spends before it calls ``KubeSpawner.start`` (from its debug log line
"Binder launch of ... prepared in N ms").

    .venv-test-latest/bin/python benchmarks/spawn.py [--spawns 20] [--json]
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from binder_service.permissions import service_scopes  # noqa: E402
from binder_spawner.images import image_name  # noqa: E402
from binder_spawner.repos import RepoPolicy  # noqa: E402
from tests.gitserver import GitServer  # noqa: E402
from tests.hub import start_hub  # noqa: E402
from tests.k8s.catalog import SINGLEUSER  # noqa: E402
from tests.k8s.cluster import Cluster  # noqa: E402
from tests.k8s.fixtures import reset_kubespawner_config  # noqa: E402
from tests.registry import Registry  # noqa: E402
from tests.utils import free_port, poll  # noqa: E402

PREFIX_NAME = "binder-"
SERVICE_SCOPES = service_scopes()


def binder_config(registry, git, service_port, kubeconfig):
    command = [
        sys.executable,
        "-m",
        "binder_service",
        f"--port={service_port}",
        "--per-repo-limit=1000",
        "--kubernetes",
        "--namespace=default",
    ]
    return f"""
    c.JupyterHub.spawner_class = "binder"
    c.JupyterHub.authenticator_class = "null"
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
    c.BinderSpawner.image_prefix = "{registry.host}/{PREFIX_NAME}"
    c.BinderSpawner.registry_url = "{registry.url}"
    c.BinderSpawner.start_timeout = 120
    c.RepoPolicy.allow_http = True
    c.RepoPolicy.allowed_hosts = ["{git.host}"]
    c.BinderServiceClient.url = "http://127.0.0.1:{service_port}/services/binder/"
    c.JupyterHub.services.append(
        {{"name": "binder", "url": "http://127.0.0.1:{service_port}", "command": {command!r},
          "environment": {{"KUBECONFIG": "{kubeconfig}"}}}}
    )
    c.JupyterHub.load_roles.append(
        {{"name": "binder-service", "scopes": {SERVICE_SCOPES!r}, "services": ["binder"]}}
    )
    """


def kube_config(image):
    return f"""
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.JupyterHub.authenticator_class = "null"
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
    c.KubeSpawner.image = "{image}"
    c.KubeSpawner.start_timeout = 120
    """


async def wait_ready(hub, name):
    """Follow the spawn's progress stream (one request, no polling load on the hub)."""
    url = f"{hub.api_url}/users/{name}/server/progress"
    headers = {"Authorization": f"token {hub.token}"}
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"progress of {name}: {resp.status} {await resp.text()}")
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[len("data:") :])
                if event.get("ready"):
                    return
                if event.get("failed"):
                    raise RuntimeError(f"{name}'s server failed: {event.get('message')}")
    raise RuntimeError(f"progress of {name} ended before the server was ready")


def pod_ip(cluster, user):
    for pod in cluster.store.select("pods", "default"):
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get("hub.jupyter.org/username") == user:
            return (pod.get("status") or {}).get("podIP")
    return None


async def gone(ip, port=8888):
    """True once nothing answers at ip:port any more."""
    try:
        _, writer = await asyncio.open_connection(ip, port)
    except OSError:
        return True
    writer.close()
    return False


async def spawn_series(hub, cluster, prefix, spawns, options):
    """Start and stop ``spawns + 1`` servers; returns client-side seconds (first dropped).

    After each stop the old server's address must stop answering before the
    next spawn: a new pod can get the same address, and the hub takes any
    HTTP answer there as its server being up.
    """
    times = []
    for i in range(spawns + 1):
        name = f"{prefix}{i}"
        status, body = await hub.api("POST", f"/users/{name}")
        assert status == 201, (status, body)
        started = time.perf_counter()
        status, body = await hub.api("POST", f"/users/{name}/server", json=options)
        assert status in (201, 202), (status, body)
        if status == 202:
            await wait_ready(hub, name)
        elapsed = time.perf_counter() - started
        if i:
            times.append(elapsed)
        ip = pod_ip(cluster, name)
        status, _ = await hub.api("DELETE", f"/users/{name}/server")
        assert status in (202, 204), status

        async def stopped(name=name):
            status, body = await hub.api("GET", f"/users/{name}")
            return "" not in body["servers"]

        await poll(stopped, timeout=60, interval=0.1, message=f"{name} stopped")
        if ip:
            await poll(lambda ip=ip: gone(ip), timeout=60, interval=0.1, message=f"{ip} free")
    return times


def hub_start_times(log, prefix):
    pattern = re.compile(rf"User {prefix}(\d+) took ([0-9.]+) seconds to start")
    return [float(s) for n, s in pattern.findall(log) if n != "0"]


def prepare_times(log):
    # the log name of a default server is the user name
    pattern = re.compile(r"Binder launch of b(\d+):? prepared in ([0-9.]+) ms")
    return [float(ms) for n, ms in pattern.findall(log) if n != "0"]


async def run(spawns):
    with tempfile.TemporaryDirectory(prefix="bench-spawn-") as tmp:
        tmp = Path(tmp)
        registry = Registry(tmp / "registry").start()
        git = GitServer(tmp / "git").start()
        url = git.create_repo("org/bench", {"requirements.txt": "numpy\n"})
        policy = RepoPolicy(allow_http=True, allowed_hosts=[git.host])
        spec = await policy.resolve(policy.parse({"repo": url, "ref": "main"}))
        image = image_name(spec, spec.commit, prefix=f"{registry.host}/{PREFIX_NAME}")
        name, tag = image.split("/", 1)[1].rsplit(":", 1)
        registry.push_image(name, tag)

        cluster = Cluster(nodes=2, registry_url=registry.url, directory=tmp / "k8s")
        cluster.catalog.add(f"{registry.host}/{PREFIX_NAME}*", SINGLEUSER, in_registry=True)
        await cluster.start()
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
        reset_kubespawner_config()
        env = {"KUBECONFIG": str(cluster.kubeconfig_path)}
        results = {}
        try:
            service_port = free_port()
            hub = await start_hub(
                tmp / "hub-binder",
                textwrap.dedent(
                    binder_config(registry, git, service_port, cluster.kubeconfig_path)
                ),
                env=env,
                timeout=90,
            )
            try:

                async def service_up():
                    with contextlib.suppress(aiohttp.ClientError):
                        async with aiohttp.ClientSession() as s:
                            u = f"http://127.0.0.1:{service_port}/services/binder/health"
                            async with s.get(u) as r:
                                return r.status == 200

                await poll(service_up, timeout=60, message="binder_service")
                binder = await spawn_series(hub, cluster, "b", spawns, {"repo": url, "ref": "main"})
                binder_log = hub.log()
            finally:
                await hub.stop()
            hub = await start_hub(
                tmp / "hub-kube", textwrap.dedent(kube_config(image)), env=env, timeout=90
            )
            try:
                kube = await spawn_series(hub, cluster, "k", spawns, {})
                kube_log = hub.log()
            finally:
                await hub.stop()
        finally:
            await cluster.stop()
            git.stop()
            registry.stop()
        prepare = prepare_times(binder_log)
        results = {
            "spawns": spawns,
            "binder_median_s": statistics.median(binder),
            "kube_median_s": statistics.median(kube),
            "ratio": statistics.median(binder) / statistics.median(kube),
            "binder_hub_median_s": statistics.median(hub_start_times(binder_log, "b") or [0]),
            "kube_hub_median_s": statistics.median(hub_start_times(kube_log, "k") or [0]),
            "binder_before_kubespawner_median_ms": statistics.median(prepare or [0]),
            "binder_before_kubespawner_max_ms": max(prepare or [0]),
            "binder_s": [round(t, 3) for t in binder],
            "kube_s": [round(t, 3) for t in kube],
            "binder_before_kubespawner_ms": prepare,
        }
        return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spawns", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args.spawns))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"spawns per spawner:              {results['spawns']} (after one warm-up)")
    print(f"BinderSpawner median:            {results['binder_median_s'] * 1000:.0f} ms")
    print(f"KubeSpawner median:              {results['kube_median_s'] * 1000:.0f} ms")
    print(f"ratio (goal <= 1.10):            {results['ratio']:.3f}")
    print(
        f"hub-side medians:                {results['binder_hub_median_s'] * 1000:.0f} ms / "
        f"{results['kube_hub_median_s'] * 1000:.0f} ms"
    )
    print(
        "BinderSpawner before KubeSpawner.start: median "
        f"{results['binder_before_kubespawner_median_ms']:.1f} ms, max "
        f"{results['binder_before_kubespawner_max_ms']:.1f} ms (goal < 50 ms)"
    )


if __name__ == "__main__":
    main()
