"""Talking to research archives from the hub: every hop checked, every answer bounded.

:class:`ArchiveClient` fetches URLs for :class:`~binder_spawner.repos.RepoPolicy`
(the DOI resolver, an archive's API, a record's files). Nothing it contacts
is trusted because a link named it, and archives redirect (the DOI resolver
always does, download links often), so:

- redirects are followed by hand, at most :data:`MAX_REDIRECTS`, and every
  URL, the first and each ``Location``, passes the policy's offline checks
  (scheme, no credentials, no loopback or private literal, no
  ``localhost``) before it is contacted;
- the connection goes through :class:`_CheckingResolver`: the host is looked
  up once and the connection is made only to addresses that passed the
  network rules (public, not in ``banned_networks``, unless the host is in
  ``allowed_hosts``), so DNS cannot answer differently between check and use;
- answers are read with a size cap (API answers in memory, files streamed to
  a sink), with connect and request timeouts;
- the archive's errors become one sentence each: 404 not found, 410
  withdrawn, 429 rate-limited, 5xx archive trouble.
"""

import asyncio
import ipaddress
import json
import socket
from urllib.parse import urljoin, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import HTTPInputError
from tornado.netutil import Resolver

from . import netcheck
from .archives import ArchiveError

#: Most redirects followed for one request (the DOI resolver, then the archive's own).
MAX_REDIRECTS = 8
#: Most bytes of one API answer (JSON, or the record page a DOI leads to).
MAX_API_BYTES = 16 * 1024 * 1024
USER_AGENT = "jupyterhub-binder"
_REDIRECTS = (301, 302, 303, 307, 308)


class _Abort(HTTPInputError):
    """Ends a transfer from inside tornado's body callback (it passes through quietly)."""


class _CheckingResolver(Resolver):
    """Looks a host up once and hands the connection only addresses that passed the rules."""

    def initialize(self, policy):
        self.policy = policy

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        except OSError:
            raise ArchiveError(f"The archive host {host} could not be found.", 404) from None
        trusted = self.policy._is_trusted(netcheck.normalise_host(host), port)
        addresses = []
        for fam, _, _, _, sockaddr in infos:
            if not trusted:
                ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
                problem = netcheck.address_problem(ip, self.policy._banned_networks())
                if problem:
                    raise ArchiveError(
                        f"The archive host {host} resolves to {problem}; "
                        "only public hosts are allowed.",
                        403,
                    )
            addresses.append((fam, sockaddr))
        return addresses


class Answer:
    """The final answer of a request: status, the URL that gave it, its body (if kept)."""

    def __init__(self, code, url, body=b"", headers=None):
        self.code = code
        self.url = url
        self.body = body
        self.headers = headers or {}

    def json(self, what):
        try:
            return json.loads(self.body)
        except ValueError:
            raise ArchiveError(f"{what} did not answer with JSON.", 502) from None


def status_error(code, what, retry_after=None):
    """The refusal for an archive's HTTP error ``code``; ``what`` names the thing asked."""
    if code == 202:
        return ArchiveError(
            f"The archive is still preparing the download ({what}). Try again in a minute.", 503
        )
    if code == 404:
        return ArchiveError(f"{what} was not found. Check the DOI or link.", 404)
    if code == 410:
        return ArchiveError(
            f"{what} has been withdrawn or deleted by the archive and cannot be launched.", 410
        )
    if code == 429:
        wait = f" Try again in {retry_after} seconds." if retry_after else " Try again later."
        return ArchiveError(f"The archive is limiting requests right now.{wait}", 429)
    if code in (401, 403):
        return ArchiveError(f"{what} is not public: the archive refused access.", 403)
    if code >= 500:
        return ArchiveError(
            f"The archive answered with an error (HTTP {code}) for {what}. Try again later.", 502
        )
    return ArchiveError(f"The archive answered HTTP {code} for {what}.", 502)


class ArchiveClient:
    """HTTP GETs for one policy: checked hops, bounded answers. One per resolution or download."""

    def __init__(self, policy, *, timeout=20.0, download_timeout=1800.0):
        self.policy = policy
        self.timeout = timeout
        #: the most one file's download may take (a server that trickles is cut off)
        self.download_timeout = download_timeout
        self._client = None

    def _http(self):
        if self._client is None:
            self._client = AsyncHTTPClient(
                force_instance=True,
                resolver=_CheckingResolver(policy=self.policy),
                # bodies are bounded by the callers' caps, not by tornado's 100 MB default
                max_body_size=2**62,
            )
        return self._client

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None

    async def get(
        self,
        url,
        what,
        *,
        sink=None,
        max_bytes=MAX_API_BYTES,
        hosts=None,
        accept="application/json",
        method="GET",
    ):
        """GET ``url`` following checked redirects; returns the final 200 :class:`Answer`.

        ``sink(chunk)`` receives the body of the final answer (else it is kept
        in ``Answer.body``, at most ``max_bytes``). ``hosts``: if given, only
        these ``(host, port)`` pairs may be contacted (an archive's own API).
        ``what`` names the thing in error sentences ("The Zenodo record ...").
        """
        for _ in range(MAX_REDIRECTS + 1):
            self.check(url, hosts)
            answer = await self._one(url, what, sink, max_bytes, accept, method)
            if answer.code in _REDIRECTS:
                location = answer.headers.get("Location")
                if not location:
                    raise ArchiveError(f"The archive redirected {what} to nowhere.", 502)
                url = urljoin(url, location)
                continue
            if answer.code != 200:
                raise status_error(answer.code, what, answer.headers.get("Retry-After"))
            return answer
        raise ArchiveError(f"The archive redirected too many times for {what}.", 502)

    def check(self, url, hosts=None):
        """The offline checks of one hop: scheme, credentials, literal and local hosts."""
        host, port = self.policy.check_fetch_url(url)
        if hosts is not None and (host, port) not in hosts and (host, None) not in hosts:
            raise ArchiveError(
                f"The archive sent this hub to {host}, which is not one of its hosts.", 502
            )
        return host, port

    async def _one(self, url, what, sink, max_bytes, accept, method="GET"):
        state = {"code": None, "size": 0, "chunks": [], "error": None}

        def on_header(line):
            if line.startswith("HTTP/"):
                parts = line.split(" ", 2)
                state["code"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

        def on_chunk(chunk):
            if state["code"] != 200:
                return  # the body of a redirect or an error: not wanted
            state["size"] += len(chunk)
            if sink is not None:
                try:
                    sink(chunk)
                except ArchiveError as e:
                    state["error"] = e
                    raise _Abort(e.message) from None
            else:
                if state["size"] > max_bytes:
                    state["error"] = ArchiveError(
                        f"The archive's answer for {what} is too large.", 502
                    )
                    raise _Abort("too large")
                state["chunks"].append(chunk)

        request = HTTPRequest(
            url,
            method=method,
            body=b"" if method == "POST" else None,
            follow_redirects=False,
            user_agent=USER_AGENT,
            headers={"Accept": accept},
            connect_timeout=self.timeout,
            request_timeout=self.timeout if sink is None else self.download_timeout,
            header_callback=on_header,
            streaming_callback=on_chunk,
            decompress_response=False,
        )
        try:
            response = await self._http().fetch(request, raise_error=False)
        except ArchiveError:
            raise
        except HTTPClientError as e:
            if state["error"] is not None:
                raise state["error"] from None
            if e.code == 599:
                raise ArchiveError(
                    f"Timed out or cut off while fetching {what}. Try again in a minute.", 504
                ) from None
            raise
        except (OSError, asyncio.TimeoutError):
            raise ArchiveError(
                f"Could not connect to the archive for {what}. Try again in a minute.", 502
            ) from None
        if response.code == 599:
            if state["error"] is not None:
                raise state["error"]
            if isinstance(response.error, ArchiveError):
                raise response.error
            raise ArchiveError(
                f"Timed out or cut off while fetching {what}. Try again in a minute.", 504
            )
        return Answer(response.code, url, b"".join(state["chunks"]), response.headers)


def url_hosts(urls):
    """``{(host, port)}`` of ``urls`` (for :meth:`ArchiveClient.get`'s ``hosts``)."""
    found = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname:
            found.add(
                (
                    netcheck.normalise_host(parts.hostname),
                    parts.port or (443 if parts.scheme == "https" else 80),
                )
            )
    return found
