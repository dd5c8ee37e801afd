"""HTTP handlers of binder_service, under the service prefix (``/services/binder/``).

REST API (JSON, ``Authorization: token T`` with a JupyterHub token):

- ``POST api/reservations`` ``{"user", "server", "repo"}`` -> 201 (new) or 200
  (renewed) reservation; 429 with ``Retry-After`` when a limit is reached.
- ``DELETE api/reservations/{id}`` -> 204; the user's own token only once
  the hub shows the server stopping or gone.
- ``GET api/usage`` -> ``{"total": n, "repos": {repo_key: n}}``, with the
  unfiltered ``read:servers`` scope only.
- ``GET api/settings`` -> the values shared with the hub's configuration
  (``{"Culler": {"timeout", ...}, "PlacementSource": {"pod_memory"}}``), with
  the unfiltered ``read:servers`` scope only.
- ``GET api/placement?image=IMAGE`` -> ``{"nodes": [{"name", "weight"}]}``, for
  the image of one of the caller's own servers' repository, or with the
  unfiltered ``read:servers`` scope.

Public: ``v2/<provider>/<spec>`` launch links (redirect to the hub's spawn
URL), ``badge.svg``, ``badge_logo.svg``, ``health`` and ``metrics``.
"""

import json
import re
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from .limits import LimitExceeded

MAX_NAME = 255


def error_text(error):
    """The sentence of a ``web.HTTPError``, as written.

    tornado 6.5 made ``log_message`` a property that doubles every ``%`` when
    the error has no ``%s`` arguments; ``get_message()`` (6.5+) undoes that.
    """
    get_message = getattr(error, "get_message", None)
    if get_message is not None:
        return get_message() or ""
    message = error.log_message or ""
    return message % error.args if error.args else message


class BaseHandler(web.RequestHandler):
    """Shared plumbing: the application, JSON bodies, token authentication."""

    @property
    def service(self):
        return self.settings["binder_service"]

    @property
    def log(self):
        return self.service.log

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and error_text(exc):
            message = error_text(exc)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def log_exception(self, typ, value, tb):
        # tornado's default names the client address: keep it out of the log.
        if isinstance(value, web.HTTPError):
            if error_text(value):
                self.log.warning(
                    "%s %s %s: %s",
                    value.status_code,
                    self.request.method,
                    self.request.path,
                    error_text(value),
                )
        else:
            self.log.error(
                "Uncaught exception %s %s",
                self.request.method,
                self.request.path,
                exc_info=(typ, value, tb),
            )

    def json_body(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The request body must be a JSON object.")
        return body

    def token(self):
        header = self.request.headers.get("Authorization", "")
        match = re.match(r"(?:token|bearer)\s+(\S+)\s*$", header, re.IGNORECASE)
        return match.group(1) if match else None

    async def identity(self):
        """The hub model of the token's owner (``kind``, ``name``, ``scopes``); 403 without one."""
        token = self.token()
        identity = await self.service.authenticate(token) if token else None
        if identity is None:
            raise web.HTTPError(403, "A valid JupyterHub API token is required.")
        return identity

    def may_act_for(self, identity, user):
        """True if ``identity`` is ``user`` or holds ``admin:servers`` for them."""
        if identity.get("kind") == "user" and identity.get("name") == user:
            return True
        return self.is_admin_for(identity, user)

    @staticmethod
    def is_admin_for(identity, user):
        """True if ``identity`` holds ``admin:servers`` for ``user``."""
        scopes = set(identity.get("scopes") or [])
        return bool({"admin:servers", f"admin:servers!user={user}"} & scopes)


class ReservationsHandler(BaseHandler):
    async def post(self):
        # the token first: a stranger's body is not even parsed
        identity = await self.identity()
        body = self.json_body()
        user, server, repo = body.get("user"), body.get("server", ""), body.get("repo")
        for name, value in (("user", user), ("server", server), ("repo", repo)):
            if not isinstance(value, str) or len(value) > MAX_NAME:
                raise web.HTTPError(
                    400, f"'{name}' must be a string of at most {MAX_NAME} characters."
                )
        if not user or not repo:
            raise web.HTTPError(400, "'user' and 'repo' are required.")
        if not self.may_act_for(identity, user):
            raise web.HTTPError(403, "You can only reserve instances for your own servers.")
        try:
            slot, created = await self.service.reserve(
                user, server, repo, verify=not self._is_admin(identity, user)
            )
        except LimitExceeded as e:
            retry_after = self.service.retry_after
            self.set_status(429)
            self.set_header("Retry-After", str(retry_after))
            self.set_header("Content-Type", "application/json")
            self.finish(
                json.dumps(
                    {
                        "status": 429,
                        "message": e.message,
                        "limit": e.decision.limit,
                        "usage": e.decision.usage,
                        "retry_after": retry_after,
                    }
                )
            )
            return
        self.set_status(201 if created else 200)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(slot.model()))

    def _is_admin(self, identity, user):
        return not (identity.get("kind") == "user" and identity.get("name") == user)


class ReservationHandler(BaseHandler):
    async def delete(self, reservation_id):
        identity = await self.identity()
        slot = self.service.store.get(reservation_id)
        if slot is None:
            raise web.HTTPError(404, "No such reservation.")
        if not self.may_act_for(identity, slot.user):
            raise web.HTTPError(403, "You can only release reservations for your own servers.")
        if not self.is_admin_for(identity, slot.user) and await self.service.server_running(
            slot.user, slot.server
        ):
            # the user's token is also the server's: only the spawner's stop path
            # (the hub shows the server stopping or gone) gives the slot back
            raise web.HTTPError(
                403, "This server is still running; its reservation ends when it stops."
            )
        self.service.release(reservation_id)
        self.set_status(204)
        self.finish()


class UsageHandler(BaseHandler):
    async def get(self):
        identity = await self.identity()
        # which repositories run is other visitors' business: admins and
        # services that may read every server (read:servers, unfiltered) only
        if "read:servers" not in set(identity.get("scopes") or []):
            raise web.HTTPError(403, "Only hub admins and services can read the usage.")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(await self.service.usage()))


class SettingsHandler(BaseHandler):
    async def get(self):
        identity = await self.identity()
        # the same callers as the usage: hub admins and services
        if "read:servers" not in set(identity.get("scopes") or []):
            raise web.HTTPError(403, "Only hub admins and services can read the settings.")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.service.shared_settings()))


class PlacementHandler(BaseHandler):
    async def get(self):
        identity = await self.identity()
        image = self.get_argument("image", "")
        if not image or len(image) > 512:
            raise web.HTTPError(400, "Give the image name as ?image=NAME:TAG.")
        # which nodes hold an image tells who launched (repository, commit):
        # other visitors' business, as the usage is
        if not await self.service.may_place(identity, image):
            raise web.HTTPError(403, "You can only ask where the image of your own launch goes.")
        nodes = await self.service.placement(image)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"nodes": [{"name": n, "weight": w} for n, w in nodes]}))


class LaunchHandler(BaseHandler):
    """``v2/<provider>/<spec>`` -> ``/hub/spawn?opt-repo=...&opt-ref=...&opt-urlpath=...``.

    The ``opt-`` prefix is JupyterHub 6's form of spawn options in a query (it
    warns about options without it); the Binder spawners accept it on JupyterHub 5.
    """

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = (error_text(exc) if isinstance(exc, web.HTTPError) else "") or self._reason
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")

    def get(self, _):
        # The raw path: tornado would decode %2F in the GitLab and git specs.
        link = self.request.path[len(self.service.base_url) :]
        if self.request.query:
            link += "?" + self.request.query
        spec = self.service.parse_launch(link)
        if spec.is_archive:
            # a record's spec names its provider (a CKAN dataset URL alone reads as git)
            query = {"opt-repo": spec.spec}
        else:
            query = {"opt-repo": spec.repo_url, "opt-ref": spec.ref}
        if spec.urlpath:
            query["opt-urlpath"] = spec.urlpath
        self.redirect(self.service.hub_spawn_url + "?" + urlencode(query))

    head = get


class BadgeHandler(web.RequestHandler):
    def initialize(self, name):
        self.name = name

    def get(self):
        self.set_header("Content-Type", "image/svg+xml")
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish(self.settings["binder_service"].badge(self.name))


class HealthHandler(BaseHandler):
    async def get(self):
        checks = await self.service.health()
        ok = all(c["ok"] for c in checks)
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"ok": ok, "checks": checks}))


class MetricsHandler(BaseHandler):
    def get(self):
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.service.metrics.registry))


def handlers(prefix):
    """The URL routes under ``prefix`` (ending in ``/``)."""
    return [
        (prefix + "api/reservations", ReservationsHandler),
        (prefix + r"api/reservations/([^/]+)", ReservationHandler),
        (prefix + "api/usage", UsageHandler),
        (prefix + "api/settings", SettingsHandler),
        (prefix + "api/placement", PlacementHandler),
        (prefix + r"v2/(.+)", LaunchHandler),
        (prefix + "badge.svg", BadgeHandler, {"name": "badge.svg"}),
        (prefix + "badge_logo.svg", BadgeHandler, {"name": "badge_logo.svg"}),
        (prefix + "health", HealthHandler),
        (prefix + "metrics", MetricsHandler),
    ]
