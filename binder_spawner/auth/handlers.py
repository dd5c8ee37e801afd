"""Hub handlers of the anonymous authenticator: login, logout, the launch-link router
and the proxy's 503 page.

``AnonymousAuthenticator.get_handlers`` registers them; JupyterHub puts an
authenticator's handlers before its own (``JupyterHub.init_handlers``, 5.5
and 6.1), so these serve ``/hub/login``, ``/hub/logout``, ``/hub/spawn`` and ``/hub/error/503``.
Each subclasses the hub's handler and changes only what is described.
"""

import inspect
from urllib.parse import urlsplit

from jupyterhub import orm
from jupyterhub.handlers.login import LoginHandler, LogoutHandler
from jupyterhub.handlers.pages import ProxyErrorHandler, SpawnHandler
from jupyterhub.utils import maybe_future, url_path_join
from tornado import web

from ..identity import first_repo_param, random_suffix, repo_slug, safe_log, safe_next_url
from ..querydata import first_value
from ..service_client import ServiceUnavailable


class AuthenticatorMixin:
    """The :class:`~binder_spawner.auth.AnonymousAuthenticator` that registered the handler.

    ``get_handlers`` passes itself as ``anonymous_authenticator`` (tornado
    hands a route's dict to ``initialize``), so this module needs no import
    of the authenticator's and the authenticator imports the handlers.
    """

    def initialize(self, anonymous_authenticator=None, **kwargs):
        self.anonymous_authenticator = anonymous_authenticator
        super().initialize(**kwargs)


class SameSiteCookiesMixin:
    """Every cookie the handler sets is ``SameSite=Lax``, and ``Secure`` on an https hub.

    JupyterHub sets no ``SameSite`` (``BaseHandler._set_cookie``, 5.5 and
    6.1), so browsers that default to ``None`` would send the identity
    cookie with requests other sites make. ``Lax`` still sends it when a
    visitor follows a Binder link from another site (a top-level GET), which
    is how launches arrive. An explicit value in
    ``JupyterHub.tornado_settings["cookie_options"]`` wins. tornado's
    ``set_signed_cookie`` and ``clear_cookie`` go through ``set_cookie``.
    """

    def set_cookie(self, name, value, *args, **kwargs):
        if not kwargs.get("samesite"):
            kwargs["samesite"] = "Lax"
        if self._served_over_https():
            kwargs["secure"] = True
        return super().set_cookie(name, value, *args, **kwargs)

    def _served_over_https(self):
        # as JupyterHub decides for its own cookies: public_url if set, else the request
        public_url = self.settings.get("public_url")
        if public_url:
            return public_url.scheme == "https"
        return self.request.protocol == "https"


class AnonymousLoginHandler(AuthenticatorMixin, SameSiteCookiesMixin, LoginHandler):
    """JupyterHub's login handler with a stricter check of ``next``.

    ``LoginHandler.get`` (jupyterhub 5.5/6.1 ``handlers/login.py``) passes
    ``next`` on to the authenticator's ``login_url`` with ``auto_login``, and
    into the "Sign in" link without, so the launch query inside ``next``
    survives the login. ``next`` first passes the hub's own check, then
    :func:`binder_spawner.identity.safe_next_url`.
    """

    def _validate_next_url(self, next_url):
        checked = super()._validate_next_url(next_url)
        if not checked:
            return checked
        strict = safe_next_url(checked, self.base_url)
        if not strict:
            self.log.warning("Disallowing redirect after login: %s", safe_log(next_url))
        return strict


class AnonymousSessionHandler(AnonymousLoginHandler):
    """``/hub/anonymous-login``: the login itself, the authenticator's ``login_url``.

    JupyterHub's ``/hub/login`` redirects here (with ``auto_login``) or links
    here (the "Sign in" button, without it). A browser with an identity
    keeps it; one without gets a new anonymous user; both go on to ``next``.
    Unlike tmpauthenticator's ``/tmplogin`` this never replaces an existing
    identity, so a link from another site cannot reset a visitor's sessions.
    """

    async def get(self):
        user = self.current_user
        if user is None:
            user = await self.login_user()
            if user is None:
                raise web.HTTPError(403, "Could not create a session. Try again.")
        else:
            self.set_login_cookie(user)
        self.redirect(self.get_next_url(user))


class AnonymousLogoutHandler(AuthenticatorMixin, SameSiteCookiesMixin, LogoutHandler):
    """Logout that discards an anonymous identity.

    For members of the authenticator's group: stops all servers (whatever
    ``JupyterHub.shutdown_on_logout`` says), revokes every token, changes the
    cookie id so an old cookie no longer works, and deletes the user when
    nothing is still starting or stopping. Other users get JupyterHub's
    logout unchanged.
    """

    async def get(self):
        # Logout is a GET in JupyterHub, and here it ends the visitor's sessions:
        # a link or redirect from another site must not do that. Browsers say
        # where a navigation comes from in Sec-Fetch-Site; the hub's own
        # Logout button is "same-origin", a typed URL or bookmark "none".
        origin = self.request.headers.get("Sec-Fetch-Site")
        if origin and origin not in ("same-origin", "none"):
            self.log.warning("Refusing a logout requested from another site (%s)", origin)
            raise web.HTTPError(
                403, "Logging out from another site is not allowed. Use this hub's Logout button."
            )
        return await super().get()

    async def handle_logout(self):
        await maybe_future(super().handle_logout())
        authenticator = self.anonymous_authenticator
        user = self.current_user
        if authenticator is None or user is None or not authenticator.is_anonymous(user):
            return
        try:
            await self._shutdown_servers(user)
        except Exception:
            self.log.exception("Failed to stop the servers of %s at logout", user.name)
        for token in list(user.orm_user.api_tokens):
            self.db.delete(token)
        user.orm_user.cookie_id = orm.new_token()
        self.db.commit()
        self.log.info("Discarded the anonymous identity %s at logout", user.name)
        busy = [name for name, spawner in user.spawners.items() if spawner.active]
        if busy or not authenticator.delete_user_on_logout:
            if busy:
                self.log.info(
                    "Not deleting %s yet: servers %s still active", user.name, sorted(busy)
                )
            return
        await maybe_future(authenticator.delete_user(user))
        await user.delete_spawners()
        self.users.delete(user)
        self.log.info("Deleted anonymous user %s at logout", user.name)


def _option(options, key):
    return first_value((options or {}).get(key)).strip()


class LaunchRouterHandler(AuthenticatorMixin, SameSiteCookiesMixin, SpawnHandler):
    """``/hub/spawn`` for launch links: one browser, several servers.

    Only a GET by an anonymous user whose query names a repository is
    routed; everything else is JupyterHub's ``SpawnHandler``. When a server
    of the user already runs the same repository and ref, the browser goes
    there. Otherwise, when the default server is free, it is used; when it
    is busy, the browser goes to a new named server
    ``/hub/spawn/<user>/<slug>-<random>`` with the same query, or, without
    named servers, gets a page saying what to do.
    """

    async def get(self, *args, **kwargs):
        authenticator = self.anonymous_authenticator
        user = self.current_user
        repo = first_repo_param(self.request.query_arguments).strip()
        if (
            authenticator is None
            or user is None
            or not repo
            or not authenticator.is_anonymous(user)
        ):
            return await self._hub_get()
        ref = _option(self.request.query_arguments, "ref") or _option(
            self.request.query_arguments, "opt-ref"
        )

        for name, spawner in sorted(user.spawners.items()):
            options = spawner.user_options or {}
            if (
                spawner.active
                and _option(options, "repo") == repo
                and _option(options, "ref") == ref
            ):
                self.log.info("%s already runs %s in server %r", user.name, safe_log(repo), name)
                return self.redirect(self._spawn_url(user, name, with_query=False))

        if not user.spawner.active:
            return await self._hub_get()

        if not self.allow_named_servers:
            raise web.HTTPError(
                409,
                "This browser already has a Binder session running. "
                "Stop it from the home page before launching another repository.",
            )

        active = [s for s in user.spawners.values() if s.active]
        cap = authenticator.max_servers_per_user
        if cap > 0 and len(active) >= cap:
            raise web.HTTPError(
                429,
                f"You already have {len(active)} sessions running, the limit is {cap}. "
                "Stop one from the home page and try again.",
            )
        await self._prune_stopped_servers(user)
        name = self._new_server_name(user, repo)
        self.log.info("Routing launch of %s by %s to server %r", safe_log(repo), user.name, name)
        self.redirect(self._spawn_url(user, name, with_query=True))

    async def _hub_get(self):
        result = super().get()
        if inspect.isawaitable(result):
            result = await result
        return result

    def _spawn_url(self, user, server_name, with_query):
        url = url_path_join(self.hub.base_url, "spawn", user.escaped_name)
        if server_name:
            url = url_path_join(url, server_name)
        if with_query and self.request.query:
            url = url + "?" + self.request.query
        return url

    def _new_server_name(self, user, repo):
        slug = repo_slug(repo, max_length=16) or "binder"
        for _ in range(20):
            name = f"{slug}-{random_suffix(5)}"
            if name not in user.orm_spawners:
                return name
        raise web.HTTPError(500, "Could not pick a name for the new session.")

    async def _prune_stopped_servers(self, user):
        """Delete stopped named servers when the hub's per-user limit would refuse a new one.

        ``JupyterHub.named_server_limit_per_user`` counts every named server
        in the database, stopped or not; an anonymous user cannot restart a
        finished Binder session anyway.
        """
        limit = await self.get_current_user_named_server_limit()
        named = [name for name in user.orm_spawners if name]
        if not limit or len(named) < limit:
            return
        for name in named:
            spawner = user.spawners[name]
            if spawner.active:
                continue
            self.log.info("Removing stopped server %r of %s", name, user.name)
            await maybe_future(user._delete_spawner(spawner))
            self.db.delete(spawner.orm_spawner)
            user.spawners.pop(name, None)
            self.db.commit()


class ProxyErrorPageHandler(AuthenticatorMixin, ProxyErrorHandler):
    """The proxy's 503 page: a Binder launch link whose service is down says so.

    configurable-http-proxy fetches its error pages from the hub as
    ``/hub/error/<code>?url=<path>`` (``--error-target``); JupyterHub's
    ``ProxyErrorHandler`` (5.5 and 6.1) answers "Your server appears to be
    down" for every path. A path under the service's prefix gets the
    sentence a ``/hub/spawn?repo=`` launch gets when the service is down;
    every other path the hub's own page.
    """

    async def get(self, status_code_s):
        authenticator = self.anonymous_authenticator
        name = authenticator.binder_service_name if authenticator else ""
        prefix = url_path_join(self.base_url, "services", name, "")
        path = urlsplit(self.get_argument("url", "")).path
        if not name or not path.startswith(prefix):
            return await super().get(status_code_s)
        self.log.warning("Service %s did not answer the proxy for %s", name, safe_log(path))
        html = await self.render_template(
            "error.html",
            status_code=503,
            status_message="Service Unavailable",
            message=ServiceUnavailable().message,
            logo_url=url_path_join(self.hub.base_url, "home"),
        )
        self.set_header("Content-Type", "text/html")
        self.write(html)
