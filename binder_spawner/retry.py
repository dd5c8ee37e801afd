"""Retrying, one way for the whole project: exponential backoff with full jitter.

- :func:`backoff`: the wait before a retry (as ``jupyterhub.utils.exponential_backoff``
  waits: a random time below a doubling cap).
- :func:`fetch_with_retries`: an HTTP request to the registry or the hub,
  retried when the peer is unreachable or answers 5xx or 429.

``retries`` always counts retries: ``retries=2`` is one attempt and at most
two more. Kubernetes calls retry by deadline instead
(:class:`binder_spawner.kuberetry.ApiRetry`), with the same :func:`backoff`.
"""

import asyncio
import random

from tornado.httpclient import HTTPClientError

#: answers that mean "busy or away, ask again": 429, every 5xx, and tornado's 599 (no answer)
RETRY_STATUSES = frozenset({429, 599, *range(500, 600)})

#: failures to reach the peer at all
NETWORK_ERRORS = (OSError, HTTPClientError, asyncio.TimeoutError)


def backoff(attempt, start=0.2, factor=2.0, cap=5.0, rng=random):
    """Wait before retry ``attempt`` (0-based): full jitter below an exponential cap."""
    return rng.uniform(0, min(cap, start * factor**attempt))


async def fetch_with_retries(fetch, *, retries, what, log, start=0.2, cap=5.0):
    """``await fetch()`` (a tornado fetch with ``raise_error=False``), retried ``retries`` times.

    Returns the first answer that is not in :data:`RETRY_STATUSES`, or the
    last answer when every attempt got one; raises the last network error
    when the last attempt could not reach the peer. ``what`` names the
    request in the log (no query string: it may hold tokens).
    """
    attempts = max(0, retries) + 1
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            response = await fetch()
        except NETWORK_ERRORS as e:
            if last:
                raise
            problem = f"{type(e).__name__}: {e}"
        else:
            if response.code not in RETRY_STATUSES or last:
                return response
            problem = f"HTTP {response.code}"
        wait = backoff(attempt, start=start, cap=cap)
        log.warning(
            "%s failed (%s), retry %d/%d in %.2f s", what, problem, attempt + 1, retries, wait
        )
        await asyncio.sleep(wait)
