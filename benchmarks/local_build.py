"""Local mode build and launch times, measured on this machine.

    python benchmarks/local_build.py [--repeat 5] [--json]

Run with a test environment's Python (``.venv-test-latest/bin/python``) from
the repository root, with ``node_modules/.bin`` on PATH; needs bubblewrap, git
and access to PyPI. It serves one small repository (``requirements.txt`` with
``six``, a notebook) from a real git smart-HTTP server on loopback and measures:

- ``build_first_s``: the first build, which also prepares the hub's cache of
  the Jupyter packages (JupyterLab, jupyterhub, their dependencies);
- ``build_s``: a build at a new commit (clone, venv, resolve, JupyterLab and
  jupyterhub from a copy of that cache, the requirement from PyPI, install,
  seal), each in a download cache of its own, as every build is; median of
  ``--repeat``;
- ``build_without_jupyter_cache_s``: the same with
  ``jupyter_cache = False``: every build downloads and unpacks everything;
- ``pip_build_s``: ``build_s`` with ``python -m venv`` + pip
  (``installer = "pip"``), median of ``--repeat``;
- through a real hub (the root jupyterhub_config.py, proxy, service):
  ``launch_cold_s``, from the spawn request to the server being ready, for a
  commit never built; ``relaunch_warm_median_s``: the same commit again, after
  stopping the server, median of ``--repeat`` (environment reused; what is
  left is the home copy, sandbox start and JupyterLab's start-up).

Numbers depend on the network to PyPI and on the machine's load: the load
average is printed with them. ``--launches-only`` skips the build
measurements; the relaunch is then broken down from the hub's log:
``prepare`` (options, reservation, environment lookup), ``cgroup``, ``home``
(the server's uid filling its tmpfs home) and ``sandbox_to_listening``.

Measured 2026-11-29 on the 2-core development machine, load average 1.1
(``--launches-only --repeat 5``):

- before the sealed, cgroup-confined design (commit c247ead): relaunch_warm
  median 7.85 s (7.8, 8.67, 8.23, 7.85, 7.6);
- now: relaunch_warm median 2.65 s (2.4, 2.63, 2.66, 2.67, 2.65): prepare
  0.04 s, cgroup 0.00 s, home 0.00 s, sandbox to listening 2.52 s (the rest is
  the hub and proxy). Most of the gain: environments drop ``rfc3987-syntax``
  (a grammar built at every import of jupyter_server, 1.5-4 s) and carry
  compiled bytecode (a read-only environment cannot cache it);
- a cold launch 15.8 s, of which the build 12.9 s and sealing 0.77 s
  (23,141 files, 348 MB).

Measured 2026-11-30 on the 2-core development machine, load average 0.9 ->
1.3, ``--repeat 3``, each build with a download cache of its own: the first
build (which also prepares the Jupyter package cache) 30.5 s; build_s 17.6 s
(15.2, 17.6, 19.6); without the Jupyter package cache 23.4 s (21.9, 24.2,
23.4); pip 53.8 s (3.1x uv); a cold launch 23.9 s (build 19.9 s, sealing
1.1 s, 348 MB, 23,141 files); relaunch_warm median 1.79 s (1.84, 1.73, 1.79).

Earlier (2026-11-28, load 8.3 -> 3.6, ``--repeat 5``), when all builds shared
one download cache (which let one repository's build code change what later
builds installed): build with an empty cache 20.3 s, with the shared cache
8.2 s, pip with its shared cache 96.1 s.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from binder_spawner.localbuild import EnvironmentBuilder  # noqa: E402
from tests.gitserver import GitServer  # noqa: E402
from tests.localhub import LocalHub, start_local_hub  # noqa: E402

REPO = {
    "requirements.txt": "six==1.17.0\n",
    "index.ipynb": json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}),
}


def reachable_dir(prefix):
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o711)
    return path


async def timed_build(builder, url, commit):
    started = time.perf_counter()
    task = builder.build(url, commit)
    async for _ in task.follow():
        pass
    await task.result()
    return time.perf_counter() - started


async def median_build(builder, git, url, repeat, label):
    times = []
    for i in range(repeat):
        commit = git.commit("bench/demo", {"n.txt": f"{label} {i}"})
        times.append(await timed_build(builder, url, commit))
    return statistics.median(times), [round(t, 2) for t in times]


async def builds(git, url, repeat):
    results = {}
    root = reachable_dir("binder-bench-build-")
    try:
        cache = os.path.join(root, "cache")

        def builder(name, **kwargs):
            return EnvironmentBuilder(
                envs_dir=os.path.join(root, name), cache_dir=cache, python_downloads=False, **kwargs
            )

        uv = builder("envs-uv")
        first = git.commit("bench/demo", {"n.txt": "first"})
        results["build_first_s"] = await timed_build(uv, url, first)
        results["build_s"], results["build_all_s"] = await median_build(uv, git, url, repeat, "uv")
        bare = builder("envs-bare", jupyter_cache=False)
        (
            results["build_without_jupyter_cache_s"],
            results["build_without_jupyter_cache_all_s"],
        ) = await median_build(bare, git, url, repeat, "bare")
        pip = builder("envs-pip", installer="pip")
        results["pip_build_s"], results["pip_build_all_s"] = await median_build(
            pip, git, url, repeat, "pip"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


# where a warm relaunch spends its time, read from the hub's log (seconds)
PHASES = {
    # options, ref resolution, reservation, environment lookup
    "prepare": (r"Binder launch of \S+ prepared in ([\d.]+) ms", 0.001),
    # cgroup creation and the sandbox command line
    "cgroup": (r"\(cgroup and sandbox command (\d+) ms\)", 0.001),
    # the server's uid copying the repository into its tmpfs home
    "home": (r"binder: home filled in (\d+) ms", 0.001),
    # from the start of the sandbox to the server listening (includes "home")
    "sandbox_to_listening": (r"listening ([\d.]+)s after its start", 1.0),
}


def launch_phases(log):
    found = {}
    for key, (pattern, scale) in PHASES.items():
        matches = re.findall(pattern, log)
        if matches:
            found[key] = float(matches[-1]) * scale
    return found


async def launches(git, url, repeat):
    results = {}
    directory = Path(tempfile.mkdtemp(prefix="binder-bench-hub-"))
    hub = await start_local_hub(directory, git)
    local = LocalHub(hub, git)
    try:
        commit = git.commit("bench/demo", {"n.txt": "launch"})
        options = {"repo": url, "ref": commit}
        started = time.perf_counter()
        events = await local.launch("bench", options)
        assert events[-1].get("ready"), events
        results["launch_cold_s"] = time.perf_counter() - started
        # sealing (root taking the environment over, read-only) is part of the build
        built = re.findall(
            r"Built \S+ at \S+ in ([\d.]+)s \(sealed in ([\d.]+)s, (\d+) MB, (\d+) files", hub.log()
        )
        if built:
            build_s, seal_s, size_mb, files = built[-1]
            results["cold_build_s"] = float(build_s)
            results["cold_build_seal_s"] = float(seal_s)
            results["environment_mb"] = int(size_mb)
            results["environment_files"] = int(files)
        await local.stop("bench")
        times = []
        phases = {key: [] for key in PHASES}
        for _ in range(repeat):
            offset = len(hub.log())
            started = time.perf_counter()
            events = await local.launch("bench", options)
            assert events[-1].get("ready"), events
            times.append(time.perf_counter() - started)
            for key, value in launch_phases(hub.log()[offset:]).items():
                phases[key].append(value)
            await local.stop("bench")
        results["relaunch_warm_median_s"] = statistics.median(times)
        results["relaunch_warm_all_s"] = [round(t, 2) for t in times]
        for key, values in phases.items():
            if values:
                results[f"relaunch_{key}_median_s"] = statistics.median(values)
    finally:
        await hub.stop()
        shutil.rmtree(hub.state_dir, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
    return results


async def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per median (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--launches-only", action="store_true", help="skip the build measurements")
    args = parser.parse_args(argv)
    git = GitServer(tempfile.mkdtemp(prefix="binder-bench-git-"))
    git.start()
    try:
        url = git.create_repo("bench/demo", REPO)
        results = {"load_average_before": os.getloadavg()[0]}
        if not args.launches_only:
            results.update(await builds(git, url, args.repeat))
        results.update(await launches(git, url, args.repeat))
        results["load_average_after"] = os.getloadavg()[0]
        results["repeat"] = args.repeat
    finally:
        git.stop()
        shutil.rmtree(git.root, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for key, value in results.items():
        shown = f"{value:.2f}" if isinstance(value, float) else value
        print(f"{key:40} {shown}")
    if "pip_build_s" in results:
        print(f"uv vs pip: {results['pip_build_s'] / results['build_s']:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
