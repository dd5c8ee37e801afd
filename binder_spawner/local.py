"""LocalBinderSpawner: the Binder launch flow on one machine, without Kubernetes.

The launch flow (options, validation, ref resolution, reservation, progress,
``BINDER_*`` environment, state) is :class:`~binder_spawner.launch.BinderLaunchMixin`,
shared with BinderSpawner. What differs is here: :meth:`prepare_launch` builds
or reuses the repository's environment with the
:class:`~binder_spawner.localbuild.EnvironmentBuilder` (one per hub process),
and ``start()`` runs ``jupyterhub-singleuser`` from that environment as a
local process inside the :class:`~binder_spawner.sandbox.Sandbox`, with a fresh
home holding a copy of the repository (as repo2docker's images do).
"""

import asyncio
import os
import shutil
import subprocess

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Instance, Unicode, default

from .errors import spawn_error
from .launch import BinderLaunchMixin
from .localbuild import BuildError, EnvironmentBuilder, UnsupportedRepository
from .sandbox import SANDBOX_HOME, Sandbox

# Variables of the hub's environment that must not reach a user's server:
# they would point the server's Python at the hub's packages.
HUB_ONLY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")


def _home_name(user_name, server_name):
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user_name)
    return f"{safe}--{server_name}" if server_name else safe


def _fresh_home(repo_dir, home, uid, sandbox):
    """Replace ``home`` with a copy of the repository checkout owned by ``uid``."""
    os.makedirs(os.path.dirname(home), mode=0o711, exist_ok=True)
    sandbox.check_reachable(os.path.dirname(home))
    if os.path.lexists(home):
        shutil.rmtree(home)
    # symlinks are copied as symlinks: they resolve inside the sandbox, not here
    shutil.copytree(repo_dir, home, symlinks=True)
    os.chmod(home, 0o700)
    if uid is not None:
        for root, dirs, files in os.walk(home):
            os.lchown(root, uid, uid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, uid)


class _SandboxedProcessSpawner(LocalProcessSpawner):
    """LocalProcessSpawner whose process runs in the sandbox instead of as a system user.

    ``poll()`` / ``stop()`` / ``get_state()`` are LocalProcessSpawner's (by pid).
    """

    sandbox = Instance(Sandbox)

    @default("sandbox")
    def _default_sandbox(self):
        return Sandbox(parent=self)

    #: set by prepare_launch: the environment to run and the home to mount
    _environment = None
    _home = None

    def user_env(self, env):
        # LocalProcessSpawner looks the user up in /etc/passwd: anonymous users are not there
        env["USER"] = "jovyan"
        env["HOME"] = SANDBOX_HOME
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self):
        env = super().get_env()
        for name in HUB_ONLY_VARIABLES:
            env.pop(name, None)
        if self._environment is not None:
            venv = self._environment.venv
            env["VIRTUAL_ENV"] = venv
            env["PATH"] = f"{venv}/bin:/usr/local/bin:/usr/bin:/bin"
        env.setdefault("LANG", "C.UTF-8")
        # fewer malloc arenas: the address-space limit counts reserved memory
        env["MALLOC_ARENA_MAX"] = "2"
        return env

    def server_command(self):
        """The server's command line inside the sandbox (without the sandbox wrapper)."""
        environment = self._environment
        cmd = list(self.cmd) + self.get_args()
        if not os.path.isabs(cmd[0]):
            cmd[0] = os.path.join(environment.venv, "bin", cmd[0])
        if environment.start:
            # repo2docker: "start" runs first and ends with exec "$@"
            cmd = [os.path.join(environment.repo_dir, environment.start), *cmd]
        return cmd

    async def start(self):
        if self.port == 0:
            self.port = random_port()
        environment = self._environment
        env = self.get_env()
        cmd = self.sandbox.command(
            self.server_command(),
            uid=self.sandbox.server_uid(self.user.id),
            ro_binds=[(environment.path, environment.path)],
            rw_binds=[(self._home, SANDBOX_HOME)],
            chdir=SANDBOX_HOME,
        )
        self.log.info("Spawning %s sandboxed from %s", self._log_name, environment.path)
        self.log.debug("Sandbox command: %s", cmd)
        # a Popen handle, as LocalProcessSpawner.poll() expects; starting it does not block
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            cmd, env=env, start_new_session=True, **self.popen_kwargs
        )
        self.pid = self.proc.pid
        await self._wait_listening()
        return (self.ip or "127.0.0.1", self.port)

    async def _wait_listening(self):
        """Wait until the server listens, failing at once if it exits first.

        The hub only polls the server's URL (for ``http_timeout`` seconds); a
        server that dies at start-up (a broken ``start`` script) would leave
        the user waiting that long for a generic message.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.http_timeout
        while loop.time() < deadline:
            status = self.proc.poll()
            if status is not None:
                raise spawn_error(
                    f"The server exited with status {status} while starting. "
                    "Check the repository's start script and requirements.",
                    status_code=500,
                    reason="exited",
                )
            try:
                _, writer = await asyncio.open_connection(self.ip or "127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            writer.close()
            return


class LocalBinderSpawner(BinderLaunchMixin, _SandboxedProcessSpawner):
    """Builds a repository into a local environment and runs the server as a local process."""

    builder = Instance(
        EnvironmentBuilder,
        help="""
        The environment builder shared by all servers of the hub
        (:class:`binder_spawner.localbuild.EnvironmentBuilder`; configure it as
        ``c.EnvironmentBuilder.*``). A trait so that tests can pass their own.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("builder")
    def _default_builder(self):
        return EnvironmentBuilder.instance(config=self.config, log=self.log)

    homes_dir = Unicode(
        help="""
        Directory holding the home of each running server: a fresh copy of the
        repository, deleted when the server stops.

        Default ``binder-local/homes`` in the hub's working directory.
        Example: ``c.LocalBinderSpawner.homes_dir = "/srv/binder/homes"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("homes_dir")
    def _default_homes_dir(self):
        return os.path.abspath(os.path.join("binder-local", "homes"))

    @default("default_url")
    def _default_default_url(self):
        return "/lab"

    @default("cmd")
    def _default_cmd(self):
        return ["jupyterhub-singleuser"]

    async def prepare_launch(self, spec):
        git_config = None
        if self.builder.load(self.builder.environment_key(spec.repo_url, spec.commit)) is None:
            # the clone goes to the addresses the policy checks now, with its
            # protocol and credential restrictions: DNS cannot send it elsewhere
            git_config = await self.repo_policy.git_config(spec.repo_url)
        task = self.builder.build(spec.repo_url, spec.commit, git_config)
        if task.future.done() or self.builder.load(task.key) is not None:
            self.emit_progress("building", f"Reusing the environment built for {spec.commit[:12]}")
        else:
            self.emit_progress("building", f"Building {spec.repo_url} at {spec.commit[:12]}")
        async for line in task.follow():
            self.emit_progress("building", line)
        try:
            environment = await task.result()
        except UnsupportedRepository as e:
            raise spawn_error(e.message, status_code=422, reason="unsupported") from None
        except BuildError as e:
            self.log.warning("Build of %s for %s failed: %s", spec.spec, self._log_name, e.message)
            tail = "\n".join(e.tail)
            raise spawn_error(
                f"{e.message} Last lines of the build log:\n{tail}",
                status_code=500,
                reason="build",
            ) from None
        for warning in environment.warnings:
            self.emit_progress("built", f"Warning: {warning}")
        self.emit_progress("built", f"Environment ready (Python {environment.python_version})")
        await self._use_environment(environment)

    async def _use_environment(self, environment):
        self._environment = environment
        self._home = os.path.join(self.homes_dir, _home_name(self.user.name, self.name or ""))
        uid = self.sandbox.server_uid(self.user.id)
        await asyncio.to_thread(_fresh_home, environment.repo_dir, self._home, uid, self.sandbox)
        self.builder.acquire(environment.key)
        self.launch_state["environment_key"] = environment.key

    def load_state(self, state):
        super().load_state(state)
        key = (self.launch_state or {}).get("environment_key")
        if key and self._environment is None:
            environment = self.builder.load(key)
            if environment is not None:
                self._environment = environment
                self.builder.acquire(key)

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            environment, self._environment = self._environment, None
            if environment is not None:
                self.builder.release(environment.key)
            home = self._home or os.path.join(
                self.homes_dir, _home_name(self.user.name, self.name or "")
            )
            await asyncio.to_thread(shutil.rmtree, home, True)
