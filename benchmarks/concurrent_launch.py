"""Benchmark: N cached launches at once, for the ``http_timeout`` default.

One emulated cluster (one node), one OCI registry holding the image, one git
repository, one hub with BinderSpawner and the real binder_service at its
defaults (``http_timeout`` 150 s). N users launch the same repository at the
same moment; each launch is followed on its progress stream until "ready".
The kubelet runs each pod's real ``jupyterhub-singleuser`` on this machine,
so N servers start on the same CPUs, as on a small node.

Reported per launch: spawn-to-ready seen by the client, and the part the hub
spends waiting for the server to answer HTTP (the span ``http_timeout``
bounds: the hub's "took N seconds to start" minus the time before
``KubeSpawner.start`` returned is not logged, so the pod's own start is
read from the hub log's "Server ... responded in N s" lines when present).

    .venv-test-latest/bin/python benchmarks/concurrent_launch.py [--launches 9] [--json]
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

from benchmarks.spawn import PREFIX_NAME, binder_config, wait_ready  # noqa: E402
from binder_spawner.images import image_name  # noqa: E402
from binder_spawner.repos import RepoPolicy  # noqa: E402
from tests.gitserver import GitServer  # noqa: E402
from tests.hub import start_hub  # noqa: E402
from tests.k8s.catalog import SINGLEUSER  # noqa: E402
from tests.k8s.cluster import Cluster  # noqa: E402
from tests.k8s.fixtures import reset_kubespawner_config  # noqa: E402
from tests.registry import Registry  # noqa: E402
from tests.utils import free_port, poll  # noqa: E402


async def launch(hub, name, options):
    status, body = await hub.api("POST", f"/users/{name}")
    assert status == 201, (status, body)
    started = time.perf_counter()
    status, body = await hub.api("POST", f"/users/{name}/server", json=options)
    assert status in (201, 202), (status, body)
    if status == 202:
        await wait_ready(hub, name)
    return time.perf_counter() - started


def responded_times(log):
    """Seconds the hub waited for each server's first HTTP answer (jupyterhub utils.wait_for_http_server)."""
    return [
        float(s)
        for s in re.findall(r"Server at http://127\.[0-9.:]+/user/\S+ responded in ([0-9.]+)s", log)
    ]


async def run(launches):
    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        tmp = Path(tmp)
        registry = Registry(tmp / "registry").start()
        git = GitServer(tmp / "git").start()
        url = git.create_repo("org/bench", {"requirements.txt": "numpy\n"})
        policy = RepoPolicy(allow_http=True, allowed_hosts=[git.host])
        spec = await policy.resolve(policy.parse({"repo": url, "ref": "main"}))
        image = image_name(spec, spec.commit, prefix=f"{registry.host}/{PREFIX_NAME}")
        name, tag = image.split("/", 1)[1].rsplit(":", 1)
        registry.push_image(name, tag)

        cluster = Cluster(nodes=1, registry_url=registry.url, directory=tmp / "k8s")
        cluster.catalog.add(f"{registry.host}/{PREFIX_NAME}*", SINGLEUSER, in_registry=True)
        await cluster.start()
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
        reset_kubespawner_config()
        try:
            service_port = free_port()
            config = textwrap.dedent(
                binder_config(registry, git, service_port, cluster.kubeconfig_path)
            )
            # the spawner's own defaults for the timeouts under test
            config = config.replace("c.BinderSpawner.start_timeout = 120\n", "")
            hub = await start_hub(
                tmp / "hub",
                config,
                env={"KUBECONFIG": str(cluster.kubeconfig_path)},
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
                options = {"repo": url, "ref": "main"}
                # one warm-up launch: the node pulls the image, the hub starts its reflectors
                await launch(hub, "warm", options)
                times = await asyncio.gather(
                    *(launch(hub, f"c{i}", options) for i in range(launches))
                )
                log = hub.log()
            finally:
                await hub.stop()
        finally:
            await cluster.stop()
            git.stop()
            registry.stop()
        responded = responded_times(log)[1:]
        return {
            "launches": launches,
            "cpus": os.cpu_count(),
            "client_s": sorted(round(t, 1) for t in times),
            "client_max_s": max(times),
            "client_median_s": statistics.median(times),
            "http_wait_s": sorted(round(t, 1) for t in responded),
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args.launches))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['launches']} launches at once on {results['cpus']} CPUs")
    print(
        f"spawn-to-ready: median {results['client_median_s']:.1f} s, max {results['client_max_s']:.1f} s"
    )
    print(f"  each: {results['client_s']}")
    print(f"hub waiting for HTTP: {results['http_wait_s']}")


if __name__ == "__main__":
    main()
