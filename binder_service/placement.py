"""Image-locality placement: which nodes hold an image, and where to launch it.

Pure functions and one small in-memory index, no I/O. The service feeds the
index from the pods it lists (image, node, start time) and, when its RBAC role
may read nodes, from ``node.status.images``; ``GET api/placement?image=``
answers with :func:`rank_nodes`, and the spawner turns that answer into
preferred node-affinity terms with
:func:`binder_spawner.nodes.preferred_node_affinity`; the rendezvous ranking
is :func:`binder_spawner.nodes.rendezvous_rank`.

The ranking, for one image:

1. nodes without room for one more user pod are left out (a full node is not
   recommended: the scheduler would skip it anyway, and recommending it only
   hides the next best choice);
2. nodes that hold the image come first, the one with the most room for
   more pods first: an image's pods spread over the nodes that hold it
   instead of filling one, which would force the other images held there to
   be pulled elsewhere;
3. then the nodes that would have to pull it, the one where the pull evicts
   the least recently used images first (:func:`eviction_cost`, from the
   service's estimate of each node's image cache), so that the cluster's
   caches together keep the most recently used images, as one large cache
   would; ties, and nodes the service cannot estimate, in rendezvous-hash
   order (highest random weight) of the image, so that without inventory
   every launch of an image prefers the same few nodes.

Weights go from 100 down: holders 100, 99, ...; other nodes at most
:data:`FALLBACK_WEIGHT`. Under the z2jh user-scheduler's NodeAffinity weight
(14631) one point of affinity outweighs every other score plugin together,
so the scheduler takes the first listed node that fits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from binder_spawner.nodes import rendezvous_rank

# kubelet's nodeStatusMaxImages default: node.status.images lists at most the
# 50 largest images (pkg/kubelet/nodestatus/setters.go, Images()).
NODE_STATUS_MAX_IMAGES = 50

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
    (fewer than 50 entries, so nothing was cut off) or from a cut-off list
    whose smallest entry is smaller than the image: then the kubelet has
    evicted it. Pod records older than ``max_age`` seconds are forgotten.

    The same records tell when each image was last used on each node, which
    is what the kubelet's image garbage collection goes by (least recently
    used first, never an image a running container uses): :meth:`cache_view`
    gives the placement ranking an estimate of what a pull would evict. The
    node's image cache size is learned from the reports (:meth:`cache_room`).
    """

    max_age: float = 24 * 3600
    # image -> node -> last time a pod with it was seen on the node
    _seen: dict[str, dict[str, float]] = field(default_factory=dict)
    # node -> image -> the same times, for the per-node cache view
    _on_node: dict[str, dict[str, float]] = field(default_factory=dict)
    # node -> (time of report, {image: size}, whether the list was complete)
    _reports: dict[str, tuple[float, dict, bool]] = field(default_factory=dict)
    # image -> size in bytes, as the nodes report it
    _sizes: dict[str, int] = field(default_factory=dict)
    # the largest total of image sizes any node reported: its image cache fills
    # up to about this much before the kubelet evicts
    _largest_total: int = 0
    _typical: int | None = None

    def record(self, image: str, node: str, when: float) -> None:
        """A pod with ``image`` ran on ``node`` at ``when`` (Unix seconds)."""
        image = normalize_image(image)
        nodes = self._seen.setdefault(image, {})
        if when > nodes.get(node, float("-inf")):
            nodes[node] = when
            self._on_node.setdefault(node, {})[image] = when

    def set_node_images(self, node: str, images: list[dict], when: float) -> None:
        """The node's ``status.images`` (``[{"names": [...], "sizeBytes": n}]``) at ``when``."""
        sizes = {}
        total = 0
        for entry in images:
            size = int(entry.get("sizeBytes") or 0)
            total += size
            for name in entry.get("names") or []:
                name = normalize_image(name)
                sizes[name] = size
                if size and self._sizes.get(name) != size:
                    self._sizes[name] = size
                    self._typical = None
        self._reports[node] = (when, sizes, len(images) < NODE_STATUS_MAX_IMAGES)
        self._largest_total = max(self._largest_total, total)

    def forget_node(self, node: str) -> None:
        """The node is gone (scaled down): nothing is held there any more."""
        self._reports.pop(node, None)
        self._on_node.pop(node, None)
        for nodes in self._seen.values():
            nodes.pop(node, None)

    def known_nodes(self) -> set[str]:
        """Nodes that reported images or ran a recorded pod."""
        return set(self._reports) | set(self._on_node)

    def cache_estimates(
        self, nodes: Iterable[str], now: float
    ) -> dict[str, tuple[list[tuple[float, int, str]], int]]:
        """``{node: (cache_view, cache_room)}`` for the nodes that reported their images.

        The others are left out: :func:`pull_costs` cannot estimate them, and
        the ranking keeps their rendezvous order.
        """
        estimates = {}
        for node in nodes:
            if node in self._reports:
                view = self.cache_view(node, now)
                estimates[node] = (view, self._room(view))
        return estimates

    def size(self, image: str) -> int | None:
        """The image's size in bytes as a node reported it, or None."""
        return self._sizes.get(normalize_image(image))

    def _evicted(self, image: str, node: str, when: float) -> bool:
        """Whether a report newer than ``when`` shows that ``node`` no longer holds ``image``."""
        report = self._reports.get(node)
        if not report or report[0] <= when or image in report[1]:
            return False
        if report[2]:
            return True
        # A cut-off list holds the largest images: one larger than its
        # smallest entry would be listed if the node still had it.
        size = self._sizes.get(image)
        return size is not None and bool(report[1]) and size > min(report[1].values())

    def holders(self, image: str, now: float) -> set[str]:
        """Nodes that probably hold ``image`` now."""
        image = normalize_image(image)
        found = {node for node, (_, names, _) in self._reports.items() if image in names}
        for node, when in (self._seen.get(image) or {}).items():
            if node in found or now - when > self.max_age:
                continue
            if not self._evicted(image, node, when):
                found.add(node)
        return found

    def cache_view(self, node: str, now: float) -> list[tuple[float, int, str]]:
        """``[(last used, size, image)]`` the node probably holds, least recently used first.

        Last used is the last time a pod with the image was seen on the node
        (0 when only the node's report tells it is there); size as reported,
        else the median of the known sizes (0 if none is known).
        """
        report = self._reports.get(node)
        held = dict.fromkeys(report[1] if report else (), 0.0)
        for image, when in (self._on_node.get(node) or {}).items():
            if image in held:
                held[image] = when
            elif now - when <= self.max_age and not self._evicted(image, node, when):
                held[image] = when
        default = self.typical_size()
        return sorted(
            (when, self._sizes.get(image, default), image) for image, when in held.items()
        )

    def typical_size(self) -> int:
        """The median size of the images the nodes reported, 0 if none."""
        if self._typical is None:
            sizes = sorted(self._sizes.values())
            self._typical = sizes[len(sizes) // 2] if sizes else 0
        return self._typical

    def cache_room(self, node: str, now: float) -> int:
        """Bytes the node's image cache can probably take without evicting.

        The cache size is learned from the reports: the largest total of
        reported image sizes seen on any node (no cache holds that much
        without room for it). Minus what :meth:`cache_view` estimates the
        node holds; 0 for a node that never reported.
        """
        if node not in self._reports:
            return 0
        return self._room(self.cache_view(node, now))

    def _room(self, view) -> int:
        return max(self._largest_total - sum(size for _, size, _ in view), 0)

    def prune(self, now: float) -> None:
        """Drop pod records older than ``max_age``, so the index stays bounded."""
        for image in list(self._seen):
            nodes = self._seen[image]
            for node in [n for n, when in nodes.items() if now - when > self.max_age]:
                del nodes[node]
                on_node = self._on_node.get(node)
                if on_node is not None:
                    on_node.pop(image, None)
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


def observe_cluster(
    inventory: ImageInventory,
    pods: Iterable[dict],
    nodes: Iterable[dict] | None = None,
    now: float = 0.0,
) -> dict[str, set[str]]:
    """Add one listing of pods and, optionally, nodes to ``inventory``.

    A pod counts once it is bound to a node (``spec.nodeName``): a running
    pod uses its image now, any other at its ``status.startTime`` or else
    its creation time. Nodes without ``status.images`` (no RBAC to read
    them) are simply not used; nodes the inventory knew that are no longer
    listed are forgotten. Returns the images in use per node (the pods that
    have not terminated), which the kubelet does not evict.
    """
    in_use: dict[str, set[str]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            continue
        status = pod.get("status") or {}
        phase = status.get("phase")
        if phase == "Running":
            when = now
        else:
            when = epoch(
                status.get("startTime") or (pod.get("metadata") or {}).get("creationTimestamp")
            )
        images = pod_images(pod)
        for image in images:
            inventory.record(image, node, when)
        if phase not in ("Succeeded", "Failed"):
            in_use.setdefault(node, set()).update(normalize_image(i) for i in images)
    if nodes is not None:
        listed = set()
        for node in nodes:
            name = node["metadata"]["name"]
            listed.add(name)
            images = (node.get("status") or {}).get("images")
            if images is not None:
                inventory.set_node_images(name, images, now)
        for name in inventory.known_nodes() - listed:
            inventory.forget_node(name)
    inventory.prune(now)
    return in_use


def inventory_from_cluster(
    pods: Iterable[dict], nodes: Iterable[dict] | None = None, now: float = 0.0, **kwargs
) -> ImageInventory:
    """Build an :class:`ImageInventory` from one listing (:func:`observe_cluster`)."""
    inventory = ImageInventory(**kwargs)
    observe_cluster(inventory, pods, nodes, now)
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
    return _parse_quantity_text(str(value))


@functools.lru_cache(maxsize=256)
def _parse_quantity_text(value: str) -> float:
    # Every pod of a deployment requests the same few quantities ("1Gi").
    match = _QUANTITY.match(value.strip())
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


def eviction_cost(
    cache: Iterable[tuple[float, int, str]],
    size: int,
    room: int = 0,
    in_use: Container[str] = (),
) -> float:
    """How much pulling an image of ``size`` bytes onto a node would cost the images there.

    ``cache`` is the node's images least recently used first,
    ``(last used, size, image)`` (:meth:`ImageInventory.cache_view`);
    ``room`` the bytes its cache takes without evicting; ``in_use`` the
    images its running pods use, which the kubelet never evicts. The answer
    is the last-used time of the most recently used image the kubelet's
    garbage collection would have to remove; ``-inf`` when the image fits, or
    when the estimate runs out of images to remove (the cache is larger than
    estimated); ``inf`` when only images in use are left. The smaller, the
    colder what the pull evicts.
    """
    need = size - room
    if need <= 0:
        return float("-inf")
    pinned = False
    for when, bytes_, image in cache:
        if image in in_use:
            pinned = True
            continue
        need -= bytes_
        if need <= 0:
            return when
    # Nothing left to evict: the cache is larger than estimated, unless
    # images in use fill it.
    return float("inf") if pinned else float("-inf")


def pull_costs(
    estimates: Mapping[str, tuple[list[tuple[float, int, str]], int]],
    size: int,
    in_use: Mapping[str, Container[str]] | None = None,
) -> dict[str, float]:
    """:func:`eviction_cost` of pulling ``size`` bytes onto each estimated node.

    ``estimates`` is :meth:`ImageInventory.cache_estimates`; ``in_use`` the
    images running pods use per node (:func:`observe_cluster`).
    """
    in_use = in_use or {}
    return {
        node: eviction_cost(view, size, room, in_use.get(node, ()))
        for node, (view, room) in estimates.items()
    }


def rank_nodes(
    image: str,
    rooms: Mapping[str, NodeRoom],
    holders: Iterable[str] = (),
    *,
    pod_memory: int = GiB,
    max_nodes: int = 4,
    pull_costs: Mapping[str, float] | None = None,
) -> list[tuple[str, int]]:
    """Nodes to prefer for a pod of ``image``: ``[(node, weight 1..100), ...]``.

    ``rooms`` is :func:`node_room`'s answer (nodes missing from it are
    unknown and never recommended); ``holders`` the nodes that hold the image
    (:meth:`ImageInventory.holders`); ``pod_memory`` the memory one user pod
    requests, in bytes. ``pull_costs`` (node -> :func:`eviction_cost`) orders
    the nodes that would have to pull the image: the node whose pull evicts
    the least recently used images first, so that the cluster's caches
    together keep the images used most recently, as one cache would; nodes
    missing from it and ties keep the image's rendezvous order. At most
    ``max_nodes`` nodes are returned; an empty answer (every node full)
    leaves the choice to the scheduler.
    """
    image = normalize_image(image)
    order = rendezvous_rank((name for name, room in rooms.items() if room.fits(pod_memory)), image)
    held = set(holders)
    others = [n for n in order if n not in held]
    if pull_costs:
        position = {n: i for i, n in enumerate(others)}
        others.sort(key=lambda n: (pull_costs.get(n, float("inf")), position[n]))
    # Among holders, the one with the most room: an image's pods spread over
    # the nodes that hold it rather than filling one, which would push the
    # other images held there onto nodes that must pull them.
    holding = sorted(
        (n for n in order if n in held),
        key=lambda n: (
            -min(rooms[n].free_memory // pod_memory if pod_memory else 0, rooms[n].free_pods)
        ),
    )
    ranked = holding + others
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
