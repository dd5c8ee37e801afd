"""Benchmark: cull sweeps over many users against a real hub.

Starts a real JupyterHub (configurable-http-proxy included) whose spawner
points every server at one shared HTTP server (tests/service_spawner.py,
``SharedServerSpawner``: the hub starts, routes and stops each server as
usual, without a process per server). Creates U anonymous users (members of
``binder-anonymous``), starts servers for S of them, then runs
binder_service's sweep in this process against the hub's REST API:

1. a quiet sweep: nothing is idle yet (lists every active server and every
   inactive user; stops and deletes nothing);
2. a full sweep with the service's clock moved 11 minutes on: stops all S
   idle servers and deletes all U anonymous users.

For each: wall time, and the hub's CPU time (user + system of the hub
process, from /proc) during the sweep.

    .venv-test-latest/bin/python benchmarks/cull.py [--users 10000] [--servers 1000] [--json]
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import textwrap
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from binder_service import utils  # noqa: E402
from binder_service.app import BinderService  # noqa: E402
from tests.hub import start_hub  # noqa: E402
from tests.utils import free_port, poll  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
TMPFS = "/dev/shm"


def cpu_seconds(pid):
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def gather_bounded(n, coroutines):
    semaphore = asyncio.Semaphore(n)

    async def run(coroutine):
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(run(c) for c in coroutines))


def create_users(db_path, names, group_name="binder-anonymous"):
    """Insert users and their group membership straight into the hub's (stopped) database.

    Creating 10,000 users through the REST API takes longer than the whole
    measurement; how they got there does not matter to a sweep.
    """
    from jupyterhub import orm

    session = orm.new_session_factory(f"sqlite:///{db_path}")()
    group = orm.Group.find(session, group_name)
    if group is None:
        group = orm.Group(name=group_name)
        session.add(group)
    for name in names:
        user = orm.User(name=name)
        user.groups.append(group)
        session.add(user)
    session.commit()
    session.close()


async def start_servers(hub, names):
    async def start(i, name):
        options = {"repo": f"https://github.com/org/repo{i % 50}", "ref": "main"}
        status, body = await hub.api("POST", f"/users/{name}/server", json=options)
        assert status in (201, 202), (status, body)

    await gather_bounded(50, [start(i, name) for i, name in enumerate(names)])

    async def total(state):
        _, page = await hub.api(
            "GET",
            f"/users?state={state}&limit=1",
            headers={"Accept": "application/jupyterhub-pagination+json"},
        )
        return page["_pagination"]["total"]

    async def settled():
        # every start has finished, one way or the other (a start may time out on a busy machine)
        ready = await total("ready")
        return ready if ready == await total("active") else None

    await poll(settled, timeout=900, interval=2, message="all starts to finish")
    return await total("ready")


async def timed_sweep(app, hub):
    cpu = cpu_seconds(hub.process.pid)
    started = time.perf_counter()
    await app.sweep()
    return time.perf_counter() - started, cpu_seconds(hub.process.pid) - cpu


async def run(users, servers):
    # The hub's sqlite database on tmpfs where there is one: the sweep and the
    # hub's CPU are measured, not the disk's fsync latency.
    tmp = TMPFS if os.path.isdir(TMPFS) else None  # noqa: ASYNC240 - once, at start
    with tempfile.TemporaryDirectory(dir=tmp) as directory:
        directory = Path(directory)
        shared_port = free_port()
        shared = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(shared_port)],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        config = f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        c.JupyterHub.spawner_class = "tests.service_spawner.SharedServerSpawner"
        c.SharedServerSpawner.shared_url = "http://127.0.0.1:{shared_port}"
        c.JupyterHub.authenticator_class = "null"
        c.JupyterHub.log_level = "WARN"
        c.JupyterHub.concurrent_spawn_limit = 0
        c.JupyterHub.active_server_limit = 0
        c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
        """
        setup_started = time.perf_counter()
        hub = None
        real_utcnow = utils.utcnow
        try:
            # a first start creates the database; users go in while the hub is down
            first = await start_hub(directory / "hub", textwrap.dedent(config))
            await first.stop()
            names = [f"visitor-{i:05d}" for i in range(users)]
            create_users(directory / "hub" / "jupyterhub.sqlite", names)
            hub = await start_hub(directory / "hub", textwrap.dedent(config), timeout=300)
            started_servers = await start_servers(hub, names[:servers])
            setup = time.perf_counter() - setup_started
            # the service reads time through binder_service.utils.utcnow: move it here
            offset = [0.0]
            utils.utcnow = lambda: real_utcnow() + timedelta(seconds=offset[0])
            os.environ["JUPYTERHUB_API_URL"] = hub.api_url
            os.environ["JUPYTERHUB_API_TOKEN"] = hub.token
            app = BinderService()
            app.initialize(
                [
                    "--log-level=WARN",
                    "--Culler.anonymous_grace=3600",
                ]
            )
            quiet = await timed_sweep(app, hub)
            counted = (await app.usage())["total"]
            offset[0] = 3600 + 660
            app._last_cull = None
            full = await timed_sweep(app, hub)
            # users whose servers were still stopping go at the next sweeps
            after, sweeps = 0.0, 1
            while True:
                _, left = await hub.api(
                    "GET",
                    "/users?limit=1",
                    headers={"Accept": "application/jupyterhub-pagination+json"},
                )
                if not left["_pagination"]["total"] or sweeps >= 5:
                    break
                app._last_cull = None
                after += (await timed_sweep(app, hub))[0]
                sweeps += 1
        finally:
            utils.utcnow = real_utcnow
            if hub is not None:
                await hub.stop()
            shared.terminate()
            await shared.wait()
    culled = app.metrics.culls.labels(reason="idle")._value.get()
    deleted = app.metrics.users_deleted._value.get()
    return {
        "users": users,
        "servers": servers,
        "servers_started": started_servers,
        "setup_s": round(setup, 1),
        "slots_counted": counted,
        "quiet_sweep_s": round(quiet[0], 2),
        "quiet_sweep_hub_cpu_s": round(quiet[1], 2),
        "full_sweep_s": round(full[0], 2),
        "full_sweep_hub_cpu_s": round(full[1], 2),
        "later_sweeps": sweeps - 1,
        "later_sweeps_s": round(after, 2),
        "servers_culled": int(culled),
        "users_deleted": int(deleted),
        "users_left": left["_pagination"]["total"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args.users, args.servers))
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
