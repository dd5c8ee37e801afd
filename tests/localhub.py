"""A local-mode hub for tests: the root jupyterhub_config.py on a real hub, proxy and service.

``start_local_hub(directory, git_server)`` starts it with its state in a
directory the sandbox uids can reach (pytest's tmp is private to root) and the
Jupyter package cache shared by the test runs of its uid range; :class:`LocalHub` launches servers
through the hub REST API, follows their progress and runs code in them.
"""

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import textwrap
import uuid
from urllib.parse import quote

import aiohttp

from .gitserver import GitServer
from .hub import start_hub
from .utils import REPO_ROOT, free_port, poll, run_config, uid_base


def shared_cache_dir():
    """The builders' cache directory (Jupyter packages) shared by the test runs of one uid range.

    One per sandbox uid range, so that two runs side by side (scripts/test) each
    have their own, as two hubs on one machine would.
    """
    path = os.path.join(tempfile.gettempdir(), f"jupyterhub-binder-test-cache-{uid_base()}")
    os.makedirs(path, mode=0o711, exist_ok=True)
    return path


def reachable_build_root(prefix):
    """A directory the sandbox uids can reach (pytest's tmp is 0700); remove it when done."""
    root = tempfile.mkdtemp(prefix=prefix)
    os.chmod(root, 0o711)
    return root


def make_builder(root, **kwargs):
    """An in-process EnvironmentBuilder over ``root``, with this run's cache and uid range.

    No Jupyter packages unless asked for (they are tested through hubs).
    """
    from binder_spawner.localbuild import EnvironmentBuilder

    kwargs.setdefault("jupyter_packages", [])
    kwargs.setdefault("config", run_config())
    kwargs.setdefault("cache_dir", shared_cache_dir())
    return EnvironmentBuilder(envs_dir=os.path.join(root, "envs"), python_downloads=False, **kwargs)


async def build_lines(task):
    """Every line of an in-process build, until it ends (then ``await task.result()``)."""
    return [line async for line in task.follow()]


def read(*parts):
    """The text of the file at ``os.path.join(*parts)``."""
    with open(os.path.join(*parts)) as f:
        return f.read()


async def start_local_hub(directory, git_server, extra_config=""):
    """The root jupyterhub_config.py, with its state where sandbox uids can mount from."""
    state_dir = tempfile.mkdtemp(prefix="binder-local-state-")
    os.chmod(state_dir, 0o711)
    port = free_port()
    config = f"""
    load_subconfig({str(REPO_ROOT / "jupyterhub_config.py")!r})
    c.EnvironmentBuilder.cache_dir = {shared_cache_dir()!r}
    # no Python downloads in tests: fail fast to the nearest installed version
    c.EnvironmentBuilder.python_downloads = False
    c.Spawner.start_timeout = 600
    # the spawn API answers at once, so that the test follows the whole progress stream
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
    """
    env = {
        "BINDER_PORT": str(port),
        "BINDER_STATE_DIR": state_dir,
        "BINDER_ALLOWED_HOSTS": git_server.url.split("://", 1)[1],
        "BINDER_SERVICE_PORT": str(free_port()),
        # local mode: the tests' machine has no Kubernetes configuration
        "KUBECONFIG": os.path.join(state_dir, "no-kubeconfig"),
    }
    hub = await start_hub(
        directory, textwrap.dedent(config) + extra_config, env=env, port=port, timeout=90
    )
    hub.state_dir = state_dir
    return hub


class LocalHub:
    def __init__(self, hub, git):
        self.hub = hub
        self.git = git

    def launch_link(self, repo_url, urlpath):
        """The Binder launch link of ``repo_url`` at ``main`` that opens ``urlpath``."""
        return (
            f"{self.hub.url}/services/binder/v2/git/{quote(repo_url, safe='')}/main"
            f"?urlpath={urlpath}"
        )

    async def launch(self, user, user_options, server=""):
        """Start ``user``'s server with ``user_options``; returns the progress events."""
        status, _ = await self.hub.api("POST", f"/users/{user}")
        assert status in (201, 409)
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        status, body = await self.hub.api("POST", path, json=user_options)
        assert status in (201, 202), body
        return await self.progress(user, server)

    async def progress(self, user, server=""):
        path = (
            f"/users/{user}/servers/{server}/progress"
            if server
            else f"/users/{user}/server/progress"
        )
        events = []
        headers = {"Authorization": f"token {self.hub.token}"}
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(self.hub.api_url + path, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        events.append(event)
                        if event.get("ready") or event.get("failed"):
                            break
        return events

    async def stop(self, user, server=""):
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        status, body = await self.hub.api("DELETE", path)
        assert status in (202, 204), body

        async def stopped():
            _, info = await self.hub.api("GET", f"/users/{user}")
            return not info["servers"].get(server)

        await poll(stopped, timeout=60, message=f"{user}'s server to stop")

    async def server_api(self, user, path, server=""):
        """GET ``path`` of the server's Jupyter REST API (JSON)."""
        url = f"{self.hub.url}/user/{user}/{server + '/' if server else ''}api/{path}"
        headers = {"Authorization": f"token {self.hub.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.get(url) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

    async def run_code(self, user, code, server=""):
        """Execute ``code`` in a new kernel of the server (Jupyter REST + websocket)."""
        base = f"{self.hub.url}/user/{user}/{server + '/' if server else ''}api"
        headers = {"Authorization": f"token {self.hub.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(base + "/kernels", json={"name": "python3"}) as resp:
                assert resp.status == 201, await resp.text()
                kernel = await resp.json()
            try:
                return await _execute(session, f"{base}/kernels/{kernel['id']}/channels", code)
            finally:
                async with session.delete(f"{base}/kernels/{kernel['id']}"):
                    pass


async def _execute(session, url, code):
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "test",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": False},
        "channel": "shell",
        "buffers": [],
    }
    output = []
    async with session.ws_connect(url.replace("http://", "ws://")) as ws:
        await ws.send_str(json.dumps(request))
        async with asyncio.timeout(120):
            async for message in ws:
                msg = json.loads(message.data)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    output.append(msg["content"]["text"])
                elif kind == "error":
                    output.append("\n".join(msg["content"]["traceback"]))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    break
    return "".join(output)


def remove_state(hub):
    """Delete a local hub's state (environments: tens of thousands of files) in the background."""
    subprocess.Popen(["rm", "-rf", "--one-file-system", hub.state_dir], start_new_session=True)


@contextlib.asynccontextmanager
async def local_hub_session(tmp_path_factory, request, name="local-hub", extra_config=""):
    """A git server and a local-mode hub for a test module; the hub log on failure."""
    git = GitServer(tmp_path_factory.mktemp("git"))
    git.start()
    hub = await start_local_hub(tmp_path_factory.mktemp(name), git, extra_config)
    try:
        yield LocalHub(hub, git)
    finally:
        await hub.stop()
        git.stop()
        if request.session.testsfailed:
            print(f"\n===== hub log {hub.log_path} =====\n{hub.log()[-30000:]}")
        remove_state(hub)
