"""Benchmark: end-to-end spawn time of a plain KubeSpawner on the Kubernetes emulator.

Starts the emulator (API server, scheduler loop, kubelets) in this process
and a real JupyterHub + configurable-http-proxy whose spawner is a plain
``kubespawner.KubeSpawner`` pointed at it through ``KUBECONFIG``. Then, one
user after another, N times: ``POST /hub/api/users/<u>/server`` and wait
until a request through the proxy to ``/user/<u>/api/status`` answers 200
(the single-user server is up and routed). That wall time is one spawn; the
server is then stopped (not timed).

Each spawn pulls the single-user image on a node that lacks it (``--nodes``
nodes, pull time = size / bandwidth x ``--time-scale``), starts
``jupyterhub-singleuser`` as a local process on the pod's address, and
includes the hub's own polling. Prints a table, or JSON with ``--json``.

    .venv-test-latest/bin/python benchmarks/k8s_spawn.py [--spawns 10] [--nodes 2] [--json]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hub import start_hub  # noqa: E402
from tests.k8s.cluster import Cluster  # noqa: E402
from tests.utils import poll  # noqa: E402

IMAGE = "quay.io/jupyterhub/singleuser:5.2.1"

HUB_CONFIG = """
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.JupyterHub.log_level = "INFO"
c.KubeSpawner.image = {image!r}
c.KubeSpawner.namespace = "default"
c.KubeSpawner.hub_connect_ip = "127.0.0.1"
c.KubeSpawner.start_timeout = 120
c.KubeSpawner.http_timeout = 120
"""


async def spawn_once(hub, user):
    """Seconds from the spawn request until the server answers through the proxy."""
    started = time.perf_counter()
    status, body = await hub.api("POST", f"/users/{user}/server")
    if status not in (201, 202):
        raise RuntimeError(f"spawn of {user} failed: {status} {body}")
    headers = {"Authorization": f"token {hub.token}"}

    async def answers():
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(
                    f"{hub.url}/user/{user}/api/status", headers=headers, allow_redirects=False
                ) as response:
                    return response.status == 200
        except aiohttp.ClientError:
            return False

    await poll(answers, timeout=180, interval=0.05, message=f"{user}'s server")
    elapsed = time.perf_counter() - started
    await hub.api("DELETE", f"/users/{user}/server")

    async def stopped():
        _, model = await hub.api("GET", f"/users/{user}")
        return not model.get("servers")

    await poll(stopped, timeout=60, interval=0.1, message=f"{user}'s server to stop")
    return elapsed


async def run(args):
    with tempfile.TemporaryDirectory(prefix="k8s-spawn-bench-") as tmp:
        node = {"time_scale": args.time_scale, "bandwidth": args.bandwidth_mib * 1024 * 1024}
        cluster = await Cluster(
            nodes=args.nodes, node_defaults=node, directory=Path(tmp) / "k8s"
        ).start()
        hub = None
        try:
            env = {"KUBECONFIG": str(cluster.kubeconfig_path)}
            hub = await start_hub(Path(tmp) / "hub", HUB_CONFIG.format(image=IMAGE), env=env)
            users = [f"bench{i}" for i in range(args.spawns)]
            for user in users:
                await hub.api("POST", f"/users/{user}")
            times = []
            for user in users:
                times.append(await spawn_once(hub, user))
                if not args.json:
                    print(f"  spawn {len(times):2d}  {user:10s} {times[-1]:7.2f} s", flush=True)
            pulls = sum(1 for e in cluster.store.select("events") if e["reason"] == "Pulling")
        finally:
            if hub is not None:
                await hub.stop()
            await cluster.stop()
    return {
        "spawns": len(times),
        "nodes": args.nodes,
        "time_scale": args.time_scale,
        "image_pulls": pulls,
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "times_s": [round(t, 3) for t in times],
        "cpus": os.cpu_count(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spawns", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--time-scale", type=float, default=0.1, help="multiplies image pull times")
    parser.add_argument("--bandwidth-mib", type=float, default=200, help="pull bandwidth, MiB/s")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
        return
    print()
    print(f"{'spawns':>8} {'nodes':>6} {'pulls':>6} {'median s':>9} {'min s':>7} {'max s':>7}")
    print(
        f"{result['spawns']:>8} {result['nodes']:>6} {result['image_pulls']:>6} "
        f"{result['median_s']:>9.2f} {result['min_s']:>7.2f} {result['max_s']:>7.2f}"
    )


if __name__ == "__main__":
    main()
