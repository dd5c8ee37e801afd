"""Local mode end to end: the root jupyterhub_config.py with a real hub, proxy and service.

One hub for the module (builds are the slowest thing in the suite): launches of
repositories served over HTTP on loopback, built with uv from PyPI, code run in
the server through the Jupyter REST API, reuse, build errors on the spawn page,
and the sandbox seen from inside a running server.
"""

import asyncio
import json
import os
import shutil
import tempfile
import textwrap
import uuid

import aiohttp
import pytest
import pytest_asyncio

from .gitserver import GitServer
from .hub import start_hub
from .utils import REPO_ROOT, free_port, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

SMALL_PACKAGE = "six==1.17.0"

DEMO_REPO = {
    "requirements.txt": SMALL_PACKAGE + "\n",
    "setup.py": "from setuptools import setup\nsetup(name='binderdemo', version='1.0', "
    "packages=['binderdemo'])\n",
    "binderdemo/__init__.py": "VALUE = 42\n",
    "index.ipynb": json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}),
}


def shared_cache_dir():
    """The uv download cache shared by the test runs (both dependency sets)."""
    path = os.path.join(tempfile.gettempdir(), "jupyterhub-binder-test-cache")
    os.makedirs(path, mode=0o711, exist_ok=True)
    return path


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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local(tmp_path_factory, request):
    git = GitServer(tmp_path_factory.mktemp("git"))
    git.start()
    hub = await start_local_hub(tmp_path_factory.mktemp("local-hub"), git)
    try:
        yield LocalHub(hub, git)
    finally:
        await hub.stop()
        git.stop()
        if request.session.testsfailed:
            print(f"\n===== hub log {hub.log_path} =====\n{hub.log()[-30000:]}")
        shutil.rmtree(hub.state_dir, ignore_errors=True)


def exists(*parts):
    return os.path.exists(os.path.join(*parts))


def messages(events):
    return [event.get("message", "") for event in events]


async def test_launch_build_run_and_reuse(local):
    url = local.git.create_repo("org/demo", DEMO_REPO)
    events = await local.launch("alice", {"repo": url, "ref": "main", "urlpath": "lab"})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    # build lines streamed to the spawn page
    assert any("Cloning" in line for line in lines)
    assert any(SMALL_PACKAGE in line for line in lines), lines
    # the repository's package and its requirement are importable in the server
    out = await local.run_code(
        "alice",
        "import os, sys, six, binderdemo\n"
        "print(six.__version__, binderdemo.VALUE, os.getcwd(), os.getuid())\n"
        "print(sorted(os.listdir('.')))\n"
        "open('alice-secret.txt', 'w').write('only alice')\n",
    )
    first, listing = out.strip().splitlines()
    version, value, cwd, uid = first.split()
    assert (version, value, cwd) == ("1.17.0", "42", "/home/jovyan")
    assert uid != "0"
    assert "index.ipynb" in listing and "binderdemo" in listing
    # the server got the Binder variables of the launch
    out = await local.run_code("alice", "import os; print(os.environ['BINDER_REPO_URL'])")
    assert out.strip() == url

    # a second launch of the same commit (another user) reuses the environment
    events = await local.launch("bob", {"repo": url, "ref": "main"})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert not any("Cloning" in line for line in lines), lines
    assert any("Reusing the environment" in line for line in lines), lines

    # the sandbox, seen from bob's server: no hub database, no alice's files
    hub_db = os.path.join(local.hub.state_dir, "hub", "jupyterhub.sqlite")
    alice_home = os.path.join(local.hub.state_dir, "local", "homes", "alice")
    assert exists(hub_db) and exists(alice_home, "alice-secret.txt")
    probe = textwrap.dedent(
        f"""
        import os
        for path in [{hub_db!r}, {os.path.join(alice_home, "alice-secret.txt")!r},
                     {os.path.join(local.hub.state_dir, "hub", "jupyterhub_cookie_secret")!r}]:
            try:
                open(path).read()
                print("READ", path)
            except OSError as e:
                print("DENIED", type(e).__name__)
        print("HOMES", os.listdir("/home"))
        """
    )
    out = await local.run_code("bob", probe)
    assert "READ" not in out, out
    assert out.count("DENIED") == 3 and "HOMES ['jovyan']" in out
    # and writing into the shared environment fails (the repo copy in the home is its own)
    out = await local.run_code(
        "bob",
        "import six\n"
        "try:\n    open(six.__file__, 'a').write('# changed')\n    print('WROTE')\n"
        "except OSError as e:\n    print('DENIED', e.errno)\n",
    )
    assert out.startswith("DENIED"), out

    await local.stop("bob")
    await local.stop("alice")
    # nothing of a session survives it: the home is gone
    assert not exists(alice_home)


async def test_broken_requirements_show_the_installer_error(local):
    url = local.git.create_repo(
        "org/broken", {"requirements.txt": "this-package-does-not-exist-binder-test==0.0.1\n"}
    )
    events = await local.launch("carol", {"repo": url})
    assert events[-1].get("failed"), messages(events)
    # the failure message on the spawn page carries the installer's own error lines
    assert "this-package-does-not-exist-binder-test" in events[-1]["message"]
    assert "Last lines of the build log" in events[-1]["message"]


async def test_environment_yml_repo_gets_the_kubernetes_message(local):
    url = local.git.create_repo("org/conda", {"environment.yml": "dependencies:\n  - numpy\n"})
    events = await local.launch("dave", {"repo": url})
    assert events[-1].get("failed"), messages(events)
    assert "Kubernetes mode" in events[-1]["message"]
