"""A real OCI registry on loopback, for tests.

Debian's ``docker-registry`` (the CNCF distribution registry, 2.8) serves the
Docker Registry HTTP API v2 from a temporary folder. ``push_image`` uploads a
small config blob and layer and then a manifest through that API, as ``docker
push`` would, so lookups see exactly what a real registry answers.

Three fixtures:

- ``registry``: anonymous access.
- ``registry_auth``: HTTP basic auth from an htpasswd file (bcrypt), the way a
  self-hosted registry is usually protected; ``.username`` / ``.password``.
- ``registry_token``: the bearer-token challenge flow (as Docker Hub, GHCR,
  Quay): the registry answers 401 with ``WWW-Authenticate: Bearer realm=...``
  and a small token server on loopback issues RS256 JWTs after checking basic
  credentials; ``.token_requests`` counts the tokens it issued.
"""

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from .utils import free_port

REGISTRY_BINARY = "/usr/bin/docker-registry"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def bcrypt_hash(password):
    """A bcrypt hash of ``password`` for an htpasswd file (cost 4: tests verify it often)."""
    try:
        import bcrypt
    except ImportError:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # Python < 3.13; glibc/libxcrypt implements bcrypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_bytes(name, tag):
    """A tiny gzipped tar holding one file, unique per (name, tag)."""
    content = f"{name}:{tag}\n".encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("image.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


class Registry:
    """A running ``docker-registry`` process and a client that pushes images into it."""

    def __init__(self, directory, *, htpasswd=None, token=None):
        self.directory = Path(directory)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.username = None
        self.password = None
        self._htpasswd = htpasswd
        self._token = token
        self.process = None
        self.log_path = self.directory / "registry.log"

    def _config(self):
        storage = self.directory / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self._htpasswd:
            self.username, self.password = self._htpasswd
            path = self.directory / "htpasswd"
            path.write_text(f"{self.username}:{bcrypt_hash(self.password)}\n")
            lines += ["auth:", "  htpasswd:", "    realm: test-registry", f"    path: {path}"]
        if self._token:
            server = self._token
            self.username, self.password = server.username, server.password
            lines += [
                "auth:",
                "  token:",
                f"    realm: {server.url}/token",
                f"    service: {server.service}",
                f"    issuer: {server.issuer}",
                f"    rootcertbundle: {server.cert_path}",
            ]
        path = self.directory / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout=30):
        config = self._config()
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/v2/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start:\n" + self.log()) from None
                time.sleep(0.05)
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- client -------------------------------------------------------------

    def _authorization(self, scope):
        if self._htpasswd:
            creds = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return "Basic " + creds
        if self._token:
            return "Bearer " + self._token.issue(self.username, scope)
        return None

    def request(self, method, path, *, data=None, headers=None, scope=None):
        """One authenticated request to the registry; returns (status, headers, body)."""
        url = path if path.startswith("http") else self.url + path
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        auth = self._authorization(scope)
        if auth:
            request.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def _upload_blob(self, name, data, scope):
        digest = _digest(data)
        status, _, _ = self.request("HEAD", f"/v2/{name}/blobs/{digest}", scope=scope)
        if status == 200:
            return digest
        status, headers, body = self.request("POST", f"/v2/{name}/blobs/uploads/", scope=scope)
        if status != 202:
            raise RuntimeError(f"blob upload start failed: {status} {body!r}")
        location = headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        location += ("&" if "?" in location else "?") + "digest=" + digest
        status, _, body = self.request(
            "PUT",
            location,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            scope=scope,
        )
        if status != 201:
            raise RuntimeError(f"blob upload failed: {status} {body!r}")
        return digest

    def push_image(self, name, tag, config=None, media_type=OCI_MANIFEST):
        """Push a small image ``name:tag``; returns the manifest digest.

        ``config`` is merged into the image config JSON. ``media_type`` picks an
        OCI (default) or Docker schema 2 manifest.
        """
        oci = media_type == OCI_MANIFEST
        scope = f"repository:{name}:pull,push"
        layer = _layer_bytes(name, tag)
        layer_digest = self._upload_blob(name, layer, scope)
        config_doc = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [_digest(gzip.decompress(layer))]},
        }
        config_doc.update(config or {})
        config_bytes = json.dumps(config_doc, sort_keys=True).encode()
        config_digest = self._upload_blob(name, config_bytes, scope)
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [
                {
                    "mediaType": OCI_LAYER if oci else DOCKER_LAYER,
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
        body = json.dumps(manifest).encode()
        status, headers, text = self.request(
            "PUT",
            f"/v2/{name}/manifests/{tag}",
            data=body,
            headers={"Content-Type": media_type},
            scope=scope,
        )
        if status != 201:
            raise RuntimeError(f"manifest push failed: {status} {text!r}")
        return headers.get("Docker-Content-Digest") or _digest(body)

    def delete_image(self, name, tag):
        """Delete the manifest ``name:tag`` points to."""
        scope = f"repository:{name}:*"
        status, headers, _ = self.request(
            "HEAD",
            f"/v2/{name}/manifests/{tag}",
            headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"},
            scope=scope,
        )
        if status != 200:
            return False
        digest = headers["Docker-Content-Digest"]
        status, _, _ = self.request("DELETE", f"/v2/{name}/manifests/{digest}", scope=scope)
        return status == 202

    def docker_config(self):
        """A docker ``config.json`` document with this registry's credentials."""
        auths = {}
        if self.username:
            auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            auths[self.host] = {"auth": auth}
        return {"auths": auths}


class TokenServer:
    """Issues registry bearer tokens (RS256 JWTs with an ``x5c`` chain) after basic auth.

    Implements the token endpoint of the Docker registry token authentication
    specification, enough for the distribution registry: ``GET /token?service=
    S&scope=repository:NAME:ACTIONS`` with optional basic credentials. Valid
    credentials get the requested actions, anonymous requests get none (the
    registry then answers 401 again).
    """

    def __init__(self, directory, username="robot", password=None):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.service = "test-registry"
        self.issuer = "test-token-issuer"
        self.token_requests = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-token-issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = self.directory / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        handler = type("Handler", (_TokenHandler,), {"token_server": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    def issue(self, subject, scope):
        """A signed token granting ``scope`` (``repository:NAME:a,b``) to ``subject``."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for item in (scope or "").split():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access if subject else [],
        }
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64(signature)


class _TokenHandler(BaseHTTPRequestHandler):
    token_server = None

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        server = self.token_server
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        subject = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user = password = ""
            if (user, password) != (server.username, server.password):
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            subject = user
        server.token_requests += 1
        token = server.issue(subject, " ".join(query.get("scope", [])))
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FaultyFront:
    """A reverse proxy before a registry that first answers with ``failures`` statuses.

    ``FaultyFront(registry.url, [503, 429]).start()``: the first request gets
    503, the second 429, then everything is forwarded. ``.host``, ``.requests``.
    """

    def __init__(self, target, failures):
        self.target = target.rstrip("/")
        self.failures = list(failures)
        self.requests = 0
        handler = type("Handler", (_FrontHandler,), {"front": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.host = "127.0.0.1:%d" % self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


class _FrontHandler(BaseHTTPRequestHandler):
    front = None

    def log_message(self, format, *args):
        pass

    def _forward(self):
        front = self.front
        front.requests += 1
        if front.failures:
            status = front.failures.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        request = urllib.request.Request(
            front.target + self.path, method=self.command, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, reply, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, reply, body = e.code, e.headers, e.read()
        self.send_response(status)
        for key, value in reply.items():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _forward


@pytest.fixture
def registry(tmp_path_factory, request):
    """An anonymous registry (:class:`Registry`) on loopback."""
    if not os.path.exists(REGISTRY_BINARY) and not shutil.which("docker-registry"):
        raise RuntimeError("docker-registry is not installed: run scripts/setup-system test")
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture
def registry_auth(tmp_path_factory):
    """A registry behind HTTP basic auth (htpasswd); credentials in ``.username``/``.password``."""
    reg = Registry(
        tmp_path_factory.mktemp("registry"), htpasswd=("builder", secrets.token_urlsafe(12))
    ).start()
    yield reg
    reg.stop()


@pytest.fixture
def registry_token(tmp_path_factory):
    """A registry using the bearer-token challenge flow, with its token server."""
    directory = tmp_path_factory.mktemp("registry")
    token_server = TokenServer(directory / "token").start()
    reg = Registry(directory, token=token_server).start()
    reg.token_server = token_server
    yield reg
    reg.stop()
    token_server.stop()
