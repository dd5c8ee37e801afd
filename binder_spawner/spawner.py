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

from binder_service.placement import preferred_node_affinity

from . import build
from .builder import BuildFailed, BuildPod, BuildTimedOut
from .errors import spawn_error
from .launch import BinderLaunchMixin, repo_hash
from .service_client import BinderServiceError

#: collaborators shared by all spawners of a hub process, keyed by (class, name)
_SHARED = {}
#: fire-and-forget tasks, referenced until done
_BACKGROUND = set()

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

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("registry_client")
    def _default_registry_client(self):
        # one client per hub process: its cache of existing images and its
        # registry tokens serve every user's launches
        from .registry import RegistryClient

        key = (type(self), "registry_client")
        if key not in _SHARED:
            client = RegistryClient(parent=self)
            scheme, host = self._registry_endpoint()
            if scheme == "http" and host not in client.insecure_registries:
                client.insecure_registries = [*client.insecure_registries, host]
            _SHARED[key] = client
        return _SHARED[key]

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
        key = (type(self), "push_secret_loaded")
        client = self.registry_client
        if (
            not self.push_secret
            or _SHARED.get(key)
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
        _SHARED[key] = True

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

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_docker_host = Unicode(
        help="""
        ``DOCKER_HOST`` of the build pods with the ``remote`` backend, e.g.
        ``tcp://binder-dind.binder.svc:2375``. Default empty.

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

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_appendix = Unicode(
        help="""
        Further Dockerfile lines appended to every built image, after the
        ``jupyterhub-singleuser`` installation. Default empty.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    build_extra_args = List(
        Unicode(),
        help="""
        Extra repo2docker arguments, placed before the repository URL, e.g.
        ``["--build-memory-limit", "3G"]``. Default empty.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    # -- placement --------------------------------------------------------------

    placement_timeout = Float(
        2.0,
        help="""
        Seconds to wait for the service's placement answer (which nodes
        hold the image). Without an answer in time the pod is launched
        without node preferences and a warning is logged. Default 2.

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
        from .images import image_name

        return image_name(spec, spec.commit, prefix=self.image_prefix)

    async def prepare_launch(self, spec):
        """Reuse or build the image of ``spec``, ask where it runs best, set ``self.image``."""
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
        from .images import build_pod_name

        pod = BuildPod(
            self.api,
            self.build_namespace,
            {"metadata": {"name": build_pod_name(image)}},
            log=self.log,
            emit=lambda *args: None,
            image_exists=lambda: None,
            request_timeout=self.k8s_api_request_timeout,
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
        from .images import build_pod_name

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
            request_timeout=self.k8s_api_request_timeout,
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
