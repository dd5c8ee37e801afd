"""binder_service.placement: inventory, capacity, rendezvous ranking, affinity terms."""

import pytest

from binder_service.placement import (
    FALLBACK_WEIGHT,
    HOLDER_WEIGHT,
    ImageInventory,
    NodeRoom,
    epoch,
    eviction_cost,
    inventory_from_cluster,
    node_room,
    normalize_image,
    observe_cluster,
    parse_bytes,
    pull_costs,
    rank_nodes,
)
from binder_spawner.nodes import preferred_node_affinity, rendezvous_rank
from tests.k8s.scheduler import Z2JH_USER_SCHEDULER, schedule

GiB = 2**30
IMAGE = "registry.example.org/binder/r2d-gh-org-repo:abc123"


def node(name, memory="64Gi", pods="110", images=None, unschedulable=False, ready="True"):
    status = {
        "allocatable": {"cpu": "16", "memory": memory, "pods": pods},
        "conditions": [{"type": "Ready", "status": ready}],
    }
    if images is not None:
        status["images"] = [{"names": [i], "sizeBytes": 10**9} for i in images]
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": status,
    }


def pod(image, node_name=None, memory="1Gi", phase="Running", start="2026-01-01T00:00:00Z"):
    spec = {
        "containers": [
            {"name": "notebook", "image": image, "resources": {"requests": {"memory": memory}}}
        ]
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {"name": "jupyter-x", "creationTimestamp": start},
        "spec": spec,
        "status": {"phase": phase, "startTime": start},
    }


def rooms(*names, free=64 * GiB):
    return {n: NodeRoom(n, free, 100) for n in names}


NODES = [f"node-{i:02d}" for i in range(20)]


def test_helpers():
    assert normalize_image("busybox") == "busybox:latest"
    assert normalize_image("host:5000/x") == "host:5000/x:latest"
    assert normalize_image("x@sha256:00") == "x@sha256:00"
    assert parse_bytes("64Gi") == 64 * GiB
    assert parse_bytes("110") == 110
    assert parse_bytes("1.5G") == 1_500_000_000
    with pytest.raises(ValueError):
        parse_bytes("lots")
    assert epoch("1970-01-01T00:01:00Z") == 60
    assert epoch(5) == 5


def test_rendezvous_rank_is_stable_and_spreads_keys():
    order = rendezvous_rank(NODES, IMAGE)
    assert sorted(order) == sorted(NODES)
    assert rendezvous_rank(list(reversed(NODES)), IMAGE) == order
    # Removing a node keeps the relative order of the others ...
    gone = order[0]
    assert rendezvous_rank([n for n in NODES if n != gone], IMAGE) == order[1:]
    # ... and adding one only inserts it.
    grown = rendezvous_rank(NODES + ["node-new"], IMAGE)
    assert [n for n in grown if n != "node-new"] == order
    # Different images prefer different nodes: 200 images use most nodes first.
    firsts = {rendezvous_rank(NODES, f"img-{i}:1")[0] for i in range(200)}
    assert len(firsts) >= 15


def test_rank_nodes_holders_first_then_rendezvous():
    order = rendezvous_rank(NODES, IMAGE)
    holders = {order[7], order[3]}
    answer = rank_nodes(IMAGE, rooms(*NODES), holders)
    assert answer == [
        (order[3], HOLDER_WEIGHT),
        (order[7], HOLDER_WEIGHT - 1),
        (order[0], FALLBACK_WEIGHT),
        (order[1], FALLBACK_WEIGHT - 1),
    ]
    # Without inventory: the image's own first nodes, the same every time.
    assert rank_nodes(IMAGE, rooms(*NODES), ()) == [
        (order[i], FALLBACK_WEIGHT - i) for i in range(4)
    ]
    assert rank_nodes(IMAGE, rooms(*NODES), (), max_nodes=2) == [
        (order[0], FALLBACK_WEIGHT),
        (order[1], FALLBACK_WEIGHT - 1),
    ]


def test_rank_nodes_skips_full_and_unknown_nodes():
    order = rendezvous_rank(NODES, IMAGE)
    room = rooms(*NODES)
    room[order[0]] = NodeRoom(order[0], GiB - 1, 50)  # not enough memory
    room[order[1]] = NodeRoom(order[1], 10 * GiB, 0)  # no pod slot
    room[order[2]] = NodeRoom(order[2], 10 * GiB, 5, schedulable=False)
    answer = rank_nodes(IMAGE, room, {order[0], "gone-node"}, pod_memory=GiB)
    assert [n for n, _ in answer] == order[3:7]
    assert all(w <= FALLBACK_WEIGHT for _, w in answer)
    full = {n: NodeRoom(n, 0, 0) for n in NODES}
    assert rank_nodes(IMAGE, full, NODES) == []


def test_node_room_from_manifests():
    nodes = [
        node("a"),
        node("b", pods="2"),
        node("c", unschedulable=True),
        node("d", ready="False"),
    ]
    pods = [
        pod(IMAGE, "a", memory="4Gi"),
        pod(IMAGE, "a", memory="512Mi"),
        pod(IMAGE, "a", memory="8Gi", phase="Succeeded"),  # terminated: frees its room
        pod(IMAGE, "b"),
        pod(IMAGE),  # pending, not bound: no node
    ]
    result = node_room(nodes, pods)
    assert result["a"] == NodeRoom("a", 64 * GiB - 4 * GiB - GiB // 2, 108)
    assert result["b"].free_pods == 1 and result["b"].fits(GiB)
    assert not result["c"].fits(GiB)
    assert not result["d"].fits(GiB)


def test_inventory_from_pods_and_node_status():
    pods = [
        pod(IMAGE, "a", phase="Succeeded", start="2026-01-01T00:00:00Z"),
        pod("other:1", "b", start="2026-01-01T00:00:00Z"),
        pod(IMAGE),  # not bound
    ]
    now = epoch("2026-01-01T01:00:00Z")
    inventory = inventory_from_cluster(pods, now=now)
    assert inventory.holders(IMAGE, now) == {"a"}
    # Nodes reporting images: c reports it; a reports a complete list without it,
    # after the pod ran: the kubelet evicted it.
    nodes = [node("a", images=["other:1"]), node("c", images=[IMAGE])]
    inventory = inventory_from_cluster(pods, nodes, now=now)
    assert inventory.holders(IMAGE, now) == {"c"}
    # A pod whose pull failed does not make its node a holder.
    failed = pod(IMAGE, "e")
    failed["status"]["containerStatuses"] = [
        {"name": "notebook", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
    ]
    assert "e" not in inventory_from_cluster([failed], now=now).holders(IMAGE, now)
    pulling = pod(IMAGE, "e")
    pulling["status"]["containerStatuses"] = [
        {"name": "notebook", "state": {"waiting": {"reason": "ContainerCreating"}}}
    ]
    assert "e" in inventory_from_cluster([pulling], now=now).holders(IMAGE, now)
    # A node without status.images (no RBAC for nodes) is not used.
    inventory = inventory_from_cluster(pods, [node("a")], now=now)
    assert inventory.holders(IMAGE, now) == {"a"}


def test_inventory_truncated_node_list_does_not_evict_and_records_expire():
    inventory = ImageInventory(max_age=3600)
    inventory.record(IMAGE, "a", when=100)
    # 50 entries: the list is cut off, so a missing image may still be there.
    inventory.set_node_images("a", [{"names": [f"big-{i}:1"]} for i in range(50)], when=200)
    assert inventory.holders(IMAGE, now=300) == {"a"}
    # A pod seen after the report counts regardless.
    inventory.set_node_images("b", [], when=200)
    inventory.record(IMAGE, "b", when=250)
    assert inventory.holders(IMAGE, now=300) == {"a", "b"}
    # Old records expire and prune keeps the index bounded.
    assert inventory.holders(IMAGE, now=100 + 3601) == {"b"}
    inventory.prune(now=250 + 3601)
    assert inventory.holders(IMAGE, now=250 + 3601) == set()
    inventory.record(IMAGE, "c", when=5000)
    inventory.forget_node("c")
    assert inventory.holders(IMAGE, now=5000) == set()


def test_preferred_node_affinity_terms():
    assert preferred_node_affinity([("a", 100), ("b", 50), ("c", 0), ("d", 500)]) == [
        {
            "weight": w,
            "preference": {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}
                ]
            },
        }
        for n, w in [("a", 100), ("b", 50), ("c", 1), ("d", 100)]
    ]
    assert preferred_node_affinity([]) == []


def test_answer_steers_the_z2jh_scheduler():
    """The terms, scheduled with the z2jh weights, land on the first listed node that fits."""
    manifests = [node(n) for n in NODES[:5]]
    busy = {"node-00": [pod("x:1", "node-00") for _ in range(40)]}
    user_pod = pod(IMAGE)
    user_pod["spec"]["affinity"] = {"nodeAffinity": {}}
    # Packing alone would choose the busy node-00.
    assert schedule(user_pod, manifests, busy, Z2JH_USER_SCHEDULER)[0] == "node-00"
    room = node_room(manifests, [p for pods in busy.values() for p in pods])
    answer = rank_nodes(IMAGE, room, {"node-03"})
    assert answer[0] == ("node-03", HOLDER_WEIGHT)
    user_pod["spec"]["affinity"]["nodeAffinity"] = {
        "preferredDuringSchedulingIgnoredDuringExecution": preferred_node_affinity(answer)
    }
    assert schedule(user_pod, manifests, busy, Z2JH_USER_SCHEDULER)[0] == "node-03"
    # Full holder: the next listed node is chosen.
    busy["node-03"] = [pod("x:1", "node-03", memory="64Gi")]
    room = node_room(manifests, [p for pods in busy.values() for p in pods])
    answer = rank_nodes(IMAGE, room, {"node-03"})
    assert "node-03" not in dict(answer)
    user_pod["spec"]["affinity"]["nodeAffinity"] = {
        "preferredDuringSchedulingIgnoredDuringExecution": preferred_node_affinity(answer)
    }
    assert schedule(user_pod, manifests, busy, Z2JH_USER_SCHEDULER)[0] == answer[0][0]


GB = 10**9


def test_holders_with_the_most_room_first():
    order = rendezvous_rank(NODES, IMAGE)
    room = rooms(*NODES)
    # order[0] holds the image but has room for 3 more pods, order[5] for 40.
    room[order[0]] = NodeRoom(order[0], 3 * GiB, 100)
    room[order[5]] = NodeRoom(order[5], 40 * GiB, 100)
    answer = rank_nodes(IMAGE, room, {order[0], order[5]})
    assert answer[:2] == [(order[5], HOLDER_WEIGHT), (order[0], HOLDER_WEIGHT - 1)]
    # Pod slots count too: plenty of memory, 2 slots left.
    room[order[5]] = NodeRoom(order[5], 40 * GiB, 2)
    assert rank_nodes(IMAGE, room, {order[0], order[5]})[0] == (order[0], HOLDER_WEIGHT)


def test_eviction_cost_is_the_newest_image_lru_removes():
    cache = [(10.0, 2 * GB, "old:1"), (20.0, 3 * GB, "mid:1"), (30.0, 1 * GB, "new:1")]
    assert eviction_cost(cache, 2 * GB, room=2 * GB) == float("-inf")
    assert eviction_cost(cache, 2 * GB) == 10.0
    assert eviction_cost(cache, 3 * GB, room=GB // 2) == 20.0
    assert eviction_cost(cache, 6 * GB) == 30.0
    # A running pod's image is skipped: the kubelet does not remove it.
    assert eviction_cost(cache, 2 * GB, in_use={"old:1"}) == 20.0
    # Nothing left to remove: the cache is bigger than estimated ...
    assert eviction_cost(cache, 7 * GB) == float("-inf")
    assert eviction_cost([], GB) == float("-inf")
    # ... unless images in use fill it.
    assert eviction_cost(cache, 5 * GB, in_use={"mid:1", "new:1"}) == float("inf")


def test_rank_nodes_pulls_where_the_coldest_images_go():
    order = rendezvous_rank(NODES, IMAGE)
    costs = {n: 100.0 for n in NODES}
    costs[order[9]] = 5.0  # evicts an image last used long ago
    costs[order[4]] = float("-inf")  # fits without evicting
    answer = rank_nodes(IMAGE, rooms(*NODES), (), pull_costs=costs)
    assert [n for n, _ in answer] == [order[4], order[9], order[0], order[1]]
    assert [w for _, w in answer] == [FALLBACK_WEIGHT - i for i in range(4)]
    # Holders still come first; nodes without an estimate come last.
    holder = order[12]
    answer = rank_nodes(IMAGE, rooms(*NODES), {holder}, pull_costs={order[3]: 1.0})
    assert [n for n, _ in answer] == [holder, order[3], order[0], order[1]]
    # No estimates: the rendezvous order.
    assert rank_nodes(IMAGE, rooms(*NODES), (), pull_costs={}) == rank_nodes(
        IMAGE, rooms(*NODES), ()
    )


def report(*images):
    return [{"names": [name], "sizeBytes": size} for name, size in images]


def test_cache_view_room_and_pull_costs():
    inventory = ImageInventory(max_age=10_000)
    # Node a filled its cache to 6 GB once; b holds 2 GB; c never reported.
    inventory.set_node_images("a", report(("x:1", 3 * GB), ("y:1", 3 * GB)), when=100)
    inventory.set_node_images("b", report(("z:1", 2 * GB)), when=100)
    inventory.record("x:1", "a", when=50)
    inventory.record("y:1", "a", when=80)
    inventory.record("w:1", "b", when=150)  # ran on b after its report, size unknown
    assert inventory.cache_view("a", now=200) == [
        (50, 3 * GB, "x:1"),
        (80, 3 * GB, "y:1"),
    ]
    # Unreported image: the median known size; reported without a pod: last used 0.
    assert inventory.cache_view("b", now=200) == [
        (0.0, 2 * GB, "z:1"),
        (150, 3 * GB, "w:1"),
    ]
    assert inventory.cache_room("a", now=200) == 0
    assert inventory.cache_room("b", now=200) == GB
    assert inventory.cache_room("c", now=200) == 0
    estimates = inventory.cache_estimates(["a", "b", "c"], now=200)
    assert set(estimates) == {"a", "b"}
    costs = pull_costs(estimates, 2 * GB, {"b": {"z:1"}})
    # a evicts x (used at 50); b has 1 GB of room, then must evict w (z is in use).
    assert costs == {"a": 50, "b": 150}
    assert pull_costs(estimates, GB) == {"a": 50, "b": float("-inf")}


def test_cut_off_report_evicts_images_larger_than_its_smallest_entry():
    inventory = ImageInventory()
    big = [(f"big-{i}:1", 5 * GB) for i in range(50)]
    inventory.set_node_images("b", report(("large:1", 6 * GB), ("small:1", GB)), when=10)
    inventory.record("large:1", "a", when=100)
    inventory.record("small:1", "a", when=100)
    # a's list is cut off at 50 entries of 5 GB: a 6 GB image would be listed.
    inventory.set_node_images("a", report(*big), when=200)
    assert "a" not in inventory.holders("large:1", now=300)
    assert "a" in inventory.holders("small:1", now=300)
    assert inventory.size("large:1") == 6 * GB and inventory.size("unknown:1") is None


def test_observe_cluster_keeps_what_pods_no_longer_show():
    inventory = ImageInventory()
    # No images in the nodes' status (as without permission to read them).
    nodes = [node("a"), node("b")]
    running = pod(IMAGE, "a", start="1970-01-01T00:00:10Z")
    finished = pod("done:1", "b", phase="Succeeded", start="1970-01-01T00:00:10Z")
    in_use = observe_cluster(inventory, [running, finished, pod("pending:1")], nodes, now=100)
    assert in_use == {"a": {IMAGE}}
    # A running pod uses its image now; a finished one at its start.
    assert inventory.cache_view("a", now=100) == [(100, 0, IMAGE)]
    assert inventory.cache_view("b", now=100) == [(10, 0, "done:1")]
    # The pods are gone at the next listing, the records stay ...
    assert observe_cluster(inventory, [], nodes, now=200) == {}
    assert inventory.holders(IMAGE, now=200) == {"a"}
    # ... until the node is no longer listed.
    observe_cluster(inventory, [], [node("b")], now=300)
    assert inventory.holders(IMAGE, now=300) == set()
