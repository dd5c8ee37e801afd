"""Conda environments through a real local-mode hub: launch, run code, reuse, errors, apt.txt.

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

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOTEBOOK = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


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


async def test_environment_yml_launch_runs_and_is_reused(local):
    url = local.git.create_repo(
        "org/conda-demo",
        {
            "environment.yml": "name: demo\ndependencies:\n  - binderlib >=2\n"
            "  - pip:\n    - six==1.17.0\n",
            "start": '#!/bin/bash\nexport FROM_START="$BINDERTOOL_ACTIVE"\nexec "$@"\n',
            "index.ipynb": NOTEBOOK,
        },
    )
    events = await local.launch("erin", {"repo": url, "ref": "main", "urlpath": "lab"})
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
