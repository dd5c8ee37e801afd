"""Fault injection for the emulated API server: errors, latency, broken watches, outages.

    faults = cluster.faults
    faults.add(Fault(resource="pods", verbs={"create"}, error_rate=1.0, status=500, count=2))
    faults.add(Fault(latency=0.2))                      # every request, 200 ms slower
    faults.add(Fault(resource="pods", verbs={"watch"}, drop_watch_after=1))
    faults.add(Fault(resource="events", verbs={"watch"}, stall_watch=True))
    faults.outage(5)                                    # every request 503 for 5 s, open
                                                        # watches and log streams cut
    faults.clear()

From outside the process (a benchmark, or a person next to a running hub),
the API server serves the same controls at ``/emulator/faults`` (always
answered, whatever the faults; the admin token when RBAC is on)::

    curl -X POST $URL/emulator/faults -d '{"outage": {"seconds": 30, "status": 503}}'
    curl -X POST $URL/emulator/faults -d '{"fault": {"resource": "pods", "verbs": ["create"],
                                                    "error_rate": 1.0, "status": 500}}'
    curl $URL/emulator/faults                     # the rules and the outage left
    curl -X DELETE $URL/emulator/faults           # clear everything

or ``python -m tests.k8s fault --kubeconfig FILE outage 30`` (see __main__.py).

A rule matches on resource (plural, optionally ``pods/log``), verbs, namespace
and a path substring; unset fields match everything. Randomness comes from a
seeded ``random.Random`` so failing runs can be replayed.
"""

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field

from .errors import ApiError

_REASONS = {
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
    409: "Conflict",
    403: "Forbidden",
    404: "NotFound",
}


@dataclass
class Fault:
    """One fault rule; see the module docstring."""

    resource: str = None
    verbs: set = None
    namespace: str = None
    path_contains: str = None
    error_rate: float = 0.0  # 0..1, fraction of matching requests that fail
    status: int = 500
    message: str = "injected fault"
    latency: float = 0.0  # seconds added before the request is handled
    drop_watch_after: int = None  # close matching watches after this many events
    stall_watch: bool = False  # keep matching watches open but send nothing
    count: int = None  # stop after injecting this many errors (None: unlimited)
    injected: int = field(default=0, init=False)

    def matches(self, info):
        resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
        if self.resource is not None and self.resource not in (resource, info.resource):
            return False
        if self.verbs is not None and info.verb not in self.verbs:
            return False
        if self.namespace is not None and info.namespace != self.namespace:
            return False
        if self.path_contains is not None and self.path_contains not in info.path:
            return False
        return True


@dataclass
class WatchFault:
    drop_after: int = None
    stall: bool = False


class FaultInjector:
    """The fault rules of one API server, consulted by its request handler."""

    def __init__(self, seed=0):
        self.rules = []
        self.rng = random.Random(seed)
        self.outage_until = 0.0
        self.outage_status = 503
        #: called with no arguments when an outage cuts open streams (the API server's)
        self.stream_cutters = []

    def add(self, fault):
        self.rules.append(fault)
        return fault

    def clear(self):
        self.rules.clear()
        self.outage_until = 0.0

    def describe(self):
        """The rules and the outage, as JSON-able data (for ``GET /emulator/faults``)."""
        return {
            "outage_seconds_left": max(0.0, self.outage_until - time.monotonic()),
            "outage_status": self.outage_status,
            "rules": [
                {k: sorted(v) if isinstance(v, set) else v for k, v in asdict(rule).items()}
                for rule in self.rules
            ],
        }

    def apply(self, body):
        """Apply one admin request body: ``{"outage": {...}}`` or ``{"fault": {...}}``."""
        if not isinstance(body, dict) or not body.keys() & {"outage", "fault"}:
            raise ValueError('expected {"outage": {...}} or {"fault": {...}}')
        if "outage" in body:
            options = dict(body["outage"])
            self.outage(
                float(options.pop("seconds")),
                status=int(options.pop("status", 503)),
                cut_streams=bool(options.pop("cut_streams", True)),
            )
            if options:
                raise ValueError(f"unknown outage options: {sorted(options)}")
        if "fault" in body:
            options = dict(body["fault"])
            if options.get("verbs") is not None:
                options["verbs"] = set(options["verbs"])
            self.add(Fault(**options))

    def outage(self, seconds, status=503, cut_streams=True):
        """Fail every request (health and discovery included) for ``seconds`` from now.

        With ``cut_streams`` (default) the watches and followed logs that are
        open lose their connection, as when a real API server goes away.
        """
        self.outage_until = time.monotonic() + seconds
        self.outage_status = status
        if cut_streams:
            for cut in self.stream_cutters:
                cut()

    async def before(self, info):
        """Sleep for matching latencies; return an ApiError to send instead, or None."""
        if time.monotonic() < self.outage_until:
            return ApiError(
                self.outage_status, _REASONS.get(self.outage_status, "InternalError"), "API outage"
            )
        delay = 0.0
        error = None
        for rule in self.rules:
            if not rule.matches(info):
                continue
            delay += rule.latency
            if (
                error is None
                and rule.error_rate
                and (rule.count is None or rule.injected < rule.count)
            ):
                if self.rng.random() < rule.error_rate:
                    rule.injected += 1
                    error = ApiError(
                        rule.status, _REASONS.get(rule.status, "InternalError"), rule.message
                    )
        if delay:
            await asyncio.sleep(delay)
        return error

    def watch_fault(self, info):
        """How a watch request that passed ``before`` should misbehave (None: normally)."""
        result = None
        for rule in self.rules:
            if rule.matches(info) and (rule.drop_watch_after is not None or rule.stall_watch):
                result = result or WatchFault()
                if rule.drop_watch_after is not None:
                    result.drop_after = rule.drop_watch_after
                result.stall = result.stall or rule.stall_watch
        return result
