"""The emulated container runtime: a container is a local process.

``container_env`` and ``expand`` are pure: they turn a pod spec (plus the
secrets and config maps it references) into the environment and command line
the kubelet would hand the container runtime, following
pkg/kubelet/kubelet_pods.go (v1.30) makeEnvironmentVariables: ``envFrom``
first, then ``env`` in order, ``$(VAR)`` references expanded against what is
already defined (``$$`` escapes), ``valueFrom`` with ``fieldRef``,
``resourceFieldRef``, ``secretKeyRef`` and ``configMapKeyRef``.

:class:`ContainerProcess` starts one process in its own session (so a signal
reaches everything it started), as ``securityContext.runAsUser`` /
``runAsGroup`` / ``fsGroup`` / ``supplementalGroups`` when this process runs as
root, and feeds each line of its merged stdout and stderr to a callback (the
pod's log).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from .scheduler import parse_quantity

_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class PullError(Exception):
    """An image cannot be pulled: ``reason`` (ErrImagePull, ...) and the runtime's message."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ConfigError(Exception):
    """A container cannot start: the kubelet reports CreateContainerConfigError."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` against ``env`` as third_party/forked/golang/expansion does.

    Unknown references stay as written; ``$$`` is a literal ``$``.
    """

    def replace(match):
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(replace, text)


def _decode(secret: dict, key: str) -> str | None:
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode(errors="replace")
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    return None


def field_ref(pod: dict, path: str) -> str:
    """``valueFrom.fieldRef.fieldPath`` (pkg/fieldpath/fieldpath.go ExtractFieldPathAsString)."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    values = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
    }
    if path not in values:
        raise ConfigError(f"unsupported fieldPath {path!r}")
    return values[path] or ""


def resource_ref(container: dict, ref: dict) -> str:
    """``valueFrom.resourceFieldRef`` as an integer string, rounded up by the divisor."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    amount = parse_quantity(value) / divisor
    return str(int(-(-amount // 1)))


def container_env(
    pod: dict,
    container: dict,
    lookup: Callable[[str, str], dict | None],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of ``container``: ``base`` (image ENV), envFrom, env.

    ``lookup(kind, name)`` returns a secret (``kind="secrets"``) or config
    map (``"configmaps"``) of the pod's namespace, or None when it does not
    exist. A missing, non-optional reference raises :class:`ConfigError`
    with the message the kubelet shows (``secret "x" not found``).
    """
    env = dict(base or {})
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(key)
            if not ref:
                continue
            obj = lookup(kind, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind[:-1]} "{ref["name"]}" not found')
            keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
            for name in sorted(keys):
                value = _decode(obj, name) if kind == "secrets" else obj["data"][name]
                env[prefix + name] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_ref(container, source["resourceFieldRef"])
        else:
            kind, key = (
                ("secrets", "secretKeyRef")
                if "secretKeyRef" in source
                else ("configmaps", "configMapKeyRef")
            )
            ref = source[key]
            obj = lookup(kind, ref["name"])
            value = None
            if obj is not None:
                value = (
                    _decode(obj, ref["key"])
                    if kind == "secrets"
                    else (obj.get("data") or {}).get(ref["key"])
                )
            if value is None:
                if ref.get("optional"):
                    continue
                what = "secret" if kind == "secrets" else "configmap"
                if obj is None:
                    raise ConfigError(f'{what} "{ref["name"]}" not found')
                raise ConfigError(
                    f"couldn't find key {ref['key']} in {what} {pod['metadata'].get('namespace')}/{ref['name']}"
                )
            env[name] = value
    return env


def security_ids(pod: dict, container: dict) -> tuple[int | None, int | None, list[int]]:
    """(uid, gid, supplementary groups) from the pod and container security contexts."""
    pod_sc = pod.get("spec", {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    groups = list(pod_sc.get("supplementalGroups") or [])
    if pod_sc.get("fsGroup") is not None:
        groups.insert(0, pod_sc["fsGroup"])
    return uid, gid, groups


def write_volume(directory: Path, items: Mapping[str, str | bytes], mode: int = 0o644):
    """Materialise a secret or config map volume: one file per key."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in items.items():
        path = directory / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value if isinstance(value, bytes) else value.encode())
        path.chmod(mode)


def chown_tree(path: Path, uid: int, gid: int | None):
    """Give a pod's folders to the user its processes run as (only possible as root)."""
    if os.geteuid() != 0 or uid is None:
        return
    gid = gid if gid is not None else 0
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def run_as(uid: int, gid: int | None, groups) -> list[str]:
    """The command prefix that drops root for ``uid``/``gid``/``groups`` before exec.

    util-linux ``setpriv`` changes the ids and then execs, as a container
    runtime does; without root privileges left after the exec the program
    runs as that user (jupyterhub-singleuser then starts without
    ``--allow-root``). A runtime without an image user would use group 0.
    """
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else 0}"]
    if groups:
        prefix.append("--groups=" + ",".join(str(g) for g in groups))
    else:
        prefix.append("--clear-groups")
    return prefix + ["--"]


class ContainerProcess:
    """One running container: a process group whose output goes to ``on_line``."""

    def __init__(self, argv, env, cwd, *, uid=None, gid=None, groups=(), on_line=None):
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = str(cwd)
        self.uid, self.gid, self.groups = uid, gid, list(groups)
        self.on_line = on_line or (lambda line: None)
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._killed = False

    async def start(self):
        """Start the process; raises OSError (e.g. the executable does not exist)."""
        argv, ids = self.argv, {}
        if os.geteuid() == 0 and self.uid is not None:
            if shutil.which("setpriv"):
                argv = run_as(self.uid, self.gid, self.groups) + argv
            else:  # without util-linux: the same ids, set by Python before exec
                gid = self.gid if self.gid is not None else 0
                ids = {"user": self.uid, "group": gid, "extra_groups": self.groups}
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=1 << 20,
            **ids,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    @property
    def pid(self):
        return self.process.pid if self.process else None

    async def _read(self):
        stream = self.process.stdout
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the limit: pass it on in pieces
                line = await stream.read(1 << 20)
            if not line:
                return
            self.on_line(line.decode(errors="replace").rstrip("\n"))

    async def wait(self) -> int:
        """Wait for the exit; the exit code as Kubernetes reports it (128 + signal)."""
        code = await self.process.wait()
        if self._reader:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return 128 - code if code < 0 else code

    def signal(self, sig):
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.process.wait()), max(grace, 0))
            except asyncio.TimeoutError:
                pass
        if not self._killed:
            # whatever is left in the group (also after a clean exit of the leader)
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return await self.wait()
