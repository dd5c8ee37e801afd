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

and its Conda buildpack (``conda/__init__.py``: ``environment_yaml_path``,
``python_version``, ``detect``): ``environment.yml`` (or ``.yaml``) makes the
repository a conda environment: its ``channels`` (``nodefaults`` drops the
site's default channels), its ``dependencies`` (conda match specs, plus one
``pip:`` list installed with pip, ``-r file`` lines relative to the file), the
Python version from the first ``python=X.Y`` dependency; ``name`` and
``prefix`` are ignored, and so are ``requirements.txt``, ``setup.py`` and the
Python of ``runtime.txt`` (repo2docker's Conda buildpack reads none of them).

Each file local mode cannot honour gets a decision (:data:`CONTAINER_ONLY_FILES`,
``apt.txt`` per the site's policy): a refusal naming the Kubernetes mode, or
(``apt.txt`` under the ``warn`` policy) a build without it and a warning that
lists what is left out. :func:`plan_build` is the one place these rules live;
the builder and ``jupyterhub-binder plan`` both call it.
"""

import hashlib
import os
import re
import reprlib
import stat
from dataclasses import dataclass, field

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10: tomli is tomllib's origin (setup.cfg requires it there)
    import tomli as tomllib

# Files whose presence means the repository needs a container build: their
# meaning in repo2docker (system packages, conda, R, Julia, Nix, a Dockerfile).
CONTAINER_ONLY_FILES = {
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

ENVIRONMENT_FILES = ("environment.yml", "environment.yaml")
#: what local mode does with ``apt.txt``: build without it and say so, or refuse
APT_POLICIES = ("warn", "refuse")
# repo2docker's PYTHON_REGEX (conda/__init__.py), anchored on the package name
PYTHON_PIN_RE = re.compile(r"^\s*python\s*(?:=+|\s)\s*(\d+(?:\.\d+)*)")
# channel names conda treats as "the defaults"
DEFAULTS = "defaults"
NODEFAULTS = "nodefaults"
MAX_SPECS = 1000
#: most ``pip:`` lines of one environment.yml (YAML aliases could repeat one list)
MAX_PIP_LINES = 1000

# A bounded picture of a YAML value for error messages: with aliases, a 1 KB
# file can hold a list nested ten deep whose full repr takes gigabytes.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 2
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 4
_SHORT_REPR.maxstring = 60
_SHORT_REPR.maxother = 60


class UnsupportedRepository(Exception):
    """The repository's configuration cannot be built in local mode."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


@dataclass
class CondaEnvironment:
    """An ``environment.yml``, read as repo2docker reads it."""

    #: the file, relative to the checkout
    path: str
    #: channels as the file names them, in order, without ``nodefaults``
    channels: list = field(default_factory=list)
    #: ``nodefaults`` is listed: the site's default channels are not added
    nodefaults: bool = False
    #: conda match specs
    specs: list = field(default_factory=list)
    #: the ``pip:`` lines (requirements, ``-r file`` relative to ``path``'s folder)
    pip: list = field(default_factory=list)
    #: sha256 of the file's bytes (the solve cache's key includes it)
    digest: str = ""


@dataclass
class BuildPlan:
    """What to install for one repository checkout (see the module docstring)."""

    binder_dir: str = ""
    python_version: str | None = None
    requirements: str | None = None
    install_repo: bool = False
    post_build: str | None = None
    start: str | None = None
    #: the conda environment, when the repository has an environment.yml
    conda: CondaEnvironment | None = None
    #: what the build leaves out, for the progress page
    warnings: list = field(default_factory=list)

    @property
    def kind(self):
        return "conda" if self.conda is not None else "python"


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
    if text is None:
        return False
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return False
    return "project" in data and "build-system" in data


def _kubernetes_refusal(what):
    return UnsupportedRepository(
        f"This repository needs {what}, which local mode cannot install. "
        "Launch it on a hub running Binder's Kubernetes mode (BinderSpawner), "
        "which builds a container image with repo2docker."
    )


def parse_apt(text):
    """The package names of an ``apt.txt`` (comments and blank lines skipped)."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def python_pin(specs):
    """``"X.Y"`` from the first ``python=X.Y[.Z]`` spec (repo2docker's rule), else None.

    A bare major (``python=3``) gives None: the solver picks the newest 3.x.
    """
    for spec in specs:
        m = PYTHON_PIN_RE.match(spec)
        if m:
            parts = m.group(1).split(".")
            return ".".join(parts[:2]) if len(parts) >= 2 else None
    return None


def parse_environment(text, path="environment.yml"):
    """An ``environment.yml``'s text -> :class:`CondaEnvironment`; raises UnsupportedRepository.

    Every error names the file and what to change.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise UnsupportedRepository(f"{path} is not valid YAML{where}: {problem}.") from None
    except RecursionError:
        raise UnsupportedRepository(f"{path} is nested too deeply to be read.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UnsupportedRepository(
            f"{path} should be a mapping with 'channels' and 'dependencies', "
            f"not a {type(data).__name__}."
        )
    env = CondaEnvironment(path=path, digest=hashlib.sha256(text.encode()).hexdigest())
    channels = data.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise UnsupportedRepository(f"{path}: 'channels' should be a list of channel names.")
    for channel in channels:
        channel = channel.strip()
        if channel == NODEFAULTS:
            env.nodefaults = True
        elif channel and channel not in env.channels:
            env.channels.append(channel)
    dependencies = data.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise UnsupportedRepository(f"{path}: 'dependencies' should be a list.")
    if len(dependencies) > MAX_SPECS:
        raise UnsupportedRepository(f"{path} lists more than {MAX_SPECS} dependencies.")
    for dep in dependencies:
        if isinstance(dep, (int, float)) and not isinstance(dep, bool):
            dep = str(dep)
        if isinstance(dep, str):
            spec = dep.strip()
            if not spec:
                continue
            _check_spec(spec, path)
            env.specs.append(spec)
        elif isinstance(dep, dict) and set(dep) == {"pip"}:
            lines = dep["pip"] or []
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise UnsupportedRepository(
                    f"{path}: the 'pip:' section should be a list of requirements."
                )
            env.pip.extend(x.strip() for x in lines if x.strip())
            if len(env.pip) > MAX_PIP_LINES:
                raise UnsupportedRepository(
                    f"{path} lists more than {MAX_PIP_LINES} lines under 'pip:'."
                )
        else:
            raise UnsupportedRepository(
                f"{path}: {_SHORT_REPR.repr(dep)} in 'dependencies' is neither a package "
                "spec nor a 'pip:' list."
            )
    # the pip: section is installed with uv, which needs no pip in the environment
    return env


def _check_spec(spec, path):
    """A conda match spec; rattler's parser says what is wrong with one."""
    try:
        from rattler import MatchSpec
    except ImportError:  # the plan without rattler: the build's solver checks it
        return
    try:
        MatchSpec(spec)
    except Exception as e:  # rattler raises its own InvalidMatchSpecError
        raise UnsupportedRepository(
            f"{path}: {spec[:80]!r} is not a conda package spec ({str(e)[:200]})."
        ) from None


def plan_build(repo_dir, apt_policy="warn"):
    """Read a checkout's configuration into a :class:`BuildPlan` (no subprocesses).

    ``apt_policy``: ``"warn"`` builds without ``apt.txt`` and warns, listing
    its packages; ``"refuse"`` refuses the repository.
    """
    binder_dir = find_binder_dir(repo_dir)

    def path(name):
        return os.path.join(binder_dir, name) if binder_dir else name

    for name, what in CONTAINER_ONLY_FILES.items():
        if _is_file(repo_dir, path(name)):
            raise _kubernetes_refusal(what)
    plan = BuildPlan(binder_dir=binder_dir)
    apt = _read_config(repo_dir, path("apt.txt"))
    if apt is not None:
        packages = parse_apt(apt)
        listed = ", ".join(packages[:30]) + (" ..." if len(packages) > 30 else "")
        if apt_policy == "refuse":
            raise _kubernetes_refusal(f"system packages from {path('apt.txt')} ({listed})")
        plan.warnings.append(
            f"{path('apt.txt')} is not installed: local mode cannot add system packages "
            f"({listed or 'none listed'}). Code that needs them will fail."
        )
    for name in ENVIRONMENT_FILES:
        text = _read_config(repo_dir, path(name))
        if text is not None:
            plan.conda = parse_environment(text, path(name))
            plan.python_version = python_pin(plan.conda.specs)
            if _is_file(repo_dir, path("requirements.txt")):
                plan.warnings.append(
                    f"{path('requirements.txt')} is not installed: with {path(name)}, "
                    "repo2docker installs only the conda environment (list the "
                    f"requirements under 'pip:' in {path(name)}, e.g. '- -r requirements.txt')."
                )
            runtime = _read_config(repo_dir, path("runtime.txt"))
            if runtime is not None:
                _, version = parse_runtime(runtime)
                if version:
                    plan.warnings.append(
                        f"{path('runtime.txt')} is ignored with {path(name)}: "
                        f"pin Python there instead (python={version})."
                    )
            break
    else:
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


def conda_channels(env, site_channels):
    """The channels to solve ``env`` with, in priority order.

    The file's channels come first; ``defaults`` means the site's channels
    (there is no Anaconda ``defaults`` here), which conda also appends after
    the file's own unless it lists ``nodefaults``.
    """
    channels = []
    for channel in env.channels:
        for name in site_channels if channel == DEFAULTS else [channel]:
            if name not in channels:
                channels.append(name)
    if not env.nodefaults:
        for name in site_channels:
            if name not in channels:
                channels.append(name)
    return channels


def describe(plan, site_channels=("conda-forge",), jupyter_packages=()):
    """The plan as ``jupyterhub-binder plan`` prints it (JSON-ready)."""
    steps = []
    if plan.conda is not None:
        env = plan.conda
        channels = conda_channels(env, list(site_channels))
        steps.append(
            f"solve {env.path} for this platform from {', '.join(channels) or 'no channel'}: "
            + " ".join(env.specs)
        )
        steps.append("install the conda packages into the environment's prefix")
        if env.pip:
            steps.append("uv pip install " + " ".join(env.pip))
    else:
        steps.append(f"create a Python {plan.python_version or '(default)'} environment")
        if plan.requirements:
            steps.append(f"uv pip install -r {plan.requirements}")
        if plan.install_repo:
            steps.append("uv pip install . (the repository is a Python package)")
    if jupyter_packages:
        steps.append("uv pip install " + " ".join(jupyter_packages))
    if plan.post_build:
        steps.append(f"run {plan.post_build}")
    if plan.start:
        steps.append(f"start the server through {plan.start}")
    return {
        "supported": True,
        "kind": plan.kind,
        "python": plan.python_version,
        "steps": steps,
        "warnings": list(plan.warnings),
    }


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
