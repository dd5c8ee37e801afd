"""What an image "runs" on the emulated kubelet: image name -> local command.

Containers cannot run here, so each image the tests use maps to a local
process. A :class:`Catalog` holds those mappings; the kubelet asks it how to
launch a container (:meth:`Catalog.launch`). Three kinds of programs exist:

- ``SINGLEUSER``: ``jupyterhub-singleuser`` (or whatever the container's
  command names) from the test environment's ``bin`` folder, i.e. the folder
  of ``sys.executable``, bound to the pod's IP (a process in a pod binds the
  pod's address when it binds ``0.0.0.0``; here every pod shares the host's
  network, so the emulator passes ``--ip=<pod IP>``);
- ``REPO2DOCKER``: ``tests/k8s/fake_repo2docker.py`` with the container's
  repo2docker command line;
- ``GENERIC``: the container's ``command`` (+ ``args``) if it has one, found
  in the test environment; otherwise the image's "entrypoint", a small
  process that stays up and answers HTTP 200 on each declared
  ``containerPort`` at the pod IP. Images that exist in the registry but are
  not in the catalog are generic.

Entries match an exact reference (``quay.io/jupyterhub/singleuser:5.2.1``), a
repository with any tag (``quay.io/jupyterhub/singleuser``) or a glob
(``127.0.0.1:*/binder-*``). ``in_registry=True`` entries must also exist in
the cluster's registry: their size and digest come from the manifest and a
missing manifest is an ``ErrImagePull``; the others are "public" images that
always pull, with the size given here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .oci import parse_image

SINGLEUSER = "singleuser"
REPO2DOCKER = "repo2docker"
GENERIC = "generic"

MB = 1024 * 1024
FAKE_REPO2DOCKER = Path(__file__).resolve().with_name("fake_repo2docker.py")

# A process that stays up and answers every HTTP request on the given ports
# with 200 "ok". argv: host port...
GENERIC_PROGRAM = """
import http.server, sys, threading, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"ok\\n")
    do_HEAD = do_GET
    def log_message(self, *a): pass
host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
for port in ports:
    server = http.server.ThreadingHTTPServer((host, port), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("serving on", host, ports, flush=True)
threading.Event().wait()
"""


@dataclass
class CatalogEntry:
    """One image (or image pattern) and what it runs."""

    pattern: str
    kind: str = GENERIC
    size: int = 200 * MB
    in_registry: bool = False
    # the image's ENV: applied before the container's own env
    env: dict = field(default_factory=dict)
    # the image's USER (uid, gid): used when the securityContext sets no runAsUser
    user: int | None = None
    group: int | None = None

    def matches(self, image: str) -> bool:
        if image == self.pattern:
            return True
        try:
            ref = parse_image(image)
        except ValueError:
            return False
        if self.pattern in (ref.repository, ref.repository.removeprefix("docker.io/")):
            return True
        return any(
            fnmatch.fnmatchcase(candidate, self.pattern)
            for candidate in (image, str(ref), ref.repository)
        )

    def digest(self, image: str) -> str:
        """A stable fake digest for a public image (registry images use the real one)."""
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


@dataclass
class Launch:
    """How to start one container: argv, extra environment, and the ports it serves."""

    argv: list[str]
    env: dict


def bin_dir() -> Path:
    """The test environment's executables: where ``sys.executable`` lives."""
    return Path(sys.executable).parent


def _resolve(program: str) -> str:
    """An image's PATH lookup: the test venv first, then the system PATH."""
    if "/" in program:
        return program
    local = bin_dir() / program
    if local.exists():
        return str(local)
    return shutil.which(program) or program


def container_argv(container: dict) -> list[str]:
    """``command`` + ``args`` as Kubernetes combines them with the image's defaults unknown."""
    return list(container.get("command") or []) + list(container.get("args") or [])


class Catalog:
    """Image -> :class:`CatalogEntry`; set by tests, consulted by every kubelet.

    The default catalog knows the images the project uses by default: the
    single-user images of KubeSpawner and z2jh, and the repo2docker image of
    BinderHub-style build pods.
    """

    def __init__(self, entries=None, *, defaults=True):
        self.entries: list[CatalogEntry] = []
        if defaults:
            self.add("quay.io/jupyterhub/singleuser", SINGLEUSER, size=450 * MB)
            self.add("jupyterhub/singleuser", SINGLEUSER, size=450 * MB)
            self.add("quay.io/jupyterhub/k8s-singleuser-sample", SINGLEUSER, size=600 * MB)
            self.add("quay.io/jupyterhub/repo2docker", REPO2DOCKER, size=300 * MB)
            self.add("jupyter/repo2docker", REPO2DOCKER, size=300 * MB)
        for entry in entries or []:
            self.entries.insert(0, entry)

    def add(
        self,
        pattern,
        kind=GENERIC,
        *,
        size=200 * MB,
        in_registry=False,
        env=None,
        user=None,
        group=None,
    ):
        """Add (in front, so it wins over earlier entries) and return an entry.

        Single-user images default to the Jupyter images' ``USER jovyan``
        (uid 1000, gid 100), so they run without ``--allow-root``.
        """
        if kind not in (SINGLEUSER, REPO2DOCKER, GENERIC):
            raise ValueError(f"unknown catalog kind {kind!r}")
        if kind == SINGLEUSER and user is None:
            user, group = 1000, 100 if group is None else group
        entry = CatalogEntry(pattern, kind, size, in_registry, dict(env or {}), user, group)
        self.entries.insert(0, entry)
        return entry

    def lookup(self, image: str) -> CatalogEntry | None:
        for entry in self.entries:
            if entry.matches(image):
                return entry
        return None

    def launch(self, entry: CatalogEntry | None, container: dict, pod_ip: str) -> Launch:
        """The local command for ``container`` of an image ``entry`` (None: generic)."""
        kind = entry.kind if entry else GENERIC
        argv = container_argv(container)
        env = dict(entry.env) if entry else {}
        if kind == SINGLEUSER:
            argv = argv or ["jupyterhub-singleuser"]
            argv[0] = _resolve(argv[0])
            # JupyterHub >= 4 passes ip/port in JUPYTERHUB_SERVICE_URL (0.0.0.0
            # under KubeSpawner); the pod's own address stands in for 0.0.0.0.
            argv.append(f"--ip={pod_ip}")
            return Launch(argv, env)
        if kind == REPO2DOCKER:
            if argv and Path(argv[0]).name in ("jupyter-repo2docker", "repo2docker"):
                argv = argv[1:]
            elif argv and argv[0] in ("python", "python3") and argv[1:3] == ["-m", "repo2docker"]:
                argv = argv[3:]
            return Launch([sys.executable, str(FAKE_REPO2DOCKER), *argv], env)
        if container.get("command"):
            # an explicit command names a program of the test environment
            argv[0] = _resolve(argv[0])
            return Launch(argv, env)
        ports = [
            str(p["containerPort"]) for p in container.get("ports") or [] if p.get("containerPort")
        ]
        return Launch([sys.executable, "-c", GENERIC_PROGRAM, pod_ip, *ports], env)
