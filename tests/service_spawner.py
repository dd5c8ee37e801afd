"""A trivial spawner for service tests: each server is ``python -m http.server``.

Fast and dependency-free, yet a real process on a loopback port that the hub
waits for, routes to and stops. ``start_delay`` keeps a server pending for a
while, as a build would.
"""

import asyncio
import sys

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Float, default


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
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        return await super().start()
