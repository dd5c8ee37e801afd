"""What local mode builds for a repository checkout: pure rules, no subprocesses.

The rules follow repo2docker's Python buildpack (``repo2docker/buildpacks/base.py``
``binder_dir`` / ``binder_path`` / ``runtime``, ``python/__init__.py``
``_is_python_package``, repo2docker 2024.07):

- a ``binder/`` or ``.binder/`` folder takes precedence over the root (both is an error);
  when it exists, ``setup.py`` / ``pyproject.toml`` at the root are not installed;
- ``runtime.txt`` ``python-X.Y`` picks the interpreter;
- ``requirements.txt`` is installed, and the repository itself when it is a Python
  package (``setup.py``, or ``pyproject.toml`` with ``[project]`` and ``[build-system]``);
- ``postBuild`` runs once after installation, ``start`` wraps the server command.

Configuration that needs a container build is refused with a message naming
the Kubernetes mode.
"""

import hashlib
import os
import re
import stat
from dataclasses import dataclass

try:
    import tomllib
except ImportError:  # Python 3.10: pyproject.toml-only packages are not detected
    tomllib = None

# Files whose presence means the repository needs a container build: their
# meaning in repo2docker (system packages, conda, R, Julia, Nix, a Dockerfile).
CONTAINER_ONLY_FILES = {
    "apt.txt": "system packages (apt.txt)",
    "environment.yml": "a conda environment (environment.yml)",
    "Dockerfile": "a Dockerfile",
    "install.R": "R packages (install.R)",
    "DESCRIPTION": "an R package (DESCRIPTION)",
    "Project.toml": "Julia packages (Project.toml)",
    "REQUIRE": "Julia packages (REQUIRE)",
    "default.nix": "a Nix environment (default.nix)",
    "Pipfile": "a Pipfile",
}

MAX_CONFIG_FILE = 64 * 1024
PYTHON_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")


class UnsupportedRepository(Exception):
    """The repository's configuration cannot be built in local mode."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


@dataclass
class BuildPlan:
    """What to install for one repository checkout (see the module docstring)."""

    binder_dir: str = ""
    python_version: str | None = None
    requirements: str | None = None
    install_repo: bool = False
    post_build: str | None = None
    start: str | None = None


def _read_config(repo_dir, relpath):
    """Text of a small config file inside ``repo_dir``, or None.

    The checkout was written by the build uid: root opens each component
    relative to its parent's descriptor and follows no link at all, so a
    link (or a directory swapped for one) cannot make root read anything
    outside the checkout.
    """
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(repo_dir, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            child = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(MAX_CONFIG_FILE).decode("utf-8", "replace")


def _lstat_mode(repo_dir, relpath):
    try:
        return os.lstat(os.path.join(repo_dir, relpath)).st_mode
    except OSError:
        return 0


def _is_file(repo_dir, relpath):
    """A file or a link at ``relpath``; links are not followed (root never does here)."""
    mode = _lstat_mode(repo_dir, relpath)
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


def _is_dir(repo_dir, relpath):
    return stat.S_ISDIR(_lstat_mode(repo_dir, relpath))


def find_binder_dir(repo_dir):
    """``"binder"``, ``".binder"`` or ``""``, as repo2docker's ``BuildPack.binder_dir``."""
    has_binder = _is_dir(repo_dir, "binder")
    has_dot = _is_dir(repo_dir, ".binder")
    if has_binder and has_dot:
        raise UnsupportedRepository(
            "The repository has both a 'binder' and a '.binder' folder; keep only one."
        )
    return ".binder" if has_dot else "binder" if has_binder else ""


def parse_runtime(text):
    """``runtime.txt`` content -> ``(name, version)``; raises UnsupportedRepository."""
    value = text.strip()
    parts = value.split("-")
    if len(parts) not in (2, 4, 5) or not all(parts):
        raise UnsupportedRepository(
            f"runtime.txt should look like 'python-3.12', not {value[:40]!r}."
        )
    name = parts[0]
    version = parts[1] if len(parts) in (2, 5) else None
    if name != "python":
        raise UnsupportedRepository(
            f"runtime.txt asks for {name[:20]!r}, which needs a container build: "
            "launch it on a hub running Binder's Kubernetes mode (BinderSpawner)."
        )
    if version is not None and not PYTHON_VERSION_RE.match(version):
        raise UnsupportedRepository(
            f"runtime.txt names an invalid Python version {version[:20]!r}."
        )
    return name, version


def _is_python_package(repo_dir):
    if _is_file(repo_dir, "setup.py"):
        return True
    text = _read_config(repo_dir, "pyproject.toml")
    if text is None or tomllib is None:
        return False
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return "project" in data and "build-system" in data


def plan_build(repo_dir):
    """Read a checkout's configuration into a :class:`BuildPlan` (no subprocesses)."""
    binder_dir = find_binder_dir(repo_dir)

    def path(name):
        return os.path.join(binder_dir, name) if binder_dir else name

    for name, what in CONTAINER_ONLY_FILES.items():
        if _is_file(repo_dir, path(name)):
            raise UnsupportedRepository(
                f"This repository needs {what}, which local mode cannot install. "
                "Launch it on a hub running Binder's Kubernetes mode (BinderSpawner), "
                "which builds a container image with repo2docker."
            )
    plan = BuildPlan(binder_dir=binder_dir)
    runtime = _read_config(repo_dir, path("runtime.txt"))
    if runtime is not None:
        _, plan.python_version = parse_runtime(runtime)
    if _is_file(repo_dir, path("requirements.txt")):
        plan.requirements = path("requirements.txt")
    plan.install_repo = not binder_dir and _is_python_package(repo_dir)
    if _is_file(repo_dir, path("postBuild")):
        plan.post_build = path("postBuild")
    if _is_file(repo_dir, path("start")):
        plan.start = path("start")
    return plan


def version_tuple(version):
    m = PYTHON_VERSION_RE.match(version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def nearest_python(requested, available):
    """The best of ``available`` (``"X.Y[.Z]"`` strings) for ``requested`` (``"X.Y"`` or None).

    Same minor version first; otherwise the nearest minor of the same major,
    newer preferred on a tie; otherwise the newest. None when nothing is available.
    """
    versions = sorted(
        {v for v in available if version_tuple(v)}, key=lambda v: version_tuple(v), reverse=True
    )
    if not versions:
        return None
    want = version_tuple(requested) if requested else None
    if want is None:
        return versions[0]
    same_major = [v for v in versions if version_tuple(v)[0] == want[0]]
    if not same_major:
        return versions[0]
    return min(same_major, key=lambda v: (abs(version_tuple(v)[1] - want[1]), -version_tuple(v)[1]))


def environment_key(repo_url, commit, salt=""):
    """Directory name of the environment for (repository, commit): readable and collision-free."""
    slug = re.sub(r"[^a-z0-9]+", "-", repo_url.lower().split("://", 1)[-1]).strip("-")[-40:]
    digest = hashlib.sha256(f"{repo_url}\n{commit}\n{salt}".encode()).hexdigest()[:16]
    return f"{slug.strip('-')}-{commit[:12]}-{digest}"


def select_evictions(entries, budget, keep=()):
    """Keys to delete so that the total size fits ``budget``, least recently used first.

    ``entries``: ``(key, size, last_used)`` tuples; ``keep``: keys never evicted.
    """
    total = sum(size for _, size, _ in entries)
    evict = []
    for key, size, _ in sorted(entries, key=lambda e: e[2]):
        if total <= budget:
            break
        if key in keep:
            continue
        evict.append(key)
        total -= size
    return evict
