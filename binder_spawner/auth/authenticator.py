"""An authenticator without login: each browser gets a temporary anonymous identity.

Modelled on jupyterhub/tmpauthenticator, with what a public Binder needs on
top: the identity of a browser is kept (a second launch link starts a second
server instead of a second user), the launch query survives the login
redirect, names are readable but not guessable, new identities are rate
limited per client address and capped in total, anonymous users are marked by
a group and limited in servers, and logout discards the identity. See
docs/authenticator.md for the threat model.
"""

import asyncio
import ipaddress
import os
import time

from jupyterhub import orm
from jupyterhub.auth import Authenticator
from jupyterhub.utils import maybe_future, url_path_join
from tornado import web
from traitlets import Bool, Int, List, TraitError, Unicode, default, validate

from .. import tcptable
from ..errors import spawn_error
from ..identity import (
    DEFAULT_TRUSTED_HOPS,
    DEFAULT_TRUSTED_NETWORKS,
    SlidingWindowLimiter,
    address_bucket,
    anonymous_name,
    believes_forwarded_for,
    client_address,
    launch_repo,
    safe_log,
    socket_owner,
)
from ..netcheck import parse_networks
from .handlers import (
    AnonymousLoginHandler,
    AnonymousLogoutHandler,
    AnonymousSessionHandler,
    LaunchRouterHandler,
    ProxyErrorPageHandler,
)

# how long a name handed out by authenticate() counts against the total cap
# before the hub has stored its user (login_user -> auth_to_user)
PENDING_NAME_SECONDS = 60


def too_many_requests(message, retry_after):
    """An HTTP 429 error whose page shows ``message`` and sends ``Retry-After``.

    JupyterHub's ``BaseHandler.write_error`` (5.5 and 6.1) copies an
    exception's ``headers`` onto the error response, because tornado clears
    headers set before the error.
    """
    error = web.HTTPError(429, message)
    error.jupyterhub_message = message
    error.headers = {"Retry-After": str(int(retry_after))}
    return error


class AnonymousAuthenticator(Authenticator):
    """Logs every new browser in as a new anonymous user, without a login page.

    Use with ``c.JupyterHub.authenticator_class = "binder-anonymous"``. For a
    second launch link in the same browser to start a second server, also set
    ``c.JupyterHub.allow_named_servers = True`` (see docs/authenticator.md).
    """

    group = Unicode(
        "binder-anonymous",
        help="""
        JupyterHub group every anonymous user is added to when it is created.

        binder_service uses the same group (the hub hands it over as the
        service's ``Culler.anonymous_group``) to tell anonymous users from
        real ones and deletes them once their servers have stopped; the per-user
        server cap and the logout clean-up apply to its members only.
        Default: ``"binder-anonymous"``. Example::

            c.AnonymousAuthenticator.group = "binder-guests"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    username_prefix = Unicode(
        "",
        help="""
        Text put in front of every anonymous username.

        Usernames are ``<prefix><repo slug>-<10 random characters>``, e.g.
        ``numpy-tutorial-k3j9x2ab7q`` (slug ``binder`` when the visit names no
        repository). Use a prefix to keep anonymous names apart from the names
        of real users an administrator creates. Lowercase letters, digits and
        hyphens only. Default: ``""``. Example::

            c.AnonymousAuthenticator.username_prefix = "anon-"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("username_prefix")
    def _validate_username_prefix(self, proposal):
        value = proposal["value"]
        if value and not (value[0].isalpha() and all(c.isalnum() or c == "-" for c in value)):
            raise TraitError(
                f"AnonymousAuthenticator.username_prefix must start with a letter and hold "
                f"only lowercase letters, digits and hyphens, not {value!r}"
            )
        if value != value.lower():
            raise TraitError(
                f"AnonymousAuthenticator.username_prefix must be lowercase, not {value!r}"
            )
        return value

    new_users_per_minute = Int(
        30,
        help="""
        How many new anonymous users one client address may create per minute.

        Counted over a sliding 60-second window, in memory (a hub restart
        forgets it). IPv6 clients are counted per network of
        ``ipv6_prefix_length`` bits. Above the limit the visitor gets a 429
        page with ``Retry-After``. A classroom behind one NAT address counts
        as one client: raise this for workshops. 0 disables the limit.
        Default: 30. Example::

            c.AnonymousAuthenticator.new_users_per_minute = 30

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    new_users_window = Int(
        60,
        help="""
        Seconds over which ``new_users_per_minute`` is counted.

        The limit is ``new_users_per_minute`` new users per client address in
        any window of this many seconds; keep the default unless you mean a
        different period (e.g. 3600 with a limit of 100 for "100 per hour").
        Default: 60. Example::

            c.AnonymousAuthenticator.new_users_window = 3600

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("new_users_window")
    def _validate_new_users_window(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(
                f"AnonymousAuthenticator.new_users_window must be positive, not {proposal['value']}"
            )
        return proposal["value"]

    max_anonymous_users = Int(
        1000,
        help="""
        Most anonymous users that may exist at the same time.

        Counts the members of ``group`` in the hub database (binder_service
        deletes those whose servers have stopped). A new visitor above the cap
        gets a 429 page with ``Retry-After``; browsers that already have an
        identity are not affected. 0 disables the cap. Default: 1000. Example::

            c.AnonymousAuthenticator.max_anonymous_users = 5000

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    full_retry_after = Int(
        60,
        help="""
        Seconds a visitor is told to wait (``Retry-After``) when ``max_anonymous_users`` is reached.

        Default: 60. Example::

            c.AnonymousAuthenticator.full_retry_after = 120

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    trusted_proxy_networks = List(
        Unicode(),
        help="""
        Networks (CIDR) of the proxies in front of the hub whose ``X-Forwarded-For`` is believed.

        The client address used for ``new_users_per_minute`` is the address
        of the connection to the hub unless that is in one of these networks
        (or in ``JupyterHub.trusted_downstream_ips``); then the header is read
        from the right, at most ``trusted_proxy_hops`` entries, and past an
        entry only if it is in these networks too. ``X-Real-Ip`` is never
        used. The default trusts loopback only: configurable-http-proxy on
        the hub's machine (local mode). Do not add the networks your visitors
        come from for convenience; add the networks your proxies connect
        from: on zero-to-jupyterhub the cluster's pod network (see
        ``chart-values/01-binder.yaml``). ``[]`` ignores the header. A
        session's own connection to the hub is never believed: on the hub's
        machine only the hub's own user's (its proxy's; sandboxes run as
        other uids), elsewhere none from the address of one of the hub's
        servers (a user pod).
        Default: ``["127.0.0.0/8", "::1/128"]``. Example::

            c.AnonymousAuthenticator.trusted_proxy_networks = ["10.244.0.0/16"]

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    trusted_proxy_hops = Int(
        DEFAULT_TRUSTED_HOPS,
        help="""
        How many proxies in front of the hub append to ``X-Forwarded-For``.

        configurable-http-proxy is one (it appends the address of whoever
        connected to it); an ingress controller or load balancer in front of
        it that appends its client's address is another. At most this many
        entries are read from the right of the header, so the entry the
        outermost proxy appended is the furthest one believed and a client
        cannot choose its address by sending its own header, even from inside
        ``trusted_proxy_networks``. Too low: every visitor is counted under
        the address of a proxy; too high: clients inside trusted networks can
        choose their address. Default: 1. Example, with ``ingress.enabled``
        on zero-to-jupyterhub::

            c.AnonymousAuthenticator.trusted_proxy_hops = 2

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("trusted_proxy_hops")
    def _validate_trusted_proxy_hops(self, proposal):
        if not 0 <= proposal["value"] <= 10:
            raise TraitError(
                f"AnonymousAuthenticator.trusted_proxy_hops must be 0..10, not {proposal['value']}"
            )
        return proposal["value"]

    @default("trusted_proxy_networks")
    def _default_trusted_proxy_networks(self):
        return list(DEFAULT_TRUSTED_NETWORKS)

    @validate("trusted_proxy_networks")
    def _validate_trusted_proxy_networks(self, proposal):
        try:
            parse_networks(proposal["value"])
        except ValueError as e:
            raise TraitError(
                f"AnonymousAuthenticator.trusted_proxy_networks: {e} in {proposal['value']!r}"
            ) from e
        return proposal["value"]

    ipv6_prefix_length = Int(
        64,
        help="""
        Prefix length under which IPv6 client addresses share one rate-limit count.

        One IPv6 subscriber usually holds a whole /64 and can use any address
        in it. Default: 64. Example::

            c.AnonymousAuthenticator.ipv6_prefix_length = 56

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("ipv6_prefix_length")
    def _validate_ipv6_prefix_length(self, proposal):
        if not 0 < proposal["value"] <= 128:
            raise TraitError(
                f"AnonymousAuthenticator.ipv6_prefix_length must be 1..128, not {proposal['value']}"
            )
        return proposal["value"]

    max_servers_per_user = Int(
        3,
        help="""
        Most servers an anonymous user may run (or start) at the same time.

        Checked before every spawn, from the spawn page and from the REST API
        alike; with named servers enabled this is how many launch links one
        browser can have open. 0 disables the cap. Users outside ``group``
        are not affected. Default: 3. Example::

            c.AnonymousAuthenticator.max_servers_per_user = 5

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    delete_user_on_logout = Bool(
        True,
        help="""
        Delete an anonymous user from the hub when it logs out.

        Logout always stops the user's servers, revokes its tokens and
        invalidates its cookie; with this set, the user is also removed from
        the database right away when none of its servers is still starting or
        stopping (otherwise binder_service removes it later). Default: True.
        Example::

            c.AnonymousAuthenticator.delete_user_on_logout = False

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    binder_service_name = Unicode(
        "binder",
        help="""
        Name of binder_service in ``JupyterHub.services``. When the proxy
        cannot reach it, its launch links (``/services/<name>/v2/...``) get a
        503 page that says the Binder service is not available, as a
        ``/hub/spawn?repo=`` link does, instead of the proxy's "Your server
        appears to be down". Registers a handler for ``/hub/error/503`` (the
        proxy's error target) that serves every other path as JupyterHub
        does. Empty: no such handler. Default ``"binder"``.

        Example: ``c.AnonymousAuthenticator.binder_service_name = "binderhub"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    route_launch_links = Bool(
        True,
        help="""
        Send a launch link (``/hub/spawn?repo=...``) to a new named server when the default one is in use.

        Registers a handler for ``/hub/spawn`` (authenticator handlers take
        precedence over JupyterHub's own) that, for anonymous users with
        ``JupyterHub.allow_named_servers`` enabled, redirects to
        ``/hub/spawn/<user>/<new name>?<same query>``. Without named servers
        the visitor gets a page explaining that the running session must be
        stopped first, instead of being sent to the server of another
        repository. Everything else goes to JupyterHub's spawn handler
        unchanged. Default: True. Example::

            c.AnonymousAuthenticator.route_launch_links = False

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("auto_login")
    def _default_auto_login(self):
        """Log visitors in without showing a login page.

        The base class defaults to False, which shows a "Sign in" button
        first. A Binder link must lead straight to the launch; admins who
        want the button back set ``c.AnonymousAuthenticator.auto_login = False``.
        """
        return True

    @default("allow_all")
    def _default_allow_all(self):
        """Allow every visitor.

        Since JupyterHub 5.0 nobody may log in unless an ``allow_*`` setting
        says so (before, everybody could). Every visitor of a Binder is meant
        to get an identity; the limits of this class are what protects the hub.
        """
        return True

    @default("login_service")
    def _default_login_service(self):
        return "Binder (no account needed)"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._limiter = SlidingWindowLimiter(
            self.new_users_per_minute, window=float(self.new_users_window)
        )
        # names handed out by authenticate() whose user the hub has not stored yet,
        # name -> monotonic time; they count against max_anonymous_users
        self._pending_names = {}

    # --- identities -------------------------------------------------------

    def _trusted_networks(self):
        values = list(self.trusted_proxy_networks)
        hub = self.parent
        values.extend(getattr(hub, "trusted_downstream_ips", None) or [])
        networks = []
        for value in values:
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                self.log.warning("Ignoring trusted proxy %r: not an address or network", value)
        return networks

    @staticmethod
    def _peer(request):
        """``(address, port)`` of the TCP peer of ``request`` (port None if unknown).

        Read from tornado's connection context: JupyterHub runs its server with
        ``xheaders=True``, which lets ``X-Real-Ip`` (passed on unchanged by
        configurable-http-proxy) override ``request.remote_ip``.
        """
        context = getattr(request.connection, "context", None)
        address = getattr(context, "address", None)
        if isinstance(address, tuple) and len(address) >= 2:
            return address[0], address[1]
        return getattr(context, "_orig_remote_ip", None) or request.remote_ip, None

    def request_client_address(self, handler, believe_forwarded=True):
        """The client address of ``handler``'s request (see ``trusted_proxy_networks``).

        ``believe_forwarded=False``: the peer itself, whatever ``X-Forwarded-For`` says
        (:meth:`peer_may_forward`).
        """
        request = handler.request
        peer, _ = self._peer(request)
        return client_address(
            peer,
            request.headers.get_list("X-Forwarded-For") if believe_forwarded else [],
            self._trusted_networks(),
            hops=self.trusted_proxy_hops,
        )

    async def peer_may_forward(self, handler):
        """Whether the peer of ``handler``'s request may name its client.

        Code in a session reaches the hub directly from a network the hub
        trusts (a local-mode sandbox shares the hub's loopback; a user pod
        is in the pod network), so it could name any address in
        ``X-Forwarded-For`` and escape ``new_users_per_minute``. A peer on the
        hub's machine is believed only if its socket is the hub's own user's
        (configurable-http-proxy, which the hub starts; sandboxes run as other
        uids); a peer elsewhere unless it is the address of one of the hub's
        servers (:func:`binder_spawner.identity.believes_forwarded_for`).
        """
        request = handler.request
        if not request.headers.get_list("X-Forwarded-For"):
            return True
        peer, port = self._peer(request)
        try:
            hub_address = request.connection.stream.socket.getsockname()[:2]
        except (AttributeError, OSError):
            hub_address = None
        owner = None
        if port is not None and hub_address is not None:
            # the tables can be long on a busy host: read and searched off the event loop
            owner = await asyncio.to_thread(
                lambda: socket_owner(tcptable.read_tables(), (peer, port), hub_address)
            )
        runs_a_server = owner is None and self._runs_a_server(handler.db, peer)
        believed = believes_forwarded_for(owner, os.geteuid(), runs_a_server)
        if not believed:
            self.log.warning(
                "Not believing X-Forwarded-For from %s: a connection from a session, not a proxy",
                peer,
            )
        return believed

    @staticmethod
    def _runs_a_server(db, address):
        """Whether ``address`` is the address of one of the hub's servers (a user pod)."""
        query = db.query(orm.Server).join(orm.Spawner, orm.Spawner.server_id == orm.Server.id)
        return query.filter(orm.Server.ip == address).first() is not None

    def count_anonymous_users(self, db):
        """Members of ``group`` in the hub database."""
        return db.query(orm.User).join(orm.User.groups).filter(orm.Group.name == self.group).count()

    def is_anonymous(self, user):
        """Whether ``user`` (a JupyterHub User or orm.User) is a member of ``group``."""
        orm_user = getattr(user, "orm_user", user)
        return any(g.name == self.group for g in orm_user.groups)

    def _expire_pending(self, now):
        for name, issued in list(self._pending_names.items()):
            if now - issued > PENDING_NAME_SECONDS:
                del self._pending_names[name]

    def _check_capacity(self, handler, believe_forwarded=True):
        """Raise a 429 if this client or the hub cannot take another anonymous user."""
        if self.max_anonymous_users > 0:
            self._expire_pending(time.monotonic())
            existing = self.count_anonymous_users(handler.db)
            if existing + len(self._pending_names) >= self.max_anonymous_users:
                self.log.warning(
                    "Refusing a new anonymous user: %s exist, the limit is %s",
                    existing + len(self._pending_names),
                    self.max_anonymous_users,
                )
                raise too_many_requests(
                    "This Binder is at its limit of visitors right now. "
                    "Try again in a few minutes.",
                    self.full_retry_after,
                )
        address = self.request_client_address(handler, believe_forwarded)
        self._limiter.limit = self.new_users_per_minute
        self._limiter.window = float(self.new_users_window)
        bucket = address_bucket(address, self.ipv6_prefix_length)
        allowed, retry_after = self._limiter.hit(bucket)
        if not allowed:
            self.log.warning(
                "Refusing a new anonymous user for %s: more than %s in %s s",
                bucket,
                self.new_users_per_minute,
                self.new_users_window,
            )
            raise too_many_requests(
                "Too many new sessions were started from your network recently. "
                f"Try again in {retry_after} seconds.",
                retry_after,
            )
        return address

    def new_username(self, handler, hint=""):
        """A fresh anonymous username that no user, admin or blocked name uses."""
        for _ in range(20):
            name = anonymous_name(hint, prefix=self.username_prefix)
            if (
                name in self.admin_users
                or name in self.blocked_users
                or name in self._pending_names
                or handler.find_user(name) is not None
            ):
                continue
            return name
        raise RuntimeError("could not pick an unused anonymous username")

    def login_url(self, base_url):
        """``/hub/anonymous-login``, where :meth:`authenticate` runs.

        A separate URL from JupyterHub's ``/hub/login`` so that the "Sign in"
        button of the login page (with ``auto_login = False``) leads to a
        login instead of back to the same page (jupyterhub 5.5/6.1
        ``LoginHandler._render``: ``authenticator_login_url``).
        """
        return url_path_join(base_url, "anonymous-login")

    async def authenticate(self, handler, data=None):
        """Keep the browser's identity if it has one; else make a new anonymous user.

        Called from ``/hub/anonymous-login`` (see :meth:`login_url`) for
        visitors without a hub cookie. The name carries the slug of the
        repository the visitor is launching (read from the ``next`` URL) to
        stay readable.
        """
        try:
            current = handler.current_user
        except RuntimeError:
            current = None
        if current is not None and getattr(current, "name", None):
            model = {"name": current.name}
            if self.manage_groups:
                # with manage_groups the hub syncs groups from every login's model
                model["groups"] = [g.name for g in current.groups]
            return model
        # decided before the checks, which take the name without a pause between them
        believe_forwarded = await self.peer_may_forward(handler)
        address = self._check_capacity(handler, believe_forwarded)
        hint = launch_repo(handler.get_argument("next", ""))
        name = self.new_username(handler, hint)
        self._pending_names[name] = time.monotonic()
        self.log.info("New anonymous user %s for %s", name, address)
        # admin is explicit: auth_to_user then removes an admin role, whatever the config says
        model = {"name": name, "admin": False}
        if self.manage_groups:
            model["groups"] = [self.group]
        return model

    async def add_user(self, user):
        """Put users created by :meth:`authenticate` into ``group``.

        The hub also calls this at startup for every user in its database, so
        membership is given only to names this process just handed out.
        """
        await maybe_future(super().add_user(user))
        if self._pending_names.pop(user.name, None) is None:
            return
        db = user.db
        group = orm.Group.find(db, self.group)
        if group is None:
            group = orm.Group(name=self.group)
            db.add(group)
        if group not in user.orm_user.groups:
            user.orm_user.groups.append(group)
        db.commit()

    def check_blocked_users(self, username, authentication=None):
        # never log in as an admin through this authenticator
        if username in self.admin_users:
            return False
        return super().check_blocked_users(username, authentication)

    # --- servers ----------------------------------------------------------

    def pre_spawn_start(self, user, spawner):
        """Refuse a spawn that would give an anonymous user more than ``max_servers_per_user``.

        Runs for spawns from the spawn page and from the REST API
        (jupyterhub ``User.spawn``), after the hub marked this one pending.
        """
        if self.max_servers_per_user <= 0 or not self.is_anonymous(user):
            return
        others = [name for name, s in user.spawners.items() if name != spawner.name and s.active]
        if len(others) >= self.max_servers_per_user:
            self.log.warning(
                "Refusing server %s of %s: %s servers active, the limit is %s",
                safe_log(spawner.name),
                user.name,
                len(others),
                self.max_servers_per_user,
            )
            raise spawn_error(
                f"You already have {len(others)} sessions running, the limit is "
                f"{self.max_servers_per_user}. Stop one from the home page and try again.",
                status_code=429,
                reason="limit",
            )

    def get_handlers(self, app):
        """Handlers registered before JupyterHub's own (``JupyterHub.init_handlers``).

        ``/login`` checks ``next`` more strictly, ``/anonymous-login`` logs
        in, ``/logout`` discards an anonymous identity, ``/spawn`` routes
        launch links to named servers, ``/error/503`` names the Binder
        service when the proxy cannot reach it.
        """
        me = {"anonymous_authenticator": self}
        handlers = [
            (r"/login", AnonymousLoginHandler, me),
            (r"/anonymous-login", AnonymousSessionHandler, me),
            (r"/logout", AnonymousLogoutHandler, me),
        ]
        if self.route_launch_links:
            handlers.append((r"/spawn", LaunchRouterHandler, me))
        if self.binder_service_name:
            handlers.append((r"/error/(503)", ProxyErrorPageHandler, me))
        return handlers
