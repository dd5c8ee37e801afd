"""BinderSpawner: build or reuse a repository's image, then launch it with KubeSpawner.

Traits and override points only. The launch flow (options, validation,
resolve, reservation, progress, ``BINDER_*`` environment) is
:class:`~binder_spawner.launch.BinderLaunchMixin`; build pod manifests are
:mod:`binder_spawner.build`, running them :mod:`binder_spawner.builder`.
"""

import asyncio
import base64
import copy
import json
from urllib.parse import urlsplit

import jupyterhub
from kubespawner import KubeSpawner
from traitlets import Bool, Dict, Float, Instance, List, TraitError, Unicode, default, validate

from . import build
from .builder import BuildFailed, BuildPod, BuildTimedOut
from .errors import spawn_error
from .images import build_pod_name, image_name, repo_hash
from .kuberetry import CLUSTER_UNAVAILABLE_MESSAGE, ApiRetry, ClusterUnavailable, is_retryable
from .launch import BinderLaunchMixin
from .nodes import preferred_node_affinity
from .perprocess import one_per_process
from .service_client import BinderServiceError

#: fire-and-forget tasks, referenced until done
_BACKGROUND = set()
#: one lock per shared reflector key: one start (or replacement) at a time
_REFLECTOR_LOCKS = {}

#: the repo2docker release build pods run by default
DEFAULT_BUILDER_IMAGE = "quay.io/jupyterhub/repo2docker:2025.08.0"


class BinderSpawner(BinderLaunchMixin, KubeSpawner):
    """A KubeSpawner that launches servers from git repositories.

    Each launch resolves the repository's ref to a commit, reuses the image
    ``image_prefix + <slug>:<commit>`` if the registry has it or builds it
    with repo2docker in a build pod, then starts the user pod from it.
    """

    # -- images and builds -------------------------------------------------

    image_prefix = Unicode(
        help="""
        Registry and name prefix of built images, BinderHub's
        ``image_prefix``: the image of a launch is this prefix followed by the
        repository's build slug and, as the tag, the commit. Build pods push
        there and user pods pull from there, so reuse an existing BinderHub's
        value to reuse its images. Required.

        Example: ``c.BinderSpawner.image_prefix = "registry.example.org/binder/r2d-"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    registry_client = Instance(
        "binder_spawner.registry.RegistryClient",
        help="""
        Answers "is this image in the registry?" before a build
        (:class:`binder_spawner.registry.RegistryClient`, configured as
        ``c.RegistryClient.*``).

        Example: ``c.BinderSpawner.registry_client = RegistryClient(timeout=20)``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("registry_client")
    def _default_registry_client(self):
        # one client per hub process: its cache of existing images and its
        # registry tokens serve every user's launches
        from .registry import RegistryClient

        def make():
            client = RegistryClient(parent=self)
            scheme, host = self._registry_endpoint()
            if scheme == "http" and host not in client.insecure_registries:
                client.insecure_registries = [*client.insecure_registries, host]
            return client

        return one_per_process((type(self), "registry_client"), make)

    registry_url = Unicode(
        help="""
        URL of the registry's API where images are looked up before a build,
        e.g. ``https://registry.example.org``. Default: ``https://`` and the
        host of :attr:`image_prefix`. Set it when the API is reached at another
        address than the one in image names, or over plain ``http://``.

        Example: ``c.BinderSpawner.registry_url = "http://registry.binder.svc:5000"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def _registry_endpoint(self):
        """(scheme, host) of the registry API, or ("", "") when unknown."""
        if self.registry_url:
            parts = urlsplit(self.registry_url)
            return parts.scheme, parts.netloc
        return "", ""

    def lookup_name(self, image):
        """``image`` with the host of :attr:`registry_url`, for the registry lookup."""
        scheme, host = self._registry_endpoint()
        if not host or "/" not in image:
            return image
        return host + "/" + image.split("/", 1)[1]

    async def _load_push_credentials(self):
        """Registry credentials for lookups from :attr:`push_secret`, read once per process."""
        loaded = one_per_process((type(self), "push_secret_loaded"), dict)
        client = self.registry_client
        if (
            not self.push_secret
            or loaded.get(self.push_secret)
            or client.docker_config
            or client.docker_config_path
        ):
            return
        try:
            secret = await asyncio.wait_for(
                self.api.read_namespaced_secret(
                    self.push_secret,
                    self.build_namespace,
                    _request_timeout=self.k8s_api_request_timeout,
                ),
                self.k8s_api_request_timeout,
            )
            data = (secret.data or {}).get(".dockerconfigjson")
            if data:
                client.docker_config = json.loads(base64.b64decode(data))
        except Exception as e:
            self.log.warning("Cannot read registry credentials from %s: %s", self.push_secret, e)
            return
        loaded[self.push_secret] = True

    builder_image = Unicode(
        DEFAULT_BUILDER_IMAGE,
        help=f"""
        Image of the build pods: repo2docker. Default
        ``{DEFAULT_BUILDER_IMAGE}``.

        Example: ``c.BinderSpawner.builder_image = "quay.io/jupyterhub/repo2docker:2025.08.0"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_backend = Unicode(
        build.DOCKER_SOCKET,
        help="""
        Where build pods build: ``"docker-socket"`` (default) mounts the
        node's Docker socket (:attr:`build_docker_socket`); ``"remote"``
        points repo2docker at :attr:`build_docker_host` (a BuildKit-enabled
        Docker daemon, e.g. a docker-in-docker service), so build pods need
        no host access.

        Example: ``c.BinderSpawner.build_backend = "remote"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("build_backend")
    def _validate_build_backend(self, proposal):
        if proposal.value not in build.BACKENDS:
            raise TraitError(
                f"BinderSpawner.build_backend must be one of {build.BACKENDS}, "
                f"not {proposal.value!r}"
            )
        return proposal.value

    build_docker_socket = Unicode(
        "/var/run/docker.sock",
        help="""
        Path of the Docker socket on the build nodes (backend
        ``docker-socket``). Default ``/var/run/docker.sock``.

        Example: ``c.BinderSpawner.build_docker_socket = "/var/run/dind/docker.sock"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_docker_host = Unicode(
        help="""
        ``DOCKER_HOST`` of the build pods with the ``remote`` backend, e.g.
        ``tcp://binder-dind.binder.svc:2375``. Default empty.

        Example: ``c.BinderSpawner.build_docker_host = "tcp://dind.binder.svc:2375"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    push_secret = Unicode(
        help="""
        Name of a ``kubernetes.io/dockerconfigjson`` secret in the build
        namespace holding the push credentials for :attr:`image_prefix`'s
        registry; mounted as ``/root/.docker/config.json``. Default empty:
        push without credentials.

        Example: ``c.BinderSpawner.push_secret = "binder-push-secret"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_namespace = Unicode(
        help="""
        Namespace of the build pods. Default: the user pods' namespace.

        Example: ``c.BinderSpawner.build_namespace = "binder-builds"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("build_namespace")
    def _default_build_namespace(self):
        return self.namespace

    build_resources = Dict(
        {"requests": {"cpu": "200m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        help="""
        ``resources`` of the build container (requests and limits, Kubernetes
        quantities). Default requests 200m CPU and 1Gi memory, limit 4Gi.

        Example: ``c.BinderSpawner.build_resources = {"requests": {"memory": "2Gi"}}``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_node_selector = Dict(
        help="""
        Node labels a build node must have (the ``nodeSelector`` of build
        pods and the filter for choosing the sticky build node). Default
        empty: any schedulable node.

        Example: ``c.BinderSpawner.build_node_selector = {"binder/build": "true"}``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_tolerations = List(
        help="""
        Tolerations of build pods (Kubernetes ``Toleration`` objects), e.g.
        for dedicated, tainted build nodes. Default empty.

        Example: ``c.BinderSpawner.build_tolerations = [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    sticky_builds = Bool(
        True,
        help="""
        Prefer, for each repository, the build node ranked first by
        rendezvous hashing among the build-capable nodes, so that rebuilds
        reuse that node's layer cache. Default True. Needs permission to
        list nodes; without it builds go wherever the scheduler puts them.

        Example: ``c.BinderSpawner.sticky_builds = False``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_timeout = Float(
        3600,
        help="""
        Seconds a build may take before its pod is deleted and the launch
        fails with a message. Default 3600.

        Example: ``c.BinderSpawner.build_timeout = 1800``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    install_singleuser = Bool(
        True,
        help="""
        Add ``jupyterhub-singleuser`` of the hub's JupyterHub version to
        every built image (repo2docker ``--appendix``), so that the server
        can authenticate users through the hub. Turn off only if every
        repository brings its own. Default True.

        Example: ``c.BinderSpawner.install_singleuser = False``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_appendix = Unicode(
        help="""
        Further Dockerfile lines appended to every built image, after the
        ``jupyterhub-singleuser`` installation. Default empty.

        Example: ``c.BinderSpawner.build_appendix = "RUN pip install --no-cache-dir nbgitpuller"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_extra_args = List(
        Unicode(),
        help="""
        Extra repo2docker arguments, placed before the repository URL, e.g.
        ``["--build-memory-limit", "3G"]``. Default empty.

        Example: ``c.BinderSpawner.build_extra_args = ["--build-memory-limit", "3G"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    # -- Kubernetes API faults ------------------------------------------------

    k8s_api_outage_timeout = Float(
        120,
        help="""
        Seconds a launch keeps retrying a Kubernetes API that fails (HTTP
        5xx, 429 after its ``Retry-After``, refused or timed-out
        connections) before it fails with "The cluster is not answering.
        Try again in a few minutes." Counted from the first failure of a
        call, so a build rides out API blips and control-plane restarts
        shorter than this. Each attempt is bounded by
        ``k8s_api_request_timeout``. Also the default of KubeSpawner's
        ``k8s_api_request_retry_timeout`` (pod creation and deletion).
        Default 120.

        Example: ``c.BinderSpawner.k8s_api_outage_timeout = 300``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("k8s_api_request_retry_timeout")
    def _default_k8s_api_request_retry_timeout(self):
        return int(self.k8s_api_outage_timeout)

    def api_retry(self):
        """The :class:`~binder_spawner.kuberetry.ApiRetry` of this spawner's calls."""
        retry = ApiRetry(
            request_timeout=self.k8s_api_request_timeout,
            deadline=self.k8s_api_outage_timeout,
            log=self.log,
        )
        self._launch_retries.append(retry)
        return retry

    @property
    def _launch_retries(self):
        """The ApiRetry objects of the running launch (reset by ``start()``)."""
        if self._retries is None:
            self._retries = []
        return self._retries

    _retries = None

    def cluster_unavailable(self, error):
        """The spawn error for an API that kept failing; the detail goes to the log."""
        self.log.error("Launch of %s failed, Kubernetes API unavailable: %s", self._log_name, error)
        return spawn_error(CLUSTER_UNAVAILABLE_MESSAGE, status_code=503, reason="cluster")

    # -- placement --------------------------------------------------------------

    placement_timeout = Float(
        2.0,
        help="""
        Seconds to wait for the service's placement answer (which nodes
        hold the image). Without an answer in time the pod is launched
        without node preferences and a warning is logged. Default 2.

        Example: ``c.BinderSpawner.placement_timeout = 5``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    # -- inherited defaults --------------------------------------------------

    @default("mem_guarantee")
    def _default_mem_guarantee(self):
        return "1G"

    @default("mem_limit")
    def _default_mem_limit(self):
        return "2G"

    @default("uid")
    def _default_uid(self):
        # repo2docker --user-id 1000
        return 1000

    @default("start_timeout")
    def _default_start_timeout(self):
        # start() includes the build: the hub must not give up before
        # build_timeout does, plus time for the pod to start
        return int(self.build_timeout) + 300

    @default("http_timeout")
    def _default_http_timeout(self):
        # Binder images start slower than a plain notebook image, more so
        # when many start at once on one node: nine cached launches at once
        # waited 39-45 s for HTTP (benchmarks/concurrent_launch.py); 30 s fails them
        return 150

    @default("automount_service_account_token")
    def _default_automount_service_account_token(self):
        return False

    @default("allow_privilege_escalation")
    def _default_allow_privilege_escalation(self):
        return False

    @default("container_security_context")
    def _default_container_security_context(self):
        return {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    # -- override points ------------------------------------------------------

    #: the registry lookup overlaps with the reservation; builds wait for it
    prepares_before_slot = True

    def image_for(self, spec):
        """The image name of a resolved spec (BinderHub-compatible)."""
        return image_name(spec, spec.commit, prefix=self.image_prefix)

    async def prepare_launch(self, spec):
        """Reuse or build the image of ``spec``, ask where it runs best, set ``self.image``."""
        try:
            await self._prepare_image(spec)
        except ClusterUnavailable as e:
            raise self.cluster_unavailable(e) from None

    async def _prepare_image(self, spec):
        if not self.image_prefix:
            raise spawn_error(
                "This hub is not configured to build images. Ask its administrator.",
                status_code=500,
                reason="config",
            )
        self._placement = ()
        image = self.image_for(spec)
        self.launch_state["image"] = image
        self.image = image
        placement = asyncio.ensure_future(self.placement_terms(image))
        try:
            if await self.image_exists(image):
                self.log.info("Image %s exists, no build for %s", image, self._log_name)
                self.emit_progress("built", f"Found built image {image}")
                # a build that finished while the hub was away is not cleaned up yet
                task = asyncio.ensure_future(self._remove_finished_build(image))
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
            else:
                # a build only with a slot: a full repository is refused before it
                await self.wait_for_slot()
                await self.build_image(spec, image)
            self._placement = await placement
        finally:
            if not placement.done():
                placement.cancel()

    async def image_exists(self, image):
        """Ask the registry; an unreachable registry fails the launch with a message."""
        from .registry import RegistryError

        await self._load_push_credentials()
        try:
            return await self.registry_client.image_exists(self.lookup_name(image))
        except RegistryError as e:
            self.log.error("Registry lookup of %s for %s failed: %s", image, self._log_name, e)
            raise spawn_error(
                "The image registry is not answering. Try again in a few minutes.",
                status_code=503,
                reason="registry",
            ) from None

    async def _remove_finished_build(self, image):
        pod = BuildPod(
            self.api,
            self.build_namespace,
            {"metadata": {"name": build_pod_name(image)}},
            log=self.log,
            emit=lambda *args: None,
            image_exists=lambda: None,
            retry=self.api_retry(),
        )
        try:
            found = await pod.read()
            if found is not None and build.pod_outcome(found)[0]:
                await pod.delete()
        except Exception as e:
            self.log.debug("No cleanup of build pod %s: %s", pod.ref, e)

    async def placement_terms(self, image):
        """Preferred node-affinity terms from the service's answer ([] on no answer)."""
        try:
            nodes = await asyncio.wait_for(
                self.service_client.placement(image, self._service_token()),
                self.placement_timeout,
            )
        except (asyncio.TimeoutError, BinderServiceError) as e:
            self.log.warning(
                "No placement for %s (%s): launching without node preferences",
                image,
                e.__class__.__name__,
            )
            return []
        return preferred_node_affinity(nodes)

    def build_command(self, spec, image):
        appendix = ""
        if self.install_singleuser:
            appendix = build.singleuser_appendix(jupyterhub.__version__)
        if self.build_appendix:
            appendix += self.build_appendix.rstrip("\n") + "\n"
        return build.repo2docker_command(
            spec.repo_url,
            spec.commit,
            image,
            appendix=appendix,
            extra_args=self.build_extra_args,
        )

    async def build_nodes(self):
        """Names of schedulable nodes matching :attr:`build_node_selector`."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(self.build_node_selector.items()))
        nodes = await asyncio.wait_for(
            self.api.list_node(
                label_selector=selector or None, _request_timeout=self.k8s_api_request_timeout
            ),
            self.k8s_api_request_timeout,
        )
        return [n.metadata.name for n in nodes.items if not (n.spec and n.spec.unschedulable)]

    async def build_pod_manifest(self, spec, image):
        preferred = ""
        if self.sticky_builds:
            try:
                preferred = build.build_node(await self.build_nodes(), spec.repo_key) or ""
            except Exception as e:
                self.log.warning("Cannot choose a sticky build node: %s", e)
        return build.build_pod_manifest(
            name=build_pod_name(image),
            builder_image=self.builder_image,
            command=self.build_command(spec, image),
            repo_key=spec.repo_key,
            repo_url=spec.repo_url,
            commit=spec.commit,
            image=image,
            backend=self.build_backend,
            docker_socket=self.build_docker_socket,
            docker_host=self.build_docker_host,
            push_secret=self.push_secret,
            resources=copy.deepcopy(self.build_resources),
            node_selector=self.build_node_selector,
            tolerations=self.build_tolerations,
            preferred_node=preferred,
            image_pull_secrets=[s["name"] for s in self._image_pull_secret_dicts()],
            active_deadline_seconds=int(self.build_timeout) + 60,
        )

    def _image_pull_secret_dicts(self):
        secrets = self.image_pull_secrets or []
        return [s if isinstance(s, dict) else {"name": s} for s in secrets]

    async def build_image(self, spec, image):
        """Build ``image`` in a build pod (or attach to the running one)."""
        manifest = await self.build_pod_manifest(spec, image)
        pod = BuildPod(
            self.api,
            self.build_namespace,
            manifest,
            log=self.log,
            emit=self.emit_progress,
            image_exists=lambda: self.image_exists(image),
            retry=self.api_retry(),
        )
        try:
            await pod.run(self.build_timeout)
        except BuildTimedOut as e:
            raise spawn_error(
                f"Building {spec.repo_url} took longer than {int(e.timeout)} seconds "
                "and was stopped.",
                status_code=504,
                reason="build-timeout",
            ) from None
        except BuildFailed as e:
            last = "\n".join(e.lines[-5:])
            self.log.error("Build of %s for %s failed: %s", image, self._log_name, e.reason)
            raise spawn_error(
                f"Building {spec.repo_url} failed: {e.reason}."
                + (f" Last lines of the build log:\n{last}" if last else ""),
                status_code=422,
                reason="build-failed",
            ) from None

    _placement = ()

    async def get_pod_manifest(self):
        pod = await super().get_pod_manifest()
        state = self.launch_state or {}
        if state.get("repo"):
            pod.metadata.labels[build.REPO_HASH_LABEL] = repo_hash(state["repo"])
            pod.metadata.labels[build.COMMIT_LABEL] = state.get("commit") or ""
            pod.metadata.annotations = dict(pod.metadata.annotations or {})
            pod.metadata.annotations[build.REPO_ANNOTATION] = state["repo"]
            pod.metadata.annotations[build.IMAGE_ANNOTATION] = state.get("image") or self.image
        if self._placement:
            self._add_preferred_terms(pod, list(self._placement))
        return pod

    @staticmethod
    def _add_preferred_terms(pod, terms):
        from kubernetes_asyncio.client import V1Affinity, V1NodeAffinity

        spec = pod.spec
        if spec.affinity is None:
            spec.affinity = V1Affinity()
        if spec.affinity.node_affinity is None:
            spec.affinity.node_affinity = V1NodeAffinity()
        node_affinity = spec.affinity.node_affinity
        existing = list(node_affinity.preferred_during_scheduling_ignored_during_execution or [])
        node_affinity.preferred_during_scheduling_ignored_during_execution = existing + terms

    # -- Kubernetes faults: KubeSpawner's part of the launch ---------------------

    #: False from the start of a launch until KubeSpawner's ``_start`` (the user
    #: pod) begins; None when unknown (e.g. state loaded after a hub restart)
    _pod_requested = None

    async def start(self):
        self._pod_requested = False
        self._launch_retries.clear()
        self._start_orphan_sweeper()
        return await super().start()

    async def _start(self):
        self._pod_requested = True
        self._api_failing = False
        try:
            if any(retry.failures for retry in self._launch_retries):
                # the build rode out an API outage, which also broke the shared
                # pod reflector's watch: it reconnects after a backoff of up to
                # ~25 s (kubespawner reflector.py ``_watch_and_update``), and
                # until then it cannot see this launch's pod. A fresh one lists now.
                self.log.info("Restarting the pod reflector after an API outage")
                await self._start_watching_pods(replace=True)
            return await super()._start()
        except ClusterUnavailable as e:
            raise self.cluster_unavailable(e) from None
        except asyncio.TimeoutError as e:
            # exponential_backoff's "Could not create pod" after an outage
            if self._api_failing:
                raise self.cluster_unavailable(e) from None
            raise

    _api_failing = False

    async def _make_create_pod_request(self, pod, request_timeout):
        # KubeSpawner 7.0/7.1 retries only timeouts and 409 here and raises a
        # 5xx at once (kubespawner/spawner.py ``_make_create_pod_request``,
        # ``if e.status != 409: raise``): an API blip must not fail a launch
        # whose image is ready, so outages are retried as timeouts are
        try:
            created = await super()._make_create_pod_request(pod, request_timeout)
        except Exception as e:
            if not is_retryable(e):
                raise
            self._api_failing = True
            self.log.warning("Creating pod for %s failed (%s), retrying", self._log_name, e)
            return False
        self._api_failing = not created
        return created

    async def _start_reflector(self, kind, reflector_class, replace=False, **kwargs):
        # Workaround for KubeSpawner 7.0.0 and 7.1.0 ``_start_reflector``
        # (kubespawner/spawner.py): the new reflector goes into the shared
        # ``reflectors`` dict *before* its first list, and a failed list leaves
        # it there with a failed ``first_load_future`` and no watch task; the
        # fast path (``if previous_reflector and not replace``) then hands that
        # empty, dead reflector to every later launch, which waits forever for
        # its pod. A watch that gave up (reflector.py ``_watch_and_update``,
        # "never recovered, giving up") is as dead. Here a dead reflector is
        # replaced, a failing start is retried through API outages, and one
        # start runs at a time per key.
        key = self._get_reflector_key(kind)
        lock = _REFLECTOR_LOCKS.setdefault(key, asyncio.Lock())

        async def attempt():
            async with lock:
                previous = KubeSpawner.reflectors.get(key)
                broken = previous is not None and reflector_is_dead(previous)
                if broken:
                    self.log.warning("Replacing the failed %s reflector %s", kind, key)
                try:
                    return await super(BinderSpawner, self)._start_reflector(
                        kind, reflector_class, replace=replace or broken, **kwargs
                    )
                except Exception:
                    if previous is not None and not broken:
                        # a replacement failed: keep the working one
                        KubeSpawner.reflectors[key] = previous
                    raise

        try:
            return await self.api_retry().run(attempt, what=f"list {kind}", bound=False)
        except ClusterUnavailable as e:
            raise self.cluster_unavailable(e) from None

    async def poll(self):
        self._start_orphan_sweeper()
        if self._pod_requested is False:
            # the launch failed before the user pod was requested: nothing
            # runs, and no API call (nor reflector) is needed to say so
            return 0
        status = await super().poll()
        if status is not None:
            self._report_interrupted_launch()
        return status

    async def stop(self, now=False):
        if self._pod_requested is False:
            await self.release_slot()
            return
        await super().stop(now=now)

    def _report_interrupted_launch(self):
        """After a hub restart, tell the visitor why a pending launch is gone.

        A launch saves its state only once its server runs, so a server the
        hub has on record, with launch options but no launch state and no
        pod, is a launch the hub's restart cut off (while it resolved, built
        or started). JupyterHub shows a spawner's failed ``_spawn_future`` on
        the spawn-pending page and the progress API, and keeps the spawner
        for that (jupyterhub 5.5/6.1 ``User.stop``: "pop Spawner *unless* it's
        stopping due to an error"; ``SpawnPendingHandler``: ``spawner._failed``).
        """
        options = self.user_options if isinstance(self.user_options, dict) else {}
        repo = options.get("repo")
        if (
            self.launch_state is not None
            or self._spawn_future is not None
            or not isinstance(repo, str)
            or not repo
            or self.server is None
        ):
            return
        self.log.warning("Launch of %s was cut off by a hub restart", self._log_name)
        message = (
            f"The launch of {repo[:200]} was interrupted by a restart of the hub. "
            "Start it again: a build that was running is reused."
        )
        error = spawn_error(message, status_code=503, reason="hub-restart")
        # what the spawn-pending page shows of a failed spawn (jupyterhub 5.5/6.1
        # utils.format_exception(only_jupyterhub=True)); without it the page
        # says only that the last start failed
        error.jupyterhub_message = message
        future = asyncio.get_running_loop().create_future()
        future.set_exception(error)
        self._spawn_future = future

    # -- builds nobody waits for --------------------------------------------------

    build_orphan_grace_period = Float(
        300,
        help="""
        Seconds a running build pod that no launch of this hub waits for
        (e.g. after a hub restart) is kept, so that a relaunch of the same
        image can attach to it, before it is deleted. Finished build pods
        nobody waits for are deleted at once. Default 300.

        Example: ``c.BinderSpawner.build_orphan_grace_period = 600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def _start_orphan_sweeper(self):
        from .orphans import OrphanBuildSweeper

        def make():
            sweeper = OrphanBuildSweeper(
                self.api,
                self.build_namespace,
                grace_period=self.build_orphan_grace_period,
                retry=self.api_retry(),
                log=self.log,
            )
            sweeper.start()
            return sweeper

        one_per_process((type(self), "orphan_sweeper", self.build_namespace), make)


def reflector_is_dead(reflector):
    """Did a shared KubeSpawner reflector fail its first list, or its watch give up?"""
    first = reflector.first_load_future
    if not first.done():
        return False  # starting
    if first.cancelled() or first.exception() is not None:
        return True
    task = reflector.watch_task
    return not reflector._stopping and (task is None or task.done())
