"""A real browser (Debian's headless Chromium) follows launch links from a fresh profile.

No login page on the way: the first link lands on the hub's spawn page of a new
anonymous user with the launch query intact, then on the server; a second
link in another tab of the same browser keeps the identity and gets a second
server; the hub's Logout button ends both. Screenshots go to the test's tmp dir.
"""

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import yarl

from .authhub import hub_config
from .utils import fresh_browser_page

pytestmark = pytest.mark.browser


async def test_launch_link_from_fresh_profile(hub_factory, tmp_path):
    hub = await hub_factory(
        hub_config(
            tmp_path,
            extra="""
c.JupyterHub.allow_named_servers = True
# send the browser to the spawn page at once, not after up to 10 s
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
""",
        )
    )
    launch = {"repo": "https://github.com/org/Hold-Demo", "ref": "main", "urlpath": "lab"}
    url = str(yarl.URL(hub.url + "/hub/spawn").with_query(launch))

    async with fresh_browser_page() as page:
        visited = []
        page.on("framenavigated", lambda frame: visited.append(frame.url))

        await page.goto(url)
        # the server does not answer before the test releases it: this is the spawn page
        await page.wait_for_url(re.compile(r".*/hub/spawn-pending/.*"))
        await page.get_by_text("Your server is starting up").wait_for()
        await page.screenshot(path=str(tmp_path / "spawn-page.png"), full_page=True)
        (tmp_path / "release-held-servers").write_text("go")
        # the login page never rendered: /hub/login only redirected
        logins = [u for u in visited if "/hub/login" in u]
        assert not logins, visited
        pending = urlsplit(next(u for u in visited if "/hub/spawn-pending/" in u))
        name = pending.path.rsplit("/", 1)[1]
        assert name.startswith("hold-demo-")
        # the spawn page of that user, still carrying the launch query
        assert parse_qs(pending.query)["repo"] == [launch["repo"]]

        await page.wait_for_url(f"**/user/{name}/**", timeout=60_000)
        assert f"tiny server of {name}/" in await page.content()
        await page.screenshot(path=str(tmp_path / "server.png"))

        status, model = await hub.api("GET", f"/users/{name}")
        assert status == 200
        assert model["servers"][""]["user_options"]["urlpath"] == ["lab"]
        assert model["groups"] == ["binder-anonymous"]

        # a second link in a new tab: same identity, a second server
        second = await page.context.new_page()
        other = str(
            yarl.URL(hub.url + "/hub/spawn").with_query(
                {"repo": "https://github.com/org/another-one"}
            )
        )
        await second.goto(other)
        await second.wait_for_url(f"**/user/{name}/another-one-*/**", timeout=60_000)
        await second.screenshot(path=str(tmp_path / "second-server.png"))
        status, model = await hub.api("GET", f"/users/{name}")
        assert len(model["servers"]) == 2
        # the first tab's server still answers
        await page.reload()
        assert f"tiny server of {name}/" in await page.content()

        # the hub's own Logout button ends both sessions and the identity
        await page.goto(hub.url + "/hub/home")
        await page.locator("#logout").click()
        await page.wait_for_url("**/hub/logout")
        status, _ = await hub.api("GET", f"/users/{name}")
        assert status == 404
    assert (tmp_path / "spawn-page.png").stat().st_size > 0
