"""Cluster DNS for Python processes next to the Kubernetes emulator.

Put this folder on ``PYTHONPATH`` and name a hosts file in
``K8S_EMULATOR_HOSTS``: names listed there (``jupyter-x.ns.svc.cluster.local``)
resolve to the addresses there, as the cluster's DNS would answer them inside
a cluster; every other name goes to the system resolver. Python imports
``sitecustomize`` at start-up (see tests/k8s/clusterdns.py).
"""

import os
import socket

_FILE = os.environ.get("K8S_EMULATOR_HOSTS")


def _find(host):
    try:
        with open(_FILE) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and host in parts[1:]:
            return parts[0]
    return None


if _FILE:
    _system_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            name = host.decode(errors="replace")
        else:
            name = host
        if isinstance(name, str):
            address = _find(name.rstrip("."))
            if address is not None:
                host = address
        return _system_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo

    # aiohttp (JupyterHub 6's HTTP client) resolves with aiodns when it is
    # installed, which bypasses getaddrinfo: use its thread-pool resolver.
    try:
        import aiohttp.connector
        import aiohttp.resolver
    except ImportError:
        pass
    else:
        aiohttp.resolver.DefaultResolver = aiohttp.resolver.ThreadedResolver
        aiohttp.connector.DefaultResolver = aiohttp.resolver.ThreadedResolver
