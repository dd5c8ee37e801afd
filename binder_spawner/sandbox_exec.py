"""Start one sandboxed process: join its cgroups, set its limits, drop root, exec bubblewrap.

The hub runs this file with its own interpreter, isolated (``python -I -S``:
no environment variables, no site packages, no current directory on the
path), by absolute path::

    /hub/python -I -S .../sandbox_exec.py SPEC -- /usr/bin/bwrap ... -- COMMAND

``SPEC`` is JSON written by :meth:`binder_spawner.sandbox.Sandbox.command`:
``cgroups`` (``cgroup.procs`` files to write this pid into), ``rlimits``
(``{"nproc": n, "core": 0, ...}``), ``uid`` (null: keep the current one),
``seccomp`` (a BPF program, hex, passed to bwrap as fd 3). The order
matters: cgroups and limits are set as root, then groups, gid and uid are
dropped and ``no_new_privs`` set, then bwrap is executed by the absolute path
in the command line. Nothing here looks at a path a sandbox could write, and
nothing is looked up on ``PATH``.

Standalone on purpose (no imports from the package): it starts in ~10 ms.
"""

import ctypes
import json
import os
import resource
import sys

PR_SET_NO_NEW_PRIVS = 38
SECCOMP_FD = 3


def main(argv):
    if len(argv) < 4 or argv[2] != "--" or not os.path.isabs(argv[3]):
        sys.stderr.write("usage: sandbox_exec.py SPEC -- /absolute/program [args...]\n")
        return 2
    spec = json.loads(argv[1])
    command = argv[3:]
    pid = str(os.getpid())
    for procs in spec.get("cgroups", ()):
        with open(procs, "w") as f:
            f.write(pid)
    for name, value in spec.get("rlimits", {}).items():
        limit = getattr(resource, "RLIMIT_" + name.upper())
        resource.setrlimit(limit, (value, value))
    if spec.get("seccomp"):
        # the filter program, handed to bwrap as fd 3 (``--seccomp 3``)
        fd = os.memfd_create("seccomp", 0)
        os.write(fd, bytes.fromhex(spec["seccomp"]))
        os.lseek(fd, 0, os.SEEK_SET)
        if fd != SECCOMP_FD:
            os.dup2(fd, SECCOMP_FD)  # inheritable
            os.close(fd)
    uid = spec.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.stderr.write("sandbox_exec: prctl(PR_SET_NO_NEW_PRIVS) failed\n")
        return 1
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
