"""Which nodes to prefer for a pod (pure): shared by build pods, user pods and the service.

- :func:`rendezvous_rank`: nodes in highest-random-weight order for a key, so
  every build of a repository prefers the same node (its Docker layer cache)
  and the service ranks nodes without inventory the same way.
- :func:`preferred_node_affinity`: the ``preferredDuringScheduling`` terms a
  placement answer becomes on a pod.

binder_service's placement model (``binder_service/placement.py``) imports
these; they live here because the spawner needs them too and binder_spawner
imports nothing of binder_service's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: the node label preferred-affinity terms match
HOSTNAME_LABEL = "kubernetes.io/hostname"


def rendezvous_rank(nodes: Iterable[str], key: str) -> list[str]:
    """``nodes`` ordered by highest random weight for ``key``.

    Each node's weight is a hash of (node, key); the order for a key changes
    only where nodes are added or removed, so a key keeps its first choices
    while the cluster scales.
    """

    def weight(node: str) -> int:
        digest = hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return sorted(nodes, key=lambda node: (-weight(node), node))


def preferred_node_affinity(
    nodes_with_weights: Iterable[tuple[str, int]], label: str = HOSTNAME_LABEL
) -> list[dict]:
    """KubeSpawner ``node_affinity_preferred`` terms for a placement answer.

    One ``preferredSchedulingTerm`` per node, matching the node's
    ``kubernetes.io/hostname`` label; weights are clamped to 1..100, the
    range the API server accepts.
    """
    return [
        {
            "weight": min(max(int(weight), 1), 100),
            "preference": {
                "matchExpressions": [{"key": label, "operator": "In", "values": [node]}]
            },
        }
        for node, weight in nodes_with_weights
    ]
