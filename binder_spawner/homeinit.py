"""Fill a server's home from its repository, then exec the server; runs inside the sandbox.

A repo2docker image starts with the repository in ``/home/jovyan``. Local
mode gives each server a fresh home (a tmpfs sized by ``Sandbox.home_size``,
counted against the server's memory) and fills it here, as the server's own
uid inside its sandbox, from the sealed, read-only checkout::

    ENV/venv/bin/python -I -S -c "<this file>" SRC DEST MAX_FILE -- COMMAND...

- ``.git`` is not copied (the history is not part of a session);
- files larger than ``MAX_FILE`` bytes become links to the read-only checkout
  (readable, not writable: a user who wants to change one copies it);
- links are recreated as they are; they resolve inside the sandbox.

Exit status 75 means the home is full: the repository's files do not fit.
Standalone on purpose: it is passed as ``-c`` text, the package is not mounted.
"""

import errno
import os
import shutil
import stat
import sys
import time

HOME_FULL = 75


def populate(src, dest, max_file):
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dest if rel == "." else os.path.join(dest, rel)
        if rel == ".":
            dirs[:] = [d for d in dirs if d != ".git"]
            files = [f for f in files if f != ".git"]
        for name in list(dirs):
            path = os.path.join(root, name)
            if os.path.islink(path):
                os.symlink(os.readlink(path), os.path.join(target, name))
                dirs.remove(name)
            else:
                os.mkdir(os.path.join(target, name), 0o755)
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            out = os.path.join(target, name)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), out)
            elif not stat.S_ISREG(st.st_mode):
                continue
            elif st.st_size > max_file:
                os.symlink(path, out)
            else:
                shutil.copyfile(path, out, follow_symlinks=False)
                os.chmod(out, (st.st_mode & 0o777) | 0o600)


def main(argv):
    src, dest, max_file = argv[1], argv[2], int(argv[3])
    command = argv[5:]
    started = time.monotonic()
    try:
        populate(src, dest, max_file)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            sys.stderr.write("binder: the repository's files do not fit in the home\n")
            return HOME_FULL
        raise
    sys.stderr.write(f"binder: home filled in {(time.monotonic() - started) * 1000:.0f} ms\n")
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
