"""What one placement answer costs the service, with many pods and nodes.

    python benchmarks/placement_answer.py [--pods 5000] [--nodes 50] [--images 1500] [--json]

Starts the Kubernetes emulator in this process (API server only: no scheduler
loop, no kubelets) with ``--nodes`` nodes of 256 GiB and 250 pods, each
reporting 60 cached images in ``status.images`` (the API server keeps the
50 largest, as the kubelet does), and ``--pods`` running user pods of
``--images`` images (Zipf popularity, each pod on a node that holds its
image). Then the service's :class:`~binder_service.placement_source.PlacementSource`,
talking to it over HTTP on loopback, measures:

- refresh: list pods and nodes (kubernetes_asyncio, raw JSON) and update the
  inventory, room and cache estimates, as every ``refresh_every`` seconds;
- the same without the two list calls (the service's own computation), and
  the longest the event loop goes without running a ready task while that
  runs in the thread a refresh runs it in;
- one answer from the last listing, for an image held on some node and for
  an image no node holds (the pull cost of every node is computed), each the
  median over ``--answers`` images; and the mean of ``rank()``, the call the
  HTTP handler awaits, while the listing is younger than ``refresh_every``.

Prints a table (median of ``--repeat`` runs for the refresh rows) or JSON.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMESPACE = "bench"
GB = 10**9


def image_name(i):
    return f"registry.example.org/binder/r2d-gh-org-repo{i}:{i:012x}"


def build(cluster, args, rng):
    """Nodes with image caches and running pods of popular images on them."""
    weights = [1 / (rank + 1) for rank in range(args.images)]
    sizes = [int(2 * GB * rng.lognormvariate(0, 0.6)) for _ in range(args.images)]
    caches = []
    for n in range(args.nodes):
        cached = set(rng.choices(range(args.images), weights, k=60))
        while len(cached) < 60:
            cached.add(rng.randrange(args.images))
        caches.append(sorted(cached))
        cluster.add_node(
            f"node-{n:03d}",
            cpu="16",
            memory="256Gi",
            pods=250,
            images={image_name(i): sizes[i] for i in cached},
        )
    holders = {}
    for n, cached in enumerate(caches):
        for i in cached:
            holders.setdefault(i, []).append(n)
    popular = sorted(holders)
    popular_weights = [weights[i] for i in popular]
    for p in range(args.pods):
        i = rng.choices(popular, popular_weights)[0]
        node = rng.choice(holders[i])
        cluster.store.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"jupyter-user-{p:05d}",
                    "namespace": NAMESPACE,
                    "labels": {"component": "singleuser-server"},
                },
                "spec": {
                    "nodeName": f"node-{node:03d}",
                    "containers": [
                        {
                            "name": "notebook",
                            "image": image_name(i),
                            "resources": {
                                "requests": {"memory": "1Gi"},
                                "limits": {"memory": "2Gi"},
                            },
                        }
                    ],
                },
                "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"},
            },
            NAMESPACE,
        )
    return holders


async def longest_pause(awaitable):
    """The longest the event loop went without running a ready task while ``awaitable`` ran."""
    done = asyncio.Event()
    longest = 0.0

    async def tick():
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        await awaitable
    finally:
        done.set()
        await ticker
    return longest


def median_ms(times):
    return round(statistics.median(times) * 1000, 3)


async def measure(args):
    from tests.k8s.cluster import Cluster

    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(directory=Path(directory), scheduler=False, kubelets=False)
        await cluster.start()
        try:
            cluster.store.create("namespaces", {"metadata": {"name": NAMESPACE}})
            holders = build(cluster, args, rng)
            os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
            from kubernetes_asyncio.config import kube_config

            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(cluster.kubeconfig_path)
            from binder_service.placement_source import PlacementSource

            source = PlacementSource(enabled=True, namespace=NAMESPACE, refresh_every=3600)
            await source.start()
            try:
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    pods = await source.refresh(max_age=0)
                    times.append(time.perf_counter() - started)
                assert len(pods) == args.pods
                rows.append(("refresh: list pods and nodes, update", median_ms(times), len(times)))

                nodes, _ = cluster.store.list("nodes")
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    source._update(pods, nodes)
                    times.append(time.perf_counter() - started)
                assert len(source._snapshot[3]) == args.nodes
                rows.append(("refresh without the list calls", median_ms(times), len(times)))
                # The same in the thread a refresh runs it in: the longest the
                # event loop then goes without running a ready task.
                loop = asyncio.get_running_loop()
                pauses = []
                for _ in range(args.repeat):
                    update = loop.run_in_executor(None, source._update, pods, nodes)
                    pauses.append(await longest_pause(update))
                rows.append(("event loop: longest pause meanwhile", median_ms(pauses), len(pauses)))

                held = [image_name(i) for i in rng.sample(sorted(holders), args.answers)]
                unheld = [
                    image_name(args.images + i) for i in range(args.answers)
                ]  # no node holds these
                for name, images in (("answer: image held", held), ("answer: image new", unheld)):
                    times = []
                    for image in images:
                        started = time.perf_counter()
                        answer = source.rank_snapshot(image, time.time())
                        times.append(time.perf_counter() - started)
                        assert answer
                    rows.append((name, median_ms(times), len(images)))
                started = time.perf_counter()
                for image in held:
                    await source.rank(image)
                per = (time.perf_counter() - started) / len(held)
                rows.append(
                    ("answer: rank() from the last listing", round(per * 1000, 3), len(held))
                )
            finally:
                await source.stop()
        finally:
            await cluster.stop()
    return [{"measure": m, "ms": ms, "samples": n} for m, ms, n in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--answers", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = asyncio.run(measure(args))
    setup = {"pods": args.pods, "nodes": args.nodes, "images": args.images}
    if args.json:
        print(json.dumps({"setup": setup, "results": rows}, indent=1))
        return 0
    print(f"{args.pods} pods, {args.nodes} nodes, {args.images} images")
    print(f"{'measure':<40}{'ms':>10}{'samples':>9}")
    for row in rows:
        print(f"{row['measure']:<40}{row['ms']:>10}{row['samples']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
