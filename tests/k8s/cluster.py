"""An emulated Kubernetes cluster in the current event loop: API server, scheduler, kubelets.

    async with Cluster(nodes=2) as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
        ...  # kubernetes_asyncio / KubeSpawner talk to cluster.url
        cluster.store.list("pods")

The API server listens on a free loopback port; ``kubeconfig_path`` points at a
kubeconfig for it with the admin token. ``store`` is the object store
(tests/k8s/store.py documents its in-process API). ``faults`` injects errors
(faults.py); with ``rbac=True`` requests are authorized against the stored
Roles and bindings and ``token_for(namespace, service_account)`` issues tokens.

Controllers: ``start()`` calls :meth:`_start_scheduler` and
:meth:`_start_kubelets` after the API server is up; they start the scheduler
loop (tests/k8s/scheduler.py) and one kubelet per node, and register
``stop()`` callables in ``self._controllers``.
"""

import json
import socket
import tempfile
from pathlib import Path

from aiohttp import web

from .apiserver import KUBERNETES_VERSION, ApiServer
from .catalog import Catalog
from .clusterdns import ClusterDNS
from .faults import FaultInjector
from .kubelet import KubeletPool
from .rbac import Authorizer
from .scheduling import SchedulerLoop
from .store import Store
from .validation import Validator


class Cluster:
    """See the module docstring. Options:

    - ``nodes``: how many nodes to add at start (``node-1`` ..), with ``node_defaults``
    - ``rbac``: enforce authentication and RBAC (default False: any token, or none, is admin)
    - ``validate``: validate every stored object against the Kubernetes schema (default True)
    - ``kubernetes_version``: the version served by /version and used for validation
    - ``bookmark_interval``: seconds between BOOKMARK events on watches that allow them
    - ``registry_url``: the registry kubelets pull from (``None``: images from the catalog only)
    - ``directory``: where the kubeconfig (and kubelet working directories) go
    - ``scheduler``: run the scheduler loop (default True); ``kubelets``: run kubelets (default True)
    - ``catalog``: extra image catalog entries, e.g. ``[{"pattern": "127.0.0.1:5000/binder-*",
      "kind": "singleuser", "in_registry": true}]`` (see catalog.py; also ``cluster.catalog.add``)
    - ``node_defaults`` may set the kubelets' ``bandwidth`` (bytes/s) and ``time_scale``
    """

    def __init__(
        self,
        *,
        nodes=0,
        node_defaults=None,
        rbac=False,
        validate=True,
        kubernetes_version=KUBERNETES_VERSION,
        bookmark_interval=60.0,
        registry_url=None,
        directory=None,
        host="127.0.0.1",
        port=0,
        scheduler=True,
        kubelets=True,
        scheduler_config=None,
        seed=None,
        catalog=None,
    ):
        self.initial_nodes = nodes
        self.node_defaults = dict(node_defaults or {})
        self.rbac = rbac
        self.kubernetes_version = kubernetes_version
        self.registry_url = registry_url
        self.host = host
        self.port = port
        self.run_scheduler = scheduler
        self.run_kubelets = kubelets
        self.scheduler_config = scheduler_config
        self.seed = seed
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="k8s-emulator-")
            directory = self._tmp.name
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kubeconfig_path = self.directory / "kubeconfig"
        import random

        self.store = Store(
            validator=Validator(kubernetes_version) if validate else None,
            rng=random.Random(seed) if seed is not None else None,
        )
        self.authorizer = Authorizer(self.store, enforce=rbac)
        self.faults = FaultInjector(seed=seed or 0)
        self.api = ApiServer(
            self.store,
            authorizer=self.authorizer,
            faults=self.faults,
            bookmark_interval=bookmark_interval,
            kubernetes_version=kubernetes_version,
        )
        #: image name -> what a kubelet runs for it (tests add entries; see catalog.py)
        self.catalog = Catalog()
        for entry in catalog or []:
            entry = dict(entry)
            self.catalog.add(entry.pop("pattern"), entry.pop("kind", "generic"), **entry)
        #: the running kubelets (kubelet.KubeletPool: ``cluster.kubelets["node-1"]``), once started
        self.kubelets = None
        #: the scheduler loop (scheduling.SchedulerLoop), once started
        self.scheduler = None
        #: Service name records for processes that opt in (clusterdns.ClusterDNS)
        self.dns = None
        #: node name -> the options it was added with (capacity, images, bandwidth, ...)
        self.nodes = {}
        self._controllers = []
        self._runner = None
        self.url = None

    @property
    def admin_token(self):
        return self.authorizer.admin_token

    def token_for(self, namespace, service_account):
        """A bearer token for a service account (created if missing)."""
        return self.authorizer.issue_token(namespace, service_account)

    # ------------------------------------------------------------ lifecycle

    async def start(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(
            self.api.app, access_log=None, handle_signals=False, shutdown_timeout=1
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://{self.host}:{self.port}"
        self.write_kubeconfig(self.kubeconfig_path)
        for i in range(self.initial_nodes):
            self.add_node(f"node-{i + 1}", **self.node_defaults)
        if self.run_scheduler:
            await self._start_scheduler()
        if self.run_kubelets:
            await self._start_kubelets()
        return self

    async def _start_scheduler(self):
        """Start the scheduler loop (tests/k8s/scheduling.py) over ``self.store``."""
        self.scheduler = SchedulerLoop(self.store, self.scheduler_config, seed=self.seed).start()
        self._controllers.append(self.scheduler.stop)

    async def _start_kubelets(self):
        """Start one kubelet per node in ``self.nodes`` (and for nodes added later)."""
        self.kubelets = KubeletPool(
            self.store, catalog=self.catalog, registry_url=self.registry_url, api_url=self.url
        )
        for name, options in self.nodes.items():
            self.kubelets.start_node(name, options)
        self._controllers.append(self.kubelets.stop)
        self.dns = ClusterDNS(self.store, self.directory / "cluster-hosts").start()
        self._controllers.append(self.dns.stop)

    def dns_environment(self, pythonpath=None):
        """Environment for child processes (a hub, its proxy) to resolve Service names.

        See tests/k8s/clusterdns.py; ``pythonpath`` is kept after the resolver's folder.
        """
        return self.dns.environment(pythonpath)

    async def stop(self):
        for stop in reversed(self._controllers):
            result = stop()
            if hasattr(result, "__await__"):
                await result
        self._controllers.clear()
        self.store.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    # ------------------------------------------------------------ configuration

    def kubeconfig(self, token=None):
        """A kubeconfig dict for this cluster (admin token unless ``token`` is given)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator-user", "user": {"token": token or self.admin_token}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {
                        "cluster": "emulator",
                        "user": "emulator-user",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "emulator",
            "preferences": {},
        }

    def write_kubeconfig(self, path, token=None):
        """Write a kubeconfig (JSON, which is YAML) to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.kubeconfig(token), indent=2))
        return path

    def add_node(
        self,
        name,
        *,
        cpu="4",
        memory="16Gi",
        pods=110,
        images=None,
        labels=None,
        taints=None,
        unschedulable=False,
        **options,
    ):
        """Register a node: a Node object with capacity, Ready, and ``status.images``.

        ``images`` maps image names to sizes in bytes (the node's image cache at start).
        Extra ``options`` (e.g. pull bandwidth) are kept in ``self.nodes[name]`` for the kubelet.
        """
        capacity = {
            "cpu": str(cpu),
            "memory": str(memory),
            "pods": str(pods),
            "ephemeral-storage": "100Gi",
        }
        node_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        node_labels.update(labels or {})
        images = dict(images or {})
        node = {
            "metadata": {"name": name, "labels": node_labels},
            "spec": {"taints": list(taints or [])} if taints else {},
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": "",
                    "containerRuntimeVersion": "emulated://1.0",
                    "kernelVersion": "",
                    "kubeProxyVersion": f"v{self.kubernetes_version}.0",
                    "kubeletVersion": f"v{self.kubernetes_version}.0",
                    "machineID": "",
                    "operatingSystem": "linux",
                    "osImage": "emulated",
                    "systemUUID": "",
                },
                "images": node_images(images),
            },
        }
        if unschedulable:
            node["spec"]["unschedulable"] = True
        created = self.store.create("nodes", node)
        self.nodes[name] = {
            "cpu": cpu,
            "memory": memory,
            "pods": pods,
            "images": images,
            "labels": node_labels,
            "taints": list(taints or []),
            **options,
        }
        if self.kubelets is not None:
            self.kubelets.start_node(name, self.nodes[name])
            return self.store.get("nodes", None, name)
        return created


def node_images(images, limit=50):
    """``status.images`` for an image -> size map: largest first, at most ``limit``
    (kubelet nodeStatusMaxImages, pkg/kubelet/nodestatus/setters.go)."""
    ordered = sorted(images.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [{"names": [image], "sizeBytes": size} for image, size in ordered]
