"""Local mode's wheelhouse: the Jupyter packages every build installs, read-only to builds.

Each build gets a download cache of its own, created empty and removed when
the build ends, because build code (``postBuild``, a ``setup.py``, an sdist's
build script) can write it: a cache shared between builds would let one
repository change what another repository's environment installs. What all
builds install, the Jupyter packages and their dependencies, would then be
downloaded by every build; the wheelhouse keeps them on disk instead.

Root downloads them with ``pip download --only-binary :all:`` (wheels only, so
no package code runs), for one Python version, into a directory of its own
that no sandbox can write. Builds see it read-only at :data:`WHEELS_MOUNT` and
the installer takes a wheel from it when it resolves the same version (uv's and
pip's ``FIND_LINKS``); anything else comes from the index as before. The
wheelhouse is downloaded again when it is older than its maximum age; the
previous generation stays until a newer one replaces it, so a build that
started with it keeps its files.

Layout under the wheelhouse root (root's, mode 0711)::

    KEY.lock            held while KEY is downloaded (other processes wait)
    KEY/GENERATION/     the wheels, GENERATION the Unix time of the download
    KEY/.partial-*      a download in progress
"""

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sys
import time

# where the wheelhouse appears inside a build's sandbox
WHEELS_MOUNT = "/srv/wheels"

# how long a failed download is not tried again (builds go on without a wheelhouse)
RETRY_AFTER_FAILURE = 600

# generations kept per key: the newest, and the one builds started before it may still use
KEEP_GENERATIONS = 2

DEFAULT_INDEX = "https://pypi.org/simple"


class WheelhouseError(Exception):
    """The wheelhouse could not be downloaded."""


def python_minor(version):
    """``"3.11"`` from an interpreter version such as ``"3.11.2"``; None if it is not one."""
    m = re.fullmatch(r"(3)\.(\d{1,2})(?:\.\d+)?(?:[abrc+].*)?", version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def index_settings(environ):
    """``(index_url, [extra_index_urls])`` the builds' installer uses, from its environment.

    The same variables :class:`~binder_spawner.localbuild.EnvironmentBuilder`
    passes to build steps, so the wheelhouse holds what the builds would download.
    """
    index = (
        environ.get("UV_DEFAULT_INDEX")
        or environ.get("UV_INDEX_URL")
        or environ.get("PIP_INDEX_URL")
        or DEFAULT_INDEX
    )
    extra = (environ.get("UV_EXTRA_INDEX_URL") or environ.get("PIP_EXTRA_INDEX_URL") or "").split()
    return index, extra


def wheelhouse_key(python_version, packages, index):
    """The directory name of one wheelhouse: Python version, packages and index."""
    text = "\n".join([python_version, *packages, "--", index[0], *index[1]])
    return f"py{python_version}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def download_command(python, python_version, packages, dest, index):
    """The ``pip download`` argv: wheels only, for ``python_version``, from ``index``.

    ``--isolated`` ignores pip's configuration files and ``PIP_*`` variables:
    the index is the one the builds use, passed explicitly.
    """
    argv = [
        python,
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "--no-input",
        "download",
        "--only-binary",
        ":all:",
        "--python-version",
        python_version,
        "--progress-bar",
        "off",
        "--dest",
        dest,
        "--index-url",
        index[0],
    ]
    for url in index[1]:
        argv += ["--extra-index-url", url]
    return [*argv, "--", *packages]


def choose_generation(names, now, max_age):
    """``(current, stale, to_remove)`` among a key's directory names.

    ``current``: the newest generation (None if there is none); ``stale``:
    whether it is older than ``max_age`` seconds; ``to_remove``: generations
    beyond the newest :data:`KEEP_GENERATIONS`. Names that are not generations
    (a download in progress) are ignored.
    """
    generations = sorted((int(n) for n in names if n.isdigit()), reverse=True)
    if not generations:
        return None, True, []
    current = generations[0]
    return str(current), now - current >= max_age, [str(g) for g in generations[KEEP_GENERATIONS:]]


class Wheelhouse:
    """Root's wheelhouses under ``root``: one per (Python version, packages, index).

    :meth:`get` returns the directory of an up-to-date wheelhouse, downloading
    it first if needed (one download per key at a time, in this process and
    across processes sharing ``root``), or None when the download fails.
    """

    def __init__(self, root, packages, *, max_age, timeout, log, python=None, environ=None):
        self.root = root
        self.packages = list(packages)
        self.max_age = max_age
        self.timeout = timeout
        self.log = log
        self.python = python or sys.executable
        self.index = index_settings(os.environ if environ is None else environ)
        self._downloads = {}
        self._failed = {}

    async def get(self, python_version, emit=lambda line: None):
        """The wheelhouse directory for ``python_version`` (e.g. ``"3.11.2"``), or None."""
        version = python_minor(python_version)
        if not self.packages or version is None:
            return None
        key = wheelhouse_key(version, self.packages, self.index)
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed < RETRY_AFTER_FAILURE:
            return None
        current = await asyncio.to_thread(self._current, key)
        if current is not None:
            return current
        task = self._downloads.get(key)
        if task is None:
            emit(f"Downloading the Jupyter packages for Python {version} into the hub's wheelhouse")
            task = asyncio.ensure_future(self._download(key, version))
            self._downloads[key] = task
            task.add_done_callback(lambda _: self._downloads.pop(key, None))
        try:
            return await asyncio.shield(task)
        except Exception as e:
            # never a failed build: it downloads what the wheelhouse would have held
            self._failed[key] = time.monotonic()
            if isinstance(e, WheelhouseError):
                self.log.warning("No wheelhouse for Python %s: %s", version, e)
            else:
                self.log.exception("No wheelhouse for Python %s", version)
            emit("The hub's wheelhouse is unavailable; this build downloads every package")
            return None

    def _key_dir(self, key):
        return os.path.join(self.root, key)

    def _current(self, key):
        """The newest generation of ``key`` if it is fresh, else None."""
        try:
            names = os.listdir(self._key_dir(key))
        except FileNotFoundError:
            return None
        current, stale, _ = choose_generation(names, time.time(), self.max_age)
        return None if current is None or stale else os.path.join(self._key_dir(key), current)

    async def _download(self, key, version):
        lock = await asyncio.to_thread(self._lock, key)
        try:
            # another process may have downloaded it while this one waited
            current = await asyncio.to_thread(self._current, key)
            if current is not None:
                return current
            partial = await asyncio.to_thread(self._partial_dir, key)
            try:
                await self._pip_download(version, partial)
                return await asyncio.to_thread(self._publish, key, partial)
            finally:
                await asyncio.to_thread(shutil.rmtree, partial, True)
        finally:
            await asyncio.to_thread(os.close, lock)

    def _lock(self, key):
        make_private_dir(self.root)
        fd = os.open(
            os.path.join(self.root, f"{key}.lock"),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _partial_dir(self, key):
        make_private_dir(self._key_dir(key))
        partial = os.path.join(self._key_dir(key), f".partial-{os.getpid()}-{time.time_ns()}")
        os.mkdir(partial, 0o700)
        return partial

    async def _pip_download(self, version, dest):
        argv = download_command(self.python, version, self.packages, dest, self.index)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=dest,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise WheelhouseError(f"pip download took longer than {self.timeout} s") from None
        if proc.returncode != 0:
            tail = out.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise WheelhouseError(
                f"pip download exited with status {proc.returncode}: " + " | ".join(tail)
            )
        self.log.info(
            "Downloaded the wheelhouse for Python %s (%s) in %.1fs",
            version,
            " ".join(self.packages),
            time.monotonic() - started,
        )

    def _publish(self, key, partial):
        """Make the download readable to the sandbox uids and the key's newest generation."""
        wheels = 0
        for name in os.listdir(partial):
            path = os.path.join(partial, name)
            st = os.lstat(path)
            if not name.endswith(".whl") or not os.path.isfile(path) or os.path.islink(path):
                raise WheelhouseError(f"pip download left {name}, which is not a wheel")
            os.chmod(path, (st.st_mode & 0o644) | 0o444)
            wheels += 1
        if not wheels:
            raise WheelhouseError("pip download found no wheels")
        os.chmod(partial, 0o755)
        generation = int(time.time())
        names = os.listdir(self._key_dir(key))
        latest, _, _ = choose_generation(names, generation, self.max_age)
        if latest is not None and int(latest) >= generation:
            generation = int(latest) + 1
        final = os.path.join(self._key_dir(key), str(generation))
        os.rename(partial, final)
        _, _, old = choose_generation([*names, str(generation)], generation, self.max_age)
        for name in old:
            shutil.rmtree(os.path.join(self._key_dir(key), name), ignore_errors=True)
        return final


def make_private_dir(path):
    """``path`` as a root-owned directory others may traverse but not list or write (0711)."""
    os.makedirs(path, mode=0o711, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or (st.st_mode & 0o7777) != 0o711:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(fd, os.geteuid(), os.getegid())
            os.fchmod(fd, 0o711)
        finally:
            os.close(fd)
