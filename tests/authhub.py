"""A real hub with the anonymous authenticator and servers that start fast, for the auth tests.

Servers are a few lines of ``http.server`` that answer 200 on every path
(started as local processes by ``SimpleLocalProcessSpawner``), except when
the launch names a repository containing ``real-singleuser``: then the real
``jupyterhub-singleuser`` runs, with the hub's OAuth in front of it. A
repository containing ``hold`` keeps the server from answering until the file
``release-held-servers`` exists in the test's directory, so a test can look at
the spawn page while the server is starting.
"""

import itertools
from http.cookies import SimpleCookie

TINY_SERVER = r"""
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

port = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
# a test holds the start until it has looked at the spawn page
hold = os.environ.get("TINY_HOLD_FILE")
while hold and not os.path.exists(hold):
    time.sleep(0.05)
body = ("tiny server of %s/%s\n" % (
    os.environ["JUPYTERHUB_USER"], os.environ.get("JUPYTERHUB_SERVER_NAME", ""))).encode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

HUB_CONFIG = """
import sys
c.JupyterHub.authenticator_class = "binder-anonymous"
c.JupyterHub.redirect_to_server = False
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [sys.executable, {tiny!r}]
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.Authenticator.admin_users = {{"hub-admin"}}
# The test client stands for a trusted ingress in front of the hub's proxy: the
# X-Forwarded-For it sends (see fresh_browser) is believed one hop further, so
# each test browser can be a client of its own address.
c.AnonymousAuthenticator.trusted_proxy_hops = 2

def pick_command(spawner):
    # the spawn handler passes the query as lists of strings (Spawner.options_from_query)
    if "hold" in str(spawner.user_options.get("repo")).lower():
        spawner.environment["TINY_HOLD_FILE"] = {hold!r}
    if "real-singleuser" in str(spawner.user_options.get("repo")):
        spawner.cmd = ["jupyterhub-singleuser"]
        spawner.args = [
            "--allow-root",
            "--ServerApp.jpserver_extensions={{'jupyterlab': False, 'jupyter_lsp': False}}",
        ]

c.Spawner.pre_spawn_hook = pick_command
"""


def hub_config(tmp_dir, extra=""):
    tiny = tmp_dir / "tiny_server.py"
    tiny.parent.mkdir(parents=True, exist_ok=True)
    tiny.write_text(TINY_SERVER)
    hold = tmp_dir / "release-held-servers"
    return HUB_CONFIG.format(tiny=str(tiny), hold=str(hold)) + "\n" + extra


_client_numbers = itertools.count()


def fake_client_ip():
    """A new documentation address (TEST-NET-2, then TEST-NET-3) to stand for one client.

    Distinct for the first 508 calls, so per-address limits never see two
    test clients as one.
    """
    n = next(_client_numbers) % 508
    net = "198.51.100" if n < 254 else "203.0.113"
    return f"{net}.{n % 254 + 1}"


def fresh_browser(hub, ip=None, **headers):
    """A new cookie jar that the hub sees coming from ``ip`` (X-Forwarded-For, two trusted hops)."""
    headers.setdefault("X-Forwarded-For", ip or fake_client_ip())
    return hub.browser(headers=headers)


def xsrf(browser, hub):
    for cookie in browser.cookie_jar:
        if cookie.key == "_xsrf":
            return cookie.value
    return ""


async def whoami(hub, browser):
    """The hub's model of the browser's user (``GET /hub/api/user`` with its cookies)."""
    async with browser.get(hub.url + "/hub/home") as resp:
        assert resp.status == 200, await resp.text()
    async with browser.get(
        hub.api_url + "/user", headers={"X-XSRFToken": xsrf(browser, hub)}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def browser_api(hub, browser, method, path, **kwargs):
    """Call the REST API as the browser's user, with its cookie and XSRF token."""
    headers = kwargs.pop("headers", {})
    headers["X-XSRFToken"] = xsrf(browser, hub)
    async with browser.request(method, hub.api_url + path, headers=headers, **kwargs) as resp:
        text = await resp.text()
        return resp.status, text


def cookie_header(browser):
    cookies = SimpleCookie()
    for cookie in browser.cookie_jar:
        cookies[cookie.key] = cookie.value
    return "; ".join(f"{k}={m.value}" for k, m in cookies.items())
