"""Local mode's builder: a repository at one commit -> a sealed Python environment on disk.

Each environment lives in ``envs_dir/KEY`` (the clone in ``repo/``, the virtual
environment in ``venv/``). It is built once per (repository, commit, JupyterHub
version) with ``uv`` and a download cache of its own, following the rules of
:mod:`binder_spawner.localplan`; concurrent launches of the same commit follow
one build (an in-process task, plus a lock file for other processes), at most
``max_concurrent_builds`` run at once, and a build nobody waits for any more
is cancelled after ``abandoned_build_grace``. Every build step runs in the
sandbox (:mod:`binder_spawner.sandbox`) as the build uid, in the build's
cgroup, with only that environment (mounted at :data:`ENV_MOUNT`) and the
download cache writable.

The trust boundary: while it is built, the environment is the build uid's,
so root treats it as hostile. Root reads the repository's configuration only
through descriptors that follow no link; after the last step it kills what is
left in the build's cgroup and seals the tree (:func:`binder_spawner.seal.seal`:
root-owned, read-only, no links into the hub's directories). Root's own
bookkeeping (the marker that says an environment is finished, locks, last
use) lives in ``meta_dir``, which no sandbox ever mounts.
"""

import asyncio
import contextlib
import fcntl
import functools
import hashlib
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
from traitlets import Bool, Enum, Instance, Integer, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import TraitError

from . import condainstall, gitref
from .archives import ArchiveError
from .cgroups import cgroup_name
from .jupytercache import JupyterCache, link_copy
from .localplan import (
    APT_POLICIES,
    UnsupportedRepository,
    conda_channels,
    environment_key,
    nearest_python,
    plan_build,
    select_evictions,
    version_tuple,
)
from .sandbox import TRUSTED_PATH, Sandbox, SandboxUnavailable, trusted_which
from .seal import SealError, chown_tree, make_private_dir, seal

# Where an environment appears inside every sandbox. The venv is built there
# and used there, so its scripts and the build log name these paths, never the
# hub's directories.
ENV_MOUNT = "/srv/binder"
# A build's own download cache, inside the environment (one mount: uv and
# rattler hard-link from it) and removed before the environment is sealed.
CACHE_NAME = ".cache"
CACHE_MOUNT = f"{ENV_MOUNT}/{CACHE_NAME}"

# the one entry of cache_dir: root's caches of the Jupyter packages
JUPYTER_CACHE_DIR = "jupyter"

# a marker that is never true removes a requirement (uv's override semantics)
SLOW_IMPORT_OVERRIDE = "rfc3987-syntax ; sys_platform == 'never'"
# ipykernel's debugger, left out unless EnvironmentBuilder.kernel_debugger
NO_DEBUGGER_OVERRIDE = "debugpy ; sys_platform == 'never'"
OVERRIDES_FILE = ".binder-overrides.txt"

# how long an unknown commit of a repository is remembered (one fetch, not one per launch)
MISSING_COMMIT_SECONDS = 600

# the pip: section of an environment.yml, written beside it by the build uid
PIP_SECTION_FILE = ".binder-environment-pip.txt"

# What ``conda activate`` does to a server's environment, done by the server's
# own uid inside its sandbox when it starts (never by root): the variables of
# etc/conda/env_vars.d/*.json and conda-meta/state, then the activate.d shell
# scripts sourced, then the server (or postBuild) exec'd. $1 is the prefix.
ACTIVATE_SCRIPT = r"""
prefix=$1; shift
export CONDA_PREFIX="$prefix" CONDA_DEFAULT_ENV="$prefix" CONDA_SHLVL=1
vars=$("$prefix/bin/python" -I -S -c '
import glob, json, os, re, shlex, sys
prefix = sys.argv[1]
files = sorted(glob.glob(os.path.join(prefix, "etc/conda/env_vars.d/*.json")))
for path in files + [os.path.join(prefix, "conda-meta/state")]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        continue
    if path.endswith("state"):
        data = data.get("env_vars", {}) if isinstance(data, dict) else {}
    if not isinstance(data, dict):
        continue
    for name, value in data.items():
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            print("export %s=%s" % (name, shlex.quote(str(value))))
' "$prefix") || exit 1
eval "$vars"
for script in "$prefix"/etc/conda/activate.d/*.sh; do
    [ -f "$script" ] && . "$script"
done
exec "$@"
"""


def activation_command(prefix):
    """The argv prefix that runs a command as if in ``conda activate PREFIX``."""
    return ["/bin/bash", "-c", ACTIVATE_SCRIPT, "binder-activate", prefix]


@functools.cache
def condainstall_source():
    """The text of :mod:`binder_spawner.condainstall`, passed to the sandbox as ``-c``."""
    return Path(condainstall.__file__).read_text()


def rattler_dir():
    """The folder of the installed ``rattler`` package (mounted read-only into builds)."""
    try:
        import rattler
    except ImportError:
        return None
    return os.path.dirname(os.path.abspath(rattler.__file__))


def instance_id(envs_dir):
    """A short name for one hub's local mode, from its environments directory.

    Cgroups of servers and builds carry it, so two hubs on one machine never
    take each other's cgroups, and a restarted hub finds its own.
    """
    return hashlib.sha256(os.path.abspath(envs_dir).encode()).hexdigest()[:10]


class BuildError(Exception):
    """A build step failed; ``tail`` holds the last log lines."""

    def __init__(self, message, tail=(), status=None):
        super().__init__(message)
        self.message = message
        self.tail = list(tail)
        #: the failed step's exit status, when a step exited
        self.status = status


@dataclass
class Environment:
    """A built, sealed environment: where it is and how to start a server from it.

    ``path`` is on the host; inside a sandbox the environment is at
    :data:`ENV_MOUNT` (``sandbox_venv``, ``sandbox_repo``).
    """

    key: str
    path: str
    python_version: str
    start: str | None = None
    #: "python" (a virtual environment) or "conda" (a conda prefix, activated at start)
    kind: str = "python"
    warnings: list = field(default_factory=list)
    size: int = 0
    #: bytes a home gets copies of (the checkout without .git and large files)
    home_bytes: int = 0
    #: the base interpreter's prefix, mounted read-only when not a system path
    python_prefix: str | None = None

    @property
    def venv(self):
        return os.path.join(self.path, "venv")

    @property
    def repo_dir(self):
        return os.path.join(self.path, "repo")

    sandbox_venv = ENV_MOUNT + "/venv"
    sandbox_repo = ENV_MOUNT + "/repo"


class BuildTask:
    """One running (or finished) build; any number of launches follow it.

    ``followers`` counts launches following it now; when it drops to zero
    the builder starts the abandoned-build timer.
    """

    def __init__(self, key, tail_lines, on_idle=None):
        self.key = key
        self.lines = []
        self.tail = deque(maxlen=tail_lines)
        self.future = asyncio.get_running_loop().create_future()
        self.runner = None
        self.followers = 0
        self._on_idle = on_idle
        self._changed = asyncio.Event()

    def add_line(self, line):
        self.lines.append(line)
        self.tail.append(line)
        self._changed.set()

    def finish(self, result=None, error=None):
        if self.future.done():
            return
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
        self.followers += 1
        try:
            while True:
                self._changed.clear()
                while sent < len(self.lines):
                    yield self.lines[sent]
                    sent += 1
                if self.future.done():
                    return
                await self._changed.wait()
        finally:
            self.followers -= 1
            if self.followers == 0 and not self.future.done() and self._on_idle:
                self._on_idle(self)

    async def result(self):
        return await asyncio.shield(self.future)


class EnvironmentBuilder(LoggingConfigurable):
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
        Root's directory for the cache of the Jupyter packages (``jupyter/``).

        See ``jupyter_cache``. Each build's own download cache (uv's, pip's,
        conda's) is not here: it is created inside the environment being
        built and removed before the environment is sealed, so that no build
        can change what another build installs.
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
        return str(local) if local.exists() else (trusted_which("uv") or "/usr/local/bin/uv")

    @validate("uv_path", "git_path")
    def _validate_program(self, proposal):
        if not os.path.isabs(proposal.value):
            raise TraitError(
                f"EnvironmentBuilder.{proposal.trait.name} must be an absolute path, "
                f"got {proposal.value!r}"
            )
        return proposal.value

    git_path = Unicode(
        help="""
        The ``git`` executable that clones repositories (in the sandbox), an absolute path.

        Default: ``git`` in the system directories (``/usr/bin/git``).
        Example: ``c.EnvironmentBuilder.git_path = "/usr/local/bin/git"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("git_path")
    def _default_git_path(self):
        return trusted_which("git") or "/usr/bin/git"

    meta_dir = Unicode(
        help="""
        Root's own directory for the builder's bookkeeping: which environments are
        finished (markers), their sizes and last use, and build locks.

        Never mounted in a sandbox and private to the hub's user (mode 0700).
        Default: ``meta`` beside ``envs_dir``.
        Example: ``c.EnvironmentBuilder.meta_dir = "/var/lib/binder/meta"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("meta_dir")
    def _default_meta_dir(self):
        return os.path.join(os.path.dirname(os.path.abspath(self.envs_dir)), "meta")

    max_concurrent_builds = Integer(
        help="""
        How many builds may run at once; later ones wait (and say so on the progress page).

        Default: the number of CPU cores.
        Example: ``c.EnvironmentBuilder.max_concurrent_builds = 2``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("max_concurrent_builds")
    def _default_max_concurrent_builds(self):
        return os.cpu_count() or 1

    abandoned_build_grace = Integer(
        60,
        help="""
        Seconds a build goes on after the last launch waiting for it went away.

        A visitor who closes the page or stops the launch leaves the build
        without a follower; if nobody follows it again within this time, it is
        cancelled and its files removed. Default 60.
        Example: ``c.EnvironmentBuilder.abandoned_build_grace = 300``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    home_max_file = ByteSpecification(
        20 * 1024**2,
        help="""
        Files of the repository larger than this are not copied into each home.

        They appear in the home as links to the environment's read-only copy:
        readable, not writable. Default 20 MB.
        Example: ``c.EnvironmentBuilder.home_max_file = "100M"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

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

    uv_overrides = List(
        Unicode(),
        [SLOW_IMPORT_OVERRIDE],
        help="""
        Requirement overrides for uv (``uv pip install --overrides``), one per line.

        The default drops ``rfc3987-syntax``, an optional URL validator that
        jupyter-events pulls in through ``jsonschema[format-nongpl]``: it
        builds an Earley grammar at import, 1.5 to 4 seconds of every server
        start, for a check a notebook server never makes. ``[]`` keeps it (a
        repository that needs it must then list it). Ignored with ``installer = "pip"``.
        Example: ``c.EnvironmentBuilder.uv_overrides = []``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    kernel_debugger = Bool(
        False,
        help="""
        Let kernels run JupyterLab's debugger (``debugpy``, which ipykernel installs).

        Off by default: once a visitor has turned the debugger on and off,
        ``debugpy`` goes on listening on a loopback TCP port, without a key, and
        any other server on this machine (the sandboxes share its network)
        could connect to it and run code in that visitor's kernel. Off, uv
        leaves ``debugpy`` out (an override, like ``uv_overrides``) and kernels
        offer no debugger. Not removed: a ``debugpy`` that a conda
        ``environment.yml`` or a ``postBuild`` installs, or any with
        ``installer = "pip"``. Default False.
        Example: ``c.EnvironmentBuilder.kernel_debugger = True`` (one trusted user)

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    apt_policy = Enum(
        list(APT_POLICIES),
        "warn",
        help="""
        What local mode does with a repository's ``apt.txt`` (system packages it cannot
        install): ``warn`` builds without them and lists them on the progress page,
        ``refuse`` refuses the repository with a message naming the Kubernetes mode.

        Default ``warn``: most repositories list tools a notebook rarely needs.
        Example: ``c.EnvironmentBuilder.apt_policy = "refuse"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    conda_channels = List(
        Unicode(),
        ["conda-forge"],
        help="""
        The site's default conda channels, for ``environment.yml`` repositories.

        They are what ``defaults`` means in an ``environment.yml`` and are added
        after the file's own channels unless it lists ``nodefaults``. Names are
        looked up under ``conda_channel_alias``; full URLs are used as they are.
        Default ``["conda-forge"]``.
        Example: ``c.EnvironmentBuilder.conda_channels = ["conda-forge", "bioconda"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    conda_channel_alias = Unicode(
        "https://conda.anaconda.org",
        help="""
        Where named conda channels are fetched from: a channel ``NAME`` is
        ``{conda_channel_alias}/NAME``. Point it at a mirror to serve every named
        channel (the site's and the repositories') from there.

        Default ``https://conda.anaconda.org``.
        Example: ``c.EnvironmentBuilder.conda_channel_alias = "https://conda-mirror.example.org"``

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

        Shown on the progress page when a build starts. Default 1800 (30 minutes).
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

    jupyter_cache = Bool(
        True,
        help="""
        Start each build's download cache with the ``jupyter_packages``, unpacked once by the hub.

        Each build has a download cache of its own, so without this every
        build downloads and unpacks JupyterLab, JupyterHub and their
        dependencies again (about 110 packages, 300 MB unpacked). One sandboxed
        step per Python version installs only these packages, as wheels
        (``--only-binary :all:``: no package code runs), into a uv cache that
        root then seals; a build's cache starts as a copy of it whose package
        files are root's read-only hard links. If that step fails, builds
        download everything themselves. Only for ``installer = "uv"``.
        Default True.
        Example: ``c.EnvironmentBuilder.jupyter_cache = False``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    jupyter_cache_max_age = Integer(
        24 * 3600,
        min=60,
        help="""
        Seconds after which the cache of the Jupyter packages is prepared again, for new releases.

        Builds resolve against the index as always: a package released since
        then is downloaded by each build until the next preparation. Default
        one day.
        Example: ``c.EnvironmentBuilder.jupyter_cache_max_age = 6 * 3600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    link_mode = Enum(
        ["copy", "hardlink", "clone"],
        "copy",
        help="""
        How uv puts packages from the build's download cache into the environment (``UV_LINK_MODE``).

        Default ``copy``. The Jupyter packages' files in a build's cache are
        root's (see ``jupyter_cache``), which the kernel does not let the build
        uid hard-link (``fs.protected_hardlinks``): with ``hardlink`` uv warns
        and copies them. ``clone`` needs a filesystem with reflinks (btrfs,
        XFS). ``symlink`` is not offered: the links would point into the
        build's cache, which is removed when the build ends.
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
        self._slots = asyncio.Semaphore(self.max_concurrent_builds)
        # (repo_url, commit) -> monotonic time a fetch found no such commit
        self._missing = {}
        self._jupyter_caches = None
        self._cache_dir_checked = False

    def _overrides(self):
        """The lines of the overrides file uv installs with (``uv_overrides``, the debugger)."""
        return [*self.uv_overrides, *([] if self.kernel_debugger else [NO_DEBUGGER_OVERRIDE])]

    def _jupyter_cache_store(self):
        """The :class:`~binder_spawner.jupytercache.JupyterCache` of ``jupyter_packages`` (or None)."""
        if not (self.jupyter_cache and self.jupyter_packages and self.installer == "uv"):
            return None
        if self._jupyter_caches is None:
            self._jupyter_caches = JupyterCache(
                os.path.join(self.cache_dir, JUPYTER_CACHE_DIR),
                self.jupyter_packages,
                max_age=self.jupyter_cache_max_age,
                log=self.log,
                salt=[os.path.realpath(self.uv_path)],
            )
        return self._jupyter_caches

    # -- public API -----------------------------------------------------------

    def environment_key(self, repo, commit):
        """The environment's key for a repository (canonical name or URL) at a commit."""
        salt = [self.installer, *self.jupyter_packages]
        if self.installer == "uv":
            salt += self._overrides()
        if self.conda_channels != ["conda-forge"] or self.conda_channel_alias != (
            "https://conda.anaconda.org"
        ):
            # another channel setup builds conda environments differently
            salt += ["conda", self.conda_channel_alias, *self.conda_channels]
        return environment_key(repo, commit, " ".join(salt))

    @property
    def instance_id(self):
        return instance_id(self.envs_dir)

    def _marker(self, key):
        return os.path.join(self.meta_dir, f"{key}.json")

    def load(self, key):
        """The finished environment ``key``, or None (read from root's own directory)."""
        try:
            with open(self._marker(key)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if not os.path.isdir(os.path.join(self.envs_dir, key)):
            return None
        return Environment(**data)

    def build(self, repo_url, commit, git_config=None, name=None, fetch=None):
        """The :class:`BuildTask` for (repo_url, commit): a running one is shared, else started.

        A finished environment gives an already-done task, so callers follow one way.
        ``git_config``: (key, value) pairs for the clone, from
        :meth:`binder_spawner.repos.RepoPolicy.git_config` (checked, pinned
        addresses, restricted protocols); without it only http(s) is allowed.
        ``name``: the repository's canonical name (a launch's ``repo_key``), so
        that every spelling of one repository shares one environment.
        ``fetch``: for a record in an archive instead of a git repository,
        ``fetch(directory, emit)`` (blocking, run in a worker thread) fills
        the empty ``directory`` that root has just made and nothing else can
        reach yet (see :meth:`_fetch_files`); ``emit(line)`` adds a log line.
        """
        key = self.environment_key(name or repo_url, commit)
        task = self._tasks.get(key)
        if task is not None and not (task.future.done() and task.future.exception()):
            return task
        task = BuildTask(key, self.tail_lines, on_idle=self._abandoned)
        self._tasks[key] = task
        # kept on the task: the event loop holds only weak references to running tasks
        task.runner = asyncio.ensure_future(
            self._run_build(task, repo_url, commit, git_config, fetch)
        )
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
            os.utime(self._marker(key))

    def _abandoned(self, task):
        """The last launch following ``task`` went away: cancel it unless one comes back."""

        async def cancel_later():
            await asyncio.sleep(self.abandoned_build_grace)
            if task.followers == 0 and not task.future.done() and task.runner is not None:
                self.log.info(
                    "Cancelling build %s: nobody has waited for it for %ss",
                    task.key,
                    self.abandoned_build_grace,
                )
                task.runner.cancel()

        # a strong reference on the task, as for the runner
        task.canceller = asyncio.ensure_future(cancel_later())

    async def _run_build(self, task, repo_url, commit, git_config=None, fetch=None):
        try:
            await self._run_build_inner(task, repo_url, commit, git_config, fetch)
        finally:
            canceller = getattr(task, "canceller", None)
            if canceller is not None:
                canceller.cancel()

    async def _run_build_inner(self, task, repo_url, commit, git_config=None, fetch=None):
        try:
            env = await self._build_locked(task, repo_url, commit, git_config, fetch)
        except asyncio.CancelledError:
            task.finish(error=BuildError("The build was cancelled: nobody was waiting for it."))
            self._tasks.pop(task.key, None)
        except Exception as e:  # delivered to every follower of the task
            if not isinstance(e, (BuildError, UnsupportedRepository, ArchiveError)):
                self.log.exception("Build of %s@%s failed unexpectedly", repo_url, commit)
            task.finish(error=e)
            # the next launch tries again
            self._tasks.pop(task.key, None)
        else:
            task.finish(result=env)
            # finished tasks need not be remembered: the marker file says it all
            self._tasks.pop(task.key, None)

    async def _build_locked(self, task, repo_url, commit, git_config=None, fetch=None):
        missing = self._missing.get((repo_url, commit))
        if missing is not None and time.monotonic() - missing < MISSING_COMMIT_SECONDS:
            raise BuildError(
                f"The commit {commit[:12]} does not exist in {repo_url}. "
                "Check the link: a branch, tag or full commit of the repository."
            )
        await asyncio.to_thread(self._make_meta_dir)
        lock_path = os.path.join(self.meta_dir, f"{task.key}.lock")
        # another hub process (or a restarted one) may be building the same key
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
            env = self.load(task.key)
            if env is not None:
                self._touch(task.key)
                return env
            if self._slots.locked():
                task.add_line(
                    f"Waiting for a build slot ({self.max_concurrent_builds} builds run at once)"
                )
            async with self._slots:
                env = await self._build(task, repo_url, commit, git_config, fetch)
        finally:
            os.close(fd)
        await asyncio.to_thread(self._evict, {task.key})
        return env

    def _make_meta_dir(self):
        make_private_dir(self.meta_dir, 0o700)

    def _prepare(self, path, hand_over=True, seed=None):
        """A fresh, empty environment directory owned by the build uid.

        ``hand_over=False``: it stays root's (mode 0700) until
        :meth:`_hand_over`, so root can fill it first.
        """
        self.sandbox.preflight()
        os.makedirs(self.envs_dir, mode=0o711, exist_ok=True)
        self.sandbox.check_reachable(self.envs_dir)
        if os.path.lexists(path):
            # an earlier attempt that did not finish; rmtree never follows links
            shutil.rmtree(path)
        os.mkdir(path, 0o755 if hand_over else 0o700)
        if self._overrides():
            # written before any build step runs, into the directory root just made
            fd = os.open(
                os.path.join(path, OVERRIDES_FILE),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                0o644,
            )
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(self._overrides()) + "\n")
        uid = self.sandbox.build_uid()
        # the build's own download cache, inside the environment: started from the
        # Jupyter package cache while the directory is still root's, then the build uid's
        cache = os.path.join(path, CACHE_NAME)
        os.mkdir(cache, 0o700)
        if seed is not None:
            link_copy(seed, os.path.join(cache, "uv"), uid)
        if uid is not None:
            os.chown(cache, uid, uid)
            if hand_over:
                os.chown(path, uid, uid)
        return uid

    def _check_cache_dir(self):
        """``cache_dir`` as root's (0711), holding nothing but root's Jupyter package caches.

        Once per builder. Earlier versions gave the whole directory to the build
        uid (one download cache for all builds): if it is not root's, anything
        in it may have been written by a build, the Jupyter caches too, and all
        of it goes. Whatever else is in it goes in any case.
        """
        if self._cache_dir_checked:
            return
        try:
            builds_wrote_it = os.stat(self.cache_dir).st_uid != os.geteuid()
        except FileNotFoundError:
            builds_wrote_it = False
        make_private_dir(self.cache_dir)
        for name in os.listdir(self.cache_dir):
            if name == JUPYTER_CACHE_DIR and not builds_wrote_it:
                continue
            path = os.path.join(self.cache_dir, name)
            self.log.warning("Removing %s: builds could write it (no build shares a cache)", path)
            if os.path.isdir(path) and not os.path.islink(path):
                # rmtree never follows links
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        self._cache_dir_checked = True

    def _seal(self, path):
        forbidden = [
            os.path.abspath(d)
            for d in (self.envs_dir, self.meta_dir, self.cache_dir, os.path.dirname(self.envs_dir))
        ]
        return seal(path, forbidden=forbidden, home_max_file=self.home_max_file)

    def _write_marker(self, env):
        marker = self._marker(env.key)
        tmp = f"{marker}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(env), f)
        os.replace(tmp, marker)

    async def _build(self, task, repo_url, commit, git_config=None, fetch=None):
        path = os.path.join(self.envs_dir, task.key)
        try:
            await asyncio.to_thread(self._check_cache_dir)
            seed = await self._jupyter_seed(task)
            uid = await asyncio.to_thread(self._prepare, path, fetch is None, seed)
        except SandboxUnavailable as e:
            self.log.error("Local mode cannot build: %s", e)
            raise BuildError(
                "This hub cannot build environments right now; its administrator has been told."
            ) from None
        cgroup = await asyncio.to_thread(
            self.sandbox.create_cgroup, cgroup_name(self.instance_id, "build", task.key), build=True
        )
        started = time.monotonic()
        self.log.info("Building %s at %s into %s", repo_url, commit, path)
        task.add_line(
            f"Building {repo_url} at {commit[:12]}; each step may take up to "
            f"{_duration(self.build_timeout)}"
        )
        try:
            if fetch is not None:
                await self._fetch_files(task, path, uid, fetch)
            env = await self._build_steps(
                task, path, repo_url, commit, uid, git_config, cgroup, fetch
            )
            sealed_at = time.monotonic()
            if cgroup is not None:
                # nothing of the build may run while root seals what it wrote
                await asyncio.to_thread(cgroup.kill)
            # the download cache goes first: nothing of it is kept (rmtree follows no link)
            await asyncio.to_thread(shutil.rmtree, os.path.join(path, CACHE_NAME), True)
            try:
                report = await asyncio.to_thread(self._seal, path)
            except SealError as e:
                raise BuildError(
                    f"The build left something unsafe in the environment: {e}."
                ) from None
            env.size, env.home_bytes = report.size, report.home_bytes
            await asyncio.to_thread(self._write_marker, env)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, path, True)
            raise
        finally:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
        self.log.info(
            "Built %s at %s in %.1fs (sealed in %.2fs, %d MB, %d files)",
            repo_url,
            commit,
            time.monotonic() - started,
            time.monotonic() - sealed_at,
            env.size // 2**20,
            report.files,
        )
        return env

    async def _fetch_files(self, task, path, uid, fetch):
        """Root downloads a record's files into ``path/repo``, then hands ``path`` to the build uid.

        ``path`` is root's (0700) until then and no sandbox has run on it, so
        nothing but root writes there; the download and unpacking write
        fd-relative without following links (:mod:`binder_spawner.archivefiles`)
        and run in a worker thread with their own event loop.
        """
        loop = asyncio.get_running_loop()
        repo = os.path.join(path, "repo")
        await asyncio.to_thread(os.mkdir, repo, 0o755)

        def emit(line):
            loop.call_soon_threadsafe(task.add_line, line)

        await asyncio.to_thread(fetch, repo, emit)
        await asyncio.to_thread(self._hand_over, path, uid)

    @staticmethod
    def _hand_over(path, uid):
        if uid is not None:
            chown_tree(os.path.join(path, "repo"), uid)
            os.chown(path, uid, uid)
        os.chmod(path, 0o755)

    async def _build_steps(self, task, path, repo_url, commit, uid, git_config, cgroup, fetch=None):
        repo = os.path.join(path, "repo")
        repo_in = Environment.sandbox_repo
        venv_in = Environment.sandbox_venv
        run = functools.partial(self._step, task, path, uid, cgroup=cgroup)
        if fetch is None:
            task.add_line(f"Cloning {repo_url} at {commit}")
            await self._clone(run, task, repo_url, commit, git_config)
        plan = await asyncio.to_thread(plan_build, repo, self.apt_policy)
        if plan.conda is not None:
            return await self._build_conda(task, run, path, plan)
        python, version, warnings = await self._choose_python(plan.python_version)
        for warning in warnings:
            task.add_line(f"Warning: {warning}")
        extra = [os.path.dirname(os.path.dirname(python))]
        task.add_line(f"Creating a Python {version} environment")
        if self.installer == "uv":
            await run([self.uv_path, "venv", "--python", python, venv_in], extra=extra)
            install = [self.uv_path, "pip", "install", "--python", venv_in + "/bin/python"]
            if self._overrides():
                install += ["--overrides", f"{ENV_MOUNT}/{OVERRIDES_FILE}"]
        else:
            await run([python, "-m", "venv", venv_in], extra=extra)
            install = [venv_in + "/bin/python", "-m", "pip", "install", "--progress-bar", "off"]
        args = list(self.jupyter_packages)
        if plan.requirements:
            args += ["-r", plan.requirements]
        if plan.install_repo:
            args.append(".")
        if args:
            task.add_line("Installing " + " ".join(args))
            await run(install + args, cwd=repo_in, extra=extra)
        # as repo2docker: chmod +x binder/postBuild and binder/start, as the build uid
        scripts = [s for s in (plan.post_build, plan.start) if s]
        if scripts:
            await run(["/bin/chmod", "+x", "--", *scripts], cwd=repo_in)
        if plan.post_build:
            task.add_line(f"Running {plan.post_build}")
            await run([f"{repo_in}/{plan.post_build}"], cwd=repo_in, home=repo_in, extra=extra)
        prefix = extra[0]
        return Environment(
            key=task.key,
            path=path,
            python_version=version,
            start=plan.start,
            warnings=warnings,
            python_prefix=prefix if prefix in self._tool_mounts([prefix]) else None,
        )

    async def _build_conda(self, task, run, path, plan):
        """An ``environment.yml``: solve and install with rattler, then pip and Jupyter."""
        env = plan.conda
        repo_in = Environment.sandbox_repo
        venv_in = Environment.sandbox_venv
        for warning in plan.warnings:
            task.add_line(f"Warning: {warning}")
        rattler_path = rattler_dir()
        if rattler_path is None:
            self.log.error("Local mode cannot build conda environments: py-rattler is missing")
            raise BuildError(
                "This hub cannot build conda environments; its administrator has been told."
            )
        # the interpreter that runs the solver script (any Python 3 with the abi3 wheel)
        tool_python, _, _ = await self._choose_python(None)
        channels = conda_channels(env, self.conda_channels)
        env_dir = os.path.dirname(env.path)
        pip_file = (
            "/".join(p for p in (repo_in, env_dir, PIP_SECTION_FILE) if p) if env.pip else None
        )
        request = {
            "rattler_path": os.path.dirname(rattler_path),
            "channels": channels,
            "channel_alias": self.conda_channel_alias,
            "specs": env.specs,
            "prefix": venv_in,
            "cache": CACHE_MOUNT + "/conda",
            "pip_lines": env.pip,
            "pip_file": pip_file,
        }
        task.add_line(f"Creating the conda environment of {env.path}")
        extra = [os.path.dirname(os.path.dirname(tool_python)), rattler_path]
        try:
            await run(
                [tool_python, "-I", "-S", "-c", condainstall_source(), json.dumps(request)],
                extra=extra,
            )
        except BuildError as e:
            if e.status == condainstall.UNSOLVABLE:
                raise BuildError(
                    f"The conda environment of {env.path} cannot be solved: no set of "
                    f"packages from {', '.join(channels)} satisfies it.",
                    e.tail,
                    e.status,
                ) from None
            if e.status == condainstall.CHANNEL_ERROR:
                raise BuildError(
                    f"The conda packages of {env.path} could not be fetched from "
                    f"{', '.join(channels)}.",
                    e.tail,
                    e.status,
                ) from None
            raise
        version = await asyncio.to_thread(_conda_python_version, os.path.join(path, "venv"))
        python_in = venv_in + "/bin/python"
        install = [self.uv_path, "pip", "install", "--python", python_in]
        if self._overrides():
            install += ["--overrides", f"{ENV_MOUNT}/{OVERRIDES_FILE}"]
        if pip_file:
            task.add_line("Installing the pip: section: " + " ".join(env.pip))
            await run(
                [*install, "-r", pip_file],
                cwd="/".join(p for p in (repo_in, env_dir) if p),
            )
        args = list(self.jupyter_packages)
        if args:
            task.add_line("Installing " + " ".join(args))
            await run(install + args, cwd=repo_in)
        scripts = [s for s in (plan.post_build, plan.start) if s]
        if scripts:
            await run(["/bin/chmod", "+x", "--", *scripts], cwd=repo_in)
        if plan.post_build:
            task.add_line(f"Running {plan.post_build}")
            await run(
                [*activation_command(venv_in), f"{repo_in}/{plan.post_build}"],
                cwd=repo_in,
                home=repo_in,
            )
        return Environment(
            key=task.key,
            path=path,
            python_version=version or plan.python_version or "unknown",
            start=plan.start,
            warnings=list(plan.warnings),
            kind="conda",
        )

    async def _clone(self, run, task, repo_url, commit, git_config=None):
        if git_config is None:
            git_config = gitref.safe_config(allowed_schemes=("http", "https"))
        git = [
            self.git_path,
            *gitref.config_args(git_config),
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "advice.detachedHead=false",
        ]
        repo = Environment.sandbox_repo
        await run([*git, "init", "-q", repo])
        try:
            await run([*git, "-C", repo, "fetch", "-q", "--depth", "1", "--", repo_url, commit])
        except BuildError:
            # servers that refuse fetching a commit by id: fetch everything instead
            task.add_line("Fetching the whole history instead")
            await run(
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
                ]
            )
            try:
                await run([*git, "-C", repo, "update-ref", "FETCH_HEAD", commit])
            except BuildError:
                # the whole history came and the commit is not in it: remember that
                self._missing[(repo_url, commit)] = time.monotonic()
                raise BuildError(
                    f"The commit {commit[:12]} does not exist in {repo_url}. "
                    "Check the link: a branch, tag or full commit of the repository."
                ) from None
        await run([*git, "-C", repo, "checkout", "-q", "--detach", commit])

    async def _jupyter_seed(self, task):
        """The sealed uv cache of the Jupyter packages for the default Python, or None.

        The default Python is the one most builds use (conda environments
        with the same version too); a build on another version downloads them.
        """
        store = self._jupyter_cache_store()
        if store is None:
            return None
        try:
            python, version, _ = await self._choose_python(None)
        except BuildError:
            return None
        fill = functools.partial(self._fill_jupyter_cache, task, python)
        generation = await store.get(version, fill, task.add_line)
        return None if generation is None else os.path.join(generation, CACHE_NAME, "uv")

    async def _fill_jupyter_cache(self, task, python, version, partial):
        """Install only the Jupyter packages, as wheels, in a sandbox; seal the uv cache it left.

        ``partial`` is root's new, empty directory. No repository is involved
        and no package code runs (``--only-binary :all:``); once the step and
        everything it started are gone, root removes the throwaway environment
        and seals the rest.
        """
        uid = self.sandbox.build_uid()

        def hand_over():
            os.mkdir(os.path.join(partial, CACHE_NAME), 0o700)
            if uid is not None:
                os.chown(os.path.join(partial, CACHE_NAME), uid, uid)
                os.chown(partial, uid, uid)

        await asyncio.to_thread(hand_over)
        cgroup = await asyncio.to_thread(
            self.sandbox.create_cgroup,
            cgroup_name(self.instance_id, "build", f"jupyter-cache-{version}"),
            build=True,
        )
        # the throwaway environment is on the cache's mount: linked, not copied
        env = {"UV_LINK_MODE": "hardlink", "UV_COMPILE_BYTECODE": "0"}
        run = functools.partial(self._step, task, partial, uid, cgroup=cgroup, env=env)
        extra = [os.path.dirname(os.path.dirname(python))]
        venv_in = Environment.sandbox_venv
        try:
            await run([self.uv_path, "venv", "--python", python, venv_in], extra=extra)
            install = [self.uv_path, "pip", "install", "--python", venv_in + "/bin/python"]
            await run([*install, "--only-binary", ":all:", *self.jupyter_packages], extra=extra)
        finally:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.kill)
                await asyncio.to_thread(cgroup.remove)

        def seal_cache():
            shutil.rmtree(os.path.join(partial, "venv"))
            self._seal(partial)

        await asyncio.to_thread(seal_cache)

    def _step_env(self, home):
        env = {
            "PATH": f"{Environment.sandbox_venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "LANG": "C.UTF-8",
            "VIRTUAL_ENV": Environment.sandbox_venv,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": "http:https",
            "UV_CACHE_DIR": CACHE_MOUNT + "/uv",
            "PIP_CACHE_DIR": CACHE_MOUNT + "/pip",
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": self.link_mode,
            "UV_NO_PROGRESS": "1",
            # servers start from a read-only environment: compile now, not at every start
            "UV_COMPILE_BYTECODE": "1",
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
        """Read-only mounts for uv, git and the base interpreter, unless system paths hold them."""
        tools = {
            os.path.dirname(os.path.realpath(self.uv_path)),
            os.path.dirname(os.path.realpath(self.git_path)),
            *extra,
        }
        system = self.sandbox.system_paths
        return sorted(
            p for p in tools if not any(p == s or p.startswith(s.rstrip("/") + "/") for s in system)
        )

    async def _step(
        self,
        task,
        path,
        uid,
        argv,
        *,
        cgroup=None,
        cwd=None,
        home="/tmp",
        extra=(),
        env=None,
    ):
        """Run one build step in the sandbox, streaming its output into ``task``.

        ``env``: variables to set over the usual ones.
        """
        cmd = self.sandbox.command(
            argv,
            uid=uid,
            cgroup=cgroup,
            extra_ro_paths=self._tool_mounts(extra),
            rw_binds=[(path, ENV_MOUNT)],
            chdir=cwd or ENV_MOUNT,
            build=True,
        )
        self.log.debug("Build step: %s", [a if len(a) < 200 else "..." for a in argv])
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**self._step_env(home), **(env or {})},
            start_new_session=True,
        )

        async def read():
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    task.add_line(line)
            await proc.wait()

        name = os.path.basename(argv[0])
        try:
            await asyncio.wait_for(read(), self.build_timeout)
        except asyncio.TimeoutError:
            _kill_step(proc, cgroup)
            await proc.wait()
            raise BuildError(
                f"The build step {name} took longer than {_duration(self.build_timeout)} "
                "(the limit of one build step).",
                task.tail,
            ) from None
        except BaseException:
            _kill_step(proc, cgroup)
            raise
        if proc.returncode != 0:
            if cgroup is not None and cgroup.oom_kills():
                raise BuildError(
                    f"The build ran out of memory: it may use "
                    f"{self.sandbox.build_memory_limit / 1024**3:.3g} GB.",
                    task.tail,
                )
            raise BuildError(
                f"The build failed: {name} exited with status {proc.returncode}.",
                task.tail,
                proc.returncode,
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
            env=self._python_install_env(UV_PYTHON_DOWNLOADS="never"),
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
            except SandboxUnavailable:
                continue  # e.g. under /root: a sandbox uid could not run it
            found.setdefault(version, real)
        return found

    def _python_install_env(self, **extra):
        """uv's environment when root asks it about interpreters: a trusted PATH only."""
        env = {k: v for k, v in os.environ.items() if k.endswith("_PROXY") or k.endswith("_proxy")}
        env.update(
            PATH=TRUSTED_PATH,
            HOME=os.environ.get("HOME", "/"),
            UV_PYTHON_INSTALL_DIR=os.path.join(os.path.dirname(self.envs_dir), "python"),
            **extra,
        )
        return env

    async def _download_python(self, version):
        proc = await asyncio.create_subprocess_exec(
            self.uv_path,
            "python",
            "install",
            version,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=self._python_install_env(),
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
            names = os.listdir(self.meta_dir)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json"):
                continue
            key = name[: -len(".json")]
            env = self.load(key)
            if env is None:
                continue
            mtime = os.stat(self._marker(key)).st_mtime
            entries.append((key, env.size, mtime))
        keep = set(keep) | set(self._in_use) | set(self._tasks)
        evicted = select_evictions(entries, self.disk_budget, keep)
        for key in evicted:
            self.log.info("Evicting environment %s (disk budget %d bytes)", key, self.disk_budget)
            # the marker goes first, so a half-deleted environment is never reused
            with contextlib.suppress(OSError):
                os.unlink(self._marker(key))
            shutil.rmtree(os.path.join(self.envs_dir, key), ignore_errors=True)
        return evicted


def _conda_python_version(prefix):
    """The Python version installed in a conda prefix, from ``conda-meta``'s file names.

    Only names are listed, through a descriptor that follows no link: the
    build uid wrote the prefix.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(prefix, flags)
    except OSError:
        return None
    try:
        meta = os.open("conda-meta", flags, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        names = os.listdir(meta)
    finally:
        os.close(meta)
    for name in names:
        parts = name.rsplit("-", 2)
        if len(parts) == 3 and parts[0] == "python" and name.endswith(".json"):
            return parts[1]
    return None


def _kill_step(proc, cgroup):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)
    if cgroup is not None:
        cgroup.kill()


def _duration(seconds):
    if seconds % 60 == 0 and seconds >= 60:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} seconds"
