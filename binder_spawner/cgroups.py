"""Kernel limits for local mode: one cgroup per server and per build, v1 or v2.

A local-mode server gets what a pod gets from its container runtime: a memory
limit that counts every process and every tmpfs page it writes (``/tmp``,
``/dev/shm``, its home), a memory guarantee, and a process count limit.

- **cgroup v2** (unified hierarchy, ``/sys/fs/cgroup/cgroup.controllers``;
  most current distributions): ``memory.max``, ``memory.swap.max = 0``,
  ``memory.low`` (the guarantee), ``memory.oom.group = 1`` (an OOM kill takes
  the whole server, as the kubelet does with a container), ``pids.max``.
  Controllers must be enabled in the parent's ``cgroup.subtree_control``; a
  non-root cgroup that holds processes cannot do that ("no internal
  processes"), so the hub's processes move into a ``hub`` leaf first, as
  systemd's ``Delegate=yes`` services do.
- **cgroup v1** (``/sys/fs/cgroup/memory`` and ``/sys/fs/cgroup/pids``):
  ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` (no swap beyond
  the limit, where swap accounting exists), ``memory.soft_limit_in_bytes`` (the
  guarantee), ``pids.max``. v1 kills one process on OOM; the spawner stops the
  rest (:meth:`Cgroup.oom_kills`).

Cgroups are created below the hub's own cgroup of each hierarchy (read from
``/proc/self/cgroup``), in a ``jupyterhub-binder`` subtree, so limits of a
container or service around the hub still apply. Only root-created paths
under ``/sys/fs/cgroup`` are touched; nothing here reads a path a sandbox
could write. Processes join a cgroup by writing their own pid into
``cgroup.procs`` before they exec the sandbox (:mod:`binder_spawner.sandbox_exec`).
"""

import contextlib
import errno
import os
import re
import signal
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
SUBTREE = "jupyterhub-binder"
V1_CONTROLLERS = ("memory", "pids")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")


class CgroupError(Exception):
    """A cgroup could not be created or configured."""


@dataclass(frozen=True)
class Limits:
    """What one server or build may use: bytes of memory (limit, guarantee) and processes."""

    memory_max: int = 0
    memory_guarantee: int = 0
    pids_max: int = 0


def cgroup_name(*parts):
    """A cgroup directory name from free-form parts (user names, keys): safe, bounded."""
    name = "-".join(_NAME_RE.sub("_", str(p)) for p in parts if p != "")
    return name.strip(".")[:200] or "_"


def parse_proc_cgroup(text):
    """``/proc/PID/cgroup`` -> ``{controller: path}``; the v2 entry is under ``""``."""
    found = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            found[""] = path
        for controller in controllers.split(","):
            if controller:
                found[controller] = path
    return found


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def _read(path):
    with open(path) as f:
        return f.read()


def _events(text):
    """``key value`` lines (``memory.events``, ``memory.oom_control``) -> dict of ints."""
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            found[key] = int(value)
    return found


class Cgroup:
    """One server's or build's cgroup: the directories of each hierarchy it lives in."""

    def __init__(self, version, dirs):
        self.version = version
        #: {controller: directory} for v1; {"": directory} for v2
        self.dirs = dict(dirs)

    @property
    def procs_files(self):
        """The ``cgroup.procs`` files a process writes its pid into to join."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def _dir(self, controller):
        return self.dirs["" if self.version == 2 else controller]

    def pids(self):
        found = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in _read(path).split())
        return found

    def oom_kills(self):
        """How many processes the kernel killed for exceeding the memory limit."""
        if self.version == 2:
            name = "memory.events"
        else:
            name = "memory.oom_control"
        try:
            return _events(_read(os.path.join(self._dir("memory"), name))).get("oom_kill", 0)
        except OSError:
            return 0

    def memory_peak(self):
        """The highest memory use seen, in bytes (0 when the kernel does not say)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(os.path.join(self._dir("memory"), name)).split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def kill(self, attempts=100):
        """SIGKILL every process in the cgroup; True when none is left.

        Forks are stopped first (``pids.max`` 0), so a fork bomb cannot outrun
        the loop; v2's ``cgroup.kill`` does it in one write where the kernel has it.
        """
        with contextlib.suppress(OSError):
            _write(os.path.join(self._dir("pids"), "pids.max"), 0)
        if self.version == 2:
            with contextlib.suppress(OSError):
                _write(os.path.join(self._dir(""), "cgroup.kill"), 1)
        for _ in range(attempts):
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            # killed processes leave cgroup.procs once the kernel reaped them
            os.sched_yield()
        return not self.pids()

    def remove(self):
        """Kill what is left and delete the cgroup's directories (idempotent)."""
        self.kill()
        for path in self.dirs.values():
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    self.kill()


class CgroupHost:
    """The cgroup hierarchy of this machine, and the subtree local mode creates cgroups in."""

    def __init__(self, version, parents):
        self.version = version
        #: where new cgroups go: {controller: dir} (v1) or {"": dir} (v2)
        self.parents = dict(parents)

    def describe(self):
        return f"cgroup v{self.version} ({', '.join(sorted(set(self.parents.values())))})"

    def _dirs(self, name):
        return {c: os.path.join(p, cgroup_name(name)) for c, p in self.parents.items()}

    def cgroup(self, name):
        """The cgroup ``name`` (it may or may not exist): to find or remove one after a restart."""
        return Cgroup(self.version, self._dirs(name))

    def create(self, name, limits):
        """A fresh cgroup ``name`` with ``limits``; one left from an earlier run is replaced."""
        group = self.cgroup(name)
        if any(os.path.isdir(d) for d in group.dirs.values()):
            group.remove()
        try:
            for path in group.dirs.values():
                os.mkdir(path, 0o755)
            if self.version == 2:
                self._limit_v2(group.dirs[""], limits)
            else:
                self._limit_v1(group.dirs, limits)
        except OSError as e:
            with contextlib.suppress(OSError):
                group.remove()
            raise CgroupError(f"Could not set up cgroup {name}: {e}") from e
        return group

    @staticmethod
    def _limit_v2(path, limits):
        if limits.memory_max:
            _write(os.path.join(path, "memory.max"), limits.memory_max)
            with contextlib.suppress(FileNotFoundError):
                _write(os.path.join(path, "memory.swap.max"), 0)
            with contextlib.suppress(FileNotFoundError):
                _write(os.path.join(path, "memory.oom.group"), 1)
        if limits.memory_guarantee:
            _write(os.path.join(path, "memory.low"), limits.memory_guarantee)
        if limits.pids_max:
            _write(os.path.join(path, "pids.max"), limits.pids_max)

    @staticmethod
    def _limit_v1(dirs, limits):
        memory = dirs["memory"]
        if limits.memory_max:
            _write(os.path.join(memory, "memory.limit_in_bytes"), limits.memory_max)
            # memsw >= limit: written after it; absent without swap accounting
            with contextlib.suppress(FileNotFoundError):
                _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), limits.memory_max)
        if limits.memory_guarantee:
            _write(os.path.join(memory, "memory.soft_limit_in_bytes"), limits.memory_guarantee)
        if limits.pids_max:
            _write(os.path.join(dirs["pids"], "pids.max"), limits.pids_max)


def _own_cgroups(proc_self_cgroup):
    try:
        return parse_proc_cgroup(_read(proc_self_cgroup))
    except OSError:
        return {}


def _enable_v2_controllers(hub_dir, parent):
    """Make ``parent`` (a child of ``hub_dir``) able to limit memory and pids in its children."""
    wanted = {"memory", "pids"}
    available = set(_read(os.path.join(hub_dir, "cgroup.controllers")).split())
    if not wanted <= available:
        raise CgroupError(
            f"the memory and pids controllers are not delegated to {hub_dir} "
            f"(available: {' '.join(sorted(available)) or 'none'})"
        )
    try:
        _write(os.path.join(hub_dir, "cgroup.subtree_control"), "+memory +pids")
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        # "no internal processes": the hub's cgroup holds processes (the hub,
        # the proxy); move them into a leaf of their own, then enable
        leaf = os.path.join(hub_dir, "hub")
        os.makedirs(leaf, exist_ok=True)
        for pid in _read(os.path.join(hub_dir, "cgroup.procs")).split():
            with contextlib.suppress(ProcessLookupError, OSError):
                _write(os.path.join(leaf, "cgroup.procs"), pid)
        _write(os.path.join(hub_dir, "cgroup.subtree_control"), "+memory +pids")
    os.makedirs(parent, mode=0o755, exist_ok=True)
    _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")


def detect(root=CGROUP_ROOT, proc_self_cgroup="/proc/self/cgroup", parent=None):
    """The usable :class:`CgroupHost` of this machine, or raise :class:`CgroupError` saying why.

    ``parent``: a cgroup path (relative to the hierarchy root) to create
    cgroups under instead of the hub's own, e.g. one delegated by systemd.
    """
    if os.geteuid() != 0:
        raise CgroupError("the hub does not run as root")
    own = _own_cgroups(proc_self_cgroup)
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        base = parent if parent is not None else own.get("", "/")
        hub_dir = os.path.join(root, base.strip("/"))
        target = os.path.join(hub_dir, SUBTREE)
        try:
            _enable_v2_controllers(hub_dir.rstrip("/"), target)
        except OSError as e:
            raise CgroupError(f"cannot use cgroup v2 at {hub_dir}: {e}") from e
        return CgroupHost(2, {"": target})
    parents = {}
    for controller in V1_CONTROLLERS:
        mount = os.path.join(root, controller)
        if not os.path.exists(os.path.join(mount, "cgroup.procs")):
            raise CgroupError(f"no cgroup v1 {controller} hierarchy at {mount}")
        base = parent if parent is not None else own.get(controller, "/")
        target = os.path.join(mount, base.strip("/"), SUBTREE)
        try:
            os.makedirs(target, mode=0o755, exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot create {target}: {e}") from e
        parents[controller] = target
    return CgroupHost(1, parents)
