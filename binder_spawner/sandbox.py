"""The local-mode sandbox: run a command as an unprivileged uid inside bubblewrap.

Every build step and every user server of local mode runs through
:meth:`Sandbox.command`, which wraps it as::

    setpriv --reuid U --regid U --clear-groups --no-new-privs --   (only when the hub is root)
      prlimit --as=MEM --nproc=N --core=0 --
        bwrap --unshare-all --share-net --die-with-parent --new-session --cap-drop ALL
              --ro-bind /usr /usr ... (system paths, read-only)
              --ro-bind ENV ENV      (the one environment it needs, read-only)
              --bind HOME /home/jovyan
              --proc /proc --dev /dev --tmpfs /tmp
              -- COMMAND

Inside, the process sees the system's programs and libraries, its own
environment and its own home, and nothing else: the hub's directory, database
and cookie secret, other users' homes and other environments are not mounted.
Its pid, IPC, UTS and user namespaces are private; the network is shared,
because the server must reach the hub and the proxy on loopback.

``bwrap`` runs unprivileged (it is not setuid on Debian): it relies on
unprivileged user namespaces, so the uid outside the sandbox is the one
``setpriv`` switched to. When the hub itself is not root, there is no uid to
switch to and the server runs as the hub's uid; the mount namespace still
hides the hub's files. The threat model is in the README.
"""

import os
import shutil
from pathlib import Path

from jupyterhub.traitlets import ByteSpecification
from traitlets import Integer, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import TraitError

# Where a sandboxed server finds its home. repo2docker images use /home/jovyan,
# and notebooks written for Binder sometimes hard-code it.
SANDBOX_HOME = "/home/jovyan"

# Read-only system paths a Python environment needs (merged-/usr symlinks are
# recreated as symlinks). /etc is world-readable on the host anyway; it gives
# DNS, certificates, locale and the dynamic loader cache.
DEFAULT_SYSTEM_PATHS = ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]


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
    memory_limit=0,
    process_limit=0,
    system_paths=(),
    ro_binds=(),
    rw_binds=(),
    chdir=None,
    setpriv="setpriv",
    prlimit="prlimit",
):
    """The full command line that runs ``argv`` sandboxed (pure; no I/O but symlink checks).

    ``ro_binds`` / ``rw_binds`` are ``(source, destination)`` pairs; ``uid``
    None means "stay the current uid" (the hub is not root).
    """
    cmd = []
    if uid is not None:
        cmd += [
            setpriv,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--no-new-privs",
            "--",
        ]
    limits = ["--core=0"]
    if memory_limit:
        limits.append(f"--as={int(memory_limit)}")
    if process_limit:
        limits.append(f"--nproc={int(process_limit)}")
    cmd += [prlimit, *limits, "--"]
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
    cmd += _system_binds(system_paths)
    # fresh /proc, /dev, /tmp first: binds below may live under /tmp
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    for source, dest in ro_binds:
        cmd += ["--ro-bind", str(source), str(dest)]
    for source, dest in rw_binds:
        cmd += ["--bind", str(source), str(dest)]
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


class Sandbox(LoggingConfigurable):
    """How local mode confines build steps and user servers (bubblewrap + rlimits)."""

    bwrap_path = Unicode(
        help="""
        The bubblewrap executable (Debian package ``bubblewrap``).

        Default: ``bwrap`` found on PATH, else ``/usr/bin/bwrap``.
        Example: ``c.Sandbox.bwrap_path = "/usr/local/bin/bwrap"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("bwrap_path")
    def _default_bwrap_path(self):
        return shutil.which("bwrap") or "/usr/bin/bwrap"

    memory_limit = ByteSpecification(
        2 * 1024**3,
        help="""
        Address-space limit (RLIMIT_AS) of every process in a server or build, in bytes.

        Accepts suffixes: ``"2G"``, ``"512M"``. Default 2 GB, as mybinder.org's
        memory limit. 0 disables the limit.
        Example: ``c.Sandbox.memory_limit = "4G"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    process_limit = Integer(
        512,
        help="""
        Maximum number of processes and threads (RLIMIT_NPROC) of one sandbox uid.

        Only meaningful when the hub runs as root, so that each server has a uid
        of its own. Default 512; 0 disables the limit.
        Example: ``c.Sandbox.process_limit = 256``

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

    def chown(self, path, uid):
        """Give ``path`` (recursively) to ``uid``; nothing to do when uids are not switched."""
        if uid is None:
            return
        for root, dirs, files in os.walk(path):
            os.lchown(root, uid, uid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, uid)

    def check_reachable(self, path):
        """Raise ``RuntimeError`` when a sandbox uid could not reach ``path`` to mount it."""
        if self.switches_uid and not _searchable_by_others(path):
            raise RuntimeError(
                f"{path} must be reachable by the sandbox uids: make its parent directories "
                "searchable by others (chmod o+x), or choose another directory."
            )

    def command(self, argv, *, uid, ro_binds=(), rw_binds=(), chdir=None, extra_ro_paths=()):
        """``argv`` wrapped to run sandboxed as ``uid`` with the given mounts."""
        return sandbox_command(
            argv,
            bwrap=self.bwrap_path,
            uid=uid,
            memory_limit=self.memory_limit,
            process_limit=self.process_limit,
            system_paths=self.system_paths,
            ro_binds=[*((p, p) for p in extra_ro_paths), *ro_binds],
            rw_binds=rw_binds,
            chdir=chdir,
        )
