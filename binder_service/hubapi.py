"""The one JupyterHub REST API client of binder_service.

Every request carries a token (the service's own unless another is given),
is bounded by a timeout, and is retried with exponential backoff on network
errors and 5xx answers (a bounded number of times). Lists are read page by
page with JupyterHub's pagination (``Accept: application/jupyterhub-pagination+json``,
``offset``/``limit``), so a hub with many users is never read in one response.
"""

import json
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from binder_spawner.retry import fetch_with_retries

PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"


class HubAPIError(Exception):
    """The hub answered a request with an unexpected status."""

    def __init__(self, method, path, status, body=""):
        super().__init__(f"{method} {path} -> {status} {body[:200]}")
        self.status = status


def server_path(user, server=""):
    """API path of ``user``'s server (``""`` = the default server)."""
    base = f"/users/{quote(user, safe='')}"
    return base + ("/server" if not server else f"/servers/{quote(server, safe='')}")


class HubAPI(LoggingConfigurable):
    """A small async client for ``JUPYTERHUB_API_URL``."""

    api_url = Unicode(
        "http://127.0.0.1:8081/hub/api",
        help="""
        The hub's REST API URL. Set from ``JUPYTERHUB_API_URL`` by the service.

        Example: ``c.HubAPI.api_url = "http://hub:8081/hub/api"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    api_token = Unicode(
        help="""
        The service's API token. Set from ``JUPYTERHUB_API_TOKEN`` by the service.

        Example: ``c.HubAPI.api_token = os.environ["JUPYTERHUB_API_TOKEN"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    timeout = Float(
        20.0,
        help="""
        Seconds one request to the hub may take (connect and answer). Default 20.

        Example: ``c.HubAPI.timeout = 30``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    retries = Integer(
        4,
        help="""
        How many times a request failing with a network error or a 5xx or 429
        answer is retried, with exponential backoff (full jitter below 0.2 s,
        doubling, capped at 5 s). Default 4: at most five attempts. 0 tries once.

        Example: ``c.HubAPI.retries = 2``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    page_size = Integer(
        200,
        help="""
        Users per page when listing users (JupyterHub caps it at its own
        ``api_page_max_limit``, 200 by default). Default 200.

        Example: ``c.HubAPI.page_size = 500``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def _request(self, method, path, token, body, headers):
        hdrs = {"Authorization": f"token {token or self.api_token}", "Accept": "application/json"}
        hdrs.update(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        return HTTPRequest(
            self.api_url.rstrip("/") + path,
            method=method,
            headers=hdrs,
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )

    async def request(self, method, path, *, token=None, body=None, headers=None, ok=(200,)):
        """Send a request, retrying transient failures; returns ``(status, JSON or None)``.

        A status outside ``ok`` (other than a retried 5xx) raises :class:`HubAPIError`.
        """
        response = await fetch_with_retries(
            lambda: AsyncHTTPClient().fetch(
                self._request(method, path, token, body, headers), raise_error=False
            ),
            retries=self.retries,
            what=f"Hub API {method} {path}",
            log=self.log,
        )
        if response.code in ok:
            return response.code, json.loads(response.body) if response.body else None
        text = response.body.decode("utf8", "replace") if response.body else ""
        raise HubAPIError(method, path, response.code, text)

    async def paginate(self, path, params=None):
        """Yield every item of a paginated list (``/users``, ``/groups``)."""
        offset = 0
        while True:
            query = dict(params or {}, offset=offset, limit=self.page_size)
            _, data = await self.request(
                "GET", f"{path}?{urlencode(query)}", headers={"Accept": PAGINATION_MEDIA_TYPE}
            )
            if isinstance(data, list):  # a hub that ignores the pagination media type
                for item in data:
                    yield item
                return
            for item in data["items"]:
                yield item
            following = (data.get("_pagination") or {}).get("next")
            if not following or not data["items"]:
                return
            offset = following["offset"]

    async def users(self, state=None):
        """All users (``state`` = ``"active"``, ``"inactive"``, ``"ready"`` or None), paginated."""
        params = {"state": state} if state else {}
        async for user in self.paginate("/users", params):
            yield user

    async def user(self, name):
        """One user's model, or None if there is no such user."""
        try:
            _, data = await self.request("GET", f"/users/{quote(name, safe='')}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise
        return data

    async def whoami(self, token):
        """The model of the owner of ``token`` (``kind``, ``name``, ``scopes``), or None if invalid."""
        try:
            _, data = await self.request("GET", "/user", token=token)
        except HubAPIError as e:
            if e.status in (401, 403):
                return None
            raise
        return data

    async def stop_server(self, user, server=""):
        """Ask the hub to stop a server; returns True if stopped, False if the stop is pending (202)."""
        status, _ = await self.request("DELETE", server_path(user, server), ok=(202, 204, 400, 404))
        return status != 202

    async def delete_user(self, name):
        """Delete a user; returns False if the hub refused (400: a server is still stopping)."""
        status, data = await self.request(
            "DELETE", f"/users/{quote(name, safe='')}", ok=(204, 400, 404)
        )
        if status == 400:
            self.log.debug("Hub refused to delete %s: %s", name, data)
        return status != 400

    async def info(self):
        """The hub's version answer, used by the health check."""
        _, data = await self.request("GET", "/")
        return data
