"""Image-locality placement: which nodes hold an image, and where to launch it.

Pure functions and one small in-memory index, no I/O. The service feeds the
index from the pods it lists (image, node, start time) and, when its RBAC role
may read nodes, from ``node.status.images``; ``GET api/placement?image=``
answers with :func:`rank_nodes`, and the spawner turns that answer into
preferred node-affinity terms with :func:`preferred_node_affinity`.

The ranking, for one image:

1. nodes without room for one more user pod are left out (a full node is not
   recommended: the scheduler would skip it anyway, and recommending it only
   hides the next best choice);
2. nodes that hold the image come first: starting there needs no pull;
3. then nodes in rendezvous-hash order (highest random weight) of the image,
   so that every launch of an image prefers the same few nodes whatever the
   other images do; when those fill up, the next nodes in that image's order
   take over. Repeated launches converge and create the locality that step 2
   then finds.

Weights go from 100 down: holders 100, 99, ...; other nodes at most
:data:`FALLBACK_WEIGHT`. Under the z2jh user-scheduler's NodeAffinity weight
(14631) one point of affinity outweighs every other score plugin together,
so the scheduler takes the first listed node that fits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

# kubelet's nodeStatusMaxImages default: node.status.images lists at most the
# 50 largest images (pkg/kubelet/nodestatus/setters.go, Images()).
NODE_STATUS_MAX_IMAGES = 50

HOSTNAME_LABEL = "kubernetes.io/hostname"
HOLDER_WEIGHT = 100
FALLBACK_WEIGHT = 50

GiB = 1024**3


def epoch(value) -> float:
    """A Kubernetes timestamp (ISO 8601 string, datetime or number) as Unix seconds."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def normalize_image(name: str) -> str:
    """Add ":latest" to an untagged image, as the kubelet and scheduler do."""
    if "@" in name:
        return name
    if name.rfind(":") <= name.rfind("/"):
        name += ":latest"
    return name


@dataclass
class ImageInventory:
    """Which nodes hold which images, as far as pods and node status tell.

    Two sources: pods that ran an image on a node (``record``), and the
    image lists that nodes report (``set_node_images``). A pod record counts
    until a node report newer than it omits the image from a complete list
    (fewer than 50 entries, so nothing was cut off): then the kubelet has
    evicted it. Pod records older than ``max_age`` seconds are forgotten.
    """

    max_age: float = 24 * 3600
    # image -> node -> last time a pod with it was seen on the node
    _seen: dict[str, dict[str, float]] = field(default_factory=dict)
    # node -> (time of report, images reported, whether the list was complete)
    _reports: dict[str, tuple[float, frozenset, bool]] = field(default_factory=dict)

    def record(self, image: str, node: str, when: float) -> None:
        """A pod with ``image`` ran on ``node`` at ``when`` (Unix seconds)."""
        nodes = self._seen.setdefault(normalize_image(image), {})
        if when > nodes.get(node, float("-inf")):
            nodes[node] = when

    def set_node_images(self, node: str, images: list[dict], when: float) -> None:
        """The node's ``status.images`` (``[{"names": [...], "sizeBytes": n}]``) at ``when``."""
        names = frozenset(
            normalize_image(name) for entry in images for name in entry.get("names") or []
        )
        self._reports[node] = (when, names, len(images) < NODE_STATUS_MAX_IMAGES)

    def forget_node(self, node: str) -> None:
        """The node is gone (scaled down): nothing is held there any more."""
        self._reports.pop(node, None)
        for nodes in self._seen.values():
            nodes.pop(node, None)

    def holders(self, image: str, now: float) -> set[str]:
        """Nodes that probably hold ``image`` now."""
        image = normalize_image(image)
        found = {node for node, (_, names, _) in self._reports.items() if image in names}
        for node, when in (self._seen.get(image) or {}).items():
            if node in found or now - when > self.max_age:
                continue
            report = self._reports.get(node)
            if report and report[2] and report[0] > when:
                # A complete list reported after the pod ran, without the image.
                continue
            found.add(node)
        return found

    def prune(self, now: float) -> None:
        """Drop pod records older than ``max_age``, so the index stays bounded."""
        for image in list(self._seen):
            nodes = self._seen[image]
            for node in [n for n, when in nodes.items() if now - when > self.max_age]:
                del nodes[node]
            if not nodes:
                del self._seen[image]


# Container waiting reasons that mean the image never arrived on the node.
PULL_FAILED = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


def pod_images(pod: dict) -> list[str]:
    """Images of the pod's containers, except those whose pull failed."""
    failed = {
        status.get("name")
        for status in (pod.get("status") or {}).get("containerStatuses") or []
        if ((status.get("state") or {}).get("waiting") or {}).get("reason") in PULL_FAILED
    }
    spec = pod.get("spec") or {}
    return [
        c["image"]
        for c in spec.get("containers") or []
        if c.get("image") and c.get("name") not in failed
    ]


def inventory_from_cluster(
    pods: Iterable[dict], nodes: Iterable[dict] | None = None, now: float = 0.0, **kwargs
) -> ImageInventory:
    """Build an :class:`ImageInventory` from pod dicts and, optionally, node dicts.

    A pod counts once it is bound to a node (``spec.nodeName``), at its
    ``status.startTime`` or else its creation time. Nodes without
    ``status.images`` (no RBAC to read them) are simply not used.
    """
    inventory = ImageInventory(**kwargs)
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            continue
        when = epoch(
            (pod.get("status") or {}).get("startTime")
            or (pod.get("metadata") or {}).get("creationTimestamp")
        )
        for image in pod_images(pod):
            inventory.record(image, node, when)
    for node in nodes or ():
        images = (node.get("status") or {}).get("images")
        if images is not None:
            inventory.set_node_images(node["metadata"]["name"], images, now)
    return inventory


# --------------------------------------------------------------------------
# Capacity


@dataclass(frozen=True)
class NodeRoom:
    """Free room on a node: memory in bytes not yet requested, pod slots left."""

    name: str
    free_memory: int
    free_pods: int
    schedulable: bool = True

    def fits(self, memory: int) -> bool:
        return self.schedulable and self.free_pods >= 1 and self.free_memory >= memory


# Kubernetes resource quantities (resource.Quantity: decimal and binary suffixes).
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value) -> float:
    """A Kubernetes resource quantity ("1Gi", "500m", "2", 3) as a number."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"invalid quantity {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def parse_bytes(value) -> int:
    """A memory or count quantity ("64Gi", "110", 5) as an integer."""
    return int(parse_quantity(value))


def _pod_memory_request(pod: dict) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        request = (resources.get("requests") or {}).get("memory") or (
            resources.get("limits") or {}
        ).get("memory")
        if request:
            total += parse_bytes(request)
    return total


def node_room(nodes: Iterable[dict], pods: Iterable[dict]) -> dict[str, NodeRoom]:
    """Free memory and pod slots per node, from node allocatable and pod requests.

    Terminated pods do not count. Cordoned nodes (``spec.unschedulable``) and
    nodes whose Ready condition is not True are marked unschedulable.
    """
    used: dict[str, tuple[int, int]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        memory, count = used.get(node, (0, 0))
        used[node] = (memory + _pod_memory_request(pod), count + 1)
    rooms = {}
    for node in nodes:
        name = node["metadata"]["name"]
        status = node.get("status") or {}
        allocatable = status.get("allocatable") or status.get("capacity") or {}
        memory, count = used.get(name, (0, 0))
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        schedulable = not (node.get("spec") or {}).get("unschedulable") and (
            conditions.get("Ready", "True") == "True"
        )
        rooms[name] = NodeRoom(
            name=name,
            free_memory=parse_bytes(allocatable.get("memory", 0)) - memory,
            free_pods=parse_bytes(allocatable.get("pods", 110)) - count,
            schedulable=schedulable,
        )
    return rooms


# --------------------------------------------------------------------------
# Ranking


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


def rank_nodes(
    image: str,
    rooms: Mapping[str, NodeRoom],
    holders: Iterable[str] = (),
    *,
    pod_memory: int = GiB,
    max_nodes: int = 4,
) -> list[tuple[str, int]]:
    """Nodes to prefer for a pod of ``image``: ``[(node, weight 1..100), ...]``.

    ``rooms`` is :func:`node_room`'s answer (nodes missing from it are
    unknown and never recommended); ``holders`` the nodes that hold the image
    (:meth:`ImageInventory.holders`); ``pod_memory`` the memory one user pod
    requests, in bytes. At most ``max_nodes`` nodes are returned; an empty
    answer (every node full) leaves the choice to the scheduler.
    """
    image = normalize_image(image)
    order = rendezvous_rank((name for name, room in rooms.items() if room.fits(pod_memory)), image)
    held = set(holders)
    ranked = [n for n in order if n in held] + [n for n in order if n not in held]
    answer = []
    fallback = 0
    for node in ranked[:max_nodes]:
        if node in held:
            weight = HOLDER_WEIGHT - len(answer)
        else:
            weight = FALLBACK_WEIGHT - fallback
            fallback += 1
        answer.append((node, max(weight, 1)))
    return answer


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
