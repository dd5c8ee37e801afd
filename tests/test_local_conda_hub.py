"""Conda environments through a real local-mode hub: launch, run code, reuse, errors, apt.txt,
and a visitor's browser landing in JupyterLab and running a cell.

One hub for the module, configured as a site with its own conda mirror would
be (``conda_channel_alias`` pointing at the test channel served on loopback,
``conda_channels`` naming it); the ``pip:`` packages and JupyterLab come from
the package index, as in every local-mode build.
"""

import json

import pytest
import pytest_asyncio

from .condachannel import CHANNEL, ChannelServer, cached_channel, host_python
from .localhub import local_hub_session
from .utils import fresh_browser_page, uid_base

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "use-the-environment",
            "metadata": {},
            "outputs": [],
            "source": [
                "import os, binderlib\n",
                "print('binderlib', binderlib.VERSION, os.environ['BINDERTOOL_ACTIVE'])",
            ],
        }
    ],
    "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def channel():
    server = ChannelServer(cached_channel()).start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local(tmp_path_factory, request, channel):
    config = (
        f"c.EnvironmentBuilder.conda_channel_alias = {channel.url!r}\n"
        f"c.EnvironmentBuilder.conda_channels = [{CHANNEL!r}]\n"
    )
    async with local_hub_session(tmp_path_factory, request, "conda-hub", config) as local:
        yield local


def messages(events):
    return [event.get("message", "") for event in events]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo(local):
    """An environment.yml repository, built once for the module by erin's first launch.

    Returns (url, progress events of that launch); the browser test launches the
    same commit, so the module builds it once.
    """
    url = local.git.create_repo(
        "org/conda-demo",
        {
            "environment.yml": "name: demo\ndependencies:\n  - binderlib >=2\n"
            "  - pip:\n    - six==1.17.0\n",
            "start": '#!/bin/bash\nexport FROM_START="$BINDERTOOL_ACTIVE"\nexec "$@"\n',
            "analysis.ipynb": json.dumps(NOTEBOOK),
        },
    )
    events = await local.launch("erin", {"repo": url, "ref": "main", "urlpath": "lab"})
    return url, events


async def test_environment_yml_launch_runs_and_is_reused(local, demo):
    url, events = demo
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert any(line.startswith("Solved 3 conda packages") for line in lines), lines
    assert any("six==1.17.0" in line for line in lines), lines
    assert f"Environment ready (Python {host_python()[1]})" in lines
    out = await local.run_code(
        "erin",
        "import os, sys, binderlib, six\n"
        "print(binderlib.VERSION, six.__version__, sys.prefix)\n"
        "print(os.environ.get('BINDERTOOL_ACTIVE'), os.environ.get('BINDERTOOL_LEVEL'),"
        " os.environ.get('CONDA_PREFIX'), os.environ.get('FROM_START'))\n"
        "print(open(os.path.join(sys.prefix, 'share/bindertool/where.txt')).read().strip())\n",
    )
    assert out.split("\n")[:3] == [
        "2.0 1.17.0 /srv/binder/venv",
        # activated as `conda activate` would, before the repository's start script
        "yes 3 /srv/binder/venv yes",
        "/srv/binder/venv/share/bindertool",
    ], out
    # JupyterLab finds the kernel the conda package ships in share/jupyter/kernels
    kernels = await local.server_api("erin", "kernelspecs")
    assert "bindertool" in kernels["kernelspecs"]
    assert kernels["kernelspecs"]["bindertool"]["spec"]["display_name"] == "Binder tool kernel"

    # a second launch of the same commit reuses the prefix: no clone, no solve
    events = await local.launch("frank", {"repo": url, "ref": "main"})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert any("Reusing the environment" in line for line in lines), lines
    assert not any("Cloning" in line or "Solved" in line for line in lines), lines
    out = await local.run_code("frank", "import binderlib; print(binderlib.VERSION)")
    assert out.strip() == "2.0"
    await local.stop("frank")
    await local.stop("erin")


async def test_browser_lands_in_jupyterlab_and_runs_a_cell(local, demo, tmp_path):
    """A visitor's launch link (headless Chromium, fresh profile) to the environment.yml
    repository opens its notebook in JupyterLab; the cell runs in the conda environment."""
    url, _ = demo
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with fresh_browser_page(viewport={"width": 1280, "height": 800}) as page:
        console = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        await page.goto(local.launch_link(url, "lab/tree/analysis.ipynb"))
        await page.wait_for_url("**/lab/tree/analysis.ipynb**", timeout=400_000)
        # the notebook's kernel (python3 of the conda environment) is up and
        # connected, as the status bar says, before the cell is run
        status = page.locator(".jp-StatusBar-TextItem", has_text="| Idle")
        await status.first.wait_for(timeout=180_000)
        editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
        await editor.click()
        try:
            await page.keyboard.press("Shift+Enter")
            output = page.locator(".jp-OutputArea-output", has_text="binderlib 2.0 yes")
            await output.first.wait_for(timeout=120_000)
        except BaseException:
            print("\n".join(console[-60:]))
            raise
        finally:
            await page.screenshot(path=str(shots / "cell.png"))
    assert (shots / "cell.png").stat().st_size > 0


async def test_binder_environment_wins_and_apt_txt_is_listed(local):
    url = local.git.create_repo(
        "org/conda-binder",
        {
            "binder/environment.yml": "dependencies:\n  - binderlib <2\n",
            "binder/apt.txt": "curl\nvim\n",
            # never read: the binder folder takes precedence, as in repo2docker
            "requirements.txt": "this-package-does-not-exist-binder-test\n",
        },
    )
    events = await local.launch("grace", {"repo": url})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert (
        "Warning: binder/apt.txt is not installed: local mode cannot add system packages "
        "(curl, vim). Code that needs them will fail."
    ) in lines
    assert not any("this-package-does-not-exist" in line for line in lines)
    out = await local.run_code("grace", "import binderlib; print(binderlib.VERSION)")
    assert out.strip() == "1.0"
    await local.stop("grace")


async def test_apt_txt_refused_through_a_hub_under_the_refuse_policy(tmp_path_factory, request):
    # a second hub beside the module's: its own sandbox uids, as two hubs must have
    config = (
        f'c.EnvironmentBuilder.apt_policy = "refuse"\nc.Sandbox.uid_base = {uid_base() + 500_000}\n'
    )
    async with local_hub_session(tmp_path_factory, request, "apt-refuse-hub", config) as strict:
        url = strict.git.create_repo(
            "org/conda-apt-refused",
            {"environment.yml": "dependencies: [binderlib]\n", "apt.txt": "curl\nvim\n"},
        )
        events = await strict.launch("heidi", {"repo": url})
    lines = messages(events)
    assert events[-1].get("failed"), lines
    assert "system packages from apt.txt (curl, vim)" in lines[-1], lines
    assert "Kubernetes mode" in lines[-1], lines
    assert not any(line.startswith("Environment ready") for line in lines), lines


async def test_unsatisfiable_environment_explained_on_the_progress_page(local):
    url = local.git.create_repo(
        "org/conda-unsat", {"environment.yml": "dependencies:\n  - needs-missing\n"}
    )
    events = await local.launch("heidi", {"repo": url})
    assert events[-1].get("failed"), messages(events)
    message = events[-1]["message"]
    assert "The conda environment of environment.yml cannot be solved" in message
    # the solver's own explanation
    assert "no-such-package >=1, for which no candidates were found" in message
