"""Solve and install a conda environment with rattler; runs inside the build sandbox.

Root never solves or installs a repository's conda environment: the builder
runs this file in the build sandbox, as the build uid, with the build's
interpreter::

    python -I -S -c "<this file>" REQUEST_JSON

``REQUEST_JSON`` holds ``rattler_path`` (the folder holding the ``rattler``
package, mounted read-only from the hub's installation), ``channels``,
``channel_alias``, ``specs``, ``prefix``, ``cache`` (the build's own package
and repodata cache, empty when the build starts) and, for an
``environment.yml`` with a ``pip:`` section, ``pip_lines`` and ``pip_file``
(written here, as the build uid, next to the environment file, so ``-r``
lines resolve as conda resolves them).

Packages are downloaded into ``cache/pkgs`` and copied into the prefix (the
cache and the environment are two mounts: no hard links). Nothing is kept
between builds: a cache another build could have written (a cached solve,
repodata, a package) would let that build choose what this one installs.

Exit status 86: the environment cannot be solved (the solver's explanation is
printed); 87: a channel did not answer or a package could not be fetched.
rattler's thread pools are kept small: a build's processes and threads count
against the build uid's process limit (``Sandbox.process_limit``).
Standalone on purpose: it is passed as ``-c`` text, the package is not mounted.
"""

import asyncio
import json
import os
import sys
import time

UNSOLVABLE = 86
CHANNEL_ERROR = 87


def say(line):
    print(line, flush=True)


async def solve(rattler, request, platform, virtual_packages):
    config = rattler.ChannelConfig(channel_alias=request["channel_alias"].rstrip("/") + "/")
    channels = [rattler.Channel(name, config) for name in request["channels"]]
    gateway = rattler.Gateway(cache_dir=os.path.join(request["cache"], "repodata"))
    return await rattler.solve(
        channels,
        request["specs"],
        gateway=gateway,
        platforms=[platform, rattler.Subdir("noarch")],
        virtual_packages=virtual_packages,
    )


async def main(request):
    sys.path.insert(0, request["rattler_path"])
    os.environ.setdefault("TOKIO_WORKER_THREADS", "2")
    os.environ.setdefault("RAYON_NUM_THREADS", "2")
    import rattler
    import rattler.exceptions

    platform = rattler.Subdir.current()
    virtual_packages = rattler.VirtualPackage.detect()
    started = time.monotonic()
    say(
        f"Solving {len(request['specs'])} specs for {platform} from "
        + ", ".join(request["channels"])
    )
    try:
        records = await solve(rattler, request, platform, virtual_packages)
    except rattler.exceptions.SolverError as e:
        say("The conda environment cannot be solved:")
        say(str(e))
        return UNSOLVABLE
    except (rattler.exceptions.GatewayError, rattler.exceptions.FetchRepoDataError) as e:
        say(f"A conda channel did not answer: {e}")
        return CHANNEL_ERROR
    solved = time.monotonic()
    say(f"Solved {len(records)} conda packages in {solved - started:.2f}s")
    for record in sorted(records, key=lambda r: r.name.normalized):
        say(f"  {record.name.normalized} {record.version} {record.build}")
    try:
        await rattler.install(
            records,
            request["prefix"],
            cache_dir=os.path.join(request["cache"], "pkgs"),
            show_progress=False,
            execute_link_scripts=False,
        )
    except Exception as e:  # rattler's download and link errors
        say(f"Installing the conda packages failed: {e}")
        return CHANNEL_ERROR
    say(f"Installed {len(records)} conda packages in {time.monotonic() - solved:.2f}s")
    if request.get("pip_file"):
        # conda writes the pip: section to a file beside environment.yml, too
        with open(request["pip_file"], "x") as f:  # noqa: ASYNC230
            f.write("\n".join(request["pip_lines"]) + "\n")
    return 0


if __name__ == "__main__":
    status = asyncio.run(main(json.loads(sys.argv[1])))
    sys.stdout.flush()
    # rattler's worker threads may still run: interpreter shutdown under them
    # can abort the process, so leave without it
    os._exit(status)
