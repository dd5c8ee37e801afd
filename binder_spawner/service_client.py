"""Client for the binder_service REST API, used by the spawners in the hub process.

The spawner reserves an instance slot before it builds anything, releases it
when the server stops or the launch fails, and asks where an image is cached.
Every call is bounded by :attr:`BinderServiceClient.timeout`; a service that
cannot be reached raises :class:`ServiceUnavailable`, a full repository raises
:class:`RepoLimitExceeded` (HTTP 429 with the sentence the service wrote).
"""

import json
import os
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable


class BinderServiceError(Exception):
    """A refusal by the service: one user-facing sentence and an HTTP status."""

    def __init__(self, message, status_code=400):
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __str__(self):
        return self.message


class RepoLimitExceeded(BinderServiceError):
    """The repository (or the whole hub) has as many servers as its limit allows.

    ``message`` names the limit, ``limit`` and ``usage`` are the numbers behind
    it and ``retry_after`` is a suggested wait in seconds.
    """

    def __init__(self, message, limit=0, usage=0, retry_after=60):
        super().__init__(message, status_code=429)
        self.limit = limit
        self.usage = usage
        self.retry_after = retry_after


class ServiceUnavailable(BinderServiceError):
    """The service could not be reached or answered with a server error."""

    def __init__(
        self, message="The Binder service is not available right now. Try again in a minute."
    ):
        super().__init__(message, status_code=503)


class BinderServiceClient(LoggingConfigurable):
    """Talks to binder_service over HTTP with the caller's token."""

    url = Unicode(
        help="""
        Base URL of the binder_service, ending in its prefix, e.g.
        ``http://127.0.0.1:10101/services/binder/``.

        Defaults to the environment variable ``BINDER_SERVICE_URL`` if set,
        otherwise ``http://127.0.0.1:10101/services/binder/`` (the service
        defined in the project's ``jupyterhub_config.py`` and chart values,
        reached directly rather than through the proxy).

        Example: ``c.BinderServiceClient.url = "http://hub:10101/services/binder/"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("url")
    def _default_url(self):
        return os.environ.get("BINDER_SERVICE_URL") or "http://127.0.0.1:10101/services/binder/"

    timeout = Float(
        10.0,
        help="""
        Seconds to wait for the service to answer one request (connect and
        response together). Default 10.

        Example: ``c.BinderServiceClient.timeout = 5``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def _url(self, path, query=None):
        base = self.url if self.url.endswith("/") else self.url + "/"
        url = base + path
        if query:
            url += "?" + urlencode(query)
        return url

    async def _request(self, method, path, token, *, body=None, query=None):
        """Send one request; returns (status, parsed JSON body or None, headers)."""
        request = HTTPRequest(
            self._url(path, query),
            method=method,
            headers={
                "Authorization": f"token {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as e:
            self.log.warning("binder service at %s unreachable: %s", self.url, e)
            raise ServiceUnavailable() from e
        if response.code == 599 or response.code >= 500:
            self.log.warning(
                "binder service %s %s answered %s: %s",
                method,
                path,
                response.code,
                response.error,
            )
            raise ServiceUnavailable()
        data = None
        if response.body:
            try:
                data = json.loads(response.body)
            except ValueError:
                data = None
        return response.code, data, response.headers

    @staticmethod
    def _message(data, fallback):
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"]
        return fallback

    async def reserve(self, user, server, repo_key, token):
        """Reserve a slot for ``user``'s server ``server`` (``""`` = default) and ``repo_key``.

        Returns the reservation (``id``, ``user``, ``server``, ``repo``,
        ``expires_at``). Idempotent per (user, server). Raises
        :class:`RepoLimitExceeded` when full and :class:`BinderServiceError`
        for other refusals.
        """
        status, data, headers = await self._request(
            "POST",
            "api/reservations",
            token,
            body={"user": user, "server": server, "repo": repo_key},
        )
        if status in (200, 201):
            return data
        if status == 429:
            data = data if isinstance(data, dict) else {}
            retry_after = data.get("retry_after") or headers.get("Retry-After") or 60
            raise RepoLimitExceeded(
                self._message(data, "Too many servers are running right now. Try again later."),
                limit=data.get("limit", 0),
                usage=data.get("usage", 0),
                retry_after=int(float(retry_after)),
            )
        raise BinderServiceError(
            self._message(data, f"The Binder service refused the launch ({status})."),
            status_code=status,
        )

    async def release(self, reservation_id, token):
        """Release a reservation. A reservation that is already gone is not an error."""
        status, data, _ = await self._request(
            "DELETE", "api/reservations/" + quote(str(reservation_id), safe=""), token
        )
        if status in (200, 204, 404):
            return
        raise BinderServiceError(
            self._message(data, f"The Binder service refused to release ({status})."),
            status_code=status,
        )

    async def usage(self, token):
        """Current counts: ``{"total": n, "repos": {repo_key: n}}``."""
        status, data, _ = await self._request("GET", "api/usage", token)
        if status != 200:
            raise BinderServiceError(
                self._message(data, f"The Binder service refused ({status})."),
                status_code=status,
            )
        return data

    async def placement(self, image, token):
        """Nodes to prefer for ``image``: a list of ``(node name, weight 1..100)``."""
        status, data, _ = await self._request("GET", "api/placement", token, query={"image": image})
        if status != 200:
            raise BinderServiceError(
                self._message(data, f"The Binder service refused ({status})."),
                status_code=status,
            )
        return [(n["name"], int(n["weight"])) for n in (data or {}).get("nodes", [])]
