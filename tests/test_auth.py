"""The anonymous authenticator through a real hub, with HTTP clients that keep cookies.

One hub for the module (base URL ``/binder/``, named servers on), each test
with its own browsers; see tests/test_auth_limits.py for the limits.
"""

import asyncio
import json
import sys
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
import pytest_asyncio
import yarl

from .authhub import (
    browser_api,
    cookie_header,
    fresh_browser,
    hub_config,
    whoami,
)
from .hub import start_hub
from .utils import poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

BASE = "/binder/"
LAUNCH = {
    "repo": "https://github.com/org/numpy-tutorial",
    "ref": "main",
    "urlpath": "lab/tree/index.ipynb?x=1&y=2",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory, request):
    directory = tmp_path_factory.mktemp("authhub")
    config = hub_config(
        directory,
        extra="""
c.JupyterHub.allow_named_servers = True
# counts stopped named servers too: the router prunes those of anonymous users
c.JupyterHub.named_server_limit_per_user = 2
c.AnonymousAuthenticator.max_servers_per_user = 2
c.AnonymousAuthenticator.new_users_per_minute = 3
c.AnonymousAuthenticator.new_users_window = 3600
""",
    )
    running = await start_hub(directory / "hub", config, base_url=BASE)
    yield running
    await running.stop()
    failed = any(
        getattr(item, "rep_call", None) is not None and item.rep_call.failed
        for item in request.session.items
        if item.module is request.module
    )
    if failed:
        sys.stderr.write(f"\n===== hub log =====\n{running.log()[-30000:]}\n")


def origin(hub):
    return str(yarl.URL(hub.url).origin())


def spawn_url(hub, params):
    return str(yarl.URL(hub.url + "/hub/spawn").with_query(params))


LOGIN = BASE + "hub/login"
ANONYMOUS_LOGIN = BASE + "hub/anonymous-login"


def after_login(steps):
    """Split redirect steps: the hops to the login URLs, and where the browser went next."""
    login = []
    for status, location in steps:
        if urlsplit(location).path in (LOGIN, ANONYMOUS_LOGIN):
            assert status == 302
            login.append((status, location))
        elif login:
            return login, location
    raise AssertionError(f"no login in {steps}")


async def follow(browser, url, limit=10):
    """Follow redirects one by one; returns the list of (status, location or url)."""
    steps = []
    for _ in range(limit):
        async with browser.get(url, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            steps.append((resp.status, location or url))
            if resp.status not in (301, 302, 303, 307) or not location:
                return steps
            url = str(resp.url.join(yarl.URL(location, encoded=True)))
    return steps


async def server_model(hub, name, server=""):
    status, model = await hub.api("GET", f"/users/{name}")
    assert status == 200, model
    return model["servers"].get(server)


async def wait_ready(hub, name, server=""):
    async def ready():
        model = await server_model(hub, name, server)
        return model and model["ready"]

    await poll(ready, timeout=60, interval=0.2, message=f"server {name}/{server} to be ready")


async def test_first_visit_logs_in_and_keeps_launch_query(hub):
    browser = fresh_browser(hub)
    url = spawn_url(hub, LAUNCH)
    steps = await follow(browser, url)
    # not logged in: through the login pages (only redirects), back to the launch URL
    login, back = after_login(steps)
    assert [urlsplit(u).path for _, u in login] == [LOGIN, ANONYMOUS_LOGIN]
    back = urlsplit(back)
    assert back.path == BASE + "hub/spawn"
    assert {k: v[0] for k, v in parse_qs(back.query).items()} == LAUNCH
    assert "jupyterhub-session-id" in {c.key for c in browser.cookie_jar}

    me = await whoami(hub, browser)
    assert me["name"].startswith("numpy-tutorial-")
    assert len(me["name"].rsplit("-", 1)[1]) == 10
    assert me["admin"] is False
    assert me["groups"] == ["binder-anonymous"]
    # the spawn handler received the query as the server's options
    await wait_ready(hub, me["name"])
    model = await server_model(hub, me["name"])
    assert model["user_options"]["repo"] == [LAUNCH["repo"]]
    assert model["user_options"]["urlpath"] == [LAUNCH["urlpath"]]


async def test_return_visit_keeps_identity(hub):
    browser = fresh_browser(hub)
    first = await whoami(hub, browser)
    status, users = await hub.api("GET", "/users")
    count = len(users)
    for path in ("/hub/home", "/hub/login", "/hub/login?next=" + quote(BASE + "hub/home")):
        async with browser.get(hub.url + path) as resp:
            assert resp.status == 200
    again = await whoami(hub, browser)
    assert again["name"] == first["name"]
    assert first["name"].startswith("binder-")
    status, users = await hub.api("GET", "/users")
    assert len(users) == count
    # a second browser is somebody else
    other = await whoami(hub, fresh_browser(hub))
    assert other["name"] != first["name"]
    # once binder_service deleted the user, the browser's cookie leads to a new identity
    status, _ = await hub.api("DELETE", f"/users/{first['name']}")
    assert status == 204
    steps = await follow(browser, spawn_url(hub, {"repo": "https://github.com/org/back-again"}))
    login, back = after_login(steps)
    assert login
    assert urlsplit(back).query == "repo=https://github.com/org/back-again"
    assert (await whoami(hub, browser))["name"].startswith("back-again-")


async def test_two_links_in_one_browser(hub):
    browser = fresh_browser(hub)
    first = {"repo": "https://github.com/org/first-repo", "ref": "main"}
    second = {"repo": "https://gitlab.com/group/second-repo", "ref": "v1"}
    steps = await follow(browser, spawn_url(hub, first))
    me = await whoami(hub, browser)
    name = me["name"]
    await wait_ready(hub, name)

    # the second link goes to a new named server, with the same query
    steps = await follow(browser, spawn_url(hub, second), limit=1)
    status, location = steps[0]
    assert status == 302
    target = urlsplit(location)
    prefix = f"{BASE}hub/spawn/{name}/second-repo-"
    assert target.path.startswith(prefix), location
    server = target.path[len(f"{BASE}hub/spawn/{name}/") :]
    assert {k: v[0] for k, v in parse_qs(target.query).items()} == second
    steps = await follow(browser, origin(hub) + location)
    await wait_ready(hub, name, server)

    # both run, each answers at its own URL, the first one untouched
    status, model = await hub.api("GET", f"/users/{name}")
    assert set(model["servers"]) == {"", server}
    assert model["servers"][""]["user_options"]["repo"] == [first["repo"]]
    assert model["servers"][server]["user_options"]["repo"] == [second["repo"]]
    for path, label in (
        (f"user/{name}/", f"{name}/"),
        (f"user/{name}/{server}/", f"{name}/{server}"),
    ):
        async with browser.get(hub.url + "/" + path) as resp:
            assert resp.status == 200
            assert (await resp.text()).strip() == f"tiny server of {label}"

    # the same link again goes to the server that already runs it
    steps = await follow(browser, spawn_url(hub, second), limit=1)
    assert urlsplit(steps[0][1]).path == f"{BASE}hub/spawn/{name}/{server}"

    # a third repository is over the per-user cap of 2: a page, not a server
    async with browser.get(spawn_url(hub, {"repo": "https://github.com/org/third"})) as resp:
        assert resp.status == 429
        assert "limit is 2" in await resp.text()
    # nor through the REST API with the user's own token
    token = await user_token(hub, browser, name)
    status, body = await hub.api(
        "POST", f"/users/{name}/servers/extra", token=token, json={"repo": "x"}
    )
    assert status == 429, body
    status, model = await hub.api("GET", f"/users/{name}")
    assert set(model["servers"]) == {"", server}

    # after stopping the second session a third repository starts, although the
    # hub's named_server_limit_per_user (2) counts the stopped "second" and the
    # refused "extra": the router deleted those first
    status, body = await hub.api("DELETE", f"/users/{name}/servers/{server}", token=token)
    assert status in (202, 204), body

    async def stopped():
        return await server_model(hub, name, server) is None

    await poll(stopped, timeout=30, interval=0.2, message="the second server to stop")
    steps = await follow(browser, spawn_url(hub, {"repo": "https://github.com/org/third"}), limit=1)
    third = urlsplit(steps[0][1]).path.rsplit("/", 1)[1]
    assert third.startswith("third-")
    await follow(browser, origin(hub) + steps[0][1])
    await wait_ready(hub, name, third)
    status, model = await hub.api("GET", f"/users/{name}")
    assert set(model["servers"]) == {"", third}


async def test_concurrent_launches_through_the_api_stay_within_the_cap(hub):
    """A visitor's token starts its default and two named servers at once; the
    per-user cap (2) still holds: JupyterHub marks each spawn pending before
    ``pre_spawn_start`` counts the others."""
    browser = fresh_browser(hub)
    name = (await whoami(hub, browser))["name"]
    token = await user_token(hub, browser, name)
    paths = [
        f"/users/{name}/server",
        f"/users/{name}/servers/race-a",
        f"/users/{name}/servers/race-b",
    ]
    launch = {"repo": "https://github.com/org/race"}
    results = await asyncio.gather(
        *(hub.api("POST", path, token=token, json=launch) for path in paths)
    )
    statuses = sorted(status for status, _ in results)
    assert statuses[-1] == 429 and all(s in (201, 202) for s in statuses[:-1]), results
    status, model = await hub.api("GET", f"/users/{name}")
    assert len(model["servers"]) == 2, model["servers"]
    for server in model["servers"]:
        path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
        status, body = await hub.api("DELETE", path, token=token)
        assert status in (202, 204), body


BYPASS_VECTORS = [
    pytest.param("//evil.example/", id="protocol-relative"),
    pytest.param("///evil.example/", id="triple-slash"),
    pytest.param("////evil.example/x", id="quad-slash"),
    pytest.param("/\\evil.example/", id="slash-backslash"),
    pytest.param("\\\\evil.example/", id="backslashes"),
    pytest.param("/\t/evil.example/", id="tab"),
    pytest.param("/%09/evil.example/", id="encoded-tab"),
    pytest.param("/%2F/evil.example/", id="encoded-slash"),
    pytest.param("%2F%2Fevil.example/", id="double-encoded"),
    pytest.param("https:evil.example", id="scheme-no-slashes"),
    pytest.param("https://evil.example/binder/hub/home", id="absolute"),
    pytest.param("http:/\\evil.example", id="scheme-slash-backslash"),
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("{hub}@evil.example/", id="userinfo"),
    pytest.param("{root}/other/app", id="own-host-other-prefix"),
    pytest.param("/other/app", id="other-prefix"),
    pytest.param("/binderx/hub/home", id="prefix-lookalike"),
    pytest.param("/binder/../other/app", id="dotdot"),
    pytest.param("/binder/%2e%2e/other/app", id="encoded-dotdot"),
]


async def login_with_next(hub, entry, next_url):
    """Visit a login URL with ``next`` as a new browser; where does it send the browser?"""
    browser = fresh_browser(hub)
    url = yarl.URL(f"{hub.url}/hub/{entry}?next={quote(next_url, safe='')}", encoded=True)
    steps = await follow(browser, str(url), limit=3)
    # the visited URL counts as the first hop to a login page
    _, location = after_login([(302, str(url))] + steps)
    return location


@pytest.mark.parametrize("entry", ["login", "anonymous-login"])
@pytest.mark.parametrize("vector", BYPASS_VECTORS)
async def test_login_refuses_redirect_bypass(hub, entry, vector):
    root = origin(hub)
    vector = vector.format(hub=root, root=root)
    location = await login_with_next(hub, entry, vector)
    target = urlsplit(location)
    assert target.netloc in ("", urlsplit(root).netloc), location
    assert "evil" not in location
    assert target.path == BASE + "hub/home", location


@pytest.mark.parametrize(
    "next_url, expected",
    [
        pytest.param("/binder/hub/spawn?repo=a&ref=b", "/binder/hub/spawn?repo=a&ref=b", id="path"),
        pytest.param("{root}/binder/hub/home?x=1", "/binder/hub/home?x=1", id="own-absolute"),
        pytest.param("//{host}/binder/hub/token", "/binder/hub/token", id="own-protocol-relative"),
    ],
)
async def test_login_keeps_good_next(hub, next_url, expected):
    root = origin(hub)
    next_url = next_url.format(root=root, host=urlsplit(root).netloc)
    assert await login_with_next(hub, "login", next_url) == expected


async def test_logout_discards_identity_and_stops_servers(hub):
    browser = fresh_browser(hub)
    await follow(browser, spawn_url(hub, {"repo": "https://github.com/org/leaving"}))
    me = await whoami(hub, browser)
    name = me["name"]
    await wait_ready(hub, name)
    old_cookies = cookie_header(browser)

    # a link from another site cannot end the sessions
    async with browser.get(
        hub.url + "/hub/logout", headers={"Sec-Fetch-Site": "cross-site"}
    ) as resp:
        assert resp.status == 403
    assert (await server_model(hub, name))["ready"]

    async with browser.get(
        hub.url + "/hub/logout", headers={"Sec-Fetch-Site": "same-origin"}
    ) as resp:
        assert resp.status == 200
    status, _ = await hub.api("GET", f"/users/{name}")
    assert status == 404
    # the old cookie is worthless
    async with hub.browser() as replay:
        async with replay.get(
            hub.api_url + "/user", headers={"Cookie": old_cookies}, allow_redirects=False
        ) as resp:
            assert resp.status == 403
    # the next visit is a new identity
    again = await whoami(hub, browser)
    assert again["name"] != name


async def test_cookies_are_same_site_lax_and_secure_over_https(hub):
    """Every cookie the authenticator's pages set: login, anonymous login, spawn router, logout."""
    ours = {BASE + "hub/" + p for p in ("login", "anonymous-login", "logout", "spawn")}
    # X-Scheme stands for a TLS-terminating proxy in front (tornado's xheaders read it)
    for extra, secure in (({}, False), ({"X-Scheme": "https"}, True)):
        browser = fresh_browser(hub, **extra)
        urls = [
            hub.url + "/hub/login?next=" + quote(BASE + "hub/home"),
            hub.url + "/hub/anonymous-login?next=" + quote(BASE + "hub/home"),
            spawn_url(hub, {"repo": "https://github.com/org/cookies"}),
            hub.url + "/hub/logout",
        ]
        cookies = []
        for url in urls:
            async with browser.get(url, allow_redirects=False) as resp:
                assert urlsplit(url).path in ours
                cookies += resp.headers.getall("Set-Cookie", [])
        names = {cookie.split("=", 1)[0] for cookie in cookies}
        assert {"jupyterhub-hub-login", "jupyterhub-session-id"} <= names, cookies
        for cookie in cookies:
            attributes = [a.strip().lower() for a in cookie.split(";")[1:]]
            assert "samesite=lax" in attributes, cookie
            assert ("secure" in attributes) == secure, cookie


async def user_token(hub, browser, name):
    """A new API token of the browser's user, made by that user through the REST API."""
    status, text = await browser_api(hub, browser, "POST", f"/users/{name}/tokens", json={})
    assert status == 201, text
    return json.loads(text)["token"]


async def get_with_token(url, token):
    async with aiohttp.ClientSession() as session:
        async with session.get(
            url, headers={"Authorization": f"token {token}"}, allow_redirects=False
        ) as resp:
            return resp.status


async def test_cannot_reach_other_users(hub):
    victim = fresh_browser(hub)
    await follow(victim, spawn_url(hub, {"repo": "https://github.com/org/real-singleuser"}))
    victim_name = (await whoami(hub, victim))["name"]
    victim_token = await user_token(hub, victim, victim_name)
    attacker = fresh_browser(hub)
    me = (await whoami(hub, attacker))["name"]
    token = await user_token(hub, attacker, me)
    status_url = f"{hub.url}/user/{victim_name}/api/status"

    await wait_ready(hub, victim_name)
    # the victim reaches their own server (so the refusals below are not an outage)
    assert await get_with_token(status_url, victim_token) == 200
    # the attacker does not: not with a token, not with the browser (after the hub's OAuth)
    assert await get_with_token(status_url, token) == 403
    async with attacker.get(status_url) as resp:
        assert resp.status == 403
    async with attacker.get(f"{hub.url}/user/{victim_name}/files/secret.txt") as resp:
        # the server sent the browser through the hub's OAuth, which said no
        assert "/hub/api/oauth2/authorize" in str(resp.url)
        assert resp.status == 403

    async def call(method, path, **kwargs):
        status, _ = await hub.api(method, path, token=token, **kwargs)
        return status

    assert await call("GET", f"/users/{victim_name}") == 404
    assert await call("POST", f"/users/{victim_name}/server") in (403, 404)
    assert await call("DELETE", f"/users/{victim_name}/server") in (403, 404)
    assert await call("POST", f"/users/{victim_name}/tokens", json={}) in (403, 404)
    assert await call("GET", "/groups/binder-anonymous") in (403, 404)
    assert await call("PATCH", f"/users/{me}", json={"admin": True}) == 403
    status, users = await hub.api("GET", "/users", token=token)
    # listing users needs list:users, which users do not have
    assert status == 403 or [u["name"] for u in users] == [me]
    async with attacker.get(f"{hub.url}/hub/admin") as resp:
        assert resp.status == 403
    # the victim's server survived all of it
    model = await server_model(hub, victim_name)
    assert model["ready"]
    assert await get_with_token(status_url, victim_token) == 200
