"""Local mode's builder: a repository at one commit -> a Python environment on disk.

Each environment lives in ``envs_dir/KEY`` (the clone in ``repo/``, the virtual
environment in ``venv/``). It is built once per (repository, commit, JupyterHub
version) with ``uv`` and a shared download cache, following the rules of
:mod:`binder_spawner.localplan`; concurrent launches of the same commit follow
one build (an in-process task, plus a lock file for other processes), and the
environment is reused until the disk budget evicts it, least recently used
first. Every build step runs in the sandbox (:mod:`binder_spawner.sandbox`) as
the build uid, with only that environment and the download cache writable.
"""

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jupyterhub
from jupyterhub.traitlets import ByteSpecification
from traitlets import Bool, Enum, Instance, Integer, List, Unicode, default
from traitlets.config import SingletonConfigurable

from . import gitref
from .localplan import (
    UnsupportedRepository,
    environment_key,
    nearest_python,
    plan_build,
    select_evictions,
    version_tuple,
)
from .sandbox import Sandbox

MARKER = ".binder-env.json"


class BuildError(Exception):
    """A build step failed; ``tail`` holds the last log lines."""

    def __init__(self, message, tail=()):
        super().__init__(message)
        self.message = message
        self.tail = list(tail)


@dataclass
class Environment:
    """A built environment: where it is and how to start a server from it."""

    key: str
    path: str
    python_version: str
    start: str | None = None
    warnings: list = field(default_factory=list)
    size: int = 0

    @property
    def venv(self):
        return os.path.join(self.path, "venv")

    @property
    def repo_dir(self):
        return os.path.join(self.path, "repo")


def _make_executable(repo, relpath):
    """chmod +x a script of the checkout (as root: never through a link out of it)."""
    base = os.path.realpath(repo)
    path = os.path.realpath(os.path.join(base, relpath))
    if path.startswith(base + os.sep) and os.path.isfile(path):
        os.chmod(path, 0o755)


def _dir_size(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class BuildTask:
    """One running (or finished) build; any number of launches follow it."""

    def __init__(self, key, tail_lines):
        self.key = key
        self.lines = []
        self.tail = deque(maxlen=tail_lines)
        self.future = asyncio.get_running_loop().create_future()
        self.runner = None
        self._changed = asyncio.Event()

    def add_line(self, line):
        self.lines.append(line)
        self.tail.append(line)
        self._changed.set()

    def finish(self, result=None, error=None):
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)
        # the failure is delivered to every follower through result()
        self.future.exception()
        self._changed.set()

    async def follow(self):
        """Yield every log line from the start, then new ones, until the build ends."""
        sent = 0
        while True:
            self._changed.clear()
            while sent < len(self.lines):
                yield self.lines[sent]
                sent += 1
            if self.future.done():
                return
            await self._changed.wait()

    async def result(self):
        return await asyncio.shield(self.future)


class EnvironmentBuilder(SingletonConfigurable):
    """Builds, reuses and evicts local-mode environments (one per hub process)."""

    envs_dir = Unicode(
        help="""
        Directory holding one built environment per (repository, commit).

        Default ``binder-local/envs`` in the hub's working directory. Its parents
        must be searchable by others (o+x) when the hub runs as root, so the
        sandbox uids can mount it.
        Example: ``c.EnvironmentBuilder.envs_dir = "/srv/binder/envs"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("envs_dir")
    def _default_envs_dir(self):
        return os.path.abspath(os.path.join("binder-local", "envs"))

    cache_dir = Unicode(
        help="""
        The package download cache shared by all builds (uv's or pip's).

        Default ``binder-local/cache`` in the hub's working directory.
        Example: ``c.EnvironmentBuilder.cache_dir = "/var/cache/binder"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("cache_dir")
    def _default_cache_dir(self):
        return os.path.abspath(os.path.join("binder-local", "cache"))

    uv_path = Unicode(
        help="""
        The ``uv`` executable used to create environments and install packages.

        Default: the ``uv`` next to the hub's Python, else the one on PATH.
        Example: ``c.EnvironmentBuilder.uv_path = "/usr/local/bin/uv"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("uv_path")
    def _default_uv_path(self):
        local = Path(sys.executable).parent / "uv"
        return str(local) if local.exists() else (shutil.which("uv") or "uv")

    installer = Enum(
        ["uv", "pip"],
        "uv",
        help="""
        What installs packages: ``uv`` (fast, the default) or ``pip`` (``python -m venv``
        and ``pip install``, kept for comparison and for indexes uv cannot use).

        Example: ``c.EnvironmentBuilder.installer = "pip"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    jupyter_packages = List(
        Unicode(),
        help="""
        Packages added to every environment so that it can serve as a hub server.

        Default: ``jupyterlab`` and ``jupyterhub`` pinned to the hub's own version
        (``jupyterhub-singleuser`` must speak the hub's protocol).
        Example: ``c.EnvironmentBuilder.jupyter_packages = ["jupyterlab<5", "jupyterhub==5.5.0"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("jupyter_packages")
    def _default_jupyter_packages(self):
        return ["jupyterlab", f"jupyterhub=={jupyterhub.__version__}"]

    python_downloads = Bool(
        True,
        help="""
        Let uv download the Python version a repository's ``runtime.txt`` asks for
        when no installed interpreter matches.

        Without network access to uv's Python mirror the download fails after a
        few seconds and the nearest installed version is used, with a warning on
        the progress page. Default True.
        Example: ``c.EnvironmentBuilder.python_downloads = False``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    disk_budget = ByteSpecification(
        20 * 1024**3,
        help="""
        Total size the built environments may take, in bytes (suffixes ``M``, ``G``).

        After each build the least recently used environments are deleted until
        the total fits, except those in use by a running server. Default 20 GB.
        Example: ``c.EnvironmentBuilder.disk_budget = "50G"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_timeout = Integer(
        1800,
        help="""
        Seconds one build step (clone, install, postBuild) may take before it is killed.

        Default 1800 (30 minutes).
        Example: ``c.EnvironmentBuilder.build_timeout = 600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    tail_lines = Integer(
        20,
        help="""
        Number of last build log lines shown to the user when a build fails. Default 20.

        Example: ``c.EnvironmentBuilder.tail_lines = 40``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    link_mode = Enum(
        ["copy", "hardlink", "clone", "symlink"],
        "copy",
        help="""
        How uv puts packages from the download cache into environments (``UV_LINK_MODE``).

        Default ``copy``: each build step sees the cache and its environment as
        two separate bind mounts of the sandbox, and the kernel refuses hard
        links and reflinks between mounts (uv would fall back to copying with a
        warning). Copies also keep built environments safe from later builds:
        with hard links, a build that writes into a cached file would change
        every environment linked to it.
        Example: ``c.EnvironmentBuilder.link_mode = "hardlink"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    sandbox = Instance(Sandbox)

    @default("sandbox")
    def _default_sandbox(self):
        return Sandbox(parent=self)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._tasks = {}
        self._in_use = {}
        # (monotonic time, {version: executable}): asking uv takes seconds
        self._pythons = None

    # -- public API -----------------------------------------------------------

    def environment_key(self, repo_url, commit):
        return environment_key(
            repo_url, commit, f"{self.installer} {' '.join(self.jupyter_packages)}"
        )

    def load(self, key):
        """The finished environment ``key``, or None."""
        marker = os.path.join(self.envs_dir, key, MARKER)
        try:
            with open(marker) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return Environment(**data)

    def build(self, repo_url, commit, git_config=None):
        """The :class:`BuildTask` for (repo_url, commit): a running one is shared, else started.

        A finished environment gives an already-done task, so callers follow one way.
        ``git_config``: (key, value) pairs for the clone, from
        :meth:`binder_spawner.repos.RepoPolicy.git_config` (checked, pinned
        addresses, restricted protocols); without it only http(s) is allowed.
        """
        key = self.environment_key(repo_url, commit)
        task = self._tasks.get(key)
        if task is not None and not (task.future.done() and task.future.exception()):
            return task
        task = BuildTask(key, self.tail_lines)
        self._tasks[key] = task
        # kept on the task: the event loop holds only weak references to running tasks
        task.runner = asyncio.ensure_future(self._run_build(task, repo_url, commit, git_config))
        return task

    def acquire(self, key):
        """Mark ``key`` in use by a server: never evicted until :meth:`release`."""
        self._in_use[key] = self._in_use.get(key, 0) + 1
        self._touch(key)

    def release(self, key):
        count = self._in_use.get(key, 0) - 1
        if count > 0:
            self._in_use[key] = count
        else:
            self._in_use.pop(key, None)

    # -- building -------------------------------------------------------------

    def _touch(self, key):
        with contextlib.suppress(OSError):
            os.utime(os.path.join(self.envs_dir, key, MARKER))

    async def _run_build(self, task, repo_url, commit, git_config=None):
        try:
            env = await self._build_locked(task, repo_url, commit, git_config)
        except Exception as e:  # delivered to every follower of the task
            if not isinstance(e, (BuildError, UnsupportedRepository)):
                self.log.exception("Build of %s@%s failed unexpectedly", repo_url, commit)
            task.finish(error=e)
            # the next launch tries again
            self._tasks.pop(task.key, None)
        else:
            task.finish(result=env)
            # finished tasks need not be remembered: the marker file says it all
            self._tasks.pop(task.key, None)

    async def _build_locked(self, task, repo_url, commit, git_config=None):
        os.makedirs(self.envs_dir, mode=0o711, exist_ok=True)
        lock_path = os.path.join(self.envs_dir, f".{task.key}.lock")
        # another hub process (or a restarted one) may be building the same key
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
            env = self.load(task.key)
            if env is not None:
                self._touch(task.key)
                return env
            env = await self._build(task, repo_url, commit, git_config)
        finally:
            os.close(fd)
        self._evict(keep={task.key})
        return env

    def _prepare(self, path):
        if os.path.exists(path):  # an earlier attempt that did not finish
            shutil.rmtree(path)
        os.makedirs(path, mode=0o755)
        os.makedirs(self.cache_dir, mode=0o711, exist_ok=True)
        self.sandbox.check_reachable(path)
        uid = self.sandbox.build_uid()
        self.sandbox.chown(path, uid)
        if uid is not None and os.stat(self.cache_dir).st_uid != uid:
            # once, for a cache made by someone else; later files are the build uid's own
            self.sandbox.chown(self.cache_dir, uid)
        return uid

    def _finish(self, path, env):
        env.size = _dir_size(path)
        with open(os.path.join(path, MARKER), "w") as f:
            json.dump(asdict(env), f)

    async def _build(self, task, repo_url, commit, git_config=None):
        path = os.path.join(self.envs_dir, task.key)
        uid = await asyncio.to_thread(self._prepare, path)
        started = time.monotonic()
        self.log.info("Building %s at %s into %s", repo_url, commit, path)
        try:
            env = await self._build_steps(task, path, repo_url, commit, uid, git_config)
            await asyncio.to_thread(self._finish, path, env)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, path, True)
            raise
        self.log.info(
            "Built %s at %s in %.1fs (%d MB)",
            repo_url,
            commit,
            time.monotonic() - started,
            env.size // 2**20,
        )
        return env

    async def _build_steps(self, task, path, repo_url, commit, uid, git_config=None):
        repo = os.path.join(path, "repo")
        venv = os.path.join(path, "venv")
        task.add_line(f"Cloning {repo_url} at {commit}")
        await self._clone(task, path, repo_url, commit, uid, git_config)
        plan = plan_build(repo)
        python, version, warnings = await self._choose_python(plan.python_version)
        for warning in warnings:
            task.add_line(f"Warning: {warning}")
        extra = [os.path.dirname(os.path.dirname(python))]
        task.add_line(f"Creating a Python {version} environment")
        if self.installer == "uv":
            await self._step(
                task, path, uid, [self.uv_path, "venv", "--python", python, venv], extra=extra
            )
            install = [
                self.uv_path,
                "pip",
                "install",
                "--python",
                os.path.join(venv, "bin", "python"),
            ]
        else:
            await self._step(task, path, uid, [python, "-m", "venv", venv], extra=extra)
            install = [
                os.path.join(venv, "bin", "python"),
                "-m",
                "pip",
                "install",
                "--progress-bar",
                "off",
            ]
        args = list(self.jupyter_packages)
        if plan.requirements:
            args += ["-r", plan.requirements]
        if plan.install_repo:
            args.append(".")
        task.add_line("Installing " + " ".join(args))
        await self._step(task, path, uid, install + args, cwd=repo, extra=extra)
        if plan.post_build:
            task.add_line(f"Running {plan.post_build}")
            script = os.path.join(repo, plan.post_build)
            await asyncio.to_thread(_make_executable, repo, plan.post_build)
            await self._step(task, path, uid, [script], cwd=repo, home=repo, extra=extra)
        if plan.start:
            # as repo2docker does (chmod +x of binder/start in its Dockerfile)
            await asyncio.to_thread(_make_executable, repo, plan.start)
        return Environment(
            key=task.key,
            path=path,
            python_version=version,
            start=plan.start,
            warnings=warnings,
        )

    async def _clone(self, task, path, repo_url, commit, uid, git_config=None):
        if git_config is None:
            git_config = gitref.safe_config(allowed_schemes=("http", "https"))
        git = [
            "git",
            *gitref.config_args(git_config),
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "advice.detachedHead=false",
        ]
        repo = os.path.join(path, "repo")
        await self._step(task, path, uid, [*git, "init", "-q", repo])
        try:
            await self._step(
                task,
                path,
                uid,
                [*git, "-C", repo, "fetch", "-q", "--depth", "1", "--", repo_url, commit],
            )
        except BuildError:
            # servers that refuse fetching a commit by id: fetch everything instead
            task.add_line("Fetching the whole history instead")
            await self._step(
                task,
                path,
                uid,
                [
                    *git,
                    "-C",
                    repo,
                    "fetch",
                    "-q",
                    "--",
                    repo_url,
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                ],
            )
            await self._step(
                task, path, uid, [*git, "-C", repo, "update-ref", "FETCH_HEAD", commit]
            )
        await self._step(task, path, uid, [*git, "-C", repo, "checkout", "-q", "--detach", commit])

    def _step_env(self, path, home):
        env = {
            "PATH": f"{os.path.join(path, 'venv', 'bin')}:/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "LANG": "C.UTF-8",
            "VIRTUAL_ENV": os.path.join(path, "venv"),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": "http:https",
            "UV_CACHE_DIR": os.path.join(self.cache_dir, "uv"),
            "PIP_CACHE_DIR": os.path.join(self.cache_dir, "pip"),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": self.link_mode,
            "UV_NO_PROGRESS": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "MALLOC_ARENA_MAX": "2",
        }
        for name in (
            "UV_INDEX_URL",
            "UV_DEFAULT_INDEX",
            "UV_EXTRA_INDEX_URL",
            "PIP_INDEX_URL",
            "PIP_EXTRA_INDEX_URL",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "SSL_CERT_FILE",
        ):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def _tool_mounts(self, extra):
        """Read-only mounts for uv and the base interpreter, unless system paths hold them."""
        tools = {os.path.dirname(os.path.realpath(self.uv_path)), *extra}
        system = self.sandbox.system_paths
        return sorted(
            p for p in tools if not any(p == s or p.startswith(s.rstrip("/") + "/") for s in system)
        )

    async def _step(self, task, path, uid, argv, *, cwd=None, home="/tmp", extra=()):
        """Run one build step in the sandbox, streaming its output into ``task``."""
        cmd = self.sandbox.command(
            argv,
            uid=uid,
            extra_ro_paths=self._tool_mounts(extra),
            rw_binds=[(path, path), (self.cache_dir, self.cache_dir)],
            chdir=cwd or path,
        )
        self.log.debug("Build step: %s", argv)
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._step_env(path, home),
            start_new_session=True,
        )

        async def read():
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    task.add_line(line)
            await proc.wait()

        try:
            await asyncio.wait_for(read(), self.build_timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise BuildError(
                f"The build step {os.path.basename(argv[0])} took longer than {self.build_timeout} seconds.",
                task.tail,
            ) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            raise
        if proc.returncode != 0:
            raise BuildError(
                f"The build failed: {os.path.basename(argv[0])} exited with status {proc.returncode}.",
                task.tail,
            )

    # -- Python interpreters ----------------------------------------------------

    async def _installed_pythons(self):
        """``{version: executable}`` of interpreters a sandbox uid can run."""
        proc = await asyncio.create_subprocess_exec(
            self.uv_path,
            "python",
            "list",
            "--only-installed",
            "--output-format",
            "json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", **self._python_install_env()},
        )
        out, _ = await proc.communicate()
        return await asyncio.to_thread(self._usable_pythons, out)

    def _usable_pythons(self, out):
        found = {}
        try:
            entries = json.loads(out or b"[]")
        except ValueError:
            entries = []
        for entry in entries:
            if entry.get("implementation") != "cpython" or not entry.get("path"):
                continue
            real = os.path.realpath(entry["path"])
            version = entry.get("version", "")
            if not version_tuple(version) or not os.access(real, os.X_OK):
                continue
            try:
                self.sandbox.check_reachable(os.path.dirname(os.path.dirname(real)))
            except RuntimeError:
                continue  # e.g. under /root: a sandbox uid could not run it
            found.setdefault(version, real)
        return found

    def _python_install_env(self):
        return {"UV_PYTHON_INSTALL_DIR": os.path.join(os.path.dirname(self.envs_dir), "python")}

    async def _download_python(self, version):
        proc = await asyncio.create_subprocess_exec(
            self.uv_path,
            "python",
            "install",
            version,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **self._python_install_env()},
        )
        try:
            await asyncio.wait_for(proc.wait(), 120)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        return proc.returncode == 0

    async def _choose_python(self, requested):
        """(executable, version, warnings) for a ``runtime.txt`` request (None: the default)."""
        if self._pythons is None or time.monotonic() - self._pythons[0] > 300:
            self._pythons = (time.monotonic(), await self._installed_pythons())
        available = self._pythons[1]
        warnings = []
        if requested:
            want = version_tuple(requested)
            match = [v for v in available if version_tuple(v) == want]
            if not match and self.python_downloads and await self._download_python(requested):
                available = await self._installed_pythons()
                self._pythons = (time.monotonic(), available)
            chosen = nearest_python(requested, available)
            if chosen is None:
                raise BuildError("No Python interpreter is available to build this repository.")
            if version_tuple(chosen) != want:
                warnings.append(
                    f"runtime.txt asks for Python {requested}, which is not available here; "
                    f"using Python {chosen} instead."
                )
        else:
            current = f"{sys.version_info[0]}.{sys.version_info[1]}"
            chosen = nearest_python(current, available)
            if chosen is None:
                raise BuildError("No Python interpreter is available to build this repository.")
        return available[chosen], chosen, warnings

    # -- disk budget --------------------------------------------------------------

    def _evict(self, keep=()):
        entries = []
        try:
            names = os.listdir(self.envs_dir)
        except FileNotFoundError:
            return []
        for name in names:
            env = self.load(name)
            if env is None:
                continue
            mtime = os.stat(os.path.join(self.envs_dir, name, MARKER)).st_mtime
            entries.append((name, env.size, mtime))
        keep = set(keep) | set(self._in_use) | set(self._tasks)
        evicted = select_evictions(entries, self.disk_budget, keep)
        for key in evicted:
            self.log.info("Evicting environment %s (disk budget %d bytes)", key, self.disk_budget)
            path = os.path.join(self.envs_dir, key)
            # the marker goes first, so a half-deleted environment is never reused
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, MARKER))
            shutil.rmtree(path, ignore_errors=True)
        return evicted
