"""BinderSpawner under Kubernetes API faults and hub restarts, through a real hub.

The same parts as tests/test_binderspawner.py (emulated cluster, registry, git
server, hub + proxy + binder_service), with the emulator's fault injection
(tests/k8s/faults.py) switched on while builds run. Deadlines are short
through traits: servers named ``short-*`` give up on the API after
:data:`SHORT_DEADLINE` seconds; running builds nobody waits for are removed
after :data:`ORPHAN_GRACE` seconds.

The first test runs on a hub that has made no Kubernetes call yet; the last
one stops binder_service.
"""

import asyncio
import os
import signal
import sys
import textwrap
import time
from urllib.parse import quote

import pytest
import pytest_asyncio

from binder_spawner import build
from binder_spawner.kuberetry import CLUSTER_UNAVAILABLE_MESSAGE

from .gitserver import GitServer
from .k8s.catalog import GENERIC, SINGLEUSER
from .k8s.cluster import Cluster
from .k8s.fixtures import reset_kubespawner_config
from .registry import Registry
from .test_binderspawner import FILES, Env, hub_config, messages
from .utils import free_port, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHORT_DEADLINE = 3
ORPHAN_GRACE = 3

FAULT_CONFIG = f"""
c.BinderSpawner.k8s_api_outage_timeout = 60
c.BinderSpawner.build_orphan_grace_period = {ORPHAN_GRACE}

def short_deadline_for_short_servers(spawner, spec):
    if spawner.name.startswith("short"):
        spawner.k8s_api_outage_timeout = {SHORT_DEADLINE}

c.BinderSpawner.pre_launch_hook = short_deadline_for_short_servers
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("binderfaults")
    registry = Registry(directory / "registry").start()
    git = GitServer(directory / "git").start()
    cluster = Cluster(nodes=1, registry_url=registry.url, directory=directory / "k8s", seed=7)
    cluster.catalog.add(f"{registry.host}/binder-*", SINGLEUSER, in_registry=True)
    cluster.catalog.add(f"{registry.host}/binder-*cheap-*", GENERIC, in_registry=True)
    await cluster.start()
    old_kubeconfig = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
    reset_kubespawner_config()
    service_port = free_port()
    env = Env(cluster, registry, git, directory / "hub", service_port)
    env.hub_config = textwrap.dedent(
        hub_config(registry, git, service_port, cluster.kubeconfig_path)
    ) + textwrap.dedent(FAULT_CONFIG)
    try:
        await env.start_hub()
        yield env
    finally:
        cluster.faults.clear()
        if env.hub is not None:
            await env.hub.stop()
        if env.failed and env.hub is not None:
            sys.stderr.write(f"\n===== hub log =====\n{env.hub.log()[-60000:]}\n")
            sys.stderr.write(f"\n===== k8s =====\n{cluster.store.dump()[-20000:]}\n")
        await cluster.stop()
        git.stop()
        registry.stop()
        if old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_kubeconfig
        reset_kubespawner_config()


@pytest.fixture(autouse=True)
def dump_on_failure(request, env):
    yield
    env.cluster.faults.clear()
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        env.failed.append(request.node.name)


def running_builds(env, url):
    return [
        p
        for p in env.build_pods_now()
        if p["metadata"]["labels"][build.REPO_HASH_LABEL] == env.repo_key(url)
        and (p.get("status") or {}).get("phase") == "Running"
    ]


def outage_over(env):
    return time.monotonic() >= env.cluster.faults.outage_until


def no_raw_error(text):
    return "HTTP response headers" not in text and "Unhandled error" not in text


async def test_outage_before_the_first_launch_then_launch_and_stop(env):
    """An outage on a hub that has made no Kubernetes call: the launch fails
    with the sentence; once the API is back the next launch completes and
    stopping it deletes its pod (no dead shared reflector is left behind)."""
    url = env.git.create_repo("org/cheap-fresh", FILES)
    await env.user("alice")
    env.cluster.faults.outage(600, status=500)
    status, body = await env.launch("alice", "short-fresh", {"repo": url, "ref": "main"})
    assert status == 202, body
    final = (await env.progress("alice", "short-fresh"))[-1]
    assert final.get("failed"), final
    assert CLUSTER_UNAVAILABLE_MESSAGE in final["message"]
    assert no_raw_error(final["message"]), final["message"]
    # it gave up while the API still failed, after its deadline
    assert not outage_over(env)
    assert await env.server("alice", "short-fresh") is None
    env.cluster.faults.clear()
    assert await env.usage(url) == 0

    status, body = await env.launch("alice", "fresh", {"repo": url, "ref": "main"})
    assert status == 202, body
    events = await env.progress("alice", "fresh")
    assert events[-1].get("ready"), events[-1]
    assert env.user_pod("alice", "fresh") is not None
    await env.stop("alice", "fresh")
    await poll(
        lambda: env.user_pod("alice", "fresh") is None, timeout=30, message="user pod deleted"
    )
    await poll(lambda: not env.build_pods_now(), timeout=30, message="build pods removed")


@pytest.mark.parametrize(
    "seconds, status",
    [
        pytest.param(10, 500, id="500s-for-10s"),
        pytest.param(30, 503, id="outage-30s"),
    ],
)
async def test_build_survives_api_errors(env, seconds, status):
    release = env.directory.parent / f"release-{seconds}-{status}"
    url = env.git.create_repo(f"org/cheap-fault-{seconds}", {**FILES, "HOLD_BUILD": str(release)})
    server = f"f{seconds}"
    await env.user("alice")
    started = time.monotonic()
    status_code, body = await env.launch("alice", server, {"repo": url, "ref": "main"})
    assert status_code == 202, body
    progress = asyncio.ensure_future(env.progress("alice", server))
    await poll(lambda: running_builds(env, url), timeout=60, message="the build to run")
    env.cluster.faults.outage(seconds, status=status)
    await poll(lambda: outage_over(env), timeout=seconds + 5, interval=0.2, message="outage end")
    release.write_text("go")
    events = await progress
    elapsed = time.monotonic() - started
    print(f"\nlaunch under {seconds} s of HTTP {status}: {elapsed:.1f} s", file=sys.stderr)
    assert events[-1].get("ready"), events[-1]
    text = messages(events)
    # the log went on after the fault, without lines twice
    steps = [m for m in text if m.startswith("Step ")]
    assert len(steps) == len(set(steps)) == 3, steps
    assert "Successfully built image" in text
    assert len(env.builds_of(url)) == 1
    await poll(lambda: not env.build_pods_now(), timeout=30, message="build pod cleanup")
    assert await env.usage(url) == 1
    await env.stop("alice", server)
    assert await env.usage(url) == 0


async def test_longer_outage_fails_with_the_sentence_within_the_deadline(env):
    release = env.directory.parent / "release-long"
    url = env.git.create_repo("org/cheap-long", {**FILES, "HOLD_BUILD": str(release)})
    await env.user("alice")
    status, body = await env.launch("alice", "short-long", {"repo": url, "ref": "main"})
    assert status == 202, body
    progress = asyncio.ensure_future(env.progress("alice", "short-long"))
    await poll(lambda: running_builds(env, url), timeout=60, message="the build to run")
    env.cluster.faults.outage(600, status=503)
    started = time.monotonic()
    final = (await progress)[-1]
    print(
        f"\nfailure after {time.monotonic() - started:.1f} s of outage "
        f"(deadline {SHORT_DEADLINE} s)",
        file=sys.stderr,
    )
    assert final.get("failed"), final
    assert CLUSTER_UNAVAILABLE_MESSAGE in final["message"]
    assert no_raw_error(final["message"]), final["message"]
    assert not outage_over(env)
    env.cluster.faults.clear()
    assert await env.server("alice", "short-long") is None
    assert await env.usage(url) == 0
    # the build nobody waits for any more is removed after the grace period
    release.write_text("go")
    await poll(lambda: not env.build_pods_now(), timeout=60, message="orphan build removed")


async def test_hub_restart_during_a_build_gives_a_reason_and_removes_the_build(env):
    release = env.directory.parent / "release-restart"
    url = env.git.create_repo("org/cheap-cut", {**FILES, "HOLD_BUILD": str(release)})
    await env.user("alice")
    status, body = await env.launch("alice", "cut", {"repo": url, "ref": "main"})
    assert status == 202, body
    await poll(lambda: running_builds(env, url), timeout=60, message="the build to run")
    await env.hub.stop()
    await env.start_hub()

    # the progress stream (what the spawn-pending page shows) names the reason
    final = (await env.progress("alice", "cut"))[-1]
    assert final.get("failed"), final
    assert "interrupted by a restart of the hub" in final["message"], final["message"]
    assert url in final["message"]
    # the page a visitor reloads to: the hub renders the failed spawn with its reason
    # (pages take no token login, but take the header token's scopes: a browser
    # stand-in for alice's session, whose cookie a restarted test hub cannot keep)
    status, token = await env.hub.api("POST", "/users/alice/tokens", json={"expires_in": 600})
    assert status in (200, 201), token
    browser = env.hub.browser()
    async with browser.get(
        env.hub.url + "/hub/spawn-pending/alice/cut",
        headers={"Authorization": f"token {token['token']}"},
    ) as resp:
        page = await resp.text()
    assert "Spawn failed" in page
    assert "interrupted by a restart of the hub" in page

    # nobody waits for the build: it is removed after the grace period
    await poll(lambda: not env.build_pods_now(), timeout=60, message="orphan build removed")
    assert await env.usage(url) == 0
    # and a relaunch works
    release.write_text("go")
    status, body = await env.launch("alice", "cut", {"repo": url, "ref": "main"})
    assert status in (201, 202), body  # see test_hub_restart_during_a_build_reattaches
    events = await env.progress("alice", "cut")
    assert events[-1].get("ready"), events[-1]
    await env.stop("alice", "cut")


def service_pids(port):
    """Processes of the binder_service listening on ``port`` (started by the hub)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"binder_service" in argv and f"--port={port}".encode() in argv:
            pids.append(int(entry))
    return pids


async def test_launch_links_while_the_service_is_down_get_the_sentence(env):
    """Kills the module's binder_service, then restarts the hub (and so the service)."""
    try:
        await _launch_links_while_the_service_is_down(env)
    finally:
        # the tests after this one (any order) get a hub with its service again
        await env.hub.stop()
        await env.start_hub()


async def _launch_links_while_the_service_is_down(env):
    url = env.git.create_repo("org/cheap-nosvc", FILES)
    browser = env.hub.browser()
    for pid in service_pids(env.service_port):
        os.kill(pid, signal.SIGKILL)
    await poll(lambda: not service_pids(env.service_port), timeout=10, message="service gone")
    link = env.hub.url + "/services/binder/v2/git/" + quote(url, safe="") + "/main"
    async with browser.get(link, allow_redirects=False) as resp:
        page = await resp.text()
        assert resp.status == 503
    assert "The Binder service is not available right now." in page
    assert "Your server appears to be down" not in page
    # any other path the proxy cannot reach gets the hub's own page
    error_page = env.hub.url + "/hub/error/503"
    async with browser.get(error_page, params={"url": "/user/alice/lab"}) as resp:
        page = await resp.text()
    assert "Your server appears to be down" in page
    assert "Binder service" not in page
