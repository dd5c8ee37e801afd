"""binder_service stops at once on SIGINT or SIGTERM, as the hub's managed service.

The hub stops a service with SIGINT and escalates to SIGTERM only after 30 s
(``LocalProcessSpawner.interrupt_timeout``); a service that ignores SIGINT
holds up every hub shutdown that long.
"""

import contextlib
import os
import signal
import sys

import aiohttp
import pytest

from .utils import free_port, poll


class ServiceUnderHub:
    def __init__(self, hub, marker):
        self.hub = hub
        self.marker = marker

    def pid(self):
        """The pid of this hub's binder_service, None if there is none (or only a zombie)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{entry}/stat") as f:
                    state = f.read().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if self.marker.encode() in cmdline and state != "Z":
                return int(entry)
        return None


async def start(hub_factory, tmp_path, **kwargs):
    port = free_port()
    # a file name unique to this test: finds this service among all processes
    marker = str(tmp_path / "launch-events.jsonl")
    command = [sys.executable, "-m", "binder_service", f"--launch-events-file={marker}"]
    config = f"""
    c.JupyterHub.services.append(
        {{"name": "binder", "url": "http://127.0.0.1:{port}", "command": {command!r}}}
    )
    c.JupyterHub.load_roles.append(
        {{"name": "binder-service", "scopes": ["list:users", "read:servers"], "services": ["binder"]}}
    )
    """
    hub = await hub_factory(config, **kwargs)

    async def answers():
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/services/binder/health") as r:
                    return r.status == 200

    await poll(answers, timeout=60, message="binder_service to answer")
    service = ServiceUnderHub(hub, marker)
    assert service.pid()
    return service


@pytest.mark.parametrize(
    "sigint_ignored",
    [
        pytest.param(False, id="hub-started-normally"),
        pytest.param(True, id="hub-started-with-sigint-ignored"),
    ],
)
async def test_hub_shutdown_stops_service_with_sigint(hub_factory, tmp_path, sigint_ignored):
    service = await start(hub_factory, tmp_path, sigint_ignored=sigint_ignored)
    pid = service.pid()
    service.hub.process.send_signal(signal.SIGTERM)
    # the hub waits for the service before it exits: 30 s more if SIGINT did not stop it
    await poll(lambda: service.hub.process.returncode is not None, timeout=90, interval=0.1)
    log = service.hub.log()
    assert f"Interrupting {pid}" in log
    assert f"Terminating {pid}" not in log
    assert "binder_service stopping on SIGINT" in log
    assert "binder_service stopped" in log
    assert service.pid() is None


async def test_sigterm_stops_service(hub_factory, tmp_path):
    service = await start(hub_factory, tmp_path)
    os.kill(service.pid(), signal.SIGTERM)
    await poll(lambda: service.pid() is None, timeout=30, message="binder_service to exit")
    log = service.hub.log()
    assert "binder_service stopping on SIGTERM" in log
    assert "binder_service stopped" in log
