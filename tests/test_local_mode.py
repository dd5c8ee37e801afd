"""Local mode end to end: the root jupyterhub_config.py with a real hub, proxy and service.

One hub for the module (builds are the slowest thing in the suite): launches of
repositories served over HTTP on loopback, built with uv from PyPI, code run in
the server through the Jupyter REST API, reuse, build errors on the spawn page,
and the sandbox seen from inside a running server.

What a visitor sees, in headless Chromium (Debian's) from a fresh profile: a
mybinder-style launch link, the build lines on the hub's progress page, then
JupyterLab with the repository's notebook in the file browser. A screenshot of
each stage is saved under the test's directory.
"""

import glob
import json
import os
import textwrap

import pytest
import pytest_asyncio

from binder_spawner.localbuild import instance_id

from .localhub import local_hub_session
from .utils import fresh_browser_page, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

SMALL_PACKAGE = "six==1.17.0"

DEMO_REPO = {
    "requirements.txt": SMALL_PACKAGE + "\n",
    "setup.py": "from setuptools import setup\nsetup(name='binderdemo', version='1.0', "
    "packages=['binderdemo'])\n",
    "binderdemo/__init__.py": "VALUE = 42\n",
    # an interpreter no machine has: the nearest one is used, with a warning
    "runtime.txt": "python-3.99\n",
    "start": '#!/bin/sh\nexport FROM_START=yes\nexec "$@"\n',
    "index.ipynb": json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local(tmp_path_factory, request):
    async with local_hub_session(tmp_path_factory, request, "local-hub") as local:
        yield local


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
    assert len(out.strip().splitlines()) == 2, out
    first, listing = out.strip().splitlines()
    version, value, cwd, uid = first.split()
    assert (version, value, cwd) == ("1.17.0", "42", "/home/jovyan")
    assert uid != "0"
    assert "index.ipynb" in listing and "binderdemo" in listing
    assert any("Warning: runtime.txt asks for Python 3.99" in line for line in lines), lines
    # the server got the Binder variables of the launch, and ran through the repo's start
    out = await local.run_code(
        "alice", "import os; print(os.environ['BINDER_REPO_URL'], os.environ['FROM_START'])"
    )
    assert out.split() == [url, "yes"]

    # a second launch of the same commit (another user) reuses the environment
    events = await local.launch("bob", {"repo": url, "ref": "main"})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert not any("Cloning" in line for line in lines), lines
    assert any("Reusing the environment" in line for line in lines), lines

    # the sandbox, seen from bob's server: no hub database, no alice's files
    hub_db = os.path.join(local.hub.state_dir, "hub", "jupyterhub.sqlite")
    assert exists(hub_db)
    # homes are tmpfs inside each sandbox: alice's file is nowhere on the host
    assert glob.glob(f"{local.hub.state_dir}/**/alice-secret.txt", recursive=True) == []
    probe = textwrap.dedent(
        f"""
        import os
        for path in [{hub_db!r}, "/home/jovyan/alice-secret.txt",
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
    # alice still has her file; .git was not copied into the home
    out = await local.run_code(
        "alice", "import os; print(open('alice-secret.txt').read(), os.path.exists('.git'))"
    )
    assert out.split() == ["only", "alice", "False"]

    await local.stop("bob")
    await local.stop("alice")
    # nothing of a session survives it: its cgroup (and every process in it) is gone
    namespace = instance_id(os.path.join(local.hub.state_dir, "local", "envs"))
    assert glob.glob(f"/sys/fs/cgroup/pids/**/{namespace}-build-*", recursive=True) == []
    assert glob.glob(f"/sys/fs/cgroup/pids/**/{namespace}-server-*", recursive=True) == []


async def test_broken_requirements_show_the_installer_error(local):
    url = local.git.create_repo(
        "org/broken", {"requirements.txt": "this-package-does-not-exist-binder-test==0.0.1\n"}
    )
    events = await local.launch("carol", {"repo": url})
    assert events[-1].get("failed"), messages(events)
    # the failure message on the spawn page carries the installer's own error lines
    assert "this-package-does-not-exist-binder-test" in events[-1]["message"]
    assert "Last lines of the build log" in events[-1]["message"]


async def test_dockerfile_repo_gets_the_kubernetes_message(local):
    url = local.git.create_repo("org/docker", {"Dockerfile": "FROM scratch\n"})
    events = await local.launch("dave", {"repo": url})
    assert events[-1].get("failed"), messages(events)
    assert "Kubernetes mode" in events[-1]["message"]


async def test_refused_launches_through_the_api_keep_nothing(local):
    """Every user may POST ``user_options`` of any size and shape for its own servers
    through the REST API, and the hub stores them before any check. Refused, they
    must not stay in the hub's database (before: 3 MB per launch here, a request
    can carry 100 MB), and refused launches under ever new names must not add
    servers to it without bound."""
    user = "mallet"
    status, _ = await local.hub.api("POST", f"/users/{user}")
    assert status == 201
    status, token = await local.hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 600})
    assert status in (200, 201), token
    huge = {"repo": local.git.url + "/org/none", "ref": "x" * 3_000_000}
    for name in ("a", "b", "c"):
        status, body = await local.hub.api(
            "POST", f"/users/{user}/servers/{name}", json=huge, token=token["token"]
        )
        assert status in (201, 202, 400), body

    async def stored_options():
        _, model = await local.hub.api("GET", f"/users/{user}?include_stopped_servers=1")
        servers = model["servers"]
        if any(not servers.get(name, {}).get("stopped") for name in ("a", "b", "c")):
            return None  # still failing
        return {name: servers[name].get("user_options") for name in ("a", "b", "c")}

    assert await poll(
        stored_options, timeout=60, interval=0.2, message="the refused launches to end"
    ) == {
        "a": {},
        "b": {},
        "c": {},
    }
    status, body = await local.hub.api(
        "POST", f"/users/{user}/servers/d", json={"repo": huge["repo"]}, token=token["token"]
    )
    assert status == 400 and "maximum" in body["message"], body


BROWSER_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "markdown",
            "id": "intro",
            "metadata": {},
            "source": ["# Hello from a launch link"],
        }
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.mark.browser
async def test_launch_link_to_jupyterlab(local, tmp_path):
    url = local.git.create_repo(
        "org/browser-demo",
        {"requirements.txt": "six==1.17.0\n", "analysis.ipynb": json.dumps(BROWSER_NOTEBOOK)},
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    # a fresh profile: no cookies, no identity yet
    async with fresh_browser_page(viewport={"width": 1280, "height": 800}) as page:
        await page.goto(local.launch_link(url, "lab"))
        # the hub's progress page shows the build's own lines as they come
        await page.wait_for_url("**/hub/spawn-pending/**", timeout=60_000)
        log = page.locator("#progress-log")
        await log.get_by_text("Cloning", exact=False).first.wait_for(
            state="attached", timeout=120_000
        )
        await page.screenshot(path=str(shots / "progress.png"))
        # then JupyterLab, with the repository's notebook in the file browser
        await page.wait_for_url("**/lab**", timeout=300_000)
        item = page.locator(".jp-DirListing-item", has_text="analysis.ipynb")
        await item.first.wait_for(timeout=120_000)
        await page.screenshot(path=str(shots / "jupyterlab.png"))
        assert "/user/" in page.url
        visitor = page.url.split("/user/", 1)[1].split("/", 1)[0]
    assert (shots / "progress.png").stat().st_size > 0
    assert (shots / "jupyterlab.png").stat().st_size > 0
    # the module's hub goes on: the visitor's server ends with the test
    await local.stop(visitor)
