"""Root's only ways into trees a sandbox uid could have written: fd-relative, never following links.

A local-mode environment is written by the build uid (its checkout,
``postBuild``, whatever packages install). Once the build's processes are
gone, :func:`seal` makes it root's: every directory is opened relative to its
parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY`` and checked to be the
inode ``lstat`` saw; every file is changed through its own descriptor
(``fchown`` / ``fchmod``) or, for links, with ``AT_SYMLINK_NOFOLLOW``. So a
link planted anywhere, swapped in at any moment, or a hard link, can make
root change nothing outside the tree, read nothing, execute nothing.

After sealing: owned by root, no write bit for group or others, no
set-id bits, no device, fifo or socket files, hard links broken into copies
(a link count above one would let a sandbox-owned inode elsewhere share
root's changes), and no link into the hub's own directories.
"""

import contextlib
import os
import stat
from dataclasses import dataclass, field

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class SealError(Exception):
    """The tree cannot be sealed: it holds something an environment must not."""


@dataclass
class SealReport:
    """What sealing found: sizes for the disk budget and the home, what was changed."""

    size: int = 0
    files: int = 0
    #: bytes of the files a home gets copies of (not under ``.git``, not over ``home_max_file``)
    home_bytes: int = 0
    removed: list = field(default_factory=list)
    unlinked_hard_links: int = 0


def open_dir(path, dir_fd=None):
    """Open a directory without following a link at its last component."""
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def _lexical_target(link_dir, target):
    """Where a link points, normalised without touching the filesystem."""
    joined = target if os.path.isabs(target) else os.path.join(link_dir, target)
    return os.path.normpath(joined)


def _inside(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def seal(path, *, forbidden=(), home_max_file=0, home_root="repo", uid=0, gid=0):
    """Make the tree at ``path`` (a directory entry in a root-owned directory) root's, read-only.

    ``forbidden``: absolute directories (the hub's state, other environments,
    homes) that no link in the tree may point into; such a link is a
    :class:`SealError`. ``home_root``: the subdirectory a home is filled from,
    for :attr:`SealReport.home_bytes`.
    """
    report = SealReport()
    top = open_dir(path)
    try:
        st = os.fstat(top)
        _seal_dir(top, path, path, report, forbidden, home_max_file, home_root, uid, gid, depth=0)
        os.fchown(top, uid, gid)
        os.fchmod(top, (st.st_mode & 0o755) | 0o711)
    finally:
        os.close(top)
    return report


def _seal_dir(fd, logical, top, report, forbidden, home_max_file, home_root, uid, gid, depth):
    if depth > 256:
        raise SealError(f"{logical} is nested too deeply")
    rel = os.path.relpath(logical, top)
    in_home = rel == home_root or rel.startswith(home_root + "/")
    in_git = f"{home_root}/.git" == rel or rel.startswith(f"{home_root}/.git/")
    for name in os.listdir(fd):
        st = os.lstat(name, dir_fd=fd)
        mode = st.st_mode
        child = os.path.join(logical, name)
        if stat.S_ISDIR(mode):
            sub = open_dir(name, dir_fd=fd)
            try:
                sst = os.fstat(sub)
                if (sst.st_dev, sst.st_ino) != (st.st_dev, st.st_ino):
                    raise SealError(f"{child} changed while it was sealed")
                _seal_dir(
                    sub,
                    child,
                    top,
                    report,
                    forbidden,
                    home_max_file,
                    home_root,
                    uid,
                    gid,
                    depth + 1,
                )
                os.fchown(sub, uid, gid)
                os.fchmod(sub, sst.st_mode & 0o755)
            finally:
                os.close(sub)
        elif stat.S_ISLNK(mode):
            target = _lexical_target(logical, os.readlink(name, dir_fd=fd))
            if _inside(target, forbidden) and not _inside(target, [top]):
                raise SealError(
                    f"{os.path.relpath(child, top)} links to {target}, a directory of the hub"
                )
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            report.files += 1
        elif stat.S_ISREG(mode):
            if st.st_nlink > 1:
                _break_hard_link(fd, name)
                report.unlinked_hard_links += 1
                st = os.lstat(name, dir_fd=fd)
            ffd = os.open(name, _FILE_FLAGS, dir_fd=fd)
            try:
                fst = os.fstat(ffd)
                if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                    raise SealError(f"{child} changed while it was sealed")
                os.fchown(ffd, uid, gid)
                os.fchmod(ffd, fst.st_mode & 0o755)
                report.size += fst.st_blocks * 512
                report.files += 1
                if in_home and not in_git and (not home_max_file or fst.st_size <= home_max_file):
                    report.home_bytes += fst.st_size
            finally:
                os.close(ffd)
        else:
            # fifos, sockets, devices: nothing an environment needs, and opening
            # one could block or reach a device
            os.unlink(name, dir_fd=fd)
            report.removed.append(os.path.relpath(child, top))


def _break_hard_link(dir_fd, name):
    """Replace ``name`` by a copy of its content with a link count of one (through fds only)."""
    src = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    tmp = f".seal-{os.getpid()}-{name}"[:200]
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise SealError(f"{name} changed while it was sealed")
        dst = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
        try:
            while True:
                chunk = os.read(src, 1 << 20)
                if not chunk:
                    break
                os.write(dst, chunk)
            os.fchmod(dst, os.fstat(src).st_mode & 0o755)
        finally:
            os.close(dst)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(src)


def chown_tree(path, uid, gid=None):
    """Give the tree at ``path`` to ``uid`` through descriptors, never following a link."""
    gid = uid if gid is None else gid
    top = open_dir(path)
    try:
        _chown_dir(top, uid, gid, 0)
        os.fchown(top, uid, gid)
    finally:
        os.close(top)


def _chown_dir(fd, uid, gid, depth):
    if depth > 256:
        return
    for name in os.listdir(fd):
        st = os.lstat(name, dir_fd=fd)
        if stat.S_ISDIR(st.st_mode):
            sub = open_dir(name, dir_fd=fd)
            try:
                sst = os.fstat(sub)
                if (sst.st_dev, sst.st_ino) == (st.st_dev, st.st_ino):
                    _chown_dir(sub, uid, gid, depth + 1)
                    os.fchown(sub, uid, gid)
            finally:
                os.close(sub)
        else:
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def make_private_dir(path, mode=0o711):
    """``path`` as a root-owned directory with ``mode`` (0711: others may traverse, not list).

    ``path`` is one the admin configured or root created in a directory only
    root writes, so it is followed if it is a link; its ownership and mode are
    changed through a descriptor.
    """
    os.makedirs(path, mode=mode, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != mode:
            os.fchown(fd, os.geteuid(), os.getegid())
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
