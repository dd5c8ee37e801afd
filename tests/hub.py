"""A real JupyterHub + configurable-http-proxy, started for a test.

``start_hub(tmp_path, config)`` runs ``python -m jupyterhub`` in its own
directory on free loopback ports, with the project on ``PYTHONPATH`` and
configurable-http-proxy from ``node_modules``. It waits until the hub API
answers and returns a :class:`RunningHub`: the public URL, an admin API token
(a service with the ``admin`` role), an HTTP client that keeps cookies (a
browser stand-in) and the hub log.
"""

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import aiohttp

from .utils import REPO_ROOT, free_port, poll

BASE_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {pid_file!r}
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.ConfigurableHTTPProxy.debug = False
c.JupyterHub.db_url = "sqlite:///{db}"
c.JupyterHub.cookie_secret = bytes.fromhex({cookie_secret!r})
c.JupyterHub.log_level = "DEBUG"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["test-admin"]}}]
"""


def proxy_command():
    """The configurable-http-proxy executable: node_modules first, then PATH."""
    local = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
    if local.exists():
        return str(local)
    found = shutil.which("configurable-http-proxy")
    if not found:
        raise RuntimeError("configurable-http-proxy not found: run `npm install` at the repo root")
    return found


class RunningHub:
    """A running hub process and the handles a test needs."""

    def __init__(self, *, url, hub_port, token, directory, log_path, process):
        self.url = url.rstrip("/")
        self.api_url = self.url + "/hub/api"
        self.hub_port = hub_port
        self.token = token
        self.directory = Path(directory)
        self.log_path = Path(log_path)
        self.process = process
        self._sessions = []

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def browser(self, **kwargs):
        """A new HTTP client with its own cookie jar (a fresh browser profile)."""
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), raise_for_status=False, **kwargs
        )
        self._sessions.append(session)
        return session

    async def api(self, method, path, *, token=None, **kwargs):
        """Call the hub REST API; returns (status, parsed JSON or text)."""
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {token or self.token}"
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, self.api_url + path, headers=headers, **kwargs
            ) as resp:
                text = await resp.text()
                try:
                    body = await resp.json(content_type=None) if text else None
                except ValueError:
                    body = text
                return resp.status, body

    async def wait_ready(self, timeout=60):
        async def answers():
            if self.process.returncode is not None:
                raise RuntimeError(
                    f"hub exited with {self.process.returncode}:\n{self.log()[-5000:]}"
                )
            try:
                status, _ = await self.api("GET", "/")
            except aiohttp.ClientError:
                return False
            return status == 200

        await poll(answers, timeout=timeout, interval=0.1, message="the hub to answer")

    async def stop(self):
        for session in self._sessions:
            await session.close()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        # the proxy and anything the hub left behind share its process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def start_hub(
    directory,
    config="",
    *,
    env=None,
    port=None,
    timeout=60,
    args=(),
    base_url="/",
    sigint_ignored=False,
):
    """Start a hub in ``directory`` with ``config`` (Python source) appended to the base.

    ``base_url`` is ``JupyterHub.base_url``; the RunningHub's ``url`` includes it.
    ``sigint_ignored`` starts the hub with SIGINT ignored, as a shell starts a
    background job (``jupyterhub &`` in a script, ``nohup``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    hub_port = free_port()
    token = secrets.token_hex(16)
    config_path = directory / "jupyterhub_config.py"
    config_path.write_text(
        BASE_CONFIG.format(
            port=port,
            hub_port=hub_port,
            proxy_api_port=free_port(),
            pid_file=str(directory / "proxy.pid"),
            proxy_token=secrets.token_hex(16),
            db=directory / "jupyterhub.sqlite",
            cookie_secret=secrets.token_hex(32),
            token=token,
        )
        + f"c.JupyterHub.base_url = {base_url!r}\n"
        + "\n"
        + textwrap.dedent(config)
    )
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    proxy_dir = str(Path(proxy_command()).parent)
    bin_dir = str(Path(sys.executable).parent)
    full_env["PATH"] = os.pathsep.join([bin_dir, proxy_dir, full_env.get("PATH", "")])
    full_env.update(env or {})
    log_path = directory / "hub.log"
    log_file = open(log_path, "wb")  # noqa: ASYNC230 - handed to the child process
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jupyterhub",
        "-f",
        str(config_path),
        *args,
        cwd=directory,
        env=full_env,
        stdout=log_file,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    )
    log_file.close()
    hub = RunningHub(
        url=f"http://127.0.0.1:{port}" + base_url.rstrip("/"),
        hub_port=hub_port,
        token=token,
        directory=directory,
        log_path=log_path,
        process=process,
    )
    try:
        await hub.wait_ready(timeout)
    except BaseException:
        await hub.stop()
        raise
    return hub
