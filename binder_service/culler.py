"""Culling: stop idle and old servers, delete the anonymous users left behind.

:func:`cull_reason` and :func:`user_kind` are pure: they take the hub's user
and server models and the time. :class:`Culler` does the I/O: it stops the
servers a sweep selects with bounded concurrency, waits out slow stops (the
hub answers 202 and finishes in the background), and deletes anonymous users
whose servers are all stopped. One failing user is logged and the sweep goes
on.
"""

import asyncio
import time
from dataclasses import dataclass

from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from .hubapi import HubAPIError
from .utils import parse_date


@dataclass(frozen=True)
class CullRules:
    """Seconds of inactivity (``timeout``) and of age (``max_age``) after which a server
    is stopped; 0 disables that rule."""

    timeout: float = 0
    max_age: float = 0


def user_kind(user, anonymous_group):
    """``"admin"``, ``"anonymous"`` or ``"registered"`` for a hub user model."""
    if user.get("admin"):
        return "admin"
    if anonymous_group in (user.get("groups") or []):
        return "anonymous"
    return "registered"


def cull_reason(server, rules, now):
    """Why ``server`` (a hub server model) should be stopped at ``now``: ``"idle"``,
    ``"max_age"`` or None.

    A server still starting (``pending == "spawn"``) is never idle (a long
    build is not inactivity) but is subject to ``max_age``; a server already
    stopping is left alone.
    """
    if server.get("pending") == "stop" or server.get("stopped"):
        return None
    started = parse_date(server.get("started"))
    age = (now - started).total_seconds() if started else None
    if rules.max_age and age is not None and age >= rules.max_age:
        return "max_age"
    if server.get("pending"):
        return None
    last_activity = parse_date(server.get("last_activity")) or started
    if rules.timeout and last_activity is not None:
        if (now - last_activity).total_seconds() >= rules.timeout:
            return "idle"
    return None


def deletable(user, anonymous_group, grace, now, had_server=None, serverless_max=0):
    """True if ``user`` is an anonymous user with no active server, quiet for ``grace`` seconds,
    or without a server for ``serverless_max`` seconds (0: no such limit) whatever it did.

    ``had_server`` is when the user was last seen with an active server (None:
    not seen since the service started). The activity a user reports
    (``POST /users/{name}/activity``, or any request with its token) keeps it
    only until then: a visitor cannot keep identities without sessions, which
    count against the authenticator's ``max_anonymous_users``, for ever.
    """
    if user_kind(user, anonymous_group) != "anonymous":
        return False
    if any(not s.get("stopped", False) for s in (user.get("servers") or {}).values()):
        return False
    if user.get("pending"):
        return False
    created = parse_date(user.get("created"))
    if serverless_max and created is not None:
        since = max(created, had_server) if had_server is not None else created
        if (now - since).total_seconds() >= serverless_max:
            return True
    times = [created, parse_date(user.get("last_activity"))]
    latest = max((t for t in times if t is not None), default=None)
    return latest is None or (now - latest).total_seconds() >= grace


class Culler(LoggingConfigurable):
    """Idle and max-age culling, and deletion of anonymous users."""

    timeout = Integer(
        600,
        help="""
        Seconds of inactivity after which an anonymous user's server is
        stopped. Default 600 (10 minutes, as mybinder.org). 0 disables.

        Set by the hub when it starts the service (``jupyterhub_config.py``,
        the chart values): the spawner's ``idle_timeout``, e.g.
        ``c.BinderSpawner.idle_timeout = 1200``. Set here only for a service
        the hub does not configure.

        Example: ``c.Culler.timeout = 1200``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    max_age = Integer(
        43200,
        help="""
        Seconds after its start at which an anonymous user's server is
        stopped, active or not. Default 43200 (12 hours). 0 disables.

        Set by the hub when it starts the service: the spawner's
        ``max_age``, e.g. ``c.BinderSpawner.max_age = 6 * 3600``.

        Example: ``c.Culler.max_age = 6 * 3600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    registered_timeout = Integer(
        0,
        help="""
        Inactivity timeout in seconds for servers of users who are neither
        anonymous nor admins (the hub's own users). Default 0: not culled, the
        hub's existing policy applies.

        Example: ``c.Culler.registered_timeout = 3600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    registered_max_age = Integer(
        0,
        help="""
        Maximum age in seconds of servers of registered (non-anonymous,
        non-admin) users. Default 0: no maximum.

        Example: ``c.Culler.registered_max_age = 24 * 3600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    cull_admin_users = Bool(
        False,
        help="""
        Whether admins' servers are culled, with the registered users' rules.
        Default False: admins are spared.

        Example: ``c.Culler.cull_admin_users = True``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    delete_anonymous_users = Bool(
        True,
        help="""
        Delete anonymous users (members of ``anonymous_group``) whose servers
        have all stopped, so the hub database does not grow with every
        visitor. Default True.

        Example: ``c.Culler.delete_anonymous_users = False``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    anonymous_group = Unicode(
        "binder-anonymous",
        help="""
        The JupyterHub group whose members are anonymous users (the
        authenticator adds every visitor to it). Default ``binder-anonymous``.

        Set by the hub when it starts the service: the authenticator's
        ``group``, e.g. ``c.AnonymousAuthenticator.group = "binder-guests"``.

        Example: ``c.Culler.anonymous_group = "binder-guests"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    anonymous_grace = Integer(
        60,
        help="""
        Seconds an anonymous user without servers is kept after its creation
        or last activity, so a visitor who just arrived can still start a
        server. Its activity keeps it at most ``timeout`` seconds after it was
        last seen with a server (or after its creation): what a visitor
        reports through the hub API cannot keep an identity without sessions
        for ever. Default 60.

        Example: ``c.Culler.anonymous_grace = 300``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    concurrency = Integer(
        10,
        help="""
        How many stops or deletions run at once. Default 10 (as
        jupyterhub-idle-culler).

        Example: ``c.Culler.concurrency = 20``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    stop_timeout = Float(
        120.0,
        help="""
        Seconds to wait for a slow stop (the hub answered 202) to finish
        before the sweep moves on; the server is checked again at the next
        sweep. Default 120.

        Example: ``c.Culler.stop_timeout = 300``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def __init__(self, *, hub, clock, metrics=None, **kwargs):
        super().__init__(**kwargs)
        self.hub = hub
        self.clock = clock
        self.metrics = metrics
        # anonymous user -> when a sweep last saw it with an active server
        self._had_server = {}

    def rules_for(self, user):
        kind = user_kind(user, self.anonymous_group)
        if kind == "anonymous":
            return CullRules(self.timeout, self.max_age)
        if kind == "admin" and not self.cull_admin_users:
            return CullRules()
        return CullRules(self.registered_timeout, self.registered_max_age)

    def select(self, users, now):
        """(user, server name, reason) for every server to stop among ``users`` (pure)."""
        selected = []
        for user in users:
            rules = self.rules_for(user)
            if not (rules.timeout or rules.max_age):
                continue
            for name, server in (user.get("servers") or {}).items():
                reason = cull_reason(server, rules, now)
                if reason:
                    selected.append((user, name, reason))
                else:
                    self.log.debug("Not culling %s/%s", user["name"], name)
        return selected

    async def _wait_stopped(self, name, server):
        deadline = time.monotonic() + self.stop_timeout
        delay = 0.1
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2)
            user = await self.hub.user(name)
            if user is None or server not in (user.get("servers") or {}):
                return True
        return False

    async def _stop(self, semaphore, user, server, reason):
        name = user["name"]
        async with semaphore:
            try:
                self.log.info("Culling server %s/%s (%s)", name, server, reason)
                stopped = await self.hub.stop_server(name, server)
                if not stopped:
                    self.log.info("Stop of %s/%s is pending, waiting", name, server)
                    stopped = await self._wait_stopped(name, server)
                    if not stopped:
                        self.log.warning("Server %s/%s still stopping, next sweep", name, server)
                if stopped and self.metrics:
                    self.metrics.culls.labels(reason=reason).inc()
                return stopped
            except (HubAPIError, OSError) as e:
                self.log.error("Failed to cull %s/%s: %s", name, server, e)
                return False

    async def _delete(self, semaphore, user):
        name = user["name"]
        async with semaphore:
            try:
                self.log.info("Deleting anonymous user %s", name)
                deleted = await self.hub.delete_user(name)
                if not deleted:
                    self.log.warning("Hub refused to delete %s for now, next sweep", name)
                elif self.metrics:
                    self.metrics.users_deleted.inc()
                return deleted
            except (HubAPIError, OSError) as e:
                self.log.error("Failed to delete user %s: %s", name, e)
                return False

    async def cull_servers(self, active_users):
        """Stop the servers of ``active_users`` (hub models) that the rules select."""
        semaphore = asyncio.Semaphore(self.concurrency)
        now = self.clock()
        for user in active_users:
            if any(not s.get("stopped") for s in (user.get("servers") or {}).values()):
                self._had_server[user["name"]] = now
        selected = self.select(active_users, now)
        results = await asyncio.gather(*(self._stop(semaphore, *s) for s in selected))
        return sum(1 for r in results if r)

    async def delete_users(self):
        """Delete anonymous users with no active server; returns how many."""
        if not self.delete_anonymous_users:
            return 0
        semaphore = asyncio.Semaphore(self.concurrency)
        now = self.clock()
        tasks = []
        listed = set()
        async for user in self.hub.users(state="inactive"):
            listed.add(user["name"])
            if deletable(
                user,
                self.anonymous_group,
                self.anonymous_grace,
                now,
                had_server=self._had_server.get(user["name"]),
                serverless_max=self.timeout,
            ):
                tasks.append(asyncio.ensure_future(self._delete(semaphore, user)))
        results = await asyncio.gather(*tasks)
        # remembered only while they tell something: users without a server, not gone
        for name in [n for n in self._had_server if n not in listed]:
            if (now - self._had_server[name]).total_seconds() > self.timeout:
                del self._had_server[name]
        return sum(1 for r in results if r)
