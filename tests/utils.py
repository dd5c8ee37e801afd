"""Small helpers shared by the tests: free ports, polling, repo paths."""

import asyncio
import os
import socket
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def available_memory():
    """The host's available memory in bytes (``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


class LowestAvailableMemory:
    """``async with`` it: ``drop`` is how far the host's available memory fell meanwhile."""

    async def __aenter__(self):
        self.before = self.lowest = available_memory()
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def _watch(self):
        while True:
            self.lowest = min(self.lowest, available_memory())
            await asyncio.sleep(0.02)

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def drop(self):
        return self.before - self.lowest
