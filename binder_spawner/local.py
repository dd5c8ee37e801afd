"""LocalBinderSpawner: the Binder launch flow on one machine, without Kubernetes.

The launch flow (options, validation, ref resolution, reservation, progress,
``BINDER_*`` environment, state) is :class:`~binder_spawner.launch.BinderLaunchMixin`,
shared with BinderSpawner. What differs is here: :meth:`prepare_launch` builds
or reuses the repository's environment with the
:class:`~binder_spawner.localbuild.EnvironmentBuilder` (one per hub process),
and ``start()`` runs ``jupyterhub-singleuser`` from that environment as a
local process inside the :class:`~binder_spawner.sandbox.Sandbox`, in a cgroup
of its own (memory, guarantee, processes), with a fresh tmpfs home that the
server's own uid fills with the repository (:mod:`binder_spawner.homeinit`)
before the server starts, as repo2docker's images hold it. Root never copies,
reads or deletes a home: it is gone with the sandbox.
"""

import asyncio
import contextlib
import functools
import os
import subprocess
import time
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Float, Instance, default

from . import homeinit
from .archives import ArchiveError
from .cgroups import cgroup_name
from .errors import spawn_error
from .launch import BinderLaunchMixin
from .localbuild import (
    ENV_MOUNT,
    BuildError,
    EnvironmentBuilder,
    UnsupportedRepository,
    activation_command,
)
from .perprocess import one_per_process
from .sandbox import SANDBOX_HOME, Sandbox, SandboxUnavailable, listening_uids

# Variables of the hub's environment that must not reach a user's server:
# they would point the server's Python at the hub's packages.
HUB_ONLY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")


@functools.cache
def homeinit_source():
    """The text of :mod:`binder_spawner.homeinit`, passed to the sandbox as ``-c`` (read once)."""
    return Path(homeinit.__file__).read_text()


TEMPLATES = str(Path(__file__).with_name("templates"))


def _megabytes(size):
    return f"{size / 1024**2:,.0f} MB"


def _gigabytes(size):
    return f"{size / 1024**3:.3g} GB"


def stop_reasons(current_user):
    """For ``JupyterHub.template_vars``: a function ``(user, server name) -> why it stopped``.

    The hub's "server not running" page (``templates/not_running.html`` of
    this package) calls it with the server's owner, so a visitor whose
    server the kernel stopped learns why.
    """

    def stop_reason(user, server_name):
        spawner = getattr(user, "spawners", {}).get(server_name or "")
        reason = getattr(spawner, "stop_reason", None)
        return reason if reason and not spawner.active else None

    return stop_reason


def check_local_mode(config):
    """Refuse to start a local-mode hub that could not launch anything, saying why.

    Called from ``jupyterhub_config.py``: the sandbox must be able to confine
    servers (bubblewrap; cgroups when the hub is root, unless
    ``Sandbox.require_cgroups`` is False) and the sandbox uids must reach the
    environments directory. Logs which limits this host enforces.

    A config file loaded with ``load_subconfig`` sees only its own settings,
    so inside a starting hub the check runs once all config files are loaded
    (the hub loads them in its event loop), on the hub's final configuration.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _check_local_mode(config)
        return
    loop.call_soon(_check_started_hub, config)


def _check_started_hub(config):
    from jupyterhub.app import JupyterHub

    started = JupyterHub.initialized()
    if started:
        config = JupyterHub.instance().config
    # SystemExit from a loop callback ends the hub's start, with the message
    _check_local_mode(config, claim_uids=started)


def _check_local_mode(config, claim_uids=False):
    builder = EnvironmentBuilder(config=config)
    sandbox = Sandbox(config=config, log=builder.log)
    try:
        sandbox.preflight()
        if claim_uids:
            # only a running hub holds the range (not `jupyterhub-binder inspect` reading
            # the same config file)
            sandbox.claim_uids()
        os.makedirs(builder.envs_dir, mode=0o711, exist_ok=True)
        sandbox.check_reachable(builder.envs_dir)
    except SandboxUnavailable as e:
        builder.log.critical("jupyterhub-binder local mode cannot start: %s", e)
        raise SystemExit(f"jupyterhub-binder local mode cannot start: {e}") from None


class _SandboxedProcessSpawner(LocalProcessSpawner):
    """LocalProcessSpawner whose process runs in the sandbox instead of as a system user.

    ``poll()`` / ``get_state()`` are LocalProcessSpawner's (by pid); ``stop()``
    also removes the server's cgroup, so nothing it started survives.
    """

    sandbox = Instance(Sandbox)

    @default("sandbox")
    def _default_sandbox(self):
        return Sandbox(parent=self)

    memory_check_interval = Float(
        1.0,
        help="""
        Seconds between checks of a running server's cgroup for memory-limit kills.

        When the kernel killed a process of the server for exceeding
        ``Sandbox.memory_limit``, the whole server is stopped and the user is told
        why. Default 1.
        Example: ``c.LocalBinderSpawner.memory_check_interval = 2``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    #: set by prepare_launch: the environment to run
    _environment = None
    _cgroup = None
    _watch = None
    #: why the kernel or the spawner stopped the server, shown on the hub's pages
    stop_reason = None

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
            venv = self._environment.sandbox_venv
            if self._environment.kind != "conda":
                # a conda prefix gets CONDA_PREFIX and the rest from its activation
                env["VIRTUAL_ENV"] = venv
            env["PATH"] = f"{venv}/bin:/usr/local/bin:/usr/bin:/bin"
        env.setdefault("LANG", "C.UTF-8")
        env["MALLOC_ARENA_MAX"] = "2"
        return env

    def server_command(self):
        """The server's command line inside the sandbox (without the sandbox wrapper).

        The environment's interpreter first fills the home (as the server's
        uid, from the read-only checkout), then execs the server, through the
        repository's ``start`` as repo2docker does.
        """
        environment = self._environment
        cmd = list(self.cmd) + self.get_args()
        if not os.path.isabs(cmd[0]):
            cmd[0] = f"{environment.sandbox_venv}/bin/{cmd[0]}"
        if environment.start:
            # repo2docker: "start" runs first and ends with exec "$@"
            cmd = [f"{environment.sandbox_repo}/{environment.start}", *cmd]
        if environment.kind == "conda":
            # as repo2docker's entrypoint: the environment is activated before "start"
            cmd = [*activation_command(environment.sandbox_venv), *cmd]
        max_file = self.builder_home_max_file()
        return [
            f"{environment.sandbox_venv}/bin/python",
            "-I",
            "-S",
            "-c",
            homeinit_source(),
            environment.sandbox_repo,
            SANDBOX_HOME,
            str(max_file),
            "--",
            *cmd,
        ]

    def get_args(self):
        # The sandboxes share the host's network, so a kernel's default TCP ports on
        # loopback are open to every other server: any of them could subscribe to a
        # kernel's iopub port and read everything it prints. Over "ipc" the kernel's
        # sockets are unix sockets in its runtime directory, in the server's own home.
        return [*super().get_args(), "--KernelManager.transport=ipc"]

    def builder_home_max_file(self):
        return 0

    def _cgroup_name(self):
        return cgroup_name(self.cgroup_namespace(), "server", self.user.id, self.name or "")

    def cgroup_namespace(self):
        return ""

    def _ro_binds(self):
        environment = self._environment
        binds = [(environment.path, ENV_MOUNT)]
        if environment.python_prefix:
            binds.append((environment.python_prefix, environment.python_prefix))
        return binds

    async def start(self):
        if self.port == 0:
            self.port = random_port()
        environment = self._environment
        self.stop_reason = None
        if environment.home_bytes > self.sandbox.home_size:
            raise spawn_error(
                f"This repository has {_megabytes(environment.home_bytes)} of files to copy "
                f"into a home of {_megabytes(self.sandbox.home_size)}. "
                "It is too large to launch here.",
                status_code=422,
                reason="too-large",
            )
        env = self.get_env()
        started = time.monotonic()
        try:
            self._cgroup = await asyncio.to_thread(self.sandbox.create_cgroup, self._cgroup_name())
        except SandboxUnavailable as e:
            self.log.error("Cannot start %s: %s", self._log_name, e)
            raise spawn_error(
                "This hub cannot start servers right now; its administrator has been told.",
                status_code=503,
                reason="sandbox",
            ) from None
        cmd = self.sandbox.command(
            self.server_command(),
            uid=self.sandbox.server_uid(self.user.id),
            cgroup=self._cgroup,
            ro_binds=self._ro_binds(),
            home=SANDBOX_HOME,
            chdir=SANDBOX_HOME,
        )
        self.log.info("Spawning %s sandboxed from %s", self._log_name, environment.path)
        self.log.debug("Sandbox command: %s", [a if len(a) < 200 else "..." for a in cmd])
        # a Popen handle, as LocalProcessSpawner.poll() expects; starting it does not block
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            cmd, env=env, start_new_session=True, **self.popen_kwargs
        )
        self.pid = self.proc.pid
        self._start_watch()
        spawned = time.monotonic()
        await self._wait_listening()
        self.log.info(
            "Server %s listening %.2fs after its start (cgroup and sandbox command %.0f ms)",
            self._log_name,
            time.monotonic() - started,
            (spawned - started) * 1000,
        )
        return (self.ip or "127.0.0.1", self.port)

    def _memory_message(self):
        return (
            f"Your server was stopped because it used more than its memory limit of "
            f"{_gigabytes(self.sandbox.memory_limit)}. Start it again, and use less memory "
            "(smaller data, fewer processes)."
        )

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
                if self._cgroup is not None and self._cgroup.oom_kills():
                    raise spawn_error(
                        f"The server used more than its memory limit of "
                        f"{_gigabytes(self.sandbox.memory_limit)} while starting.",
                        status_code=500,
                        reason="memory",
                    )
                if status == homeinit.HOME_FULL:
                    raise spawn_error(
                        "The repository's files do not fit in a session's home of "
                        f"{_megabytes(self.sandbox.home_size)}.",
                        status_code=422,
                        reason="too-large",
                    )
                raise spawn_error(
                    f"The server exited with status {status} while starting. "
                    "Check the repository's start script and requirements.",
                    status_code=500,
                    reason="exited",
                )
            try:
                _, writer = await asyncio.open_connection(self.ip or "127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await self._check_port_owner()
            return

    async def _check_port_owner(self):
        """Refuse to go on when another uid listens on the server's port.

        The sandboxes share the host's network, so another visitor's server
        that took this port first would get this user's requests (and
        cookies) through the proxy. Only a root hub can tell (each server has
        a uid of its own).
        """
        uid = self.sandbox.server_uid(self.user.id)
        if uid is None:
            return
        owners = await asyncio.to_thread(listening_uids, self.port)
        if owners - {uid}:
            self.log.warning(
                "Port %s of %s is held by uid(s) %s, not the server's %s: not starting it",
                self.port,
                self._log_name,
                sorted(owners - {uid}),
                uid,
            )
            raise spawn_error(
                "The port chosen for your server was taken by another program on this "
                "machine before the server could use it. Start it again.",
                status_code=503,
                reason="port-taken",
            )

    # -- memory limit --------------------------------------------------------------

    def _start_watch(self):
        if self._cgroup is None or (self._watch is not None and not self._watch.done()):
            return
        self._watch = asyncio.ensure_future(self._watch_memory(self._cgroup))

    async def _watch_memory(self, cgroup):
        """Stop the whole server once the kernel killed one of its processes for memory.

        cgroup v1 kills one process (often a kernel) and leaves the rest;
        a server past its limit is stopped as a whole, like an OOM-killed
        pod, and the reason is kept for the hub's pages.
        """
        while True:
            await asyncio.sleep(self.memory_check_interval)
            if cgroup is not self._cgroup:
                return
            if not cgroup.oom_kills():
                continue
            self.stop_reason = self._memory_message()
            self.log.warning(
                "Stopping %s: it exceeded its memory limit (%d bytes, peak %d)",
                self._log_name,
                self.sandbox.memory_limit,
                cgroup.memory_peak(),
            )
            await asyncio.to_thread(cgroup.kill)
            with contextlib.suppress(Exception):
                await self.poll_and_notify()
            return

    def get_state(self):
        state = super().get_state()
        if self.stop_reason:
            state["stop_reason"] = self.stop_reason
        return state

    def load_state(self, state):
        super().load_state(state)
        self.stop_reason = state.get("stop_reason") or self.stop_reason

    # clear_state() keeps stop_reason: the hub saves the state of a stopped
    # server after clearing it, and its "not running" page reads the reason

    async def poll(self):
        status = await super().poll()
        if status is not None and self._cgroup is not None and not self.stop_reason:
            if self._cgroup.oom_kills():
                self.stop_reason = self._memory_message()
        if status is None:
            if self._cgroup is None and self._environment is not None:
                # a restarted hub: find the running server's cgroup again
                self._cgroup = await asyncio.to_thread(
                    self.sandbox.existing_cgroup, self._cgroup_name()
                )
            self._start_watch()
        return status

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            cgroup = self._cgroup or (
                self._environment is not None
                and await asyncio.to_thread(self.sandbox.existing_cgroup, self._cgroup_name())
            )
            self._cgroup = None
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            if cgroup:
                await asyncio.to_thread(cgroup.remove)


class LocalBinderSpawner(BinderLaunchMixin, _SandboxedProcessSpawner):
    """Builds a repository into a local environment and runs the server as a local process."""

    builder = Instance(
        EnvironmentBuilder,
        help="""
        The environment builder shared by all servers of the hub
        (:class:`binder_spawner.localbuild.EnvironmentBuilder`; configure it as
        ``c.EnvironmentBuilder.*``). A trait so that tests can pass their own.

        Example: ``c.LocalBinderSpawner.builder = EnvironmentBuilder(envs_dir="/srv/binder/envs")``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("builder")
    def _default_builder(self):
        # one per hub process: it serialises builds and evictions of the shared environments
        return one_per_process(
            EnvironmentBuilder, lambda: EnvironmentBuilder(config=self.config, log=self.log)
        )

    def builder_home_max_file(self):
        return self.builder.home_max_file

    def cgroup_namespace(self):
        return self.builder.instance_id

    @default("default_url")
    def _default_default_url(self):
        return "/lab"

    @default("cmd")
    def _default_cmd(self):
        return ["jupyterhub-singleuser"]

    async def prepare_launch(self, spec):
        git_config = fetch = None
        name = spec.repo_key
        if spec.is_archive:
            # root downloads the record through the policy's checked client
            # into a directory no sandbox can reach yet (EnvironmentBuilder._fetch_files)
            fetch = functools.partial(
                self.repo_policy.download_record, spec.provider, spec.resolution
            )
            # one version, one environment: a concept DOI shares its latest version's
            name = f"{spec.provider}/{spec.resolved_spec}".lower()
        elif self.builder.load(self.builder.environment_key(spec.repo_key, spec.commit)) is None:
            # the clone goes to the addresses the policy checks now, with its
            # protocol and credential restrictions: DNS cannot send it elsewhere
            git_config = await self.repo_policy.git_config(spec.repo_url)
        task = self.builder.build(spec.repo_url, spec.commit, git_config, name=name, fetch=fetch)
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
        except ArchiveError as e:
            self.log.warning("Download of %s for %s refused: %s", spec.spec, self._log_name, e)
            raise spawn_error(e.message, status_code=e.status_code, reason="archive") from None
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
