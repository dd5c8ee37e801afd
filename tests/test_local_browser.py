"""What a visitor sees in local mode: headless Chromium (Debian's) from a fresh profile.

Opens a mybinder-style launch link, watches the build lines on the hub's
progress page, lands in JupyterLab and finds the repository's notebook in
the file browser. A screenshot of each stage is saved under the test's
directory.
"""

import json
from urllib.parse import quote

import pytest
from playwright.async_api import async_playwright

from .gitserver import GitServer
from .localhub import remove_state, start_local_hub

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

NOTEBOOK = {
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


@pytest.fixture
def git(tmp_path):
    server = GitServer(tmp_path / "git")
    server.start()
    yield server
    server.stop()


async def test_launch_link_to_jupyterlab(tmp_path, git):
    url = git.create_repo(
        "org/browser-demo",
        {"requirements.txt": "six==1.17.0\n", "analysis.ipynb": json.dumps(NOTEBOOK)},
    )
    hub = await start_local_hub(tmp_path / "hub", git)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                # a new context is a fresh profile: no cookies, no identity yet
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                page = await context.new_page()
                link = f"{hub.url}/services/binder/v2/git/{quote(url, safe='')}/main?urlpath=lab"
                await page.goto(link)
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
            finally:
                await browser.close()
    except BaseException:
        print(f"\n===== hub log {hub.log_path} =====\n{hub.log()[-30000:]}")
        raise
    finally:
        await hub.stop()
        remove_state(hub)
    assert (shots / "progress.png").stat().st_size > 0
    assert (shots / "jupyterlab.png").stat().st_size > 0
