"""Image references and a small Registry HTTP API v2 client (blocking, stdlib only).

Shared by the emulated kubelet (does the image exist, how big is it, which
digest) and by ``fake_repo2docker.py`` (push a manifest after a "build"). It
speaks the distribution spec as ``docker pull/push`` do: anonymous, HTTP basic
credentials, or the bearer-token challenge (``WWW-Authenticate: Bearer
realm=...,service=...,scope=...``) answered with basic credentials at the
realm.

https://github.com/opencontainers/distribution-spec/blob/v1.0.1/spec.md
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

DEFAULT_HOST = "docker.io"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST])


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: ``host/name:tag`` or ``host/name@digest``."""

    host: str
    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def repository(self) -> str:
        """``host/name`` as kubelets report it in ``status.images``."""
        return f"{self.host}/{self.name}"

    def __str__(self):
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return self.repository + suffix


def parse_image(image: str) -> ImageRef:
    """Parse an image reference the way the Docker reference grammar does.

    The first path component is a registry host when it contains ``.`` or
    ``:`` or is ``localhost``; otherwise the host is Docker Hub and one-part
    names live under ``library/``.
    """
    if not image or image != image.strip():
        raise ValueError(f"invalid image reference {image!r}")
    rest, digest = (image.split("@", 1) + [None])[:2]
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/", 1)
    if len(parts) == 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        host, name = parts
    else:
        host, name = DEFAULT_HOST, rest
        if "/" not in name:
            name = "library/" + name
    if not re.fullmatch(
        r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*", name
    ):
        raise ValueError(f"invalid image reference {image!r}")
    if tag is not None and not re.fullmatch(r"[\w][\w.-]{0,127}", tag):
        raise ValueError(f"invalid image tag in {image!r}")
    if digest is not None and not re.fullmatch(r"[a-z0-9]+:[a-f0-9]{32,}", digest):
        raise ValueError(f"invalid image digest in {image!r}")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(host=host, name=name, tag=tag, digest=digest)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def credentials_from_docker_config(config: dict, host: str) -> tuple[str, str] | None:
    """(username, password) for ``host`` from a docker ``config.json`` document."""
    for key, entry in (config.get("auths") or {}).items():
        key_host = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if key_host != host:
            continue
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
        if entry.get("username"):
            return entry["username"], entry.get("password", "")
    return None


class RegistryError(Exception):
    """A registry answered with an unexpected status."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status = status


class RegistryHTTP:
    """A blocking client for one registry host (``127.0.0.1:5000``)."""

    def __init__(self, host: str, credentials: tuple[str, str] | None = None, scheme="http"):
        self.host = host
        self.base = f"{scheme}://{host}"
        self.credentials = credentials
        self._tokens: dict[str, str] = {}

    def _basic(self):
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _bearer(self, challenge: str, scope: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        url = params["realm"] + "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url)
        if self.credentials:
            request.add_header("Authorization", self._basic())
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        return body.get("token") or body["access_token"]

    def request(self, method, path, *, data=None, headers=None, scope=""):
        """One request, answering an auth challenge once; returns (status, headers, body)."""
        url = path if path.startswith("http") else self.base + path
        auth = self._tokens.get(scope)
        for _attempt in range(2):
            request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
            if auth:
                request.add_header("Authorization", auth)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.headers, response.read()
            except urllib.error.HTTPError as e:
                status, response_headers, body = e.code, e.headers, e.read()
            challenge = response_headers.get("WWW-Authenticate", "")
            if status != 401 or auth is not None and not challenge.startswith("Bearer"):
                break
            if challenge.startswith("Bearer"):
                auth = "Bearer " + self._bearer(challenge, scope)
                self._tokens[scope] = auth
            elif self.credentials:
                auth = self._basic()
            else:
                break
        return status, response_headers, body

    def manifest(self, name: str, reference: str) -> tuple[str, dict] | None:
        """``(digest, manifest)`` of ``name:reference``, or None when it does not exist."""
        status, headers, body = self.request(
            "GET",
            f"/v2/{name}/manifests/{reference}",
            headers={"Accept": ACCEPT},
            scope=f"repository:{name}:pull",
        )
        if status == 404:
            return None
        if status != 200:
            raise RegistryError(status, body[:200].decode(errors="replace"))
        return headers.get("Docker-Content-Digest") or digest_of(body), json.loads(body)

    def _upload_blob(self, name, data, scope):
        digest = digest_of(data)
        status, _, _ = self.request("HEAD", f"/v2/{name}/blobs/{digest}", scope=scope)
        if status == 200:
            return digest
        status, headers, body = self.request("POST", f"/v2/{name}/blobs/uploads/", scope=scope)
        if status != 202:
            raise RegistryError(status, body[:200].decode(errors="replace"))
        location = headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        location += ("&" if "?" in location else "?") + "digest=" + urllib.parse.quote(digest)
        status, _, body = self.request(
            "PUT",
            location,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            scope=scope,
        )
        if status != 201:
            raise RegistryError(status, body[:200].decode(errors="replace"))
        return digest

    def push(self, name: str, tag: str, files: dict[str, bytes], config: dict | None = None):
        """Push an image of one layer holding ``files``; returns the manifest digest."""
        scope = f"repository:{name}:pull,push"
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for path, content in sorted(files.items()):
                info = tarfile.TarInfo(path)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        layer = gzip.compress(raw.getvalue(), mtime=0)
        layer_digest = self._upload_blob(name, layer, scope)
        config_doc = {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(raw.getvalue())]},
        }
        config_doc.update(config or {})
        config_bytes = json.dumps(config_doc, sort_keys=True).encode()
        config_digest = self._upload_blob(name, config_bytes, scope)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
        }
        body = json.dumps(manifest).encode()
        status, headers, text = self.request(
            "PUT",
            f"/v2/{name}/manifests/{tag}",
            data=body,
            headers={"Content-Type": OCI_MANIFEST},
            scope=scope,
        )
        if status != 201:
            raise RegistryError(status, text[:200].decode(errors="replace"))
        return headers.get("Docker-Content-Digest") or digest_of(body)


def manifest_size(manifest: dict) -> int:
    """Bytes a pull downloads: config plus layers (0 for an index we do not follow)."""
    total = (manifest.get("config") or {}).get("size", 0)
    return total + sum(layer.get("size", 0) for layer in manifest.get("layers") or [])
