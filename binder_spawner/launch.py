"""The launch flow shared by BinderSpawner (Kubernetes) and LocalBinderSpawner.

:class:`BinderLaunchMixin` goes in front of a JupyterHub spawner class::

    class BinderSpawner(BinderLaunchMixin, KubeSpawner):
        async def prepare_launch(self, spec):
            ...  # build or reuse the image, set self.image

What the mixin does, in this order, when the hub calls ``start()``:

1. turns ``user_options`` into a :class:`~binder_spawner.repos.LaunchSpec`
   (only ``repo``, ``ref``, ``urlpath``/``labpath``/``filepath`` are read;
   any other key is refused, because any user can POST arbitrary
   ``user_options`` for their own server through the hub REST API);
2. resolves the ref to a commit with :attr:`~BinderLaunchMixin.repo_policy`;
3. reserves a slot from the service with
   :attr:`~BinderLaunchMixin.service_client`, concurrently with steps 2 and 4
   (the reservation id goes into the spawner state and is released in
   ``stop()`` or when the launch fails);
4. awaits :meth:`~BinderLaunchMixin.prepare_launch`, the one step a subclass
   implements: build or reuse the environment for ``spec`` and report what it
   does with :meth:`~BinderLaunchMixin.emit_progress`. It starts once the
   slot is held, unless the subclass sets ``prepares_before_slot = True`` and
   calls :meth:`~BinderLaunchMixin.wait_for_slot` itself before costly work;
5. sets ``default_url`` from ``urlpath`` and, through ``get_env()``, the
   ``BINDER_*`` variables that BinderHub sets, then calls the parent's
   ``start()``.

``progress()`` first yields the mixin's own events (phases ``resolving``,
``waiting``, ``building``, ``pushing``, ``built``, ``launching``), then the
parent's (KubeSpawner's pod events). Every refusal is a
:func:`~binder_spawner.errors.spawn_error`: one sentence and an HTTP status on
the spawn page.
"""

import asyncio
import html
import os
import time

from jupyterhub.utils import maybe_future
from traitlets import Bool, Callable, Instance, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from .errors import spawn_error
from .perprocess import one_per_process
from .querydata import first_values
from .service_client import BinderServiceClient, BinderServiceError, ServiceUnavailable

#: collaborators shared by the spawners of a hub process, keyed by (class, name)

#: The user_options keys a launch reads. Everything else is refused.
LAUNCH_OPTION_KEYS = ("repo", "ref", "urlpath", "labpath", "filepath")
#: Upper bound on any one option's length (characters).
MAX_OPTION_LENGTH = 2048

#: Phases of a launch as BinderHub names them, with their share of the progress bar.
#: KubeSpawner's own events start at 30 %, so ours stay below.
PHASE_PROGRESS = {
    "resolving": 2,
    "waiting": 5,
    "building": 10,
    "pushing": 26,
    "built": 28,
    "launching": 29,
}


class LaunchProgress:
    """Events of one launch, for any number of ``progress()`` readers.

    Events are kept (a reader that connects late, e.g. a reloaded spawn page,
    gets them all from the start); ``handed_over`` tells readers to continue
    with the parent spawner's events, ``closed`` that the launch failed.
    """

    def __init__(self):
        self.events = []
        self.handed_over = False
        self.closed = False
        self._changed = asyncio.Event()
        self._build_lines = 0

    def _notify(self):
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def add(self, phase, message, progress=None):
        if progress is None:
            progress = PHASE_PROGRESS.get(phase, 0)
            if phase == "building":
                # creep towards the "pushing" mark, one step per log line
                self._build_lines += 1
                span = PHASE_PROGRESS["pushing"] - PHASE_PROGRESS["building"] - 1
                progress += int(span * (1 - 0.97**self._build_lines))
        self.events.append({"progress": int(progress), "message": message, "phase": phase})
        self._notify()

    def hand_over(self):
        self.handed_over = True
        self._notify()

    def close(self):
        self.closed = True
        self._notify()

    async def wait(self):
        await self._changed.wait()


def ref_url(provider, repo_url, commit):
    """The web page of ``commit`` in the repository, as ``BINDER_REF_URL``."""
    base = repo_url[:-4] if repo_url.endswith(".git") else repo_url
    base = base.rstrip("/")
    if provider == "gh":
        return f"{base}/tree/{commit}"
    if provider == "gl":
        return f"{base}/-/tree/{commit}"
    if provider == "gist":
        return f"{base}/{commit}"
    return repo_url


def binder_environment(spec, launch_host):
    """The ``BINDER_*`` variables BinderHub gives a server, for a resolved spec."""
    commit = spec.commit or spec.ref
    if spec.resolved_spec:
        # an archive record: BinderHub's resolved spec and ref URL (builder.py, get_resolved_spec)
        return {
            "BINDER_REPO_URL": spec.repo_url,
            "BINDER_REF_URL": spec.ref_url,
            "BINDER_LAUNCH_HOST": launch_host,
            "BINDER_REQUEST": "v2/" + spec.spec,
            "BINDER_PERSISTENT_REQUEST": f"v2/{spec.provider}/{spec.resolved_spec}",
        }
    env = {
        "BINDER_REPO_URL": spec.repo_url,
        "BINDER_REF_URL": ref_url(spec.provider, spec.repo_url, commit),
        "BINDER_LAUNCH_HOST": launch_host,
        "BINDER_REQUEST": "v2/" + spec.spec,
        "BINDER_PERSISTENT_REQUEST": f"v2/{spec.repo_key}/{commit}",
    }
    return env


def default_url_for(urlpath):
    """``default_url`` for a ``urlpath`` option: always a path inside the server.

    :meth:`RepoPolicy.parse` already refused a urlpath that could climb out of
    the server's prefix; checked again here because this is where it becomes
    a URL, whatever the spec came from.
    """
    from .repos import urlpath_problem

    urlpath = (urlpath or "").strip().lstrip("/")
    if not urlpath:
        return ""
    problem = urlpath_problem(urlpath)
    if problem:
        raise spawn_error(problem, status_code=400)
    return "/" + urlpath


def strip_option_prefix(query):
    """The launch options of a spawn query, with or without JupyterHub's ``opt-`` prefix.

    JupyterHub 6 strips ``opt-`` itself, and warns about query options without it
    (``SpawnHandler._get_user_options``, jupyterhub 6.1 ``handlers/pages.py``);
    JupyterHub 5 passes the query as it is. As in JupyterHub 6, once one key has
    the prefix, keys without it are ignored.
    """
    prefixed = {k[4:]: v for k, v in query.items() if k.startswith("opt-") and k[4:]}
    return prefixed if prefixed else dict(query)


def check_user_options(user_options):
    """Validate the shape of ``user_options``; returns the launch fields only.

    Raises ``ValueError`` with a user-facing sentence for a key a launch does
    not accept, a value that is not a string, or a value that is too long.
    """
    if not isinstance(user_options, dict):
        raise ValueError("Launch options must be a JSON object.")
    unknown = sorted(str(k) for k in user_options if k not in LAUNCH_OPTION_KEYS)
    if unknown:
        shown = ", ".join(k[:40] for k in unknown[:5])
        raise ValueError(
            f"Unsupported launch option: {shown}. A launch accepts only repo, ref and urlpath."
        )
    options = {}
    for key in LAUNCH_OPTION_KEYS:
        value = user_options.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"The launch option {key} must be a string.")
        if len(value) > MAX_OPTION_LENGTH:
            raise ValueError(f"The launch option {key} is too long.")
        options[key] = value.strip()
    if not options.get("repo"):
        raise ValueError("No repository given. Paste a repository URL to launch it.")
    return options


def _options_applied_in_start(spawner, user_options):
    """``apply_user_options`` of the Binder spawners: see ``BinderLaunchMixin.start``."""


LAUNCH_FORM_TEMPLATE = """
<div class="form-group">
  <label for="binder-repo">Repository URL or spec, a record&#39;s DOI (Zenodo, Figshare, Dataverse) or a HydroShare resource</label>
  <input type="text" class="form-control" id="binder-repo" name="repo" required
    placeholder="https://github.com/org/repo, gh/org/repo/main or 10.5281/zenodo.3242074" value="{repo}">
</div>
<div class="form-group">
  <label for="binder-ref">Git ref (branch, tag or commit)</label>
  <input type="text" class="form-control" id="binder-ref" name="ref"
    placeholder="HEAD" value="{ref}">
</div>
<div class="form-group">
  <label for="binder-urlpath">Path to open</label>
  <input type="text" class="form-control" id="binder-urlpath" name="urlpath"
    placeholder="lab/tree/index.ipynb" value="{urlpath}">
</div>
"""


class BinderLaunchMixin(LoggingConfigurable):
    """Resolve, reserve, prepare, then launch: the flow both Binder spawners share.

    A subclass implements :meth:`prepare_launch`. See the module docstring.
    It is a Configurable (so that its traits and ``@default`` methods take
    effect) placed before the spawner class in the bases.
    """

    repo_policy = Instance(
        "binder_spawner.repos.RepoPolicy",
        help="""
        Validates launch specs and resolves refs to commits
        (:class:`binder_spawner.repos.RepoPolicy`). Configure it as
        ``c.RepoPolicy.*``; this trait exists so that tests and deployments
        can pass their own instance.

        Example: ``c.BinderSpawner.repo_policy = RepoPolicy(allowed_providers={"gh"})``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("repo_policy")
    def _default_repo_policy(self):
        # one per hub process and spawner class: its resolve cache serves
        # every user's launches (the configuration is the hub's, the same for all)
        from .repos import RepoPolicy

        return one_per_process((type(self), "repo_policy"), lambda: RepoPolicy(parent=self))

    service_client = Instance(
        BinderServiceClient,
        help="""
        Client for binder_service (reservations and placement). Configure it
        as ``c.BinderServiceClient.*``.

        Example: ``c.BinderSpawner.service_client = BinderServiceClient(url="http://127.0.0.1:10101/services/binder/")``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("service_client")
    def _default_service_client(self):
        return BinderServiceClient(parent=self)

    allow_launch_without_service = Bool(
        False,
        help="""
        Launch even when binder_service cannot be reached (no reservation
        is taken, so the per-repository and total limits are not enforced).
        Default False: the launch is refused with a message asking the user
        to try again.

        Example: ``c.BinderSpawner.allow_launch_without_service = True``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    service_api_token = Unicode(
        help="""
        Token with the ``admin:servers`` scope used for the service when the
        server's own token is not available (e.g. releasing a reservation
        after a hub restart). Default: the environment variable
        ``BINDER_SERVICE_API_TOKEN``, or empty (then only the server's own
        token is used and the service reconciles what it cannot be told).

        Example: ``c.BinderSpawner.service_api_token = os.environ["BINDER_SERVICE_API_TOKEN"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("service_api_token")
    def _default_service_api_token(self):
        return os.environ.get("BINDER_SERVICE_API_TOKEN", "")

    launch_host = Unicode(
        help="""
        Public base URL of the Binder launch links, given to servers as
        ``BINDER_LAUNCH_HOST`` (``BINDER_LAUNCH_HOST`` + ``BINDER_PERSISTENT_REQUEST``
        is a link that relaunches the same commit). Default: the hub's
        public URL (``JupyterHub.public_url``) followed by
        ``services/binder/``, or empty if the hub has no public URL.

        Example: ``c.BinderSpawner.launch_host = "https://binder.example.org/services/binder/"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    idle_timeout = Integer(
        600,
        help="""
        Seconds of inactivity after which binder_service stops an anonymous
        user's server, told to the server as ``BINDER_IDLE_TIMEOUT`` (so a
        notebook can warn its user). The hub hands this value to the service
        (its ``Culler.timeout``) when it starts it. Default 600. 0 disables.

        Example: ``c.BinderSpawner.idle_timeout = 1200``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    max_age = Integer(
        12 * 3600,
        help="""
        Seconds after its start at which binder_service stops an anonymous
        user's server however active, told to the server as
        ``BINDER_MAX_AGE``. The hub hands this value to the service (its
        ``Culler.max_age``) when it starts it. Default 43200 (12 hours). 0
        disables.

        Example: ``c.BinderSpawner.max_age = 6 * 3600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    launch_form_template = Unicode(
        LAUNCH_FORM_TEMPLATE,
        help="""
        HTML of the launch form on the hub's spawn page (inside JupyterHub's
        ``<form>``): inputs named ``repo``, ``ref`` and ``urlpath``. The
        placeholders ``{repo}``, ``{ref}``, ``{urlpath}`` are filled with the
        previous launch's values (HTML-escaped).

        Example: ``c.BinderSpawner.launch_form_template = open("/etc/jupyterhub/launch_form.html").read()``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    pre_launch_hook = Callable(
        None,
        allow_none=True,
        help="""
        Called as ``hook(spawner, spec)`` (may be async) after the spec is
        resolved and the slot reserved, before the environment is prepared.
        Raise :func:`binder_spawner.errors.spawn_error` to refuse a launch.
        Default None.

        Example: ``c.BinderSpawner.pre_launch_hook = my_hook  # def my_hook(spawner, spec): ...``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    # -- options ---------------------------------------------------------

    @default("options_form")
    def _default_options_form(self):
        return self._render_launch_form

    def _render_launch_form(self, spawner=None):
        previous = {}
        if isinstance(self.user_options, dict):
            previous = self.user_options
        values = {
            key: html.escape(str(previous.get(key) or ""), quote=True)
            for key in ("repo", "ref", "urlpath")
        }
        return self.launch_form_template.format(**values)

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub (5.3+) warns about user_options no hook applied; start()
        # reads them, after validation, so there is nothing to apply here
        return _options_applied_in_start

    @default("options_from_form")
    def _default_options_from_form(self):
        return self._launch_options_from_form

    def _launch_options_from_form(self, formdata, spawner=None):
        options = {k: v for k, v in first_values(formdata).items() if k in LAUNCH_OPTION_KEYS and v}
        # Refuse a bad link while the user is still on the form.
        self.launch_spec(options)
        return options

    def options_from_query(self, query_data):
        """``/hub/spawn?opt-repo=...&opt-ref=...&opt-urlpath=...`` launches directly.

        The form without ``opt-`` (``?repo=...``) works too; JupyterHub 6 logs a
        deprecation warning for it.
        """
        return self._launch_options_from_form(strip_option_prefix(query_data))

    def launch_spec(self, user_options):
        """The :class:`LaunchSpec` in ``user_options``; raises a spawn error if refused."""
        from .repos import SpecError

        try:
            options = check_user_options(user_options)
            return self.repo_policy.parse(options)
        except ValueError as e:
            raise spawn_error(str(e), status_code=400) from None
        except SpecError as e:
            raise spawn_error(e.message, status_code=e.status_code) from None

    # -- progress --------------------------------------------------------

    @property
    def launch_progress(self):
        progress = getattr(self, "_launch_progress", None)
        if progress is None:
            progress = self._launch_progress = LaunchProgress()
        return progress

    def emit_progress(self, phase, message, progress=None):
        """Show ``message`` on the spawn page; ``phase`` is one of :data:`PHASE_PROGRESS`."""
        self.launch_progress.add(phase, message, progress)

    async def progress(self):
        events = self.launch_progress
        seen = 0
        while True:
            while seen < len(events.events):
                yield events.events[seen]
                seen += 1
            if events.closed:
                return
            if events.handed_over:
                break
            await events.wait()
        async for event in super().progress():
            yield event

    # -- state -----------------------------------------------------------

    #: the admin's default_url, restored when a launch has no urlpath
    _configured_default_url = None

    #: what the running launch is: spec, repo_url, ref, commit, image, reservation
    launch_state = None

    def get_state(self):
        state = super().get_state()
        if self.launch_state:
            state["binder"] = dict(self.launch_state)
        return state

    def load_state(self, state):
        super().load_state(state)
        if isinstance(state.get("binder"), dict):
            self.launch_state = dict(state["binder"])

    def clear_state(self):
        super().clear_state()
        self.launch_state = None

    # -- environment -----------------------------------------------------

    @default("launch_host")
    def _default_launch_host(self):
        public = getattr(self, "public_hub_url", "") or ""
        if not public:
            return ""
        base = public.rstrip("/")
        if base.endswith("/hub"):
            base = base[: -len("/hub")]
        return base + "/services/binder/"

    def get_env(self):
        env = super().get_env()
        if self.launch_state and self.launch_state.get("environment"):
            env.update(self.launch_state["environment"])
        return env

    # -- service ---------------------------------------------------------

    def _service_token(self):
        return self.api_token or self.service_api_token

    async def reserve_slot(self, spec):
        """Take a slot for this server from binder_service; returns the reservation id."""
        server = self.name or ""
        try:
            reservation = await self.service_client.reserve(
                self.user.name, server, spec.repo_key, self._service_token()
            )
        except ServiceUnavailable as e:
            if self.allow_launch_without_service:
                self.log.warning(
                    "Launching %s for %s without a reservation: %s",
                    spec.repo_key,
                    self._log_name,
                    e,
                )
                return None
            raise spawn_error(e.message, status_code=503, reason="service") from None
        except BinderServiceError as e:
            raise spawn_error(e.message, status_code=e.status_code, reason="limit") from None
        self.log.info(
            "Reserved slot %s for %s (%s)", reservation.get("id"), self._log_name, spec.repo_key
        )
        return reservation.get("id")

    async def release_slot(self):
        """Give the reservation back; failures are logged (the service reconciles)."""
        state = self.launch_state or {}
        reservation = state.get("reservation")
        if not reservation:
            return
        try:
            await self.service_client.release(reservation, self._service_token())
        except BinderServiceError as e:
            self.log.warning(
                "Could not release reservation %s of %s: %s", reservation, self._log_name, e
            )
            return
        state["reservation"] = None
        self.log.info("Released reservation %s of %s", reservation, self._log_name)

    # -- the launch --------------------------------------------------------

    async def prepare_launch(self, spec):
        """Make the environment for the resolved ``spec`` ready (subclass implements).

        Called after resolving and reserving. Build or reuse what the server
        runs (``BinderSpawner``: the image, then sets ``self.image``), report
        each step with :meth:`emit_progress`, raise :func:`spawn_error` to
        fail the launch. May store extra values in ``self.launch_state``.
        """
        raise NotImplementedError

    async def resolve_launch(self):
        """Validate and resolve ``user_options``; returns the spec.

        The slot reservation starts here and runs while the ref is resolved
        (and, in a subclass, while the registry is asked): :meth:`wait_for_slot`
        collects it.
        """
        from .repos import SpecError

        spec = self.launch_spec(self.user_options or {})
        self.launch_state = {
            "spec": spec.spec,
            "repo": spec.repo_key,
            "repo_url": spec.repo_url,
            "ref": spec.ref,
            "commit": None,
            "urlpath": spec.urlpath or "",
            "reservation": None,
        }
        self._slot = asyncio.ensure_future(self.reserve_slot(spec))
        if spec.is_archive:
            from .archives import ARCHIVE_PROVIDERS

            name = ARCHIVE_PROVIDERS[spec.provider].display_name
            self.emit_progress("resolving", f"Resolving the {name} record {spec.repo_url}")
        else:
            self.emit_progress("resolving", f"Resolving {spec.repo_url} at {spec.ref or 'HEAD'}")
        try:
            spec = await self.repo_policy.resolve(spec)
        except SpecError as e:
            raise spawn_error(e.message, status_code=e.status_code) from None
        self.log.info("Launch of %s for %s: commit %s", spec.spec, self._log_name, spec.commit)
        self.launch_state["commit"] = spec.commit
        return spec

    #: the running reservation request of this launch
    _slot = None

    #: True in a subclass whose ``prepare_launch`` calls :meth:`wait_for_slot`
    #: itself before costly work, so cheap work (e.g. a registry lookup)
    #: overlaps with the reservation; False: the slot is held before it starts.
    prepares_before_slot = False

    async def wait_for_slot(self):
        """Wait until this launch holds its slot; raises the refusal (e.g. 429) if not.

        ``prepare_launch`` calls it before any costly work (a build); the
        launch itself always waits for it.
        """
        if self._slot is None:
            return
        self.launch_state["reservation"] = await self._slot

    async def start(self):
        started = time.perf_counter()
        current = getattr(self, "_launch_progress", None)
        if current is None or current.events or current.closed or current.handed_over:
            # a fresh one, unless a spawn page is already waiting on an unused one
            self._launch_progress = LaunchProgress()
        self._slot = None
        try:
            spec = await self.resolve_launch()
            if not self.prepares_before_slot:
                await self.wait_for_slot()
            if self.pre_launch_hook:
                await maybe_future(self.pre_launch_hook(self, spec))
            await self.prepare_launch(spec)
            await self.wait_for_slot()
            self.launch_state["environment"] = {
                **binder_environment(spec, self.launch_host),
                "BINDER_IDLE_TIMEOUT": str(self.idle_timeout),
                "BINDER_MAX_AGE": str(self.max_age),
            }
            if self._configured_default_url is None:
                self._configured_default_url = self.default_url
            self.default_url = default_url_for(spec.urlpath) or self._configured_default_url
        except BaseException:
            self.launch_progress.close()
            await self._keep_reservation_after_failure()
            raise
        self.log.debug(
            "Binder launch of %s prepared in %.1f ms",
            self._log_name,
            (time.perf_counter() - started) * 1000,
        )
        self.emit_progress("launching", f"Launching server from {spec.spec}")
        self.launch_progress.hand_over()
        try:
            return await super().start()
        except BaseException:
            await self._keep_reservation_after_failure()
            raise

    async def _keep_reservation_after_failure(self):
        """Keep the reservation of a failed launch in the state, to be released after the stop.

        The hub stops a server whose start failed (``User.spawn`` calls
        ``User.stop``, jupyterhub 5.5 and 6.1), which runs
        :meth:`run_post_stop_hook` even when it skips ``stop()`` because
        ``poll()`` finds nothing running. The service frees a user's slot
        only once the hub shows the server stopping: the user's token is the
        server's too, and must not free a slot while the server can still
        come up.
        """
        slot, self._slot = self._slot, None
        if slot is None:
            return
        # the reservation may still be on its way
        try:
            reservation = await asyncio.shield(slot)
        except Exception:
            reservation = None
        if reservation and self.launch_state is not None:
            self.launch_state["reservation"] = reservation

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            await self.release_slot()

    def run_post_stop_hook(self):
        """Forget malformed options, run the admin's ``post_stop_hook``, then release a
        slot still held (a failed launch).

        ``User.stop`` (jupyterhub 5.5 and 6.1) calls this after every stop,
        before ``clear_state()``, while the hub shows the server stopping,
        and awaits what it returns. With nothing to release it returns as
        the parent does, leaving the hub's stop sequence untouched.
        """
        self._forget_malformed_options()
        result = super().run_post_stop_hook()
        if not (self.launch_state or {}).get("reservation"):
            return result
        return self._release_after_stop(result)

    def _forget_malformed_options(self):
        """Keep nothing of ``user_options`` that no launch accepts (their shape).

        The hub stores a launch's ``user_options`` before the authenticator's
        and the spawner's checks, and keeps those of a stopped server
        (jupyterhub 5.5 and 6.1 ``User.spawn``); it commits what is left here
        after this hook (``User.stop``, also after a failed start). Options of
        any size or with any key, which the REST API takes from every user,
        would otherwise stay in the hub's database after each refused launch.
        """
        try:
            check_user_options(self.user_options or {})
        except ValueError:
            self.log.info("Forgetting the refused launch options of %s", self._log_name)
            self.user_options = {}
            if self.orm_spawner is not None:
                self.orm_spawner.user_options = {}

    async def _release_after_stop(self, hook_result):
        try:
            return await maybe_future(hook_result)
        finally:
            await self.release_slot()
