"""Does an image exist? A Docker Registry HTTP API v2 client for one question.

``RegistryClient.image_exists("registry.example.org/binder-org-repo-abc123:<sha>")``
sends ``HEAD /v2/<name>/manifests/<tag>`` accepting both Docker and OCI
manifests (and indexes). It handles the three ways registries ask for
credentials:

- none (anonymous pulls);
- ``401`` + ``WWW-Authenticate: Basic``: retried with the credentials of a
  docker ``config.json``;
- ``401`` + ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
  (Docker Hub, GHCR, Quay, Harbor, the distribution registry's token auth):
  a token is fetched from the realm (with the credentials, if any), cached
  until it expires, and the request retried with it.

Credentials come from a docker ``config.json``, the format of a Kubernetes
``kubernetes.io/dockerconfigjson`` secret (z2jh and BinderHub mount one).
Server errors and connection failures are retried a bounded number of
times; an image that exists is remembered for a short time (a missing one is
not: it may be pushed any moment by a build).
"""

import base64
import json
import os
import re
import time
from urllib.parse import urlencode, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Dict, Float, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from .images import split_image
from .retry import NETWORK_ERRORS, RETRY_STATUSES, fetch_with_retries

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", ""}
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(Exception):
    """The registry could not answer (unreachable, server errors, refused credentials)."""


def parse_challenge(header):
    """``WWW-Authenticate`` -> (scheme lower-cased, {param: value})."""
    scheme, _, params = (header or "").strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(params))


def credentials_for(docker_config, host):
    """(username, password) for ``host`` from a docker ``config.json`` document, or None.

    Keys may be bare hosts or URLs (``https://index.docker.io/v1/`` for Docker Hub).
    """
    docker_hub = host in _DOCKER_HUB_ALIASES
    for key, entry in (docker_config or {}).get("auths", {}).items():
        key_host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
        if key_host == host or (docker_hub and key_host in _DOCKER_HUB_ALIASES):
            if entry.get("auth"):
                try:
                    decoded = base64.b64decode(entry["auth"], validate=True).decode()
                except (ValueError, UnicodeDecodeError):
                    continue
                user, sep, password = decoded.partition(":")
                if sep:
                    return user, password
                continue
            if entry.get("username"):
                return entry["username"], entry.get("password", "")
    return None


class RegistryClient(LoggingConfigurable):
    """Answers "is this image in its registry?" for the spawners."""

    docker_config_path = Unicode(
        help="""
        Path of a docker ``config.json`` with registry credentials (the
        ``.dockerconfigjson`` key of a Kubernetes secret, mounted as a file).
        Default: ``$DOCKER_CONFIG/config.json`` if that variable is set,
        otherwise none (anonymous).

        Example: ``c.RegistryClient.docker_config_path = "/etc/binder/registry/config.json"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("docker_config_path")
    def _default_docker_config_path(self):
        directory = os.environ.get("DOCKER_CONFIG")
        return os.path.join(directory, "config.json") if directory else ""

    docker_config = Dict(
        help="""
        A docker ``config.json`` document given inline (``{"auths": {HOST:
        {"auth": base64("user:password")}}}``); used instead of
        :attr:`docker_config_path` when set. Default: empty.

        Example: ``c.RegistryClient.docker_config = "/etc/binder/push-secret/config.json"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    insecure_registries = List(
        Unicode(),
        help="""
        Registry hosts (``host:port``) reached over plain ``http://`` instead of
        ``https://``: a registry on the cluster network without TLS. Default: none.

        Example: ``c.RegistryClient.insecure_registries = ["registry.binder.svc:5000"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    timeout = Float(
        10.0,
        help="""
        Seconds one request to the registry (or its token service) may take.
        Default 10.

        Example: ``c.RegistryClient.timeout = 20``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    retries = Integer(
        2,
        help="""
        How many times a registry request is retried when the registry is
        unreachable or answers 5xx or 429, with exponential backoff (full
        jitter below :attr:`retry_delay`, doubling, capped at 5 s). Default 2:
        at most three attempts. 0 tries once. It counts retries, as
        ``c.HubAPI.retries`` does (development snapshots counted attempts).

        Example: ``c.RegistryClient.retries = 4``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    retry_delay = Float(
        0.2,
        help="""
        Longest wait in seconds before the first retry (the wait is random
        below it); doubled for each further one. Default 0.2.

        Example: ``c.RegistryClient.retry_delay = 0.5``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    cache_ttl = Float(
        60.0,
        help="""
        Seconds an image that exists is remembered without asking again
        (images are immutable per commit, but may be deleted). Missing images
        are never cached. Default 60; 0 disables.

        Example: ``c.RegistryClient.cache_ttl = 120``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._exists = {}
        self._tokens = {}
        #: monotonic clock; tests replace it to move time
        self.clock = time.monotonic
        #: requests sent, for tests and logs
        self.requests = 0

    def _read_docker_config(self):
        if self.docker_config:
            return self.docker_config
        if self.docker_config_path and os.path.exists(self.docker_config_path):
            with open(self.docker_config_path) as f:
                return json.load(f)
        return {}

    def _endpoint(self, image):
        host, name, tag = split_image(image)
        if host in _DOCKER_HUB_ALIASES:
            host = DOCKER_HUB
            if "/" not in name:
                name = f"library/{name}"
        scheme = "http" if host in self.insecure_registries else "https"
        return host, f"{scheme}://{host}", name, tag

    async def image_exists(self, image):
        """True if ``image`` (``[registry/]name:tag``) has a manifest; raises :class:`RegistryError`."""
        now = self.clock()
        expires = self._exists.get(image)
        if expires is not None and expires > now:
            return True
        host, base, name, tag = self._endpoint(image)
        url = f"{base}/v2/{name}/manifests/{tag}"
        scope = f"repository:{name}:pull"
        response = await self._authorized(
            "HEAD", url, host, scope, headers={"Accept": ", ".join(MANIFEST_TYPES)}
        )
        if response.code == 200:
            if self.cache_ttl > 0:
                self._exists[image] = self.clock() + self.cache_ttl
            self.log.debug("Image %s exists", image)
            return True
        if response.code == 404:
            self._exists.pop(image, None)
            self.log.debug("Image %s does not exist", image)
            return False
        if response.code in (401, 403):
            raise RegistryError(f"registry {host} refused access to {name} ({response.code})")
        raise RegistryError(f"registry {host} answered {response.code} for {name}:{tag}")

    async def _authorized(self, method, url, host, scope, headers):
        """Send a request, answering Basic and Bearer challenges once."""
        token = self._tokens.get((host, scope))
        auth = None
        if token and token[1] > self.clock():
            auth = "Bearer " + token[0]
        response = await self._send(method, url, headers, auth)
        if response.code != 401:
            return response
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate"))
        creds = credentials_for(self._read_docker_config(), host)
        if scheme == "basic":
            if not creds:
                return response
            auth = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        elif scheme == "bearer" and params.get("realm"):
            auth = "Bearer " + await self._token(host, params, scope, creds)
        else:
            return response
        return await self._send(method, url, headers, auth)

    async def _token(self, host, params, scope, creds):
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        basic = None
        if creds:
            basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        response = await self._send("GET", url, {"Accept": "application/json"}, basic)
        if response.code != 200:
            raise RegistryError(f"token service of {host} answered {response.code}")
        try:
            body = json.loads(response.body)
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, TypeError):
            raise RegistryError(f"token service of {host} sent no token") from None
        expires_in = float(body.get("expires_in") or 60)
        # keep a margin: a token expiring in flight costs one more round trip
        self._tokens[(host, scope)] = (token, self.clock() + max(0.0, expires_in - 10))
        return token

    async def _send(self, method, url, headers, auth):
        headers = dict(headers)
        if auth:
            headers["Authorization"] = auth
        request = HTTPRequest(
            url,
            method=method,
            headers=headers,
            follow_redirects=False,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        where = url.split("?", 1)[0]

        def fetch():
            self.requests += 1
            return AsyncHTTPClient().fetch(request, raise_error=False)

        try:
            response = await fetch_with_retries(
                fetch,
                retries=self.retries,
                what=f"Registry request {method} {where}",
                log=self.log,
                start=self.retry_delay,
            )
        except NETWORK_ERRORS as e:
            raise RegistryError(f"registry request {where} failed: {type(e).__name__}: {e}") from e
        if response.code in RETRY_STATUSES:
            raise RegistryError(f"registry request {where} failed: HTTP {response.code}")
        return response
