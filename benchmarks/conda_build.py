"""Local mode conda builds (environment.yml with rattler), measured on this machine.

    python benchmarks/conda_build.py [--repeat 5] [--with-jupyter] [--json]

Run with a test environment's Python (``.venv-test-latest/bin/python``) from
the repository root; needs bubblewrap and git (and PyPI with ``--with-jupyter``).
The conda packages come from the tests' local channel (``tests/condachannel.py``:
python from the host interpreter, ``binderlib`` noarch, ``bindertool`` with a
prefix placeholder, activation script and kernel), indexed with rattler and
served over HTTP on loopback: no conda channel is reachable here, so these are
the costs of rattler's solve and install and of local mode's build around them,
not of downloading conda-forge. One repository (``environment.yml``:
``binderlib >=2``, 3 packages) is built at a new commit ``--repeat`` times.
Every build starts with an empty conda cache of its own (repodata, packages),
as every real build does.

Reported: ``build_s`` (the whole build: clone, solve, install, sealing) and the
split the build log reports, ``solve_s`` and ``install_s``, medians of
``--repeat``. ``--with-jupyter`` adds JupyterLab and jupyterhub as every real
launch does (uv, from the hub's Jupyter package cache, prepared by a first build
that is not counted).

Measured 2026-11-30 on the 2-core development machine, shared (load average
6.9-8.5), ``--repeat 3``, medians (runs in brackets): build 2.02 s (2.28,
2.02, 1.86), solve 0.04 s, install 0.19 s. (Builds then shared a conda cache;
a new commit with a cached solve took 1.92 s.)

With 3 small packages, rattler's solve and install are a tenth of the build;
the rest is the clone, the sandboxed steps' start-up and sealing. A real
conda-forge environment (hundreds of packages, downloads) was not measured:
no conda channel is reachable here.
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
from tests.condachannel import CHANNEL, ChannelServer, cached_channel  # noqa: E402
from tests.gitserver import GitServer  # noqa: E402
from tests.localhub import shared_cache_dir  # noqa: E402
from tests.utils import run_config  # noqa: E402

SOLVED = re.compile(r"^Solved (\d+) conda packages in ([\d.]+)s")
INSTALLED = re.compile(r"^Installed (\d+) conda packages in ([\d.]+)s")


def reachable_dir(prefix):
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o711)
    return path


def make_builder(root, cache_dir, channel, with_jupyter):
    kwargs = {} if with_jupyter else {"jupyter_packages": []}
    return EnvironmentBuilder(
        config=run_config(),
        envs_dir=os.path.join(root, "envs"),
        cache_dir=cache_dir,
        python_downloads=False,
        conda_channel_alias=channel.url,
        conda_channels=[CHANNEL],
        **kwargs,
    )


async def timed_build(builder, url, commit):
    started = time.perf_counter()
    task = builder.build(url, commit)
    lines = [line async for line in task.follow()]
    await task.result()
    total = time.perf_counter() - started
    solve = install = None
    for line in lines:
        if m := SOLVED.match(line):
            solve = float(m.group(2))
        if m := INSTALLED.match(line):
            install = float(m.group(2))
    return {"build_s": round(total, 2), "solve_s": solve, "install_s": install}


def median(runs, key):
    return round(statistics.median(r[key] for r in runs), 3)


async def main(args):
    channel = ChannelServer(cached_channel()).start()
    git = GitServer(tempfile.mkdtemp(prefix="bench-git-"))
    git.start()
    root = reachable_dir("bench-conda-")
    env_yml = "dependencies:\n  - binderlib >=2\n"
    url = git.create_repo("org/conda-bench", {"environment.yml": env_yml})
    results = {"build": []}
    # the Jupyter package cache is the tests' shared one
    cache = shared_cache_dir() if args.with_jupyter else reachable_dir("bench-conda-cache-")
    try:
        builder = make_builder(root, cache, channel, args.with_jupyter)
        if args.with_jupyter:
            # prepares the Jupyter package cache if needed
            await timed_build(builder, url, git.commit("org/conda-bench", {"run.txt": "first\n"}))
        for i in range(args.repeat):
            commit = git.commit("org/conda-bench", {"run.txt": f"build {i}\n"})
            results["build"].append(await timed_build(builder, url, commit))
    finally:
        git.stop()
        channel.stop()
        shutil.rmtree(root, ignore_errors=True)
        if not args.with_jupyter:
            shutil.rmtree(cache, ignore_errors=True)
    summary = {"repeat": args.repeat, "with_jupyter": args.with_jupyter}
    summary["load_average"] = [round(x, 2) for x in os.getloadavg()]
    for name, runs in results.items():
        summary[name] = {
            "build_s": median(runs, "build_s"),
            "solve_s": median(runs, "solve_s"),
            "install_s": median(runs, "install_s"),
            "runs": runs,
        }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"load average {summary['load_average']}, {args.repeat} repetitions")
        for name in results:
            s = summary[name]
            print(
                f"{name:18} build {s['build_s']:6.2f} s  solve {s['solve_s']:6.3f} s  "
                f"install {s['install_s']:6.3f} s"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--with-jupyter", action="store_true")
    parser.add_argument("--json", action="store_true")
    asyncio.run(main(parser.parse_args()))
