"""List and watch throughput of the Kubernetes emulator's API server with many pods.

    python benchmarks/k8s_api.py [--pods 5000] [--repeat 5] [--controllers] [--json]

Starts ``python -m tests.k8s serve`` in a subprocess with no nodes, and without
the scheduler loop and kubelets unless ``--controllers`` (their change
listeners then run on every write), creates ``--pods`` pods over HTTP, then
measures, all over HTTP on loopback:

- create: pods per second, 16 concurrent POSTs (each validated against the schema);
- list: a full ``GET /api/v1/namespaces/bench/pods`` (raw JSON parse), and the same
  through kubernetes_asyncio (deserialised into V1Pod models, as KubeSpawner does);
- list with a label selector matching 1 % and with a field selector;
- watch snapshot: ``watch=true&resourceVersion=0`` until every pod arrived as ADDED;
- watch live: one watch open while ``--pods`` status patches are sent, until the
  last MODIFIED arrives (patch latency included).

Prints a table (median of ``--repeat`` runs per row) or JSON with ``--json``.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

NS = "/api/v1/namespaces/bench"


def pod(n):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{n:05d}",
            "labels": {"app": "bench", "bucket": str(n % 100), "component": "singleuser-server"},
            "annotations": {"hub.jupyter.org/username": f"user-{n}"},
        },
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:2024-01-01",
                    "ports": [{"containerPort": 8888, "name": "notebook-port"}],
                    "env": [{"name": "JUPYTERHUB_USER", "value": f"user-{n}"}],
                    "resources": {"requests": {"memory": "1G"}, "limits": {"memory": "2G"}},
                }
            ],
            "nodeName": f"node-{n % 10}",
        },
    }


async def start_server(directory, controllers=False):
    kubeconfig = Path(directory) / "kubeconfig"
    options = Path(directory) / "cluster.json"
    # Without controllers only the API server runs: the throughput measured is its own.
    options.write_text(json.dumps({"scheduler": controllers, "kubelets": controllers}))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.k8s",
        "serve",
        "--nodes",
        "0",
        "--config",
        str(options),
        "--kubeconfig",
        str(kubeconfig),
        "--log-level",
        "WARNING",
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
    url = line.rsplit(" ", 1)[1].strip()
    token = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]
    return process, url, token, kubeconfig


async def timed(coro_factory, repeat):
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = await coro_factory()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


async def run(args):
    results = []

    def record(name, seconds, items):
        results.append(
            {
                "measure": name,
                "seconds": round(seconds, 4),
                "items": items,
                "per_second": round(items / seconds, 1),
            }
        )

    with tempfile.TemporaryDirectory() as directory:
        process, url, token, kubeconfig = await start_server(directory, args.controllers)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with aiohttp.ClientSession(headers=headers) as session:
                async with session.post(
                    url + "/api/v1/namespaces", json={"metadata": {"name": "bench"}}
                ) as r:
                    assert r.status == 201, await r.text()
                semaphore = asyncio.Semaphore(16)

                async def create(n):
                    async with semaphore:
                        async with session.post(url + NS + "/pods", json=pod(n)) as r:
                            assert r.status == 201, await r.text()

                start = time.perf_counter()
                await asyncio.gather(*(create(n) for n in range(args.pods)))
                record("create (16 concurrent POSTs)", time.perf_counter() - start, args.pods)

                async def list_raw(**params):
                    async with session.get(url + NS + "/pods", params=params) as r:
                        body = json.loads(await r.read())
                    return len(body["items"])

                seconds, count = await timed(list_raw, args.repeat)
                assert count == args.pods, count
                record("list, raw JSON", seconds, count)
                seconds, count = await timed(
                    lambda: list_raw(labelSelector="app=bench,bucket=7"), args.repeat
                )
                record("list, label selector (1 %)", seconds, count)
                seconds, count = await timed(
                    lambda: list_raw(fieldSelector="spec.nodeName=node-3"), args.repeat
                )
                record("list, field selector (10 %)", seconds, count)

                from kubernetes_asyncio import client, config

                await config.load_kube_config(config_file=str(kubeconfig))
                async with client.ApiClient() as api_client:
                    core = client.CoreV1Api(api_client)

                    async def list_models():
                        return len(
                            (await core.list_namespaced_pod("bench", _request_timeout=120)).items
                        )

                    seconds, count = await timed(list_models, max(1, args.repeat // 2))
                    record("list, kubernetes_asyncio models", seconds, count)

                async def watch_snapshot():
                    received = 0
                    params = {"watch": "true", "resourceVersion": "0", "timeoutSeconds": "120"}
                    async with session.get(url + NS + "/pods", params=params) as r:
                        async for line in r.content:
                            if line.strip():
                                json.loads(line)
                                received += 1
                                if received == args.pods:
                                    break
                    return received

                seconds, count = await timed(watch_snapshot, args.repeat)
                record("watch, initial snapshot (ADDED)", seconds, count)

                async with session.get(url + NS + "/pods", params={"resourceVersion": "0"}) as r:
                    rv = (await r.json())["metadata"]["resourceVersion"]
                received = 0
                ready = asyncio.Event()

                async def watcher():
                    nonlocal received
                    params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "300"}
                    async with session.get(url + NS + "/pods", params=params) as r:
                        ready.set()
                        async for line in r.content:
                            if line.strip() and json.loads(line)["type"] == "MODIFIED":
                                received += 1
                                if received == args.pods:
                                    return

                task = asyncio.create_task(watcher())
                await ready.wait()

                async def patch(n):
                    async with semaphore:
                        async with session.patch(
                            url + NS + f"/pods/pod-{n:05d}/status",
                            json={"status": {"phase": "Running", "podIP": "127.0.0.1"}},
                            headers={"Content-Type": "application/strategic-merge-patch+json"},
                        ) as r:
                            assert r.status == 200, await r.text()

                start = time.perf_counter()
                await asyncio.gather(*(patch(n) for n in range(args.pods)))
                patched = time.perf_counter() - start
                await task
                record("status patches (16 concurrent)", patched, args.pods)
                record(
                    "watch, live MODIFIED (with the patches)", time.perf_counter() - start, received
                )
        finally:
            process.terminate()
            await process.wait()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--controllers",
        action="store_true",
        help="also run the scheduler loop and the kubelet pool (their change listeners) in the server",
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        print(
            json.dumps(
                {"pods": args.pods, "controllers": args.controllers, "results": results}, indent=2
            )
        )
        return
    what = "with scheduler and kubelets" if args.controllers else "API server alone"
    print(f"Kubernetes emulator API throughput, {args.pods} pods, {what}, median of {args.repeat}")
    print(f"{'measure':<42} {'seconds':>9} {'items':>7} {'items/s':>10}")
    for row in results:
        print(
            f"{row['measure']:<42} {row['seconds']:>9.3f} {row['items']:>7} {row['per_second']:>10.1f}"
        )


if __name__ == "__main__":
    main()
