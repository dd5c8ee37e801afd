"""Benchmark: concurrent reservations for one repository against a limit.

Starts a real JupyterHub with binder_service as its managed service
(per-repository limit 10), then sends N concurrent ``POST api/reservations``
for N different (user, server) pairs of one repository, straight to the
service, with an admin token (the verification of the caller's server, one
hub request per call for ordinary users, is not part of this measurement;
the token lookup is, cached after its first answer).

Reports how many were admitted (must equal the limit), reservations per
second over the whole burst, and latency percentiles.

    .venv-test-latest/bin/python benchmarks/reservations.py [--requests 500] [--limit 10] [--json]
"""

import argparse
import asyncio
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from binder_service.permissions import service_role  # noqa: E402
from tests.hub import start_hub  # noqa: E402
from tests.utils import free_port, poll  # noqa: E402


def percentile(values, q):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def run(requests, limit):
    port = free_port()
    command = [sys.executable, "-m", "binder_service", f"--per-repo-limit={limit}"]
    config = f"""
    c.JupyterHub.services.append(
        {{"name": "binder", "url": "http://127.0.0.1:{port}", "command": {command!r}}}
    )
    c.JupyterHub.load_roles.append({service_role()!r})
    c.JupyterHub.log_level = "INFO"
    """
    with tempfile.TemporaryDirectory() as directory:
        hub = await start_hub(Path(directory) / "hub", textwrap.dedent(config))
        try:
            url = f"http://127.0.0.1:{port}/services/binder/"
            headers = {"Authorization": f"token {hub.token}"}
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

                async def usage():
                    try:
                        async with session.get(url + "api/usage") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await poll(usage, timeout=60, message="binder_service")

                async def reserve(i):
                    body = {"user": f"bench-{i}", "server": "", "repo": "gh/org/popular"}
                    start = time.perf_counter()
                    async with session.post(url + "api/reservations", json=body) as resp:
                        await resp.read()
                        return resp.status, time.perf_counter() - start

                started = time.perf_counter()
                results = await asyncio.gather(*(reserve(i) for i in range(requests)))
                elapsed = time.perf_counter() - started
                async with session.get(url + "api/usage") as resp:
                    counted = (await resp.json())["repos"].get("gh/org/popular", 0)
        finally:
            await hub.stop()
    latencies = [latency for _, latency in results]
    statuses = [status for status, _ in results]
    return {
        "requests": requests,
        "limit": limit,
        "admitted": statuses.count(201),
        "refused": statuses.count(429),
        "other": len(statuses) - statuses.count(201) - statuses.count(429),
        "counted_after": counted,
        "seconds": round(elapsed, 3),
        "reservations_per_s": round(requests / elapsed, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 50), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 99), 1),
        "latency_max_ms": round(1000 * max(latencies), 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args.requests, args.limit))
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0 if result["admitted"] == result["limit"] == result["counted_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
