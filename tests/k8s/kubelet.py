"""The emulated kubelet: one per node, running each bound pod as local processes.

A :class:`Kubelet` registers its Node (capacity, allocatable, addresses,
``status.images``), watches the pods bound to it (``spec.nodeName``) in the
store and drives each through the lifecycle a real kubelet reports:

- Pending with ``ContainerCreating`` while images are pulled. A pull of an
  image the node lacks takes ``size / bandwidth * time_scale`` seconds, with
  ``Pulling`` / ``Pulled`` events; ``imagePullPolicy`` is honoured (``Always``
  asks the registry each time, ``IfNotPresent`` uses the cache, ``Never``
  fails with ``ErrImageNeverPull`` when the image is absent). An image the
  registry does not have gives ``ErrImagePull``, then ``ImagePullBackOff``
  with doubling back-off (10 s to 300 s, times ``time_scale``), and the pull
  is retried, so pushing the image later lets the pod start.
- Running: init containers run to completion first, then each container
  starts as a local process (``Created`` / ``Started``) on the pod's own
  loopback address (``podIP``), with the pod's environment, a working
  directory per pod and the pod's security context. Containers without a
  readiness probe are ready once started; ``tcpSocket`` and ``httpGet``
  readiness probes are polled.
- Succeeded or Failed with the exit codes, or restarted with back-off as
  ``restartPolicy`` says (``CrashLoopBackOff``, ``restartCount``).
- Deleted gracefully: ``Killing`` event, SIGTERM, SIGKILL after the grace
  period, then the kubelet confirms the deletion (a zero-grace delete).

What images run comes from the :class:`~tests.k8s.catalog.Catalog`.
Version references are to kubernetes v1.30 ``pkg/kubelet``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog, CatalogEntry
from .errors import ApiError
from .oci import (
    RegistryError,
    RegistryHTTP,
    credentials_from_docker_config,
    manifest_size,
    parse_image,
)
from .podworker import PodWorker
from .runtime import PullError
from .scheduler import parse_quantity
from .store import timestamp

log = logging.getLogger(__name__)

MB = 1024 * 1024
# pkg/kubelet/nodestatus/setters.go: --node-status-max-images default
NODE_STATUS_MAX_IMAGES = 50
KUBELET_VERSION = "v1.30.0"


class PodNetwork:
    """Hands out pod and node addresses on loopback, unique across a cluster.

    Each cluster takes a random 127.X.0.0/16 (X in 16..250), so clusters in
    parallel test runs on one machine rarely collide on ``podIP:8888``.
    Linux routes all of 127.0.0.0/8 to ``lo``; no setup is needed to bind.
    """

    def __init__(self, network: str | None = None, rng=None):
        if network is None:
            network = f"127.{(rng or random).randint(16, 250)}.0.0/16"
        self.network = ipaddress.ip_network(network)
        self._free = (str(ip) for ip in self.network.hosts() if ip.packed[-1] not in (0, 255))
        self._released: list[str] = []
        self.in_use: set[str] = set()

    def allocate(self) -> str:
        ip = self._released.pop(0) if self._released else next(self._free)
        self.in_use.add(ip)
        return ip

    def release(self, ip: str | None):
        if ip in self.in_use:
            self.in_use.discard(ip)
            self._released.append(ip)


@dataclass
class CachedImage:
    names: list[str]
    size: int
    digest: str
    last_used: float = 0.0


def parse_size(value) -> int:
    """``"1.5Gi"``-style or a number of bytes."""
    return int(parse_quantity(value)) if isinstance(value, str) else int(value)


class Registries:
    """Where images come from: the cluster's registry (if any) plus node-level credentials."""

    def __init__(self, url: str | None = None, credentials: tuple[str, str] | None = None):
        self.host = url.split("://", 1)[-1].rstrip("/") if url else None
        self.scheme = url.split("://", 1)[0] if url and "://" in url else "http"
        self.credentials = credentials

    def lookup(self, image: str, docker_configs=()) -> tuple[str, int] | None:
        """``(digest, size)`` of ``image`` in the registry, or None; blocking (run in a thread)."""
        ref = parse_image(image)
        if self.host is None or ref.host != self.host:
            return None
        credentials = self.credentials
        for config in docker_configs:
            credentials = credentials_from_docker_config(config, ref.host) or credentials
        client = RegistryHTTP(ref.host, credentials, scheme=self.scheme)
        found = client.manifest(ref.name, ref.reference)
        if found is None:
            return None
        digest, manifest = found
        return digest, manifest_size(manifest)


class Kubelet:
    """One node: its Node object, image cache and pod workers."""

    def __init__(
        self,
        store,
        name: str,
        *,
        catalog: Catalog | None = None,
        network: PodNetwork | None = None,
        registries: Registries | None = None,
        root: str | Path | None = None,
        cpu="4",
        memory="16Gi",
        pods=110,
        images=(),
        bandwidth=200 * MB,
        image_cache=None,
        time_scale=1.0,
        labels=None,
        taints=None,
        unschedulable=False,
        api_url: str | None = None,
    ):
        self.store = store
        self.name = name
        self.catalog = catalog or Catalog()
        self.network = network or PodNetwork()
        self.registries = registries or Registries()
        self.root = (
            Path(root)
            if root
            else Path(os.environ.get("TMPDIR", "/tmp")) / f"kubelet-{name}-{os.getpid()}"
        )
        self.capacity = {
            "cpu": str(cpu),
            "memory": str(memory),
            "pods": str(pods),
            "ephemeral-storage": "100Gi",
        }
        self.bandwidth = parse_size(bandwidth)
        self.image_cache = parse_size(image_cache) if image_cache is not None else None
        self.time_scale = float(time_scale)
        self.labels = dict(labels or {})
        self.taints = list(taints or [])
        self.unschedulable = unschedulable
        self.api_url = api_url
        self.host_ip = self.network.allocate()
        self.images: dict[str, CachedImage] = {}
        self._pulls: dict[str, asyncio.Future] = {}
        self._pull_lock = asyncio.Lock()
        self.workers: dict[str, PodWorker] = {}  # pod uid -> worker
        self._watch = None
        self._task: asyncio.Task | None = None
        for image in images:
            if isinstance(image, str):
                image, size = image, None
            else:
                image, size = image
            entry = self.catalog.lookup(image)
            size = parse_size(size) if size is not None else (entry.size if entry else 200 * MB)
            digest = entry.digest(image) if entry else CatalogEntry(image).digest(image)
            self._cache(image, digest, size)

    # ------------------------------------------------------------ node

    def node_object(self) -> dict:
        images = sorted(self.images.values(), key=lambda i: (-i.size, i.names[0]))
        allocatable = dict(self.capacity)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64",
                    **self.labels,
                },
            },
            "spec": {"taints": self.taints, "unschedulable": self.unschedulable}
            if self.taints or self.unschedulable
            else {},
            "status": {
                "capacity": dict(self.capacity),
                "allocatable": allocatable,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": timestamp(),
                        "lastTransitionTime": timestamp(),
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": self.host_ip},
                    {"type": "Hostname", "address": self.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": self.name,
                    "systemUUID": self.name,
                    "bootID": self.name,
                    "kernelVersion": os.uname().release,
                    "osImage": "kubelet emulator",
                    "containerRuntimeVersion": "emulated://1.0",
                    "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": KUBELET_VERSION,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
                # pkg/kubelet/nodestatus/setters.go Images: largest first, capped
                "images": [
                    {"names": i.names, "sizeBytes": i.size} for i in images[:NODE_STATUS_MAX_IMAGES]
                ],
            },
        }

    def _publish_node(self, full=False):
        """Create the Node, or update its status (all of it, or only ``images``)."""
        node = self.node_object()
        if not self.store.exists("nodes", None, self.name):
            self.store.create("nodes", node)
            return
        current = self.store.get("nodes", None, self.name)
        status = current.get("status") or {}
        if full:
            status = node["status"]
        elif status.get("images") == node["status"]["images"]:
            return
        else:
            status["images"] = node["status"]["images"]
        self.store.update(
            "nodes",
            None,
            self.name,
            {"metadata": {"name": self.name}, "status": status},
            subresource="status",
        )

    # ------------------------------------------------------------ lifecycle

    def start(self):
        """Register (or adopt) the Node and start watching this node's pods."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._publish_node(full=True)
        self._watch = self.store.watch("pods", field_selector=f"spec.nodeName={self.name}")
        self._task = asyncio.create_task(self._run(), name=f"kubelet {self.name}")
        return self

    async def stop(self):
        """Kill every pod's processes (a node going away) and stop watching."""
        if self._watch is not None:
            self._watch.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(
            *(w.shutdown() for w in list(self.workers.values())), return_exceptions=True
        )
        self.workers.clear()
        self.network.release(self.host_ip)
        shutil.rmtree(self.root, ignore_errors=True)

    async def _run(self):
        async for event in self._watch:
            pod = event["object"]
            uid = pod["metadata"]["uid"]
            try:
                if event["type"] == "DELETED":
                    worker = self.workers.pop(uid, None)
                    if worker:
                        asyncio.create_task(worker.shutdown())
                    continue
                worker = self.workers.get(uid)
                if worker is None:
                    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                        continue
                    worker = self.workers[uid] = PodWorker(self, pod)
                    worker.start()
                worker.pod = pod
                if pod["metadata"].get("deletionTimestamp"):
                    worker.request_termination(
                        pod["metadata"].get("deletionGracePeriodSeconds", 30)
                    )
            except Exception:
                log.exception(
                    "kubelet %s: handling pod %s failed", self.name, pod["metadata"].get("name")
                )

    def forget(self, worker):
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]

    # ------------------------------------------------------------ images

    def _cache(self, image, digest, size):
        # containerd reports the digest and the normalised reference; the
        # name as the pod spelled it is kept too, so short names still match
        ref = parse_image(image)
        names = [
            f"{ref.repository}@{digest}",
            str(ref) if not ref.digest else f"{ref.repository}@{ref.digest}",
        ]
        self.images[image] = CachedImage(
            list(dict.fromkeys(names + [image])), size, digest, time.monotonic()
        )

    def images_in_use(self) -> set[str]:
        return {
            c["image"]
            for worker in self.workers.values()
            for c in (worker.spec.get("initContainers") or []) + worker.spec["containers"]
        }

    def collect_images(self):
        """Image garbage collection: drop least recently used images until the cache fits.

        Like pkg/kubelet/images/image_gc_manager.go, images that a pod on the
        node uses are kept; ``image_cache`` (bytes) stands for the disk's
        high threshold. Returns the evicted image names.
        """
        if self.image_cache is None:
            return []
        in_use = self.images_in_use()
        evicted = []
        candidates = sorted(
            (i for i in self.images if i not in in_use), key=lambda i: self.images[i].last_used
        )
        while sum(i.size for i in self.images.values()) > self.image_cache and candidates:
            image = candidates.pop(0)
            del self.images[image]
            evicted.append(image)
        if evicted:
            log.info("kubelet %s: evicted images %s", self.name, ", ".join(evicted))
        return evicted

    def has_image(self, image: str) -> bool:
        cached = self.images.get(image)
        if cached is not None:
            cached.last_used = time.monotonic()
        return cached is not None

    def image_id(self, image: str) -> str:
        cached = self.images.get(image)
        if cached is None:
            return ""
        return f"{parse_image(image).repository}@{cached.digest}"

    async def resolve(self, image: str, pull_secrets=()) -> tuple[str, int]:
        """``(digest, size)`` of ``image`` as the registry has it; raises PullError."""
        try:
            ref = parse_image(image)
        except ValueError as e:
            raise PullError(
                "InvalidImageName", f'Failed to apply default image tag "{image}": {e}'
            ) from None
        entry = self.catalog.lookup(image)
        if entry is not None and not entry.in_registry:
            return entry.digest(image), entry.size
        try:
            found = await asyncio.to_thread(self.registries.lookup, image, pull_secrets)
        except (RegistryError, OSError) as e:
            raise PullError(
                "ErrImagePull",
                f'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": {e}',
            ) from None
        if found is None:
            raise PullError(
                "ErrImagePull",
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
                f'failed to resolve reference "{ref}": {ref}: not found',
            )
        return found

    async def pull(self, image: str, pull_secrets=()) -> tuple[float, int]:
        """Pull ``image`` into the cache (once per node at a time); ``(seconds, size)``."""
        if image in self._pulls:
            return await asyncio.shield(self._pulls[image])
        future = asyncio.get_running_loop().create_future()
        self._pulls[image] = future
        try:
            started = time.monotonic()
            digest, size = await self.resolve(image, pull_secrets)
            cached = self.images.get(image)
            if cached is None or cached.digest != digest:
                # serializeImagePulls (default true): one download at a time per node
                async with self._pull_lock:
                    await asyncio.sleep(size / self.bandwidth * self.time_scale)
                self._cache(image, digest, size)
                self.collect_images()
                self._publish_node()
            result = (time.monotonic() - started, size)
            future.set_result(result)
            return result
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._pulls[image]

    def pull_secrets(self, pod) -> list[dict]:
        """Docker config documents of the pod's ``imagePullSecrets``."""
        configs = []
        namespace = pod["metadata"]["namespace"]
        for ref in pod["spec"].get("imagePullSecrets") or []:
            try:
                secret = self.store.get("secrets", namespace, ref["name"])
            except ApiError:
                continue
            data = secret.get("data") or {}
            for key in (".dockerconfigjson", ".dockercfg"):
                if key in data:
                    with contextlib.suppress(ValueError):
                        doc = json.loads(base64.b64decode(data[key]))
                        configs.append(doc if "auths" in doc else {"auths": doc})
        return configs

    def record(self, pod, reason, message, type="Normal", container=None):
        field_path = None
        if container is not None:
            kind = "initContainers" if container.get("_init") else "containers"
            field_path = f"spec.{kind}{{{container['name']}}}"
        try:
            self.store.record_event(
                pod,
                reason,
                message,
                type=type,
                component="kubelet",
                host=self.name,
                field_path=field_path,
            )
        except ApiError as e:
            log.warning(
                "kubelet %s: event %s for %s not recorded: %s",
                self.name,
                reason,
                pod["metadata"]["name"],
                e,
            )


class KubeletPool:
    """The kubelets of one cluster: a shared address pool, catalog and registry.

    ``start_node(name, options)`` takes the options ``Cluster.add_node`` kept:
    ``cpu``, ``memory``, ``pods``, ``images`` (image -> size), ``labels``,
    ``taints``, ``unschedulable``, and the kubelet's own ``bandwidth`` (bytes
    per second, default 200 MiB/s), ``time_scale`` (multiplies pull times
    and back-offs; default 1.0, tests use less) and ``image_cache`` (bytes of
    images a node keeps before it evicts the least recently used; default
    unlimited).
    """

    def __init__(
        self,
        store,
        *,
        catalog=None,
        registry_url=None,
        registry_credentials=None,
        api_url=None,
        root=None,
        network=None,
    ):
        self.store = store
        self.catalog = catalog if catalog is not None else Catalog()
        self.registries = Registries(registry_url, registry_credentials)
        self.api_url = api_url
        self.network = network or PodNetwork()
        self._own_root = root is None
        if root is None:
            # Outside pytest's private tmp_path: processes run as a pod's
            # runAsUser and must reach their folders.
            import tempfile

            root = tempfile.mkdtemp(prefix="k8s-kubelets-")
            os.chmod(root, 0o755)
        self.root = Path(root)
        self.kubelets: dict[str, Kubelet] = {}

    def start_node(self, name, options=None) -> Kubelet:
        options = dict(options or {})
        images = options.get("images") or {}
        if isinstance(images, dict):
            images = list(images.items())
        kubelet = Kubelet(
            self.store,
            name,
            catalog=self.catalog,
            network=self.network,
            registries=self.registries,
            root=self.root / name,
            cpu=options.get("cpu", "4"),
            memory=options.get("memory", "16Gi"),
            pods=options.get("pods", 110),
            images=images,
            bandwidth=options.get("bandwidth", 200 * MB),
            time_scale=options.get("time_scale", 1.0),
            image_cache=options.get("image_cache"),
            labels=options.get("labels"),
            taints=options.get("taints"),
            unschedulable=options.get("unschedulable", False),
            api_url=self.api_url,
        )
        self.kubelets[name] = kubelet
        return kubelet.start()

    def __getitem__(self, name) -> Kubelet:
        return self.kubelets[name]

    def __iter__(self):
        return iter(self.kubelets.values())

    async def stop(self):
        await asyncio.gather(*(k.stop() for k in self.kubelets.values()), return_exceptions=True)
        self.kubelets.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
