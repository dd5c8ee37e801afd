"""Local mode's Jupyter package cache: what every build installs, unpacked once, read-only to builds.

Each build gets a download cache of its own, created empty and removed before
its environment is sealed, because build code (``postBuild``, a ``setup.py``,
an sdist's build script) can write it: a cache shared between builds would let
one repository change what another repository's environment installs. What all
builds install, the Jupyter packages and their dependencies, would then be
downloaded and unpacked by every build (about 110 packages, 300 MB unpacked);
this cache keeps them instead.

It is a uv cache filled by one sandboxed step that installs only the Jupyter
packages, as wheels (``--only-binary :all:``: no package code runs, and no
repository is involved), then sealed by root (root-owned, read-only). Each build's
cache starts as a copy of it (:func:`link_copy`): directories and uv's small
index files are the build's own, the unpacked packages are hard links to root's
read-only files, which the build can remove from its cache but not change. It
is filled again when it is older than its maximum age; the previous generation
stays until a newer one replaces it.

Layout under the cache root (root's, mode 0711)::

    KEY.lock            held while KEY is filled (other processes wait)
    KEY/GENERATION/     one filled, sealed cache, GENERATION the Unix time it was made
    KEY/.partial-*      a fill in progress
"""

import asyncio
import fcntl
import hashlib
import os
import re
import shutil
import time

from .seal import make_private_dir

# how long a failed fill is not tried again (builds go on without the cache)
RETRY_AFTER_FAILURE = 600

# generations kept per key: the newest, and the one builds started before it may still use
KEEP_GENERATIONS = 2

# uv's directory of unpacked packages: immutable entries, hard-linked into a build's cache
ARCHIVE_BUCKET = "archive-v0"


def python_minor(version):
    """``"3.11"`` from an interpreter version such as ``"3.11.2"``; None if it is not one."""
    m = re.fullmatch(r"(3)\.(\d{1,2})(?:\.\d+)?(?:[abrc+].*)?", version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def cache_key(python_version, packages, salt=()):
    """The directory name of one cache: Python version, packages and what else changes it."""
    text = "\n".join([python_version, *packages, "--", *salt])
    return f"py{python_version}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def choose_generation(names, now, max_age):
    """``(current, stale, to_remove)`` among a key's directory names.

    ``current``: the newest generation (None if there is none); ``stale``:
    whether it is older than ``max_age`` seconds; ``to_remove``: generations
    beyond the newest :data:`KEEP_GENERATIONS`. Names that are not generations
    (a fill in progress) are ignored.
    """
    generations = sorted((int(n) for n in names if n.isdigit()), reverse=True)
    if not generations:
        return None, True, []
    current = generations[0]
    return str(current), now - current >= max_age, [str(g) for g in generations[KEEP_GENERATIONS:]]


class JupyterCache:
    """Root's sealed caches under ``root``, one per (Python version, packages, salt).

    :meth:`get` returns the directory of an up-to-date cache, filling it first
    if needed with ``fill(version, directory)`` (a coroutine that leaves a
    sealed uv cache in ``directory``; one fill per key at a time, in this
    process and across processes sharing ``root``), or None when that fails.
    """

    def __init__(self, root, packages, *, max_age, log, salt=()):
        self.root = root
        self.packages = list(packages)
        self.salt = list(salt)
        self.max_age = max_age
        self.log = log
        self._fills = {}
        self._failed = {}

    async def get(self, python_version, fill, emit=lambda line: None):
        """The cache directory for ``python_version`` (e.g. ``"3.11.2"``), or None."""
        version = python_minor(python_version)
        if not self.packages or version is None:
            return None
        key = cache_key(version, self.packages, self.salt)
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed < RETRY_AFTER_FAILURE:
            return None
        current = await asyncio.to_thread(self._current, key)
        if current is not None:
            return current
        task = self._fills.get(key)
        if task is None:
            emit(f"Preparing the hub's cache of the Jupyter packages for Python {version}")
            task = asyncio.ensure_future(self._fill(key, version, fill))
            self._fills[key] = task
            task.add_done_callback(lambda _: self._fills.pop(key, None))
        try:
            return await asyncio.shield(task)
        except Exception as e:
            # never a failed build: it downloads what the cache would have held
            self._failed[key] = time.monotonic()
            self.log.warning("No Jupyter package cache for Python %s: %s", version, e)
            emit(
                "The hub's cache of the Jupyter packages is unavailable; this build downloads them"
            )
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

    async def _fill(self, key, version, fill):
        lock = await asyncio.to_thread(self._lock, key)
        try:
            # another process may have filled it while this one waited
            current = await asyncio.to_thread(self._current, key)
            if current is not None:
                return current
            partial = await asyncio.to_thread(self._partial_dir, key)
            try:
                started = time.monotonic()
                await fill(version, partial)
                final = await asyncio.to_thread(self._publish, key, partial)
                self.log.info(
                    "Prepared the Jupyter package cache for Python %s (%s) in %.1fs",
                    version,
                    " ".join(self.packages),
                    time.monotonic() - started,
                )
                return final
            finally:
                # rmtree never follows links
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

    def _publish(self, key, partial):
        """The filled (sealed) directory as the key's newest generation; older ones removed."""
        st = os.lstat(partial)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise RuntimeError(f"{partial} was not sealed")
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


def link_copy(seed, dest, uid):
    """``dest`` (new) as a build's own copy of the sealed uv cache ``seed``.

    Directories are created and, like the small files outside
    :data:`ARCHIVE_BUCKET` (uv's index and metadata files, which uv rewrites),
    copied as ``uid``'s own; the unpacked packages in :data:`ARCHIVE_BUCKET` are
    hard links to the seed's root-owned, read-only files (the build can
    remove them from its cache, not change them); symbolic links (uv's pointers
    into :data:`ARCHIVE_BUCKET`) are recreated; uv's lock files are left out.
    Root reads only ``seed``, which root sealed and no sandbox mounts, and
    writes only below ``dest``, which it creates.
    """
    files = 0

    def own(path):
        if uid is not None:
            os.chown(path, uid, uid, follow_symlinks=False)

    def walk(src, dst, in_archive):
        nonlocal files
        os.mkdir(dst, 0o755)
        own(dst)
        with os.scandir(src) as entries:
            for entry in entries:
                target = os.path.join(dst, entry.name)
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                    own(target)
                elif entry.is_dir(follow_symlinks=False):
                    walk(entry.path, target, in_archive or entry.name == ARCHIVE_BUCKET)
                elif not entry.is_file(follow_symlinks=False):
                    continue
                elif in_archive:
                    os.link(entry.path, target, follow_symlinks=False)
                    files += 1
                elif not entry.name.endswith(".lock"):
                    shutil.copyfile(entry.path, target, follow_symlinks=False)
                    own(target)

    walk(seed, dest, False)
    return files
