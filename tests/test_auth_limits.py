"""Abuse limits of the anonymous authenticator through a real hub.

New anonymous users per client address per minute, the client address only
from proxies the hub trusts, and the cap on anonymous users in total; a
second launch link on a hub without named servers; the "Sign in" button when
``auto_login`` is off.
"""

import asyncio
import html
import json
import re
import sys
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp

from .authhub import fresh_browser, hub_config, whoami
from .utils import poll, uid_base


async def visit(hub, browser):
    """A first visit: ``(status, Retry-After, page text)`` at the end of the redirects."""
    async with browser.get(hub.url + "/hub/home") as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.text()


async def anonymous_names(hub):
    status, group = await hub.api("GET", "/groups/binder-anonymous")
    if status == 404:
        # made with the first anonymous user
        return set()
    assert status == 200, group
    return set(group["users"])


async def test_new_users_per_client_address(hub_factory, tmp_path):
    hub = await hub_factory(
        hub_config(
            tmp_path,
            # a window far longer than the test: nothing depends on how fast it runs
            extra="""
c.AnonymousAuthenticator.new_users_per_minute = 2
c.AnonymousAuthenticator.new_users_window = 3600
""",
        )
    )
    first = fresh_browser(hub, ip="198.51.100.7")
    name = (await whoami(hub, first))["name"]
    assert (await visit(hub, fresh_browser(hub, ip="198.51.100.7")))[0] == 200
    before = await anonymous_names(hub)
    assert len(before) == 2

    status, retry_after, text = await visit(hub, fresh_browser(hub, ip="198.51.100.7"))
    assert status == 429
    assert 3500 < int(retry_after) <= 3600
    assert "Too many new sessions were started from your network" in text
    # X-Real-Ip is not believed, and entries a client puts left of its own are skipped
    spoofs = [
        {"X-Forwarded-For": "198.51.100.7", "X-Real-Ip": "203.0.113.9"},
        {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"},
    ]
    for headers in spoofs:
        assert (await visit(hub, hub.browser(headers=headers)))[0] == 429
    assert await anonymous_names(hub) == before

    # another address is not affected, nor is a browser that already has its identity
    assert (await visit(hub, fresh_browser(hub, ip="198.51.100.8")))[0] == 200
    assert (await whoami(hub, first))["name"] == name
    # IPv6 clients are counted per /64
    assert (await visit(hub, fresh_browser(hub, ip="2001:db8:1:2::1")))[0] == 200
    assert (await visit(hub, fresh_browser(hub, ip="2001:db8:1:2::2")))[0] == 200
    assert (await visit(hub, fresh_browser(hub, ip="2001:db8:1:2:ffff::3")))[0] == 429
    assert (await visit(hub, fresh_browser(hub, ip="2001:db8:1:3::1")))[0] == 200

    # this hub has no named servers: a second launch link cannot start a second
    # server, and must not silently open the first one either
    first_link = {"repo": "https://github.com/org/one", "ref": "main"}
    async with first.get(hub.url + "/hub/spawn", params=first_link) as resp:
        assert resp.status == 200

    async def ready():
        status, model = await hub.api("GET", f"/users/{name}")
        return model["servers"].get("", {}).get("ready")

    await poll(ready, timeout=60, interval=0.2, message="the first server")
    async with first.get(
        hub.url + "/hub/spawn", params={"repo": "https://github.com/org/two"}
    ) as resp:
        assert resp.status == 409
        assert "Stop it from the home page" in await resp.text()
    # the same link again leads to the running server
    async with first.get(hub.url + "/hub/spawn", params=first_link) as resp:
        assert resp.status == 200
        assert str(resp.url).endswith(f"/user/{name}/")
    status, model = await hub.api("GET", f"/users/{name}")
    assert list(model["servers"]) == [""]
    assert model["servers"][""]["user_options"]["repo"] == [first_link["repo"]]


async def test_forged_forwarded_for_through_the_proxy_is_still_limited(hub_factory, tmp_path):
    hub = await hub_factory(
        hub_config(
            tmp_path,
            extra="""
# this hub's defaults: configurable-http-proxy on loopback is the one trusted hop
c.AnonymousAuthenticator.pop("trusted_proxy_hops")
c.AnonymousAuthenticator.new_users_per_minute = 2
c.AnonymousAuthenticator.new_users_window = 3600
""",
        )
    )

    def client(source, forged):
        """A fresh browser connecting from ``source`` that claims ``forged`` as its address."""
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        return hub.browser(connector=connector, headers={"X-Forwarded-For": forged})

    # The proxy appends the address it saw (127.0.0.2) to whatever the client
    # sent; addresses in trusted networks (loopback here, private ones on a
    # LAN) must not let the client step further left.
    forged = ["198.51.100.1", "10.0.0.1", "192.168.1.1, 203.0.113.1", "127.0.0.3", "::1"]
    statuses = [(await visit(hub, client("127.0.0.2", claim)))[0] for claim in forged]
    assert statuses == [200, 200, 429, 429, 429]
    assert len(await anonymous_names(hub)) == 2
    # counted under the address the proxy saw, not one shared by everybody
    assert (await visit(hub, client("127.0.0.3", "198.51.100.1")))[0] == 200
    assert hub.log().count("for 127.0.0.2\n") == 2

    # Code in a session reaches the hub's own port, past the proxy, from the
    # loopback the hub trusts (a local-mode sandbox, as another uid): its
    # header named a new client each time, and it made anonymous users without
    # limit. It is counted under its own address.
    statuses = await direct_logins(hub, uid_base() + 4321, "127.0.0.4", 4)
    assert statuses == [302, 302, 429, 429]
    assert hub.log().count("for 127.0.0.4\n") == 2
    assert "Not believing X-Forwarded-For from 127.0.0.4" in hub.log()


DIRECT_LOGINS = """
import http.client, json, sys
port, source, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
statuses = []
for i in range(count):
    connection = http.client.HTTPConnection("127.0.0.1", port, source_address=(source, 0))
    connection.request(
        "GET",
        "/hub/anonymous-login?next=%2Fhub%2Fhome",
        headers={"X-Forwarded-For": "198.51.100.%d" % (100 + i)},
    )
    statuses.append(connection.getresponse().status)
    connection.close()
print(json.dumps(statuses))
"""


async def direct_logins(hub, uid, source, count):
    """New-session requests straight to the hub's port, each naming a new client,
    from a process running as ``uid`` bound to ``source``: their statuses."""
    process = await asyncio.create_subprocess_exec(
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        sys.executable,
        "-I",
        "-c",
        DIRECT_LOGINS,
        str(hub.hub_port),
        source,
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out
    return json.loads(out)


async def sign_in(hub, browser):
    """What the "Sign in" button does: ``(status, Retry-After, page text)``."""
    async with browser.get(hub.url + "/hub/anonymous-login?next=%2Fhub%2Fhome") as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.text()


async def test_sign_in_button_total_cap_and_untrusted_proxy(hub_factory, tmp_path):
    hub = await hub_factory(
        hub_config(
            tmp_path,
            extra="""
c.AnonymousAuthenticator.auto_login = False
c.AnonymousAuthenticator.max_anonymous_users = 2
c.AnonymousAuthenticator.new_users_per_minute = 3
c.AnonymousAuthenticator.new_users_window = 3600
# the hub's proxy is not trusted: X-Forwarded-For is ignored, everybody is 127.0.0.1
c.AnonymousAuthenticator.trusted_proxy_networks = []
""",
        )
    )
    # without auto_login a launch link shows the login page, whose button signs in
    b1 = fresh_browser(hub, ip="198.51.100.1")
    launch = "/hub/spawn?repo=https%3A%2F%2Fgithub.com%2Forg%2Fbutton&ref=main"
    async with b1.get(hub.url + launch) as resp:
        assert resp.status == 200
        assert urlsplit(str(resp.url)).path == "/hub/login"
        page = await resp.text()
    assert "Sign in with Binder (no account needed)" in page
    href = html.unescape(re.search(r'href=["\']([^"\']*anonymous-login[^"\']*)', page)[1])
    assert await anonymous_names(hub) == set()
    async with b1.get(urljoin(hub.url + "/hub/login", href), allow_redirects=False) as resp:
        assert resp.status == 302
        assert unquote(resp.headers["Location"]) == unquote(launch)
    n1 = (await whoami(hub, b1))["name"]
    assert n1.startswith("button-")
    assert await anonymous_names(hub) == {n1}

    b2 = fresh_browser(hub, ip="198.51.100.2")
    assert (await sign_in(hub, b2))[0] == 200
    n2 = (await whoami(hub, b2))["name"]

    # the total cap
    b3 = fresh_browser(hub, ip="198.51.100.3")
    status, retry_after, text = await sign_in(hub, b3)
    assert status == 429
    assert retry_after == "60"
    assert "at its limit of visitors" in text
    assert await anonymous_names(hub) == {n1, n2}
    # identities that exist keep working at the cap
    assert (await whoami(hub, b1))["name"] == n1

    # a user that is not anonymous does not count
    status, _ = await hub.api("POST", "/users/someone-real")
    assert status == 201
    status, _ = await hub.api("DELETE", f"/users/{n1}")
    assert status == 204
    assert (await sign_in(hub, b3))[0] == 200
    n3 = (await whoami(hub, b3))["name"]
    assert await anonymous_names(hub) == {n2, n3}

    # a fourth visitor from yet another X-Forwarded-For address: the cap again,
    # and once there is room, the rate limit, because all three came from 127.0.0.1
    b4 = fresh_browser(hub, ip="198.51.100.4")
    assert (await sign_in(hub, b4))[0] == 429
    status, _ = await hub.api("DELETE", f"/users/{n2}")
    assert status == 204
    status, retry_after, text = await sign_in(hub, b4)
    assert status == 429
    assert "from your network" in text
    assert await anonymous_names(hub) == {n3}
