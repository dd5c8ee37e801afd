"""The emulated cluster DNS: Service names resolve for processes that opt in.

Inside a cluster, ``<service>.<namespace>.svc.cluster.local`` resolves through
the cluster's DNS. Here, :class:`ClusterDNS` keeps a hosts file (``address
name...`` lines) in step with the store: every Service with a selector maps
to the ``podIP`` of a ready pod it selects, as a headless Service's record
would (kube-proxy's port translation is not emulated, so ``port`` must equal
``targetPort``, as in KubeSpawner's Services). The file is replaced
atomically on each change.

Processes read it through two small shims in ``tests/k8s/resolver/``: a
``sitecustomize`` for Python (the hub) and a ``--require`` script for
Node.js (configurable-http-proxy). :meth:`ClusterDNS.environment` returns the
variables that switch them on; names not in the file use the system resolver.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

RESOLVER = Path(__file__).resolve().with_name("resolver")
DOMAIN = "cluster.local"


def service_records(services, pods) -> dict[str, str]:
    """``{name: address}`` for Services with a ready, selected pod (pure)."""
    records = {}
    ready_pods = [
        p
        for p in pods
        if p.get("status", {}).get("podIP")
        and not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions") or []
        )
    ]
    for service in services:
        meta, spec = service["metadata"], service.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            continue
        for pod in ready_pods:
            if pod["metadata"]["namespace"] != meta["namespace"]:
                continue
            labels = pod["metadata"].get("labels") or {}
            if all(labels.get(key) == value for key, value in selector.items()):
                address = pod["status"]["podIP"]
                name, ns = meta["name"], meta["namespace"]
                for record in (f"{name}.{ns}.svc.{DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"):
                    records[record] = address
                break
    return records


class ClusterDNS:
    """Keeps ``path`` listing the Service records of ``store``."""

    def __init__(self, store, path):
        self.store = store
        self.path = Path(path)
        self._records = None
        self._stopped = False
        self._scheduled = False
        self._namespaces = set()

    def start(self):
        self._namespaces = {svc["metadata"]["namespace"] for svc in self.store.select("services")}
        self.store.on_change(self._on_change)
        self.refresh()
        return self

    def stop(self):
        self._stopped = True

    def _on_change(self, type_, resource, obj):
        if self._stopped:
            return
        if resource == "services":
            self._namespaces = {
                svc["metadata"]["namespace"] for svc in self.store.select("services")
            }
        elif resource != "pods" or obj["metadata"].get("namespace") not in self._namespaces:
            return  # only pods next to a Service can change a record
        if not self._scheduled:
            # one refresh per burst of changes, after the current callbacks
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.refresh)

    def refresh(self):
        self._scheduled = False
        records = service_records(self.store.select("services"), self.store.select("pods"))
        if records == self._records:
            return
        self._records = records
        lines = [f"{address} {name}" for name, address in sorted(records.items())]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("# emulated cluster DNS\n" + "\n".join(lines) + "\n")
        os.replace(tmp, self.path)

    def environment(self, pythonpath: str | None = None) -> dict[str, str]:
        """Variables that make Python and Node.js child processes resolve Service names.

        ``pythonpath`` is the rest of ``PYTHONPATH`` to keep (e.g. the repository root).
        """
        paths = [str(RESOLVER)] + ([pythonpath] if pythonpath else [])
        node_options = f"--require {RESOLVER / 'lookup.js'}"
        return {
            "K8S_EMULATOR_HOSTS": str(self.path),
            "PYTHONPATH": os.pathsep.join(paths),
            "NODE_OPTIONS": node_options,
        }
