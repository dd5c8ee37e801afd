"""Kubernetes API calls that ride out API blips: bounded, retried, with a deadline.

Every call the launch and build path makes goes through :class:`ApiRetry`:
each attempt is bounded by ``request_timeout``; a 5xx, a 429 (waiting at
least its ``Retry-After``), a connection error or a timed-out attempt is
retried with exponential backoff and full jitter, as
``jupyterhub.utils.exponential_backoff`` does; once the API has failed for
``deadline`` seconds in a row the call raises :class:`ClusterUnavailable`,
which the spawner turns into one sentence for the user (the detail goes to
the log). Any other error (403, 404, 409, 422) is an answer, not an outage,
and is raised at once for the caller to handle.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from kubernetes_asyncio.client.rest import ApiException

from .retry import backoff

#: statuses that mean "the API is overloaded or away", not "the request is wrong"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: what the user reads when the deadline passes
CLUSTER_UNAVAILABLE_MESSAGE = "The cluster is not answering. Try again in a few minutes."


class ClusterUnavailable(Exception):
    """The Kubernetes API kept failing for ``deadline`` seconds; ``last`` is its last error."""

    def __init__(self, what, deadline, last):
        super().__init__(f"{what}: the Kubernetes API failed for {deadline:g} s ({describe(last)})")
        self.what = what
        self.deadline = deadline
        self.last = last


def is_retryable(error):
    """Is ``error`` an API outage (retry) rather than an answer (raise)?"""
    if isinstance(error, ApiException):
        # status 0: kubernetes_asyncio raises ApiException without a response
        # for some transport failures
        return error.status in RETRY_STATUSES or not error.status
    return isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError))


def retry_after(error):
    """The ``Retry-After`` seconds of a 429/503 answer, or 0."""
    headers = getattr(error, "headers", None) or {}
    try:
        return max(0.0, float(headers.get("Retry-After", 0)))
    except (TypeError, ValueError):
        return 0.0


def describe(error):
    """A short, log-safe description of an API error (no response headers)."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason or ''}".strip()
    return f"{error.__class__.__name__}: {error}".rstrip(": ")


class ApiRetry:
    """Runs Kubernetes calls with ``request_timeout`` per attempt and ``deadline`` per outage.

    ``await retry.call(api.read_namespaced_pod, name, ns, what="read build pod ns/name")``
    passes ``_request_timeout`` to the client and bounds the attempt with
    ``asyncio.wait_for`` as well (a stalled connection does not hang a launch).
    """

    def __init__(self, *, request_timeout, deadline, log, clock=time.monotonic):
        self.request_timeout = request_timeout
        self.deadline = deadline
        self.log = log
        self.clock = clock
        #: how many attempts failed with an outage (retried or not)
        self.failures = 0

    async def call(self, method, *args, what, **kwargs):
        kwargs.setdefault("_request_timeout", self.request_timeout)
        return await self.run(lambda: method(*args, **kwargs), what=what)

    async def run(self, make_call, *, what, bound=True):
        """Await ``make_call()`` until it answers; see the module docstring.

        ``bound=False`` for calls that stream (a watch or a followed log):
        the caller bounds them itself.
        """
        first_failure = None
        attempt = 0
        while True:
            try:
                if bound:
                    return await asyncio.wait_for(make_call(), self.request_timeout)
                return await make_call()
            except Exception as e:
                if not is_retryable(e):
                    raise
                self.failures += 1
                now = self.clock()
                if first_failure is None:
                    first_failure = now
                    self.log.warning("Kubernetes API failed to %s: %s, retrying", what, describe(e))
                remaining = self.deadline - (now - first_failure)
                if remaining <= 0:
                    self.log.error(
                        "Kubernetes API failed to %s for %.0f s, giving up: %s",
                        what,
                        now - first_failure,
                        describe(e),
                    )
                    raise ClusterUnavailable(what, self.deadline, e) from e
                wait = min(max(backoff(attempt), retry_after(e)), remaining)
                attempt += 1
                self.log.debug("Retrying %s in %.2f s (%s)", what, wait, describe(e))
                await asyncio.sleep(wait)
