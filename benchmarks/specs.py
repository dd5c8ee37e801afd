"""Benchmark: launch-link parsing throughput and ref-resolution latency.

1. parse + validate: every launch of one week of mybinder.org
   (/work/shared/data/mybinder-launches-2019-03-04.jsonl.gz, ~100k launches)
   through ``RepoPolicy.parse``, both as provider specs (``gh/org/repo/ref``)
   and as the equivalent web URLs (``https://github.com/org/repo/tree/ref``).
   Reports launches per second and microseconds per launch (best of --rounds).
2. resolve: ``RepoPolicy.resolve`` against real repositories served by
   ``git http-backend`` on loopback (tests/gitserver.py):
   - uncached: every call runs ``git ls-remote`` (cache TTL 0);
   - cached: the same (repository, ref) within the TTL;
   - burst: N concurrent resolutions of one uncached (repository, ref),
     which share one git call.
   Reports median and p95 latency in milliseconds.

    .venv-test-latest/bin/python benchmarks/specs.py [--json] [--limit N] [--rounds 3]
"""

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from binder_spawner.repos import RepoPolicy, ResolveCache, SpecError  # noqa: E402
from tests.gitserver import GitServer  # noqa: E402

DATA = Path("/work/shared/data/mybinder-launches-2019-03-04.jsonl.gz")
PROVIDERS = {"GitHub": "gh", "GitLab": "gl", "Git": "git", "Gist": "gist"}


def load_links(limit=None):
    specs, urls, other = [], [], 0
    with gzip.open(DATA, "rt") as f:
        for line in f:
            event = json.loads(line)
            prefix = PROVIDERS.get(event["provider"])
            if prefix is None:
                other += 1
                continue
            specs.append(f"{prefix}/{event['spec']}")
            if prefix == "gh":
                parts = event["spec"].split("/", 2)
                if len(parts) == 3:
                    urls.append(f"https://github.com/{parts[0]}/{parts[1]}/tree/{parts[2]}")
            if limit and len(specs) >= limit:
                break
    return specs, urls, other


def time_parse(policy, links, rounds):
    best = None
    accepted = 0
    for _ in range(rounds):
        accepted = 0
        start = time.perf_counter()
        for link in links:
            try:
                policy.parse(link)
                accepted += 1
            except SpecError:
                pass
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return {
        "links": len(links),
        "accepted": accepted,
        "rejected": len(links) - accepted,
        "seconds": round(best, 3),
        "per_second": round(len(links) / best),
        "us_per_link": round(best / len(links) * 1e6, 1),
    }


def summary(samples):
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return {
        "n": len(samples),
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "p95_ms": round(p95 * 1000, 3),
    }


async def time_resolve(repos=10, calls=50, burst=50):
    with tempfile.TemporaryDirectory() as tmp:
        server = GitServer(tmp).start()
        try:
            links = []
            for i in range(repos):
                name = f"org/repo{i}"
                server.create_repo(name, {"README.md": f"repo {i}"})
                server.branch(name, "dev")
                server.tag(name, "v1", annotated=True)
                for ref in ("main", "dev", "v1", "HEAD"):
                    links.append({"repo": server.repo_url(name), "ref": ref})
            settings = {"allow_http": True, "allowed_hosts": [server.host]}

            uncached = RepoPolicy(
                resolve_cache_ttl=0,
                resolve_negative_cache_ttl=0,
                resolve_cache=ResolveCache(),
                **settings,
            )
            specs = [uncached.parse(link) for link in links]
            samples = []
            for i in range(calls):
                start = time.perf_counter()
                await uncached.resolve(specs[i % len(specs)])
                samples.append(time.perf_counter() - start)
            result = {"uncached": summary(samples)}

            cached = RepoPolicy(resolve_cache=ResolveCache(), **settings)
            for spec in specs:
                await cached.resolve(spec)
            samples = []
            for i in range(calls * 20):
                start = time.perf_counter()
                await cached.resolve(specs[i % len(specs)])
                samples.append(time.perf_counter() - start)
            result["cached"] = summary(samples)

            fresh = RepoPolicy(resolve_cache=ResolveCache(), **settings)
            spec = fresh.parse({"repo": server.repo_url("org/repo0"), "ref": "dev"})
            before = server.requests["org/repo0"]
            start = time.perf_counter()
            await asyncio.gather(*(fresh.resolve(spec) for _ in range(burst)))
            result["burst"] = {
                "concurrent": burst,
                "wall_ms": round((time.perf_counter() - start) * 1000, 3),
                "git_calls": server.requests["org/repo0"] - before,
            }
            return result
        finally:
            server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N launches")
    parser.add_argument("--rounds", type=int, default=3, help="parse rounds (best is kept)")
    parser.add_argument("--calls", type=int, default=50, help="uncached resolutions to time")
    args = parser.parse_args(argv)

    specs, urls, other = load_links(args.limit)
    policy = RepoPolicy()
    results = {
        "parse_specs": time_parse(policy, specs, args.rounds),
        "parse_urls": time_parse(policy, urls, args.rounds),
        "skipped_other_providers": other,
    }
    results["resolve"] = asyncio.run(time_resolve(calls=args.calls))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'parse + validate':<28}{'links':>9}{'accepted':>10}{'per s':>10}{'us/link':>9}")
    for key in ("parse_specs", "parse_urls"):
        r = results[key]
        print(
            f"{key:<28}{r['links']:>9}{r['accepted']:>10}{r['per_second']:>10}{r['us_per_link']:>9}"
        )
    print()
    print(f"{'resolve':<28}{'n':>9}{'median ms':>12}{'p95 ms':>10}")
    for key in ("uncached", "cached"):
        r = results["resolve"][key]
        print(f"{key:<28}{r['n']:>9}{r['median_ms']:>12}{r['p95_ms']:>10}")
    b = results["resolve"]["burst"]
    print(
        f"burst of {b['concurrent']} concurrent, one ref: {b['wall_ms']} ms, "
        f"{b['git_calls']} git call(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
