"""Prometheus metrics and launch events of binder_service.

Metric names follow BinderHub where the meaning is the same
(``binderhub_launch_count``, ``binderhub_launch_time_seconds``,
``binderhub_inprogress_launches``). Labels take values from small fixed sets:
provider, status, limit kind, cull reason. No repository, user or client
address ever becomes a label or an event field.

Launch events are JSON lines in the shape of BinderHub's
``binderhub.jupyter.org/launch`` schema (provider, spec, ref, status,
origin), written to a file for analytics.
"""

import json
import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from binder_spawner.repos import binderhub_provider_name

from .utils import isoformat, parse_date, utcnow

LAUNCH_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))


class Metrics:
    """The service's metrics, in their own registry (one per application)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.launches = Counter(
            "binderhub_launch_count",
            "Launches by provider and status (success: the server became ready)",
            ["status", "provider"],
            registry=registry,
        )
        self.launch_time = Histogram(
            "binderhub_launch_time_seconds",
            "Seconds from a server's start to ready (builds included)",
            ["status"],
            buckets=LAUNCH_BUCKETS,
            registry=registry,
        )
        self.build_time = Histogram(
            "binderhub_build_time_seconds",
            "Seconds a build pod ran, by result (Kubernetes only)",
            ["status"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf")),
            registry=registry,
        )
        self.inprogress_builds = Gauge(
            "binderhub_inprogress_builds",
            "Build pods pending or running at the last reconciliation (Kubernetes only)",
            registry=registry,
        )
        self.inprogress_launches = Gauge(
            "binderhub_inprogress_launches",
            "Servers starting (pending spawn) at the last reconciliation",
            registry=registry,
        )
        self.running = Gauge(
            "binder_service_running_servers",
            "Servers ready at the last reconciliation",
            registry=registry,
        )
        self.slots = Gauge(
            "binder_service_slots_in_use",
            "Instance slots counted against the limits (reservations and observed servers)",
            registry=registry,
        )
        self.reservations = Counter(
            "binder_service_reservations",
            "Reservation requests by result (created, renewed, refused)",
            ["result"],
            registry=registry,
        )
        self.rejections = Counter(
            "binder_service_limit_rejections",
            "Launches refused by a limit, by the limit that refused (repo or total)",
            ["limit"],
            registry=registry,
        )
        self.expired = Counter(
            "binder_service_reservations_expired",
            "Reservations dropped because their server never appeared on the hub",
            registry=registry,
        )
        self.culls = Counter(
            "binder_service_culled_servers",
            "Servers stopped by the culler, by reason (idle, max_age)",
            ["reason"],
            registry=registry,
        )
        self.users_deleted = Counter(
            "binder_service_deleted_users",
            "Anonymous users deleted after their servers stopped",
            registry=registry,
        )
        self.sweep_time = Histogram(
            "binder_service_sweep_duration_seconds",
            "Seconds one reconciliation and cull sweep took",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf")),
            registry=registry,
        )


BUILD_LABEL = ("app.kubernetes.io/component", "binder-build")


def build_pod_states(pods):
    """Builds among ``pods`` (dicts): ``(in progress, [(uid, status, seconds)] finished)``.

    Build pods carry ``app.kubernetes.io/component: binder-build``
    (binder_spawner/build.py). A finished build's duration runs from the
    pod's start to its container's termination.
    """
    key, value = BUILD_LABEL
    running, finished = 0, []
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(key) != value:
            continue
        status = pod.get("status") or {}
        phase = status.get("phase")
        if phase in ("Pending", "Running"):
            running += 1
            continue
        if phase not in ("Succeeded", "Failed"):
            continue
        started = parse_date(status.get("startTime"))
        ends = [
            parse_date(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            for c in status.get("containerStatuses") or []
        ]
        ends = [e for e in ends if e is not None]
        seconds = (max(ends) - started).total_seconds() if started and ends else None
        status_label = "success" if phase == "Succeeded" else "failure"
        finished.append((pod["metadata"].get("uid"), status_label, seconds))
    return running, finished


def provider_name(provider):
    """BinderHub's name of a provider (``gh`` -> ``GitHub``); unknown ones as ``other``."""
    return binderhub_provider_name(provider)


class LaunchEventLog:
    """Appends launch events as JSON lines to ``path`` (nothing if ``path`` is empty)."""

    schema = "binderhub.jupyter.org/launch"
    version = 5

    def __init__(self, path="", origin=""):
        self.path = path
        self.origin = origin
        self._lock = threading.Lock()
        self.log = logging.getLogger("binder_service.events")

    def event(self, spec, status):
        """The event for a :class:`~binder_spawner.repos.LaunchSpec` with ``status``."""
        # spec.spec is "<provider>/<rest>"; BinderHub's events carry the rest.
        _, _, rest = spec.spec.partition("/")
        return {
            "timestamp": isoformat(utcnow()),
            "schema": self.schema,
            "version": self.version,
            "provider": provider_name(spec.provider),
            "spec": rest,
            "ref": spec.commit or spec.ref,
            "status": status,
            "origin": self.origin,
        }

    def emit(self, spec, status):
        if not self.path:
            return
        line = json.dumps(self.event(spec, status), sort_keys=True) + "\n"
        try:
            with self._lock, open(self.path, "a") as f:
                f.write(line)
        except OSError as e:
            self.log.error("Cannot write launch event to %s: %s", self.path, e)
