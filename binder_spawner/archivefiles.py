"""A record's files on disk: names checked, writes fd-relative, archives unpacked safely.

Root writes a record's downloads into a directory it has just made and that
no sandbox can reach yet (the environment's ``repo/`` before the build uid
gets it, see :mod:`binder_spawner.localbuild`). The names come from
strangers (the archive's file list, the entries of a zip), so:

- a name is a relative path of plain components: no leading ``/``, no
  ``..`` or ``.``, no backslash, no NUL or control characters, not empty;
- every directory is made and opened relative to its parent's descriptor
  with ``O_NOFOLLOW``, every file created with ``O_EXCL | O_NOFOLLOW``: a
  name can never lead outside the directory, nor overwrite or follow what
  is there;
- a zip is refused whole, before anything is written, when an entry is a
  link (symbolic links could point anywhere), has an unsafe name, when it
  has more entries than ``max_files`` or declares more than ``max_bytes``
  unpacked; while unpacking, the bytes really written are counted against
  the same cap (a zip bomb with lying headers).

repo2docker's rules for what to unpack are kept: a record of exactly one
zip file is unpacked in place of the file, and an archive holding one top
directory has that directory's contents moved up.
"""

import contextlib
import os
import re
import stat
import struct
import tarfile
import zipfile

from .archives import ArchiveError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 255
MAX_DEPTH = 64

# The records at the end of a zip (APPNOTE.TXT 4.3.12-4.3.16), little-endian:
# end of central directory (22 bytes, then a comment of up to 64 KB), the zip64
# locator (20) and zip64 end of central directory (56) just before it, and the
# lengths of the name, extra field and comment of a central directory header (46).
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_HEADER = 46
_CENTRAL_LENGTHS = struct.Struct("<3H")


def safe_parts(name):
    """The path components of ``name``, or raise :class:`ArchiveError` if it could escape."""
    if not isinstance(name, str) or not name or _CONTROL.search(name) or "\\" in name:
        raise ArchiveError(
            f"The record holds a file with a name that is not allowed: {name!r}.", 422
        )
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"The record holds a file with an absolute path: {name!r}.", 422)
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ArchiveError(
            f"The record holds a file whose path leads outside its folder: {name!r}.", 422
        )
    if len(parts) > MAX_DEPTH or any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        raise ArchiveError(
            f"The record holds a file with a name that is too long: {name[:80]!r}.", 422
        )
    return parts


def open_dir(path):
    return os.open(path, _DIR_FLAGS)


def _subdir(dir_fd, parts):
    """An fd of ``parts`` below ``dir_fd``, made as needed (0755), never following links."""
    fd = os.dup(dir_fd)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                new = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                raise ArchiveError(
                    f"The record uses {part!r} both as a file and as a folder.", 422
                ) from None
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_file(dir_fd, name):
    """A new file for ``name`` below ``dir_fd`` (a writable binary file object)."""
    parts = safe_parts(name)
    parent = _subdir(dir_fd, parts[:-1])
    try:
        fd = os.open(parts[-1], _NEW_FILE, 0o644, dir_fd=parent)
    except FileExistsError:
        raise ArchiveError(f"The record holds the file {name!r} twice.", 422) from None
    finally:
        os.close(parent)
    return os.fdopen(fd, "wb")


def is_zip(dir_fd, name):
    parts = safe_parts(name)
    parent = _subdir(dir_fd, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    with os.fdopen(fd, "rb") as f:
        return zipfile.is_zipfile(f)


def _is_link(info):
    return stat.S_ISLNK(info.external_attr >> 16)


def _central_directory(f):
    """(offset, size) of a zip's central directory, found as :mod:`zipfile` finds it; or None.

    The end record is the last 22 bytes, or else the last one in the final
    64 KB (after it, a comment); a zip64 end record, when its locator sits just
    before, gives the size; the directory ends where those records begin.
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size < _END.size:
        return None
    tail_size = min(size, _END.size + 0xFFFF)
    f.seek(size - tail_size)
    tail = f.read(tail_size)
    at = len(tail) - _END.size
    if tail[at : at + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _END.size > len(tail):
            return None
    end = size - tail_size + at
    directory_size = _END.unpack_from(tail, at)[5]
    if end >= _END64_LOCATOR.size + _END64.size:
        f.seek(end - _END64_LOCATOR.size - _END64.size)
        records = f.read(_END64_LOCATOR.size + _END64.size)
        locator = _END64_LOCATOR.unpack_from(records, _END64.size)
        end64 = _END64.unpack_from(records)
        if locator[0] == b"PK\x06\x07" and end64[0] == b"PK\x06\x06":
            directory_size = end64[8]
            end -= _END64_LOCATOR.size + _END64.size
    return end - directory_size, directory_size


def check_zip_entries(f, max_files):
    """Refuse a zip whose central directory lists more than ``max_files`` entries.

    Counted from the headers themselves (the end record's count can lie), a
    few bytes at a time, before :class:`zipfile.ZipFile` reads the whole
    directory into memory and makes an object of every entry: a 1 GB zip of
    empty entries lists 22 million of them, about 9 GB of the hub's memory.
    """
    found = _central_directory(f)
    if found is None:
        return  # not a zip: zipfile says so
    offset, size = found
    if offset < 0:
        return
    f.seek(offset)
    entries = read = 0
    while read < size:
        header = f.read(_CENTRAL_HEADER)
        if len(header) < _CENTRAL_HEADER or header[:4] != b"PK\x01\x02":
            return  # a damaged directory: zipfile refuses it
        entries += 1
        if entries > max_files:
            raise ArchiveError(
                f"The record's archive holds more than the {max_files} entries this hub unpacks.",
                413,
            )
        skip = sum(_CENTRAL_LENGTHS.unpack_from(header, 28))
        f.seek(skip, os.SEEK_CUR)
        read += _CENTRAL_HEADER + skip


def check_zip(zf, max_files, max_bytes):
    """Refuse the whole zip before writing anything (see the module docstring)."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise ArchiveError(
            f"The record's archive holds {len(infos)} entries, more than the {max_files} "
            "this hub unpacks.",
            413,
        )
    total = 0
    for info in infos:
        if _is_link(info):
            raise ArchiveError(
                f"The record's archive holds a link ({info.filename!r}); links are not unpacked.",
                422,
            )
        safe_parts(info.filename)
        total += info.file_size
    if total > max_bytes:
        raise ArchiveError(
            f"The record's archive unpacks to {total / 1024**2:,.0f} MB, more than the "
            f"{max_bytes / 1024**2:,.0f} MB this hub allows.",
            413,
        )
    return infos


def extract_zip(dir_fd, name, *, max_files, max_bytes, only=None):
    """Unpack the zip ``name`` (a file in ``dir_fd``) into ``dir_fd``, then remove it.

    ``only``: a folder prefix (``"<id>/data/contents/"``): only entries below
    it are unpacked, without it (HydroShare bags). Returns (files, bytes) written.
    """
    parts = safe_parts(name)
    parent = _subdir(dir_fd, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        with os.fdopen(fd, "rb") as f:
            check_zip_entries(f, max_files)
            try:
                zf = zipfile.ZipFile(f)
            except (zipfile.BadZipFile, ValueError):
                raise ArchiveError(f"The record's file {name!r} is not a valid zip.", 422) from None
            with zf:
                written = _extract(zf, dir_fd, name, max_files, max_bytes, only)
        os.unlink(parts[-1], dir_fd=parent)
    finally:
        os.close(parent)
    return written


def _extract(zf, dir_fd, name, max_files, max_bytes, only=None):
    infos = check_zip(zf, max_files, max_bytes)
    total = files = 0
    for info in infos:
        parts = safe_parts(info.filename)
        if only is not None:
            prefix = only.strip("/").split("/")
            if parts[: len(prefix)] != prefix or len(parts) == len(prefix):
                continue
            parts = parts[len(prefix) :]
        if info.is_dir():
            os.close(_subdir(dir_fd, parts))
            continue
        try:
            with zf.open(info) as src, create_file(dir_fd, "/".join(parts)) as dst:
                total = _copy_capped(src, dst, total, max_bytes)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
            raise ArchiveError(
                f"The record's file {name!r} could not be unpacked: {e}.", 422
            ) from None
        except RuntimeError as e:  # encrypted entries
            raise ArchiveError(
                f"The record's file {name!r} could not be unpacked: {e}.", 422
            ) from None
        files += 1
    return files, total


def flatten_single_directory(dir_fd):
    """If ``dir_fd`` holds exactly one entry and it is a directory, move its contents up.

    repo2docker does this after unpacking a record's single archive.
    """
    names = os.listdir(dir_fd)
    if len(names) != 1:
        return False
    only = names[0]
    st = os.stat(only, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return False
    # a new name first: the directory may hold an entry of its own name
    temporary = ".binder-unpack-" + os.urandom(6).hex()
    os.rename(only, temporary, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    inner = os.open(temporary, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for entry in os.listdir(inner):
            os.rename(entry, entry, src_dir_fd=inner, dst_dir_fd=dir_fd)
    finally:
        os.close(inner)
    os.rmdir(temporary, dir_fd=dir_fd)
    return True


def _inside_link(parts, target):
    """True if a link at ``parts`` with ``target`` stays inside the top directory (lexically)."""
    if not target or target.startswith("/") or "\\" in target or _CONTROL.search(target):
        return False
    depth = len(parts) - 1
    for piece in target.split("/"):
        if piece in ("", "."):
            continue
        depth = depth - 1 if piece == ".." else depth + 1
        if depth < 0:
            return False
    return True


def extract_tar(dir_fd, name, *, max_files, max_bytes, only=None):
    """Unpack the (compressed) tar ``name`` in ``dir_fd`` into ``dir_fd``, then remove it.

    The rules of :func:`extract_zip`, checked on the member list before
    anything is written; symbolic links are kept when their target stays
    inside the folder (source trees have them), any other link, device or
    fifo refuses the whole archive. ``only``: as for :func:`extract_zip`.
    """
    parts = safe_parts(name)
    parent = _subdir(dir_fd, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        with os.fdopen(fd, "rb") as f:
            try:
                with tarfile.open(fileobj=f, mode="r:*") as tf:
                    members = _check_tar(tf, max_files, max_bytes)
                    written = _extract_tar(tf, members, dir_fd, max_bytes, only)
            except (tarfile.TarError, EOFError, OSError) as e:
                if isinstance(e, ArchiveError):
                    raise
                raise ArchiveError(
                    f"The record's file {name!r} could not be unpacked: {e}.", 422
                ) from None
        os.unlink(parts[-1], dir_fd=parent)
    finally:
        os.close(parent)
    return written


def _check_tar(tf, max_files, max_bytes):
    members = []
    total = 0
    for member in tf:
        members.append(member)
        if len(members) > max_files:
            raise ArchiveError(
                f"The record's archive holds more than the {max_files} entries this hub unpacks.",
                413,
            )
        parts = safe_parts(member.name)
        if member.issym():
            if not _inside_link(parts, member.linkname):
                raise ArchiveError(
                    f"The record's archive holds a link leading outside its folder ({member.name!r}).",
                    422,
                )
        elif member.islnk() or not (member.isfile() or member.isdir()):
            raise ArchiveError(
                f"The record's archive holds a hard link or special file ({member.name!r}).", 422
            )
        total += member.size if member.isfile() else 0
        if total > max_bytes:
            raise ArchiveError(
                f"The record's archive unpacks to more than the {max_bytes / 1024**2:,.0f} MB "
                "this hub allows.",
                413,
            )
    return members


def _extract_tar(tf, members, dir_fd, max_bytes, only):
    total = files = 0
    prefix = only.strip("/").split("/") if only else []
    for member in members:
        parts = safe_parts(member.name)
        if prefix:
            if parts[: len(prefix)] != prefix or len(parts) == len(prefix):
                continue
            parts = parts[len(prefix) :]
        if member.isdir():
            os.close(_subdir(dir_fd, parts))
            continue
        if member.issym():
            parent = _subdir(dir_fd, parts[:-1])
            try:
                os.symlink(member.linkname, parts[-1], dir_fd=parent)
            except FileExistsError:
                raise ArchiveError(f"The record holds {member.name!r} twice.", 422) from None
            finally:
                os.close(parent)
            continue
        src = tf.extractfile(member)
        with src, create_file(dir_fd, "/".join(parts)) as dst:
            total = _copy_capped(src, dst, total, max_bytes)
        files += 1
    return files, total


def is_tar(dir_fd, name):
    parts = safe_parts(name)
    parent = _subdir(dir_fd, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    with os.fdopen(fd, "rb") as f:
        try:
            with tarfile.open(fileobj=f, mode="r:*"):
                return True
        except (tarfile.TarError, EOFError):
            return False


def _copy_capped(src, dst, total, max_bytes):
    """Copy ``src`` to ``dst``; ``total`` counts the bytes the whole archive unpacked.

    Returns the new total; raises :class:`ArchiveError` past ``max_bytes`` (a bomb
    is stopped by what it writes, whatever its listing declared).
    """
    while True:
        chunk = src.read(1024 * 1024)
        if not chunk:
            return total
        total += len(chunk)
        if total > max_bytes:
            raise ArchiveError(
                f"The record's archive unpacks to more than the "
                f"{max_bytes / 1024**2:,.0f} MB this hub allows.",
                413,
            )
        dst.write(chunk)
