"""Small helpers shared by the tests: free ports, polling, repo paths, the browser."""

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# the browser tests' headless Chromium (Debian's) and its switches
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def fresh_browser_page(**context_options):
    """A page of headless Chromium in a fresh profile (no cookies, no identity); closed after.

    ``page.context.new_page()`` opens another tab of the same profile.
    """
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(**context_options)
            yield await context.new_page()
        finally:
            await browser.close()


def free_port(host="127.0.0.1"):
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def uid_base():
    """The sandbox uid range of this test run's local-mode hubs (``BINDER_UID_BASE``).

    scripts/test gives each dependency set its own, so that the two runs' hubs can
    run side by side, as two hubs on one machine must.
    """
    return int(os.environ.get("BINDER_UID_BASE", "2000000"))


def run_config():
    """Configuration for in-process builders and spawners: this run's sandbox uid range."""
    from traitlets.config import Config

    return Config({"Sandbox": {"uid_base": uid_base()}})


async def poll(predicate, timeout=30, interval=0.05, message="condition"):
    """Await ``predicate()`` (sync or async) until it returns a truthy value.

    Returns that value; raises ``TimeoutError`` naming ``message`` otherwise.
    Tests poll for what they wait for, they never sleep a fixed time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)
