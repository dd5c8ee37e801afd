"""The binder_service application: configuration, the web server, the periodic sweep.

Run by the hub as a managed service::

    c.JupyterHub.services = [{
        "name": "binder",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "binder_service"],
    }]

It reads ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``,
``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX`` and
``JUPYTERHUB_BASE_URL`` from the environment the hub gives it. At start, and
then every ``reconcile_every`` seconds, it lists the hub's active servers and
rebuilds its slot counts from them; every ``cull_every`` seconds it culls.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.log import LogFormatter
from traitlets import Dict, Float, Integer, Unicode, default, validate
from traitlets.config import Application, Config, TraitError

from binder_spawner.images import names_repository
from binder_spawner.repos import RepoPolicy, SpecError

from . import handlers as handlers_module
from . import utils
from .culler import Culler
from .hubapi import HubAPI, HubAPIError
from .hubconfig import HUB_CONFIG_ENV, SHARED
from .limits import LimitExceeded, LimitRules, Observed, ReservationStore
from .metrics import LaunchEventLog, Metrics, build_pod_states
from .placement_source import PlacementSource
from .utils import parse_date


def now():
    """The service's clock: :func:`binder_service.utils.utcnow`, looked up at each call.

    Looked up, not imported, so that a test that patches the seam moves every
    reader of time.
    """
    return utils.utcnow()


STATIC = Path(__file__).parent / "static"

#: Largest request body the service reads (bytes). Its API takes bodies of a few
#: hundred bytes; tornado's default (100 MB) let anyone, without a token, stall
#: the service's one event loop for seconds with each request it parsed.
MAX_BODY_SIZE = 64 * 1024


def _starting_or_running(server):
    """True if a hub server model (or None) is starting or running, not stopping or stopped."""
    return bool(server) and not server.get("stopped") and server.get("pending") != "stop"


class BinderService(Application):
    """Culling, per-repository limits, placement and launch links for jupyterhub-binder."""

    name = "binder-service"
    description = __doc__
    classes = [HubAPI, Culler, PlacementSource, RepoPolicy]

    aliases = {
        "config": "BinderService.config_file",
        "ip": "BinderService.ip",
        "port": "BinderService.port",
        "log-level": "Application.log_level",
        "per-repo-limit": "BinderService.per_repo_limit",
        "total-limit": "BinderService.total_limit",
        "reservation-ttl": "BinderService.reservation_ttl",
        "reconcile-every": "BinderService.reconcile_every",
        "cull-every": "BinderService.cull_every",
        "timeout": "Culler.timeout",
        "max-age": "Culler.max_age",
        "concurrency": "Culler.concurrency",
        "anonymous-group": "Culler.anonymous_group",
        "launch-events-file": "BinderService.launch_events_file",
        "namespace": "PlacementSource.namespace",
    }
    flags = {
        "kubernetes": (
            {"PlacementSource": {"enabled": True}},
            "Read pods and nodes from Kubernetes (in-cluster config or KUBECONFIG).",
        ),
        "cull-admin-users": ({"Culler": {"cull_admin_users": True}}, "Cull admins' servers too."),
        "debug": ({"Application": {"log_level": 10}}, "Log at debug level."),
    }

    _log_formatter_cls = LogFormatter

    @default("log_level")
    def _default_log_level(self):
        # the hub's own default: the service's actions (culls, refusals, slots)
        # show in the hub's output, which the service's output joins
        return logging.INFO

    @default("log_datefmt")
    def _default_log_datefmt(self):
        return "%Y-%m-%d %H:%M:%S"

    @default("log_format")
    def _default_log_format(self):
        # JupyterHub's own format (jupyterhub/app.py, JupyterHub._log_format_default)
        return (
            "%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s "
            "%(module)s:%(lineno)d]%(end_color)s %(message)s"
        )

    config_file = Unicode(
        "",
        help="""
        A configuration file (``.py`` or ``.json``) to load, e.g.
        ``binder_service_config.py`` with ``c.BinderService.per_repo_limit = 50``.
        Default: none.

        Example: ``c.BinderService.config_file = "/etc/jupyterhub/binder_service_config.py"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    ip = Unicode(
        help="""
        Address to listen on. Default: the host of ``JUPYTERHUB_SERVICE_URL``,
        else 127.0.0.1.

        Example: ``c.BinderService.ip = "0.0.0.0"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("ip")
    def _default_ip(self):
        url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        return (urlparse(url).hostname if url else None) or "127.0.0.1"

    port = Integer(
        help="""
        Port to listen on. Default: the port of ``JUPYTERHUB_SERVICE_URL``,
        else 10101.

        Example: ``c.BinderService.port = 10101``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("port")
    def _default_port(self):
        url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        return (urlparse(url).port if url else None) or 10101

    base_url = Unicode(
        help="""
        URL prefix the service answers under. Default ``JUPYTERHUB_SERVICE_PREFIX``,
        else ``/services/binder/``.

        Example: ``c.BinderService.base_url = "/services/binder/"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("base_url")
    def _default_base_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/binder/"

    @validate("base_url")
    def _validate_base_url(self, proposal):
        value = proposal["value"]
        return "/" + value.strip("/") + "/" if value.strip("/") else "/"

    hub_base_url = Unicode(
        help="""
        The hub's base URL, for launch redirects to ``{hub_base_url}hub/spawn``.
        Default ``JUPYTERHUB_BASE_URL``, else ``/``.

        Example: ``c.BinderService.hub_base_url = "/jupyter/"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("hub_base_url")
    def _default_hub_base_url(self):
        value = os.environ.get("JUPYTERHUB_BASE_URL") or "/"
        return value if value.endswith("/") else value + "/"

    per_repo_limit = Integer(
        100,
        help="""
        Servers (pending or running) one repository may have at once.
        Default 100. 0 = no limit.

        Example: ``c.BinderService.per_repo_limit = 50``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    per_repo_limit_overrides = Dict(
        help="""
        Limits for repositories matching patterns: a dict of regular
        expression -> limit, matched in full and case-insensitively against
        the repo key (``gh/org/repo``, ``gl/group/project``, ``git/<url>``,
        ``gist/user/id``). The highest matching limit wins. Default: none.

        Example: ``c.BinderService.per_repo_limit_overrides = {"gh/my-org/.*": 300}``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("per_repo_limit_overrides")
    def _validate_overrides(self, proposal):
        import re

        for pattern, limit in proposal["value"].items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise TraitError(
                    f"BinderService.per_repo_limit_overrides: bad pattern {pattern!r}: {e}"
                ) from None
            if not isinstance(limit, int) or limit < 0:
                raise TraitError(
                    f"BinderService.per_repo_limit_overrides: limit of {pattern!r} "
                    f"must be an integer >= 0, not {limit!r}"
                )
        return proposal["value"]

    total_limit = Integer(
        0,
        help="""
        Binder servers (pending or running) the whole hub may have at once.
        Default 0: no total limit.

        Example: ``c.BinderService.total_limit = 2000``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    reservation_ttl = Integer(
        900,
        help="""
        Seconds a reservation is kept if its server never appears on the hub
        (the spawner crashed, or the client reserved without starting).
        Default 900.

        Example: ``c.BinderService.reservation_ttl = 1800``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    retry_after = Integer(
        60,
        help="""
        Seconds a refused launch is told to wait (``Retry-After``). Default 60.

        Example: ``c.BinderService.retry_after = 120``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    reconcile_every = Float(
        30,
        help="""
        Seconds between rebuilds of the slot counts from the hub's servers.
        Default 30.

        Example: ``c.BinderService.reconcile_every = 60``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    cull_every = Float(
        60,
        help="""
        Seconds between cull sweeps. Default 60.

        Example: ``c.BinderService.cull_every = 120``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    token_cache_ttl = Float(
        30,
        help="""
        Seconds a caller's token -> identity answer from the hub is reused.
        Default 30.

        Example: ``c.BinderService.token_cache_ttl = 60``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    launch_events_file = Unicode(
        "",
        help="""
        File to append launch events to, as JSON lines in the
        ``binderhub.jupyter.org/launch`` shape (no user names, no client
        addresses). Default: none (no events written).

        Example: ``c.BinderService.launch_events_file = "/srv/events/launches.jsonl"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    event_origin = Unicode(
        "",
        help="""
        The ``origin`` field of launch events (e.g. your hub's host name).
        Default: the host of ``JUPYTERHUB_PUBLIC_HUB_URL`` if set, else empty.

        Example: ``c.BinderService.event_origin = "binder.example.org"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("event_origin")
    def _default_event_origin(self):
        url = os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL") or ""
        return urlparse(url).hostname or ""

    def initialize(self, argv=None):
        super().initialize(argv)
        handed_over = json.loads(os.environ.get(HUB_CONFIG_ENV) or "{}")
        if handed_over:
            # the hub's settings that the service shares (binder_service.hubconfig)
            self.update_config(Config(handed_over))
        if self.config_file:
            path = Path(self.config_file)
            self.load_config_file(path.name, path=str(path.parent.resolve()))
        if handed_over or self.config_file:
            # the command line wins over the file
            self.update_config(self.cli_config)
        self._check_shared_settings(handed_over)
        self.log.name = "BinderService"
        self.clock = now
        self.metrics = Metrics()
        self.events = LaunchEventLog(self.launch_events_file, self.event_origin)
        self.hub = HubAPI(parent=self, log=self.log)
        if not self.hub.api_token:
            self.hub.api_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if "JUPYTERHUB_API_URL" in os.environ and "api_url" not in self.config.HubAPI:
            self.hub.api_url = os.environ["JUPYTERHUB_API_URL"]
        self.culler = Culler(
            parent=self, log=self.log, hub=self.hub, clock=self.clock, metrics=self.metrics
        )
        self.placement_source = PlacementSource(parent=self, log=self.log)
        self.store = ReservationStore(
            LimitRules.from_config(
                self.per_repo_limit, self.per_repo_limit_overrides, self.total_limit
            ),
            ttl=self.reservation_ttl,
        )
        self._policy = None
        self._tokens = {}
        self._synced = asyncio.Event()
        self._last_cull = None
        self._launching = {}  # (user, server) -> started, for launch events
        self._badges = {}
        self._builds_seen = set()

    def _check_shared_settings(self, handed_over):
        """Refuse to start when the service's own file or command line sets a value
        the hub hands over differently: each of them has one source, the hub's
        configuration."""
        for (section, name), (kind, trait) in SHARED.items():
            if name not in handed_over.get(section, {}):
                continue
            hub_value = handed_over[section][name]
            own_value = self.config[section][name]
            if own_value != hub_value:
                self.log.critical(
                    "%s.%s is %r in binder_service's own configuration, but the hub's "
                    "%s has %s = %r and hands it over. Set it once, as the %s's %s in the "
                    "hub's configuration, and remove %s.%s from the service's.",
                    section,
                    name,
                    own_value,
                    kind,
                    trait,
                    hub_value,
                    kind,
                    trait,
                    section,
                    name,
                )
                self.exit(2)

    def shared_settings(self):
        """The values this service shares with the hub (``api/settings``)."""
        objects = {"Culler": self.culler, "PlacementSource": self.placement_source}
        settings = {}
        for section, name in SHARED:
            settings.setdefault(section, {})[name] = getattr(objects[section], name)
        return settings

    # collaborators -------------------------------------------------------

    @property
    def policy(self):
        """The RepoPolicy (``c.RepoPolicy.*`` applies), created on first use."""
        if self._policy is None:
            self._policy = RepoPolicy(parent=self, log=self.log)
        return self._policy

    def spec_of(self, user_options):
        """The LaunchSpec of a server's ``user_options``, or None if they name no repository."""
        if not isinstance(user_options, dict) or not user_options.get("repo"):
            return None
        try:
            return self.policy.parse(user_options)
        except Exception as e:  # SpecError, or options another spawner wrote
            self.log.debug("user_options without a valid repo: %s", e)
            return None

    def parse_launch(self, provider_spec):
        """The LaunchSpec of a ``v2/`` path; a bad one raises a 4xx ``HTTPError``."""
        try:
            return self.policy.parse(provider_spec)
        except SpecError as e:
            raise web.HTTPError(e.status_code, e.message) from None

    @property
    def hub_spawn_url(self):
        return self.hub_base_url + "hub/spawn"

    def badge(self, name):
        if name not in self._badges:
            self._badges[name] = (STATIC / name).read_bytes()
        return self._badges[name]

    # authentication ------------------------------------------------------

    async def authenticate(self, token):
        """The hub's model of ``token``'s owner, cached ``token_cache_ttl`` seconds; None if invalid.

        Concurrent requests with the same token share one hub lookup.
        """
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached and cached[1] > now:
            return await asyncio.shield(cached[0])
        if len(self._tokens) > 10000:
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
        lookup = asyncio.ensure_future(self.hub.whoami(token))
        self._tokens[key] = (lookup, now + self.token_cache_ttl)
        try:
            return await asyncio.shield(lookup)
        except Exception:
            self._tokens.pop(key, None)
            raise

    # limits --------------------------------------------------------------

    async def reserve(self, user, server, repo, verify=True):
        """Take a slot; with ``verify`` the server must be active on the hub, and the
        repository its ``user_options`` name wins over ``repo``."""
        await self._synced.wait()
        shown = None
        if verify:
            model = await self.hub.user(user)
            found = ((model or {}).get("servers") or {}).get(server)
            if not _starting_or_running(found):
                # a stopping server's slot is given back by its spawner, with this
                # same token: taken again, it would outlive the server by the ttl
                raise web.HTTPError(
                    409, "Reservations are only for servers that are starting or running."
                )
            options = found.get("user_options")
            spec = self.spec_of(options)
            if spec is not None:
                # a refusal names the repository as the visitor wrote it, not its key
                shown = options["repo"]
            if spec is not None and spec.repo_key != repo:
                self.log.warning(
                    "Reservation for %s/%s names %s, its server runs %s: using the latter",
                    user,
                    server,
                    repo,
                    spec.repo_key,
                )
                repo = spec.repo_key
        try:
            # verified: the hub showed the server, so the slot goes when the server goes
            # (at the next reconciliation), not only when the reservation expires
            slot, created = self.store.reserve(user, server, repo, self.clock(), seen=verify)
        except LimitExceeded as e:
            self.metrics.reservations.labels(result="refused").inc()
            self.metrics.rejections.labels(limit=e.decision.kind).inc()
            self.log.info("Refused a slot for %s/%s: %s", user, server, e.message)
            if shown:
                raise LimitExceeded(e.decision, repo, shown=shown) from None
            raise
        self.metrics.reservations.labels(result="created" if created else "renewed").inc()
        self.metrics.slots.set(len(self.store))
        self.log.info(
            "%s slot %s for %s/%s (%s)",
            "Reserved" if created else "Renewed",
            slot.id,
            user,
            server,
            repo,
        )
        return slot, created

    async def server_running(self, user, server):
        """True while the hub shows ``user``'s ``server`` starting or running (not stopping)."""
        model = await self.hub.user(user)
        return _starting_or_running(((model or {}).get("servers") or {}).get(server))

    def release(self, reservation_id):
        slot = self.store.release(reservation_id)
        if slot is not None:
            self.log.info("Released slot %s of %s/%s", slot.id, slot.user, slot.server)
        self.metrics.slots.set(len(self.store))
        return slot

    async def usage(self):
        await self._synced.wait()
        expired = self.store.expire(self.clock())
        if expired:
            self.metrics.expired.inc(len(expired))
        self.metrics.slots.set(len(self.store))
        return self.store.usage()

    async def may_place(self, identity, image):
        """Whether ``identity`` may ask where ``image`` goes: a user one of whose
        servers launches that image's repository (its spawner asks while the
        server starts), or a caller that reads every server (admins, services)."""
        if "read:servers" in set(identity.get("scopes") or []):
            return True
        if identity.get("kind") != "user":
            return False
        model = await self.hub.user(identity.get("name") or "")
        for server in ((model or {}).get("servers") or {}).values():
            spec = self.spec_of(server.get("user_options"))
            if spec is not None and names_repository(image, spec):
                return True
        return False

    async def placement(self, image):
        return await self.placement_source.rank(image)

    # periodic work -------------------------------------------------------

    def _track_launch(self, key, server, spec, seen):
        """Emit a launch event and time when a server we saw starting becomes ready."""
        if server.get("pending") == "spawn":
            self._launching.setdefault(key, server.get("started"))
        elif server.get("ready") and key in self._launching:
            del self._launching[key]
            started = parse_date(server.get("started"))
            if started is not None:
                seconds = max((self.clock() - started).total_seconds(), 0)
                self.metrics.launch_time.labels(status="success").observe(seconds)
            self.metrics.launches.labels(status="success", provider=spec.provider).inc()
            self.events.emit(spec, "success")
        seen.add(key)

    async def reconcile(self):
        """Rebuild the slot counts from the hub's active servers; returns the active users."""
        listed_at = self.clock()
        observed, users, seen = {}, [], set()
        pending = ready = 0
        async for user in self.hub.users(state="active"):
            users.append(user)
            for name, server in (user.get("servers") or {}).items():
                if server.get("stopped"):
                    continue
                key = (user["name"], name)
                spec = self.spec_of(server.get("user_options"))
                observed[key] = Observed(
                    repo=spec.repo_key if spec else None,
                    ready=bool(server.get("ready")),
                    started=parse_date(server.get("started")),
                )
                if spec is not None:
                    pending += server.get("pending") == "spawn"
                    ready += bool(server.get("ready"))
                    self._track_launch(key, server, spec, seen)
        for key in set(self._launching) - seen:
            del self._launching[key]
        added, dropped = self.store.reconcile(
            observed, listed_at, self.clock(), initial=not self._synced.is_set()
        )
        expired = self.store.expire(self.clock())
        if expired:
            self.metrics.expired.inc(len(expired))
        for slot in added:
            self.log.info(
                "Counting %s/%s (%s), found on the hub", slot.user, slot.server, slot.repo
            )
        for slot in dropped:
            self.log.info(
                "Freed slot of %s/%s (%s): server gone", slot.user, slot.server, slot.repo
            )
        self.metrics.slots.set(len(self.store))
        self.metrics.inprogress_launches.set(pending)
        self.metrics.running.set(ready)
        return users

    async def observe_builds(self):
        """Build metrics from the build pods, when the service reads Kubernetes."""
        pods = await self.placement_source.refresh(max_age=0)
        if pods is None:
            return
        running, finished = build_pod_states(pods)
        self.metrics.inprogress_builds.set(running)
        uids = set()
        for uid, status, seconds in finished:
            uids.add(uid)
            if uid not in self._builds_seen and seconds is not None:
                self.metrics.build_time.labels(status=status).observe(seconds)
        # only pods still listed are remembered: the set stays as small as the pod list
        self._builds_seen = uids

    async def sweep(self):
        """One reconciliation, and a cull when ``cull_every`` has passed."""
        started = time.perf_counter()
        if self.placement_source.enabled:
            await self.observe_builds()
        users = await self.reconcile()
        self._synced.set()
        now = time.monotonic()
        if self._last_cull is None or now - self._last_cull >= self.cull_every:
            self._last_cull = now
            stopped = await self.culler.cull_servers(users)
            deleted = await self.culler.delete_users()
            if stopped or deleted:
                self.log.info("Cull sweep: stopped %d servers, deleted %d users", stopped, deleted)
                await self.reconcile()
        self.metrics.sweep_time.observe(time.perf_counter() - started)

    async def run_periodically(self):
        interval = min(self.reconcile_every, self.cull_every)
        while True:
            try:
                await self.sweep()
            except (HubAPIError, OSError) as e:
                self.log.error("Sweep failed, retrying in %ss: %s", interval, e)
            except Exception:
                self.log.exception("Sweep failed, retrying in %ss", interval)
            await asyncio.sleep(interval)

    async def health(self):
        checks = []
        try:
            await self.hub.info()
            checks.append({"service": "hub", "ok": True})
        except Exception as e:
            self.log.warning("Health: hub API unreachable: %s", e)
            checks.append({"service": "hub", "ok": False})
        if self.placement_source.enabled:
            ok = await self.placement_source.healthy()
            checks.append({"service": "kubernetes", "ok": ok})
        return checks

    # web -----------------------------------------------------------------

    def make_app(self):
        return web.Application(
            handlers_module.handlers(self.base_url),
            binder_service=self,
            log_function=self.log_request,
        )

    def log_request(self, handler):
        # The path without its query; never the client address.
        status = handler.get_status()
        level = self.log.debug if status < 400 else self.log.warning
        if handler.request.path.endswith(("/health", "/metrics")) and status < 400:
            level = self.log.debug
        level(
            "%s %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.path,
            1000 * handler.request.request_time(),
        )

    async def start_async(self):
        self.web_app = self.make_app()
        self.http_server = HTTPServer(self.web_app, xheaders=True, max_body_size=MAX_BODY_SIZE)
        self.http_server.listen(self.port, self.ip)
        self.log.info(
            "binder_service listening on http://%s:%s%s", self.ip, self.port, self.base_url
        )
        await self.placement_source.start()
        self._task = asyncio.ensure_future(self.run_periodically())
        stop = asyncio.get_running_loop().create_future()
        self._catch_stop_signals(stop)
        signum = await stop
        self.log.info("binder_service stopping on %s", signal.Signals(signum).name)
        self.http_server.stop()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.placement_source.stop()
        self.log.info("binder_service stopped")

    def _catch_stop_signals(self, stop):
        """Resolve ``stop`` with the number of the first SIGINT or SIGTERM.

        The hub stops a service with SIGINT, and escalates to SIGTERM and SIGKILL
        only after ``interrupt_timeout`` (30 s) each (jupyterhub 5.5
        ``LocalProcessSpawner.stop``). Python raises KeyboardInterrupt on SIGINT only
        if SIGINT was not ignored when it started, and the hub starts its services
        before it installs its own signal handlers (``JupyterHub.start`` calls
        ``init_signal`` last): a hub started with SIGINT ignored (a background job of
        a shell, ``nohup``) passes that on. Handling both signals here makes the
        service stop at once either way.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(
                signum, lambda signum=signum: stop.done() or stop.set_result(signum)
            )

    def start(self):
        try:
            asyncio.run(self.start_async())
        except KeyboardInterrupt:
            # a SIGINT before the event loop took the signals over
            pass


def main(argv=None):
    app = BinderService.instance()
    app.initialize(argv)
    app.start()


if __name__ == "__main__":
    sys.exit(main())
