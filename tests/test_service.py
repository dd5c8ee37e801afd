"""binder_service against a real hub that starts it as a managed service.

One hub for the module; the service runs as the hub's subprocess, so its
clock is moved through ``tests/clockseam`` (tests write the offset file).
The tests run in order: culling moves the clock forward for good.
"""

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
import pytest_asyncio

from binder_service.hubapi import HubAPI
from binder_service.permissions import service_role
from binder_spawner.service_client import (
    BinderServiceClient,
    BinderServiceError,
    RepoLimitExceeded,
    ServiceUnavailable,
)

from .clockseam import clock_env
from .hub import start_hub
from .utils import free_port, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

PER_REPO_LIMIT = 2
TTL = 300
REPO_URL = "https://github.com/binder-examples/limited"
#: seconds between the hub's polls of the service process
SERVICE_POLL_INTERVAL = 0.5


class ServiceHub:
    """The hub, the service's URL and helpers shared by the tests."""

    def __init__(self, hub, service_url, offset_file, events_file):
        self.hub = hub
        self.service_url = service_url
        self.offset_file = offset_file
        self.events_file = events_file
        self.offset = 0

    def move_clock(self, seconds):
        self.offset += seconds
        self.offset_file.write_text(str(self.offset))

    def reset_clock(self):
        """Back to the real time, for a test that must not inherit another's moves."""
        self.move_clock(-self.offset)

    async def service(self, method, path, *, token=None, json_body=None, direct=True):
        base = self.service_url if direct else self.hub.url + "/services/binder/"
        headers = {"Authorization": f"token {token}"} if token else {}
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, base + path, headers=headers, json=json_body, allow_redirects=False
            ) as resp:
                text = await resp.text()
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = text
                return resp.status, body, resp.headers

    async def user(self, name, *, groups=(), admin=False):
        status, _ = await self.hub.api("POST", f"/users/{name}", json={"admin": admin})
        assert status == 201, status
        for group in groups:
            status, _ = await self.hub.api("POST", f"/groups/{group}/users", json={"users": [name]})
            assert status == 200, status
        status, body = await self.hub.api(
            "POST", f"/users/{name}/tokens", json={"note": "test", "expires_in": 3600}
        )
        assert status in (200, 201), (status, body)
        return body["token"]

    async def start_server(self, name, server="", repo=REPO_URL, ref="main", **options):
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        options.update(repo=repo, ref=ref)
        status, body = await self.hub.api("POST", path, json=options)
        assert status in (201, 202), (status, body)

    async def servers(self, name):
        status, body = await self.hub.api("GET", f"/users/{name}")
        if status == 404:
            return None
        return body["servers"]

    async def ready(self, name, server=""):
        async def is_ready():
            servers = await self.servers(name)
            return servers and server in servers and servers[server]["ready"]

        await poll(is_ready, timeout=30, message=f"{name}/{server} to be ready")

    async def usage(self):
        status, body, _ = await self.service("GET", "api/usage", token=self.hub.token)
        assert status == 200, body
        return body


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("service-hub")
    offset_file = directory / "clock-offset"
    offset_file.write_text("0")
    events_file = directory / "launches.jsonl"
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "binder_service",
        f"--per-repo-limit={PER_REPO_LIMIT}",
        f"--reservation-ttl={TTL}",
        "--reconcile-every=0.3",
        "--cull-every=0.3",
        "--timeout=600",
        "--max-age=900",
        f"--launch-events-file={events_file}",
        "--debug",
    ]
    config = f"""
    import sys
    sys.path.insert(0, {str(directory.parent)!r})
    c.JupyterHub.spawner_class = "tests.service_spawner.HTTPServerSpawner"
    c.HTTPServerSpawner.start_delay = 1.0
    c.HTTPServerSpawner.home_dir_template = {str(directory / "home-{username}")!r}
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.load_groups = {{"binder-anonymous": {{"users": []}}}}
    c.JupyterHub.authenticator_class = "null"
    # POST .../server answers at once (202) instead of waiting for the start, and
    # every stop is a slow stop (202): the culler must wait for it to count a cull
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0, "slow_stop_timeout": 0}}
    c.JupyterHub.services.append(
        {{
            "name": "binder",
            "url": "http://127.0.0.1:{port}",
            "command": {command!r},
            "environment": {clock_env(offset_file)!r},
        }}
    )
    c.JupyterHub.load_roles.append({service_role()!r})
    # the hub polls a managed service every Spawner.poll_interval (30 s) and
    # restarts it when it exited; its _ServiceSpawner takes no configuration
    # (jupyterhub/services/service.py, Service.start), so a test that kills the
    # service polls sooner through a subclass
    import jupyterhub.services.service as _service
    from traitlets import Float as _Float

    class _FastPolledServiceSpawner(_service._ServiceSpawner):
        poll_interval = _Float({SERVICE_POLL_INTERVAL})

    _service._ServiceSpawner = _FastPolledServiceSpawner
    """
    hub = await start_hub(directory / "hub", textwrap.dedent(config))
    env = ServiceHub(hub, f"http://127.0.0.1:{port}/services/binder/", offset_file, events_file)
    failed = []
    try:

        async def service_up():
            with contextlib.suppress(aiohttp.ClientError):
                status, _, _ = await env.service("GET", "health")
                return status == 200

        await poll(service_up, timeout=30, message="binder_service to answer")
        env.failed = failed
        yield env
    finally:
        await hub.stop()
        if failed:
            sys.stderr.write(f"\n===== hub log =====\n{hub.log()[-30000:]}\n")


@pytest.fixture(autouse=True)
def dump_on_failure(request, env):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        env.failed.append(request.node.name)


async def test_health_badges_metrics(env):
    status, body, _ = await env.service("GET", "health")
    assert status == 200 and body["ok"] is True
    assert body["checks"] == [{"service": "hub", "ok": True}]
    for name in ("badge.svg", "badge_logo.svg"):
        async with aiohttp.ClientSession() as session:
            # through the proxy: the form badges use
            async with session.get(env.hub.url + "/services/binder/" + name) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "image/svg+xml"
                text = await resp.text()
        assert text.lstrip().startswith("<svg") and "binder" in text
    status, text, headers = await env.service("GET", "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in (
        "binderhub_launch_count",
        "binderhub_launch_time_seconds",
        "binderhub_inprogress_launches",
        "binder_service_slots_in_use",
        "binder_service_limit_rejections",
        "binder_service_culled_servers",
    ):
        assert name in text


@pytest.mark.parametrize(
    "path, repo, ref, urlpath",
    [
        pytest.param(
            "v2/gh/binder-examples/requirements/main?urlpath=lab",
            "https://github.com/binder-examples/requirements",
            "main",
            "lab",
            id="gh",
        ),
        pytest.param(
            "v2/gl/group%2Fsub%2Fproject/v1.0?labpath=index.ipynb",
            "https://gitlab.com/group/sub/project.git",
            "v1.0",
            "doc/tree/index.ipynb",
            id="gl",
        ),
        pytest.param(
            "v2/git/https%3A%2F%2Fcodeberg.org%2Fo%2Fr.git/HEAD",
            "https://codeberg.org/o/r.git",
            "HEAD",
            None,
            id="git",
        ),
        pytest.param(
            "v2/gist/someone/0123456789abcdef/master?filepath=a.py",
            "https://gist.github.com/someone/0123456789abcdef.git",
            "HEAD",
            "tree/a.py",
            id="gist",
        ),
        pytest.param(
            "v2/zenodo/10.5281/zenodo.3242074?urlpath=lab",
            "zenodo/10.5281/zenodo.3242074",
            None,
            "lab",
            id="zenodo",
        ),
        pytest.param(
            # the spec, not the dataset URL: a URL alone would be read as a git repository
            "v2/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-dataset-1",
            "ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-dataset-1",
            None,
            None,
            id="ckan",
        ),
    ],
)
async def test_launch_redirects(env, path, repo, ref, urlpath):
    status, _, headers = await env.service("GET", path, direct=False)
    assert status == 302, status
    location = urlparse(headers["Location"])
    assert location.path == "/hub/spawn"
    query = parse_qs(location.query)
    # JupyterHub 6's form of spawn options (no deprecation warning), read on 5 by the spawners
    assert query["opt-repo"] == [repo]
    assert query.get("opt-ref") == ([ref] if ref else None)
    assert query.get("opt-urlpath") == ([urlpath] if urlpath else None)
    assert not {"repo", "ref", "urlpath"} & set(query)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("v2/xx/org/repo/main", id="unknown-provider"),
        pytest.param("v2/gh/org", id="incomplete"),
        pytest.param("v2/gh/org/repo/main?urlpath=lab/%252e%252e/%252e%252e/hub", id="urlpath"),
        pytest.param("v2/gh/org/repo/main?labpath=%252E%252E%252Fhub", id="labpath"),
    ],
)
async def test_launch_rejects_bad_specs(env, path):
    status, body, _ = await env.service("GET", path, direct=False)
    assert 400 <= status < 500
    assert isinstance(body, str) and body.strip()


@pytest.mark.parametrize(
    "path, shown",
    [
        pytest.param("v2/gl/proj/main", '"gl/group%2Fproject/main"', id="gitlab-hint"),
        pytest.param(
            "v2/git/example.org%2Frepo/main",
            '"git/https%3A%2F%2Fexample.org%2Frepo.git/main"',
            id="git-hint",
        ),
    ],
)
async def test_launch_errors_show_specs_as_written(env, path, shown):
    status, body, _ = await env.service("GET", path, direct=False)
    assert status == 400
    assert shown in body and "%%" not in body


async def test_reservations_at_the_limit(env):
    tokens = {name: await env.user(name) for name in ("lim1", "lim2", "lim3")}
    await env.start_server("lim1")
    await env.start_server("lim2")
    await env.ready("lim1")
    await env.ready("lim2")

    repo_key = "gh/binder-examples/limited"

    async def counted():
        return (await env.usage())["repos"].get(repo_key) == PER_REPO_LIMIT

    await poll(counted, message="both servers counted")
    # the spawner of a running server renews its reservation: idempotent, same id
    first = await env.service(
        "POST",
        "api/reservations",
        token=tokens["lim1"],
        json_body={"user": "lim1", "server": "", "repo": repo_key},
    )
    again = await env.service(
        "POST",
        "api/reservations",
        token=tokens["lim1"],
        json_body={"user": "lim1", "server": "", "repo": repo_key},
    )
    assert first[0] in (200, 201) and again[0] == 200
    assert first[1]["id"] == again[1]["id"]
    assert (await env.usage())["repos"][repo_key] == PER_REPO_LIMIT

    # a third server of the same repository is refused while it starts
    await env.start_server("lim3", start_delay=3)
    status, body, headers = await env.service(
        "POST",
        "api/reservations",
        token=tokens["lim3"],
        json_body={"user": "lim3", "server": "", "repo": repo_key},
    )
    assert status == 429, body
    assert int(headers["Retry-After"]) == body["retry_after"] > 0
    assert body["limit"] == PER_REPO_LIMIT and body["usage"] == PER_REPO_LIMIT
    # the repository as lim3's launch named it, not its key
    assert body["message"] == (
        f"{REPO_URL} already has {PER_REPO_LIMIT} running sessions, the limit for this "
        "repository. Try again in a few minutes."
    )
    # lim3's server runs anyway in this test (its spawner does not ask); stop it
    await env.ready("lim3")
    status, _ = await env.hub.api("DELETE", "/users/lim3/server")
    assert status in (202, 204)

    # 12 concurrent reservations (admin token, no servers) for one repository: exactly 2 admitted
    results = await asyncio.gather(
        *(
            env.service(
                "POST",
                "api/reservations",
                token=env.hub.token,
                json_body={"user": f"burst{i}", "server": "", "repo": "gh/org/burst"},
            )
            for i in range(12)
        )
    )
    statuses = sorted(r[0] for r in results)
    assert statuses.count(201) == PER_REPO_LIMIT and statuses.count(429) == 12 - PER_REPO_LIMIT
    assert (await env.usage())["repos"]["gh/org/burst"] == PER_REPO_LIMIT


async def test_reservations_belong_to_their_user(env):
    mine, other = await env.user("owner"), await env.user("intruder")
    await env.start_server("owner", repo="https://github.com/binder-examples/owned")
    await env.ready("owner")
    status, reservation, _ = await env.service(
        "POST",
        "api/reservations",
        token=mine,
        json_body={"user": "owner", "server": "", "repo": "gh/binder-examples/owned"},
    )
    assert status in (200, 201), reservation
    # someone else can neither release it nor reserve in the owner's name
    status, body, _ = await env.service(
        "DELETE", f"api/reservations/{reservation['id']}", token=other
    )
    assert status == 403, body
    status, body, _ = await env.service(
        "POST",
        "api/reservations",
        token=other,
        json_body={"user": "owner", "server": "x", "repo": "gh/a/b"},
    )
    assert status == 403, body
    # no token, or a made-up one
    for token in (None, "not-a-token"):
        status, _, _ = await env.service("GET", "api/usage", token=token)
        assert status == 403
    # a user can only reserve for a server that is actually starting or running
    status, body, _ = await env.service(
        "POST",
        "api/reservations",
        token=other,
        json_body={"user": "intruder", "server": "ghost", "repo": "gh/a/b"},
    )
    assert status == 409, body
    # The owner's token is also its server's: it cannot give the slot back while
    # the server runs (that would let it start more than the limit), nor read
    # which repositories other visitors run.
    status, body, _ = await env.service(
        "DELETE", f"api/reservations/{reservation['id']}", token=mine
    )
    assert status == 403, body
    assert "still running" in body["message"]
    assert (await env.usage())["repos"]["gh/binder-examples/owned"] == 1
    status, body, _ = await env.service("GET", "api/usage", token=mine)
    assert status == 403, body
    assert "repos" not in body
    # once the server is stopped, the owner may release it (or it is gone already)
    status, _ = await env.hub.api("DELETE", "/users/owner/server")
    assert status in (202, 204)

    async def stopped():
        return "" not in (await env.servers("owner") or {})

    await poll(stopped, timeout=30, message="owner's server to stop")
    status, _, _ = await env.service("DELETE", f"api/reservations/{reservation['id']}", token=mine)
    assert status in (204, 404)
    assert "gh/binder-examples/owned" not in (await env.usage())["repos"]


async def test_a_stopping_server_cannot_take_its_slot_again(env):
    """A visitor's token must not take back the slot its spawner gave up at the stop.

    The spawner releases with the user's own token once the hub shows the
    server stopping (BinderSpawner.stop()). A reservation the same token made
    while the server was still stopping was counted as never seen on the hub,
    so it outlived the server by ``reservation_ttl``: a visitor could fill any
    repository's limit, or the hub's, for minutes after each launch, with
    nothing running.
    """
    token = await env.user("phantom")
    repo_key = "gh/binder-examples/phantom"
    await env.start_server(
        "phantom", server="s1", repo="https://github.com/binder-examples/phantom", stop_delay=3
    )
    await env.ready("phantom", "s1")
    body = {"user": "phantom", "server": "s1", "repo": repo_key}
    status, reservation, _ = await env.service(
        "POST", "api/reservations", token=token, json_body=body
    )
    assert status in (200, 201), reservation
    status, _ = await env.hub.api("DELETE", "/users/phantom/servers/s1")
    assert status == 202
    # the hub shows it stopping: its spawner gives the slot back
    status, released, _ = await env.service(
        "DELETE", f"api/reservations/{reservation['id']}", token=token
    )
    assert status == 204, released
    status, refused, _ = await env.service("POST", "api/reservations", token=token, json_body=body)
    assert status == 409, refused

    async def stopped():
        return "s1" not in (await env.servers("phantom") or {})

    await poll(stopped, timeout=30, message="phantom's server to stop")
    await poll(lambda: _repo_gone(env, repo_key), message="nothing counted for the stopped server")


async def test_request_bodies_are_read_only_with_a_token_and_within_a_limit(env):
    """A stranger's body was parsed before its token was checked, and bodies of any
    size were read (tornado's default limit is 100 MB): one 40 MB request without a
    token held the service's one event loop, and so every launch's reservation, for
    seconds."""
    async with aiohttp.ClientSession() as session:
        async with session.post(env.service_url + "api/reservations", data=b"[1, 1") as resp:
            assert resp.status == 403, await resp.text()
    # a body larger than any reservation: refused from its Content-Length, unread
    url = urlparse(env.service_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            f"POST {url.path}api/reservations HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: token {env.hub.token}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1048576\r\n\r\n".encode()
        )
        await writer.drain()
        # before the limit, the service waited for the megabyte that never comes
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 400"), status_line
    status, _, _ = await env.service("GET", "health")
    assert status == 200


async def test_launch_events(env):
    await env.user("evt1")
    await env.start_server("evt1", repo="https://github.com/binder-examples/events")
    await env.ready("evt1")

    async def event():
        if not env.events_file.exists():
            return None
        lines = [json.loads(line) for line in env.events_file.read_text().splitlines()]
        return [e for e in lines if e["spec"] == "binder-examples/events/main"] or None

    events = await poll(event, message="a launch event")
    assert events[0]["schema"] == "binderhub.jupyter.org/launch"
    assert events[0]["provider"] == "GitHub"
    assert events[0]["status"] == "success"
    assert set(events[0]) == {
        "timestamp",
        "schema",
        "version",
        "provider",
        "spec",
        "ref",
        "status",
        "origin",
    }
    text = env.events_file.read_text()
    assert "evt1" not in text and "127.0.0.1" not in text
    status, _ = await env.hub.api("DELETE", "/users/evt1/server")
    assert status in (202, 204)


async def test_restart_keeps_counts(env):
    """Kill the service; the hub restarts it; it counts the same servers again."""
    repo, repo_key = "https://github.com/binder-examples/restart", "gh/binder-examples/restart"
    for name in ("rst1", "rst2"):
        await env.user(name)
        await env.start_server(name, repo=repo)
    for name in ("rst1", "rst2"):
        await env.ready(name)
    # reservations that never get a server
    for i in range(PER_REPO_LIMIT):
        status, body, _ = await env.service(
            "POST",
            "api/reservations",
            token=env.hub.token,
            json_body={"user": f"rst-burst{i}", "server": "", "repo": "gh/org/rst-burst"},
        )
        assert status == 201, body

    async def settled():
        repos = (await env.usage())["repos"]
        return repos.get(repo_key) == PER_REPO_LIMIT and repos.get("gh/org/rst-burst")

    await poll(settled, message="rst1, rst2 and the reservations counted")
    pid = service_pid(env)
    os.kill(pid, signal.SIGKILL)

    async def restarted():
        new = service_pid(env, missing_ok=True)
        if not new or new == pid:
            return False
        with contextlib.suppress(aiohttp.ClientError):
            status, _, _ = await env.service("GET", "health")
            return status == 200

    # the hub notices a dead service at its next poll of it (SERVICE_POLL_INTERVAL here)
    await poll(restarted, timeout=30, interval=0.2, message="the hub to restart binder_service")
    # the running servers are counted again; the reservations never got a
    # server, so they are not (no leak); the repository is still full (no overshoot)
    repos = (await env.usage())["repos"]
    assert repos[repo_key] == PER_REPO_LIMIT
    assert "gh/org/rst-burst" not in repos
    status, body, _ = await env.service(
        "POST",
        "api/reservations",
        token=env.hub.token,
        json_body={"user": "late", "server": "", "repo": repo_key},
    )
    assert status == 429, body
    for name in ("rst1", "rst2"):
        status, _ = await env.hub.api("DELETE", f"/users/{name}/server")
        assert status in (202, 204)


def service_pid(env, missing_ok=False):
    needle = str(env.events_file).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"binder_service" in cmdline and needle in cmdline:
            return int(entry)
    if missing_ok:
        return None
    raise AssertionError("binder_service process not found")


async def test_culling(env):
    # new anonymous users must be younger than anonymous_grace on the service's clock
    env.reset_clock()
    anon = await env.user("anon-idle", groups=["binder-anonymous"])
    del anon
    await env.user("anon-old", groups=["binder-anonymous"])
    await env.user("anon-none", groups=["binder-anonymous"])
    await env.user("root-admin", admin=True)
    await env.user("registered")
    for name in ("anon-idle", "anon-old", "root-admin", "registered"):
        await env.start_server(name, repo="https://github.com/binder-examples/cull")
    for name in ("anon-idle", "anon-old", "root-admin", "registered"):
        await env.ready(name)

    async def activity(name, offset):
        when = datetime.now(timezone.utc) + timedelta(seconds=offset)
        stamp = when.isoformat().replace("+00:00", "Z")
        status, _ = await env.hub.api(
            "POST",
            f"/users/{name}/activity",
            json={"last_activity": stamp, "servers": {"": {"last_activity": stamp}}},
        )
        assert status == 200

    # 11 minutes later, anon-old was active a moment ago: only anon-idle is idle
    await activity("anon-old", 660)
    env.move_clock(660)

    async def gone(name):
        return await env.servers(name) is None

    await poll(lambda: gone("anon-idle"), message="anon-idle culled and deleted")
    await poll(lambda: gone("anon-none"), message="anon-none (no server) deleted")
    assert "" in await env.servers("anon-old")
    # 16 minutes after the start, anon-old is active but older than max_age (900 s)
    await activity("anon-old", 960)
    env.move_clock(300)
    await poll(lambda: gone("anon-old"), message="anon-old culled at max_age and deleted")
    # admins and registered users are spared by default
    assert "" in await env.servers("root-admin")
    assert "" in await env.servers("registered")
    status, text, _ = await env.service("GET", "metrics")
    assert 'binder_service_culled_servers_total{reason="idle"}' in text
    assert 'binder_service_culled_servers_total{reason="max_age"}' in text
    assert "anon-idle" not in text and "registered" not in text


async def test_activity_cannot_keep_an_anonymous_user_without_servers(env):
    """A visitor's token may report activity up to an hour ahead (the hub's limit),
    and any request with it counts as activity: an anonymous user without servers
    that did so was never deleted, and kept a place under the authenticator's
    max_anonymous_users for ever. Without a server, it goes after the idle timeout."""
    env.reset_clock()
    token = await env.user("anon-pinging", groups=["binder-anonymous"])
    ahead = datetime.now(timezone.utc) + timedelta(minutes=55)
    stamp = ahead.isoformat().replace("+00:00", "Z")
    status, body = await env.hub.api(
        "POST", "/users/anon-pinging/activity", json={"last_activity": stamp}, token=token
    )
    assert status == 200, body
    # past the idle timeout (600 s) on the service's clock, still before that activity
    env.move_clock(660)
    await poll(lambda: _user_gone(env, "anon-pinging"), message="anon-pinging deleted")


async def _user_gone(env, name):
    return await env.servers(name) is None


async def test_reservation_expiry(env):
    # a reservation whose server never appears (the spawn never started) expires
    status, body, _ = await env.service(
        "POST",
        "api/reservations",
        token=env.hub.token,
        json_body={"user": "never", "server": "", "repo": "gh/org/expiring"},
    )
    assert status == 201, body
    assert (await env.usage())["repos"]["gh/org/expiring"] == 1
    env.move_clock(TTL + 1)
    await poll(lambda: _repo_gone(env, "gh/org/expiring"), message="the reservation to expire")


async def _repo_gone(env, repo):
    return repo not in (await env.usage())["repos"]


async def test_hub_api_reads_every_page(env):
    for i in range(5):
        await env.user(f"page{i}")
    hub = HubAPI(api_url=env.hub.api_url, api_token=env.hub.token, page_size=2)
    names = [user["name"] async for user in hub.users()]
    status, everyone = await env.hub.api("GET", "/users?limit=200")
    assert status == 200
    assert len(names) > 4 and len(names) == len(set(names))
    assert sorted(names) == sorted(user["name"] for user in everyone)


async def test_service_client(env):
    """The client the spawners use, against the running service."""
    client = BinderServiceClient(url=env.service_url)
    token = env.hub.token  # admin: no server needed
    first = await client.reserve("client-1", "", "gh/org/client", token)
    assert first["repo"] == "gh/org/client" and first["user"] == "client-1"
    await client.reserve("client-2", "", "gh/org/client", token)
    with pytest.raises(RepoLimitExceeded) as refused:
        await client.reserve("client-3", "", "gh/org/client", token)
    assert refused.value.status_code == 429
    assert refused.value.limit == refused.value.usage == PER_REPO_LIMIT
    assert refused.value.retry_after > 0 and "gh/org/client" in refused.value.message
    await client.release(first["id"], token)
    await client.release(first["id"], token)  # already released: not an error
    assert (await client.usage(token))["repos"]["gh/org/client"] == 1
    assert await client.placement("registry/image:tag", token) == []
    with pytest.raises(BinderServiceError) as forbidden:
        await client.reserve("client-1", "", "gh/org/client", "not-a-token")
    assert forbidden.value.status_code == 403
    dead = BinderServiceClient(url=f"http://127.0.0.1:{free_port()}/services/binder/", timeout=2)
    with pytest.raises(ServiceUnavailable):
        await dead.reserve("client-1", "", "gh/org/client", token)
