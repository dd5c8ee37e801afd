"""A real conda channel for tests, made here: no conda channel is reachable in CI.

Packages are written as real ``.tar.bz2`` conda archives (``info/index.json``,
``info/paths.json``, ``info/files``, the payload), indexed with rattler's own
indexer (``rattler.index.index_fs``, the code behind ``rattler-index``) and
served by a threaded HTTP server on loopback, as a mirror would serve them:
``{url}/{channel}/{subdir}/repodata.json``. A site points local mode at it with
``c.EnvironmentBuilder.conda_channel_alias = url`` and names the channel.

The packages:

- ``python``: the host's interpreter as a venv-style prefix (``pyvenv.cfg``
  naming the host's ``bin`` directory, ``bin/python`` a link to the host's
  interpreter, an empty ``site-packages``). It runs like conda-forge's python
  for everything local mode does with it (noarch installs into its
  ``site-packages``, ``uv pip install`` into it, kernels, JupyterLab), but it
  is not conda-forge's relocatable interpreter: that one is only exercised
  through prefix replacement in ``bindertool`` below.
- ``bindertool`` (arch-specific): a text file with the build prefix
  placeholder (rattler rewrites it at install), an ``etc/conda/activate.d``
  script, an ``env_vars.d`` file and a Jupyter kernel spec.
- ``binderlib`` 1.0 and 2.0 (noarch: python): a pure-Python module, depending
  on ``python``; 2.0 also on ``bindertool``.
- ``needs-missing``: depends on a package no channel has (unsatisfiable).
"""

import asyncio
import io
import json
import os
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PLACEHOLDER = "/opt/conda-bld/placeholder_" + "p" * 60
CHANNEL = "binderforge"


def host_python():
    """(executable, "X.Y.Z") of a system interpreter the sandbox uids can run."""
    for candidate in (
        f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}",
        "/usr/bin/python3",
    ):
        if os.path.exists(candidate):
            real = os.path.realpath(candidate)
            import subprocess

            version = subprocess.run(
                [real, "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            return real, version
    raise RuntimeError("no system Python under /usr/bin")


def subdir():
    import rattler

    return str(rattler.Subdir.current())


def write_package(channel_dir, sub, index, files, links=None, placeholders=()):
    """Write ``name-version-build.tar.bz2`` into ``channel_dir/sub`` as conda-build would.

    ``files``: {path: text}; ``links``: {path: target}; ``placeholders``: paths
    whose text holds :data:`PLACEHOLDER` (text mode prefix replacement).
    """
    links = links or {}
    paths = []
    entries = []
    for path, text in sorted(files.items()):
        data = text.encode()
        entry = {"_path": path, "path_type": "hardlink", "size_in_bytes": len(data)}
        import hashlib

        entry["sha256"] = hashlib.sha256(data).hexdigest()
        if path in placeholders:
            entry["prefix_placeholder"] = PLACEHOLDER
            entry["file_mode"] = "text"
        paths.append(entry)
        entries.append((path, data, None))
    for path, target in sorted(links.items()):
        paths.append({"_path": path, "path_type": "softlink"})
        entries.append((path, None, target))
    info = {
        "info/index.json": json.dumps(index, indent=2),
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=2),
        "info/files": "".join(p["_path"] + "\n" for p in paths),
    }
    has_prefix = [p for p in paths if p.get("prefix_placeholder")]
    if has_prefix:
        info["info/has_prefix"] = "".join(f"{PLACEHOLDER} text {p['_path']}\n" for p in has_prefix)
    name = f"{index['name']}-{index['version']}-{index['build']}.tar.bz2"
    target_dir = Path(channel_dir) / sub
    target_dir.mkdir(parents=True, exist_ok=True)
    mtime = index.get("timestamp", 0) / 1000
    with tarfile.open(target_dir / name, "w:bz2") as tar:
        for path, text in info.items():
            _add(tar, path, text.encode(), mtime)
        for path, data, target in entries:
            if target is None:
                mode = 0o755 if path.startswith("bin/") else 0o644
                _add(tar, path, data, mtime, mode)
            else:
                member = tarfile.TarInfo(path)
                member.type = tarfile.SYMTYPE
                member.linkname = target
                member.mtime = mtime
                tar.addfile(member)
    return target_dir / name


def _add(tar, path, data, mtime, mode=0o644):
    member = tarfile.TarInfo(path)
    member.size = len(data)
    member.mtime = mtime
    member.mode = mode
    tar.addfile(member, io.BytesIO(data))


def _index(name, version, sub, depends=(), noarch=None, build_number=0):
    build = f"{'pyh' if noarch else 'h'}{build_number}_0"
    index = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": build_number,
        "depends": list(depends),
        "license": "BSD-3-Clause",
        "subdir": "noarch" if noarch else sub,
        "timestamp": 1_700_000_000_000,
    }
    if noarch:
        index["noarch"] = noarch
    else:
        arch = sub.split("-", 1)[-1]
        index.update(platform=sub.split("-", 1)[0], arch={"64": "x86_64"}.get(arch, arch))
    return index


def build_channel(root):
    """Write and index the test channel under ``root/CHANNEL``; returns its directory."""
    import rattler.index

    channel = Path(root) / CHANNEL
    sub = subdir()
    executable, version = host_python()
    major_minor = ".".join(version.split(".")[:2])
    home = os.path.dirname(executable)
    write_package(
        channel,
        sub,
        _index("python", version, sub),
        {
            "pyvenv.cfg": f"home = {home}\ninclude-system-site-packages = false\n"
            f"version = {version}\n",
            f"lib/python{major_minor}/site-packages/README.txt": "site-packages of the env\n",
        },
        links={
            "bin/python": executable,
            "bin/python3": "python",
            f"bin/python{major_minor}": "python",
        },
    )
    kernel = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Binder tool kernel",
        "language": "python",
    }
    write_package(
        channel,
        sub,
        _index("bindertool", "0.3", sub),
        {
            "share/bindertool/where.txt": f"{PLACEHOLDER}/share/bindertool\n",
            "etc/conda/activate.d/bindertool.sh": "export BINDERTOOL_ACTIVE=yes\n"
            'export BINDERTOOL_HOME="${CONDA_PREFIX}/share/bindertool"\n',
            "etc/conda/env_vars.d/bindertool.json": json.dumps({"BINDERTOOL_LEVEL": "3"}),
            "share/jupyter/kernels/bindertool/kernel.json": json.dumps(kernel),
        },
        placeholders={"share/bindertool/where.txt"},
    )
    for lib_version, depends in (("1.0", ["python"]), ("2.0", ["python", "bindertool >=0.3"])):
        write_package(
            channel,
            "noarch",
            _index("binderlib", lib_version, sub, depends, noarch="python"),
            {"site-packages/binderlib/__init__.py": f"VERSION = {lib_version!r}\n"},
        )
    write_package(
        channel,
        "noarch",
        _index("needs-missing", "1.0", sub, ["no-such-package >=1"], noarch="generic"),
        {"share/needs-missing.txt": "x\n"},
    )
    (channel / "noarch").mkdir(exist_ok=True)

    async def index():
        for target in (sub, "noarch"):
            await rattler.index.index_fs(
                channel,
                target_platform=rattler.Subdir(target),
                force=True,
                # as conda-forge on anaconda.org: repodata.json (and .zst), no shards
                write_shards=False,
            )

    # its own event loop in its own thread: callers may be inside one
    errors = []
    thread = threading.Thread(target=lambda: _run(index, errors))
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return channel


def _run(coroutine_function, errors):
    try:
        asyncio.run(coroutine_function())
    except Exception as e:  # re-raised by the caller
        errors.append(e)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class ChannelServer:
    """``root`` over HTTP on 127.0.0.1 (a mirror holding conda channels)."""

    def __init__(self, root):
        self.root = str(root)
        self.requests = 0
        handler = partial(_CountingHandler, state=self, directory=self.root)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


class _CountingHandler(_QuietHandler):
    def __init__(self, *args, state, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.state.requests += 1
        super().do_GET()


def cached_channel(cache_root=None):
    """The channel's root (holding :data:`CHANNEL`), built once (keyed by the host interpreter
    and this file's text, so a change to the packages rebuilds it)."""
    root = Path(cache_root or shared_channel_root())
    executable, version = host_python()
    stamp = f"{executable} {version} {subdir()} {hash_of_this_file()}"
    marker = root / "built"
    if marker.exists() and marker.read_text() == stamp:
        return root
    import shutil

    shutil.rmtree(root / CHANNEL, ignore_errors=True)
    build_channel(root)
    marker.write_text(stamp)
    return root


def hash_of_this_file():
    import hashlib

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def shared_channel_root():
    """Where the test channel is kept between test runs (built once per machine)."""
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "jupyterhub-binder-test-conda-channel")
    os.makedirs(path, mode=0o755, exist_ok=True)
    return path
