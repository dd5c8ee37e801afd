"""A trivial spawner for service tests: each server is ``python -m http.server``.

Fast and dependency-free, yet a real process on a loopback port that the hub
waits for, routes to and stops. ``start_delay`` keeps a server pending for a
while, as a build would; ``stop_delay`` keeps it stopping, as a pod's
graceful deletion would.
"""

import asyncio
import sys

from jupyterhub.spawner import SimpleLocalProcessSpawner, Spawner
from traitlets import Bool, Float, Unicode, default


class HTTPServerSpawner(SimpleLocalProcessSpawner):
    start_delay = Float(
        0.0, config=True, help="Seconds a start stays pending before the process starts."
    )

    @default("cmd")
    def _default_cmd(self):
        return [sys.executable, "-m", "http.server"]

    def get_args(self):
        return ["--bind", "127.0.0.1", str(self.port)]

    async def start(self):
        # user_options may ask for a longer start, to keep one server pending
        delay = self.user_options.get("start_delay", self.start_delay)
        if delay:
            await asyncio.sleep(float(delay))
        return await super().start()

    async def stop(self, now=False):
        # user_options may ask for a slow stop, to keep one server stopping
        delay = (self.user_options or {}).get("stop_delay", 0)
        if delay:
            await asyncio.sleep(float(delay))
        return await super().stop(now=now)


class SharedServerSpawner(Spawner):
    """Every server is the same already-running HTTP server at ``shared_url``.

    For benchmarks with thousands of servers: the hub starts, routes, tracks
    and stops each one as usual, but no process is started per server.
    """

    shared_url = Unicode(config=True, help="URL of the HTTP server every server points at.")

    _running = Bool(False)

    async def start(self):
        self._running = True
        return self.shared_url

    async def stop(self, now=False):
        self._running = False

    async def poll(self):
        return None if self._running else 0

    def get_state(self):
        state = super().get_state()
        state["running"] = self._running
        return state

    def load_state(self, state):
        super().load_state(state)
        self._running = state.get("running", False)
