"""The local-mode sandbox: run a command as an unprivileged uid inside bubblewrap, with limits.

Every build step and every user server of local mode runs through
:meth:`Sandbox.command`, which wraps it as::

    /hub/python -I -S sandbox_exec.py SPEC --      (joins the cgroup, sets rlimits,
                                                     drops to uid U, no_new_privs)
      /usr/bin/bwrap --unshare-all --unshare-user --disable-userns --share-net
              --die-with-parent --new-session --cap-drop ALL --seccomp 3
              --ro-bind /usr /usr ...   (system paths, read-only)
              --ro-bind ENV ENV         (the one environment it needs, read-only)
              --proc /proc --dev /dev   (/dev and / remounted read-only)
              --size S --tmpfs /tmp, /run, /dev/shm, and the home
              -- COMMAND

Inside, the process sees the system's programs and libraries, its own
environment and its own home, and nothing else: the hub's directory, database
and cookie secret, other users' homes and other environments are not mounted.
Its pid, IPC, UTS, cgroup and user namespaces are private and it cannot make
new user namespaces; the network is shared, because the server must reach
the hub and the proxy on loopback.

Every program is started by the absolute path resolved once here from a
trusted ``PATH`` (:data:`TRUSTED_PATH`), never the child's: a repository's
environment ``bin/`` cannot stand in for a helper that root runs. Memory
(every process and every tmpfs page), the memory guarantee and the process
count are the kernel's, through a cgroup per server and per build
(:mod:`binder_spawner.cgroups`). The threat model is in the README.
"""

import fcntl
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from jupyterhub.traitlets import ByteSpecification
from traitlets import Bool, Integer, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import TraitError

from . import cgroups, seccomp, tcptable

# Where a sandboxed server finds its home. repo2docker images use /home/jovyan,
# and notebooks written for Binder sometimes hard-code it.
SANDBOX_HOME = "/home/jovyan"

# Read-only system paths a Python environment needs (merged-/usr symlinks are
# recreated as symlinks). /etc is world-readable on the host anyway; it gives
# DNS, certificates, locale and the dynamic loader cache.
DEFAULT_SYSTEM_PATHS = ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]

# Where root looks for the programs it runs: system directories only, never
# an environment's bin/ or the hub's working directory.
TRUSTED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

LAUNCHER = str(Path(__file__).with_name("sandbox_exec.py"))


class SandboxUnavailable(Exception):
    """Local mode cannot confine servers as configured on this host; the message says why."""


def trusted_which(name, path=TRUSTED_PATH):
    """Absolute path of ``name`` in the trusted system directories, or None.

    A program is only taken from a root-owned file not writable by others, so
    a helper that root executes cannot be a file a sandbox uid could write.
    """
    for directory in path.split(":"):
        candidate = os.path.join(directory, name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if os.access(candidate, os.X_OK) and st.st_uid == 0 and not st.st_mode & 0o022:
            return candidate
    return None


def listening_uids(port, net_dir="/proc/net"):
    """The uids owning a TCP socket that listens on ``port`` (any address) on this host.

    The sandboxes share the host's network: any of them can listen on a
    loopback port before the program meant to, and answer in its place.
    """
    return {
        uid
        for (_, local_port), _, state, uid in tcptable.sockets(tcptable.read_tables(net_dir))
        if state == tcptable.LISTEN and local_port == port
    }


def _system_binds(paths):
    args = []
    for path in paths:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def sandbox_command(
    argv,
    *,
    bwrap,
    uid=None,
    cgroup_procs=(),
    rlimits=None,
    seccomp_program=None,
    disable_userns=True,
    system_paths=(),
    ro_binds=(),
    rw_binds=(),
    tmpfs_size=0,
    home=None,
    home_size=0,
    chdir=None,
    python=sys.executable,
    launcher=LAUNCHER,
):
    """The full command line that runs ``argv`` sandboxed (pure; no I/O but symlink checks).

    ``ro_binds`` / ``rw_binds`` are ``(source, destination)`` pairs; ``home``
    a path that gets an empty tmpfs of ``home_size`` bytes (owned by the
    sandbox's uid); ``uid`` None means "stay the current uid" (the hub is not
    root). Every program is an absolute path.
    """
    if not os.path.isabs(bwrap) or not os.path.isabs(argv[0]):
        raise ValueError(f"sandboxed programs need absolute paths: {bwrap!r}, {argv[0]!r}")
    spec = {"cgroups": list(cgroup_procs), "rlimits": dict(rlimits or {}), "uid": uid}
    if seccomp_program:
        spec["seccomp"] = seccomp_program.hex()
    cmd = [python, "-I", "-S", launcher, json.dumps(spec, separators=(",", ":")), "--"]
    cmd += [
        bwrap,
        "--unshare-all",
        "--share-net",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "binder",
    ]
    if disable_userns:
        cmd += ["--unshare-user", "--disable-userns"]
    if seccomp_program:
        cmd += ["--seccomp", "3"]
    cmd += _system_binds(system_paths)
    size = ["--size", str(int(tmpfs_size))] if tmpfs_size else []
    # fresh /proc, /dev, /tmp first: binds below may live under /tmp
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    cmd += [*size, "--tmpfs", "/dev/shm", *size, "--tmpfs", "/tmp", *size, "--tmpfs", "/run"]
    for source, dest in ro_binds:
        cmd += ["--ro-bind", str(source), str(dest)]
    for source, dest in rw_binds:
        cmd += ["--bind", str(source), str(dest)]
    if home:
        cmd += ["--size", str(int(home_size))] if home_size else []
        cmd += ["--perms", "0700", "--tmpfs", str(home)]
    # the sandbox's own / and /dev are tmpfs too: nothing may be written there
    cmd += ["--remount-ro", "/dev", "--remount-ro", "/"]
    if chdir:
        cmd += ["--chdir", str(chdir)]
    cmd += ["--", *argv]
    return cmd


def _searchable_by_others(path):
    """True when every directory above ``path`` lets an unrelated uid pass (o+x)."""
    path = Path(path).resolve()
    for parent in [path, *path.parents]:
        if parent.exists() and not (parent.stat().st_mode & 0o001):
            return False
    return True


@lru_cache(maxsize=8)
def _bwrap_features(bwrap):
    out = subprocess.run(
        [bwrap, "--help"], capture_output=True, text=True, timeout=10, env={}
    ).stdout
    return frozenset(flag for flag in ("--disable-userns", "--seccomp", "--size") if flag in out)


_CGROUP_HOSTS = {}

# Where a root hub claims its sandbox uid range: root-only, not reachable by any sandbox.
UID_CLAIM_DIR = "/run/jupyterhub-binder"
# uid_base -> open, locked file descriptor, held for the life of the hub process
_UID_CLAIMS = {}


class Sandbox(LoggingConfigurable):
    """How local mode confines build steps and user servers (bubblewrap, cgroups, rlimits)."""

    bwrap_path = Unicode(
        help="""
        The bubblewrap executable (Debian package ``bubblewrap``), an absolute path.

        Default: ``bwrap`` in the system directories (``/usr/bin/bwrap``), never
        looked up on the hub's or a server's ``PATH``.
        Example: ``c.Sandbox.bwrap_path = "/usr/local/bin/bwrap"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("bwrap_path")
    def _default_bwrap_path(self):
        return trusted_which("bwrap") or "/usr/bin/bwrap"

    @validate("bwrap_path")
    def _validate_bwrap_path(self, proposal):
        if not os.path.isabs(proposal.value):
            raise TraitError(f"Sandbox.bwrap_path must be an absolute path, got {proposal.value!r}")
        return proposal.value

    memory_limit = ByteSpecification(
        2 * 1024**3,
        help="""
        Memory one server may use, all its processes and tmpfs files together, in bytes.

        Enforced by the kernel through the server's cgroup, like a pod's memory
        limit: over it, the kernel kills the server and the user is told why.
        Without cgroups (``require_cgroups = False``) it becomes a per-process
        address-space limit (RLIMIT_AS). Accepts suffixes: ``"2G"``, ``"512M"``.
        Default 2 GB, as mybinder.org. 0 disables the limit.
        Example: ``c.Sandbox.memory_limit = "4G"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    memory_guarantee = ByteSpecification(
        1024**3,
        help="""
        Memory protected for each server when the host runs short, in bytes.

        The cgroup's ``memory.low`` (v2) or ``memory.soft_limit_in_bytes`` (v1):
        the kernel reclaims from servers above their guarantee first. Default
        1 GB, as mybinder.org's memory guarantee.
        Example: ``c.Sandbox.memory_guarantee = "512M"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_memory_limit = ByteSpecification(
        4 * 1024**3,
        help="""
        Memory one build may use (every step, with its tmpfs files), in bytes.

        Default 4 GB: installing large packages and ``postBuild`` steps such as
        ``jupyter lab build`` need more than a server.
        Example: ``c.Sandbox.build_memory_limit = "8G"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    process_limit = Integer(
        512,
        help="""
        Maximum number of processes and threads of one server or build.

        The cgroup's ``pids.max``, and RLIMIT_NPROC of its uid. Default 512;
        0 disables the limit.
        Example: ``c.Sandbox.process_limit = 256``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    home_size = ByteSpecification(
        help="""
        Size of a server's home, in bytes: a tmpfs filled with the repository at start.

        Its files count against ``memory_limit`` like any tmpfs of the server.
        A repository whose files (without ``.git`` and files over
        ``EnvironmentBuilder.home_max_file``) exceed it is refused with a
        message. Default: ``memory_limit``.
        Example: ``c.Sandbox.home_size = "1G"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("home_size")
    def _default_home_size(self):
        return self.memory_limit

    tmpfs_size = ByteSpecification(
        help="""
        Size of each of a sandbox's ``/tmp``, ``/run`` and ``/dev/shm``, in bytes.

        Their files count against the memory limit of the server or build as
        well. Default: ``memory_limit``.
        Example: ``c.Sandbox.tmpfs_size = "512M"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("tmpfs_size")
    def _default_tmpfs_size(self):
        return self.memory_limit

    require_cgroups = Bool(
        True,
        help="""
        Refuse to run local mode as root when no cgroup can enforce the limits.

        Without cgroups, memory is limited per process (address space) only: a
        server can use its process limit times ``memory_limit``, and its tmpfs
        files up to four times ``tmpfs_size``, of the host's memory. Set to
        False to accept that (a single-user machine, a trusted audience).
        Default True.
        Example: ``c.Sandbox.require_cgroups = False``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    cgroup_root = Unicode(
        cgroups.CGROUP_ROOT,
        help="""
        Where the cgroup file systems are mounted. Default ``/sys/fs/cgroup``.

        Example: ``c.Sandbox.cgroup_root = "/sys/fs/cgroup"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    cgroup_parent = Unicode(
        None,
        allow_none=True,
        help="""
        The cgroup (path inside the hierarchy) below which servers' cgroups are made.

        Default: the hub's own cgroup (from ``/proc/self/cgroup``); on cgroup v2
        the hub's processes then move into a ``hub`` leaf so that the memory
        and pids controllers can be delegated. Set it to a cgroup delegated to
        the hub, e.g. by systemd's ``Delegate=yes``.
        Example: ``c.Sandbox.cgroup_parent = "/system.slice/jupyterhub.service"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    seccomp = Bool(
        True,
        help="""
        Load a seccomp filter in every sandbox (:mod:`binder_spawner.seccomp`).

        It refuses kernel interfaces a notebook does not need (keyrings, BPF,
        io_uring, the mount API, perf events, ...). Default True.
        Example: ``c.Sandbox.seccomp = False``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    uid_base = Integer(
        2_000_000,
        help="""
        First uid of the range the sandbox uses when the hub runs as root.

        Builds run as ``uid_base``; the server of hub user id N runs as
        ``uid_base + 1 + N``. Choose a range no account on the machine uses.
        Default 2000000.
        Example: ``c.Sandbox.uid_base = 500000``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("uid_base")
    def _validate_uid_base(self, proposal):
        if proposal.value < 1000:
            raise TraitError(
                f"Sandbox.uid_base must be at least 1000 (an unprivileged range), got {proposal.value}"
            )
        return proposal.value

    system_paths = List(
        Unicode(),
        help="""
        Host paths mounted read-only in every sandbox (system programs and libraries).

        Default: ``/usr``, ``/etc``, and the ``/bin``, ``/lib*`` entries (symlinks
        on merged-/usr systems are recreated as symlinks). Never list the hub's
        directory or ``/home`` here.
        Example: ``c.Sandbox.system_paths = ["/usr", "/etc", "/opt/python"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("system_paths")
    def _default_system_paths(self):
        return list(DEFAULT_SYSTEM_PATHS)

    @property
    def switches_uid(self):
        """True when sandboxes get uids of their own (the hub is root)."""
        return os.geteuid() == 0

    def build_uid(self):
        return self.uid_base if self.switches_uid else None

    def server_uid(self, user_id):
        return self.uid_base + 1 + int(user_id) if self.switches_uid else None

    # -- start-up checks ------------------------------------------------------------

    def preflight(self):
        """Check once that this host can confine servers as configured; log what is enforced.

        Returns the cgroup host (None without cgroups); raises
        :class:`SandboxUnavailable` with a message for the admin.
        """
        key = (self.cgroup_root, self.cgroup_parent, self.require_cgroups)
        if key in _CGROUP_HOSTS:
            return _CGROUP_HOSTS[key]
        if not os.path.isfile(self.bwrap_path):
            raise SandboxUnavailable(
                f"bubblewrap is not installed ({self.bwrap_path} does not exist): "
                "install the 'bubblewrap' package, or set c.Sandbox.bwrap_path."
            )
        host = None
        reason = ""
        if self.switches_uid:
            try:
                host = cgroups.detect(root=self.cgroup_root, parent=self.cgroup_parent)
            except cgroups.CgroupError as e:
                reason = str(e)
                if self.require_cgroups:
                    raise SandboxUnavailable(
                        f"Local mode runs as root but cannot use cgroups ({reason}), so it "
                        "cannot limit the memory and processes of a server as a whole. "
                        "Fix the cgroup set-up, or set c.Sandbox.require_cgroups = False to "
                        "run anyway: each process is then limited to memory_limit of address "
                        "space, and a server's processes together are not."
                    ) from None
        else:
            reason = "the hub does not run as root"
        _CGROUP_HOSTS[key] = host
        self.log.info("Local mode limits on this host: %s", self.describe_limits(host, reason))
        return host

    def describe_limits(self, host, reason=""):
        gb = 1024**3
        features = _bwrap_features(self.bwrap_path)
        parts = []
        if host is not None:
            parts.append(
                f"memory {self.memory_limit / gb:.3g} GB per server (builds "
                f"{self.build_memory_limit / gb:.3g} GB), guarantee "
                f"{self.memory_guarantee / gb:.3g} GB, {self.process_limit} processes, "
                f"all tmpfs files counted, enforced by {host.describe()}"
            )
        else:
            parts.append(
                f"NO cgroup ({reason}): memory {self.memory_limit / gb:.3g} GB of address "
                f"space per process, {self.process_limit} processes per uid (rlimits only)"
            )
        parts.append(
            f"tmpfs /tmp, /run, /dev/shm {self.tmpfs_size / gb:.3g} GB each, "
            f"home {self.home_size / gb:.3g} GB"
        )
        parts.append(
            "new user namespaces "
            + ("refused" if "--disable-userns" in features else "allowed (bwrap < 0.8)")
        )
        program = self.seccomp and seccomp.filter_program()
        parts.append("seccomp filter " + ("on" if program else "off"))
        parts.append("uids switched" if self.switches_uid else "one uid (the hub is not root)")
        return "; ".join(parts)

    def claim_uids(self, claim_dir=UID_CLAIM_DIR):
        """Hold this hub's sandbox uid range for as long as the hub process runs.

        Two root hubs on one machine with the same ``uid_base`` would run the
        servers of their users 1, 2, ... as the same uids, so one hub's visitor
        could signal or read what the other's runs as that uid. The claim is an
        exclusive ``flock`` on ``<claim_dir>/uids-<uid_base>.lock`` (a root-only
        directory), released by the kernel when the hub exits, however it exits.
        Raises :class:`SandboxUnavailable` when another process holds it.
        """
        if not self.switches_uid or self.uid_base in _UID_CLAIMS:
            return
        os.makedirs(claim_dir, mode=0o700, exist_ok=True)
        dir_fd = os.open(claim_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            st = os.fstat(dir_fd)
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise SandboxUnavailable(
                    f"{claim_dir} must be a directory owned by root and writable by root only"
                )
            fd = os.open(
                f"uids-{self.uid_base}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        finally:
            os.close(dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SandboxUnavailable(
                f"Another hub on this machine runs its sandboxes as the uids from "
                f"{self.uid_base} (c.Sandbox.uid_base); sharing them, its visitors and this "
                "hub's could reach each other's servers. Give this hub a range of its own, "
                "at least 1000000 away: BINDER_UID_BASE with jupyterhub_config.py, or "
                "c.Sandbox.uid_base."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _UID_CLAIMS[self.uid_base] = fd

    def check_reachable(self, path):
        """Raise :class:`SandboxUnavailable` when a sandbox uid could not reach ``path``."""
        if self.switches_uid and not _searchable_by_others(path):
            raise SandboxUnavailable(
                f"{path} must be reachable by the sandbox uids: make its parent directories "
                "searchable by others (chmod o+x), or choose another directory "
                "(BINDER_STATE_DIR, c.EnvironmentBuilder.envs_dir)."
            )

    # -- cgroups ------------------------------------------------------------------

    def create_cgroup(self, name, *, build=False):
        """A fresh cgroup for a server (or a build) with its limits; None without cgroups."""
        host = self.preflight()
        if host is None:
            return None
        limits = cgroups.Limits(
            memory_max=self.build_memory_limit if build else self.memory_limit,
            memory_guarantee=0 if build else self.memory_guarantee,
            pids_max=self.process_limit,
        )
        return host.create(name, limits)

    def existing_cgroup(self, name):
        host = self.preflight()
        return host.cgroup(name) if host is not None else None

    # -- commands -----------------------------------------------------------------

    def command(
        self,
        argv,
        *,
        uid,
        cgroup=None,
        ro_binds=(),
        rw_binds=(),
        home=None,
        chdir=None,
        extra_ro_paths=(),
        build=False,
    ):
        """``argv`` wrapped to run sandboxed as ``uid`` in ``cgroup`` with the given mounts."""
        features = _bwrap_features(self.bwrap_path)
        rlimits = {"core": 0}
        if self.process_limit:
            rlimits["nproc"] = self.process_limit
        memory = self.build_memory_limit if build else self.memory_limit
        if cgroup is None and memory:
            # no cgroup: the per-process address space is all the kernel enforces
            rlimits["as"] = memory
        program = seccomp.filter_program() if self.seccomp and "--seccomp" in features else None
        return sandbox_command(
            argv,
            bwrap=self.bwrap_path,
            uid=uid,
            cgroup_procs=cgroup.procs_files if cgroup is not None else (),
            rlimits=rlimits,
            seccomp_program=program,
            disable_userns="--disable-userns" in features,
            system_paths=self.system_paths,
            ro_binds=[*((p, p) for p in extra_ro_paths), *ro_binds],
            rw_binds=rw_binds,
            tmpfs_size=min(self.tmpfs_size, memory) if memory else self.tmpfs_size,
            home=home,
            home_size=self.home_size,
            chdir=chdir,
        )
