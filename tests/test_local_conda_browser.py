"""A visitor launches an environment.yml repository in local mode and runs a cell in JupyterLab.

Headless Chromium (Debian's) from a fresh profile, on a hub whose conda channel
is the test channel served on loopback (:mod:`tests.condachannel`) and whose
``apt.txt`` policy is ``refuse``: the same hub then refuses an ``apt.txt``
repository with a sentence naming the packages and the Kubernetes mode.
"""

import json
from urllib.parse import quote

import pytest
from playwright.async_api import async_playwright

from .condachannel import CHANNEL, ChannelServer, cached_channel
from .gitserver import GitServer
from .localhub import LocalHub, remove_state, start_local_hub
from .test_local_browser import CHROMIUM, CHROMIUM_ARGS

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


@pytest.mark.timeout(600)
async def test_environment_yml_launch_runs_a_cell_and_apt_refused(tmp_path):
    git = GitServer(tmp_path / "git")
    git.start()
    channel = ChannelServer(cached_channel()).start()
    url = git.create_repo(
        "org/conda-browser",
        {
            "environment.yml": "channels: [binderforge, nodefaults]\n"
            "dependencies:\n  - binderlib >=2\n",
            "analysis.ipynb": json.dumps(NOTEBOOK),
        },
    )
    config = (
        f"c.EnvironmentBuilder.conda_channel_alias = {channel.url!r}\n"
        f"c.EnvironmentBuilder.conda_channels = [{CHANNEL!r}]\n"
        "c.EnvironmentBuilder.apt_policy = 'refuse'\n"
    )
    hub = await start_local_hub(tmp_path / "hub", git, config)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                page = await context.new_page()
                console = []
                page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
                link = (
                    f"{hub.url}/services/binder/v2/git/{quote(url, safe='')}/main"
                    "?urlpath=lab/tree/analysis.ipynb"
                )
                await page.goto(link)
                await page.wait_for_url("**/hub/spawn-pending/**", timeout=60_000)
                log = page.locator("#progress-log")
                await log.get_by_text("Solved 3 conda packages", exact=False).first.wait_for(
                    state="attached", timeout=180_000
                )
                await page.screenshot(path=str(shots / "progress.png"))
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
            finally:
                await browser.close()

        # the same hub refuses apt.txt under its policy, naming what is missing
        local = LocalHub(hub, git)
        apt_url = git.create_repo(
            "org/conda-apt",
            {"environment.yml": "dependencies: [binderlib]\n", "apt.txt": "curl\nvim\n"},
        )
        events = await local.launch("ivan", {"repo": apt_url})
        assert events[-1].get("failed"), events
        message = events[-1]["message"]
        assert "system packages from apt.txt (curl, vim)" in message
        assert "Kubernetes mode" in message
    except BaseException:
        print(f"\n===== hub log {hub.log_path} =====\n{hub.log()[-30000:]}")
        raise
    finally:
        await hub.stop()
        remove_state(hub)
        channel.stop()
        git.stop()
    assert (shots / "cell.png").stat().st_size > 0
