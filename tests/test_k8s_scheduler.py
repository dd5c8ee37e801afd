"""Worked examples for the emulator's kube-scheduler plugins (tests/k8s/scheduler.py).

Each expected number is computed by hand from the upstream formula cited in
the module, so a change in a formula shows up here as a different number.
"""

import random

import pytest

from tests.k8s.scheduler import (
    KUBE_DEFAULT,
    MB,
    Z2JH_USER_SCHEDULER,
    NodeUsage,
    SchedulerProfile,
    default_normalize_score,
    failed_scheduling_message,
    filter_node_affinity,
    filter_node_name,
    filter_node_resources_fit,
    filter_node_unschedulable,
    filter_taint_toleration,
    image_states,
    normalized_image_name,
    parse_quantity,
    pod_requests,
    schedule,
    score_balanced_allocation,
    score_image_locality,
    score_node_affinity,
    score_nodes,
    score_resources_fit,
    score_taint_toleration,
    select_host,
)

GiB = 2**30


def make_node(name, cpu="4", memory="16Gi", pods="110", labels=None, images=(), **spec):
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
            "images": [{"names": list(names), "sizeBytes": size} for names, size in images],
        },
    }


def make_pod(image="img:1", cpu=None, memory=None, **spec):
    requests = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    container = {"name": "c", "image": image, "resources": {"requests": requests}}
    return {"metadata": {"name": "p"}, "spec": {"containers": [container], **spec}}


def affinity(required=None, preferred=None):
    node_affinity = {}
    if required is not None:
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": required
        }
    if preferred is not None:
        node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return {"nodeAffinity": node_affinity}


# --- quantities and requests -------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("1Gi", 2**30, id="Gi"),
        pytest.param("500m", 0.5, id="milli"),
        pytest.param("1.5", 1.5, id="decimal"),
        pytest.param("2G", 2e9, id="G"),
        pytest.param("1e3", 1000, id="exponent"),
        pytest.param(3, 3, id="int"),
    ],
)
def test_parse_quantity(value, expected):
    assert parse_quantity(value) == expected


def test_parse_quantity_rejects_garbage():
    with pytest.raises(ValueError):
        parse_quantity("12 apples")


def test_pod_requests_sum_init_max_overhead_and_limit_default():
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}},
                # a limit without a request is also the request
                {"resources": {"limits": {"cpu": "500m", "memory": "512Mi"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "100Mi"}}}],
            "overhead": {"memory": "10Mi"},
        }
    }
    assert pod_requests(pod) == {"cpu": 2000, "memory": GiB + 512 * MB + 10 * MB}
    # Scoring counts 100m / 200 MiB for containers that request nothing.
    assert pod_requests({"spec": {"containers": [{}]}}, non_zero=True) == {
        "cpu": 100,
        "memory": 200 * MB,
    }
    assert pod_requests({"spec": {"containers": [{}]}}) == {}


# --- filters -----------------------------------------------------------------


def test_node_resources_fit_cpu_memory_and_pod_count():
    node = make_node("n", cpu="2", memory="4Gi", pods="3")
    running = [make_pod(cpu="1500m", memory="1Gi"), make_pod(memory="2Gi")]
    usage = NodeUsage.of(running)
    assert filter_node_resources_fit(make_pod(cpu="500m", memory="1Gi"), node, usage) is None
    assert filter_node_resources_fit(make_pod(cpu="501m"), node, usage) == "Insufficient cpu"
    assert filter_node_resources_fit(make_pod(memory="1025Mi"), node, usage) == (
        "Insufficient memory"
    )
    full = NodeUsage.of(running + [make_pod()])
    assert filter_node_resources_fit(make_pod(), node, full) == "Too many pods"
    # Terminated pods free their resources.
    done = make_pod(cpu="1500m")
    done["status"] = {"phase": "Succeeded"}
    assert NodeUsage.of([done]).pods == 0


def test_node_name_and_unschedulable():
    node = make_node("a")
    assert filter_node_name(make_pod(nodeName="a"), node) is None
    assert filter_node_name(make_pod(nodeName="b"), node) == (
        "node(s) didn't match the requested node name"
    )
    cordoned = make_node("a", unschedulable=True)
    assert filter_node_unschedulable(make_pod(), cordoned) == "node(s) were unschedulable"
    tolerant = make_pod(
        tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]
    )
    assert filter_node_unschedulable(tolerant, cordoned) is None


LABELS = {"zone": "a", "gpu": "true", "cores": "8"}


@pytest.mark.parametrize(
    "expression, matches",
    [
        pytest.param({"key": "zone", "operator": "In", "values": ["a", "b"]}, True, id="In"),
        pytest.param({"key": "zone", "operator": "In", "values": ["b"]}, False, id="In-miss"),
        pytest.param({"key": "zone", "operator": "NotIn", "values": ["b"]}, True, id="NotIn"),
        pytest.param(
            {"key": "none", "operator": "NotIn", "values": ["b"]}, True, id="NotIn-absent"
        ),
        pytest.param({"key": "zone", "operator": "NotIn", "values": ["a"]}, False, id="NotIn-miss"),
        pytest.param({"key": "gpu", "operator": "Exists"}, True, id="Exists"),
        pytest.param({"key": "tpu", "operator": "Exists"}, False, id="Exists-miss"),
        pytest.param({"key": "tpu", "operator": "DoesNotExist"}, True, id="DoesNotExist"),
        pytest.param({"key": "gpu", "operator": "DoesNotExist"}, False, id="DoesNotExist-miss"),
        pytest.param({"key": "cores", "operator": "Gt", "values": ["4"]}, True, id="Gt"),
        pytest.param({"key": "cores", "operator": "Gt", "values": ["8"]}, False, id="Gt-equal"),
        pytest.param({"key": "cores", "operator": "Lt", "values": ["9"]}, True, id="Lt"),
        pytest.param({"key": "zone", "operator": "Lt", "values": ["9"]}, False, id="Lt-not-int"),
    ],
)
def test_required_node_affinity_operators(expression, matches):
    node = make_node("n", labels=LABELS)
    pod = make_pod(affinity=affinity(required=[{"matchExpressions": [expression]}]))
    assert (filter_node_affinity(pod, node) is None) is matches


def test_required_node_affinity_terms_or_expressions_and_fields():
    node = make_node("n1", labels=LABELS)
    zone_b = {"key": "zone", "operator": "In", "values": ["b"]}
    gpu = {"key": "gpu", "operator": "Exists"}
    # Terms are ORed ...
    pod = make_pod(
        affinity=affinity(required=[{"matchExpressions": [zone_b]}, {"matchExpressions": [gpu]}])
    )
    assert filter_node_affinity(pod, node) is None
    # ... expressions within a term ANDed.
    pod = make_pod(affinity=affinity(required=[{"matchExpressions": [zone_b, gpu]}]))
    assert filter_node_affinity(pod, node) == "node(s) didn't match Pod's node affinity/selector"
    # matchFields on metadata.name.
    by_name = {"key": "metadata.name", "operator": "In", "values": ["n1"]}
    pod = make_pod(affinity=affinity(required=[{"matchFields": [by_name]}]))
    assert filter_node_affinity(pod, node) is None
    assert filter_node_affinity(pod, make_node("n2")) is not None
    # An empty term matches nothing.
    assert filter_node_affinity(make_pod(affinity=affinity(required=[{}])), node) is not None


def test_node_selector():
    node = make_node("n", labels=LABELS)
    assert filter_node_affinity(make_pod(nodeSelector={"zone": "a", "gpu": "true"}), node) is None
    assert filter_node_affinity(make_pod(nodeSelector={"zone": "b"}), node) is not None


def test_taints_and_tolerations():
    node = make_node(
        "n",
        taints=[
            {"key": "dedicated", "value": "user", "effect": "NoSchedule"},
            {"key": "soft", "effect": "PreferNoSchedule"},
        ],
    )
    assert filter_taint_toleration(make_pod(), node) == (
        "node(s) had untolerated taint {dedicated: user}"
    )
    equal = {"key": "dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"}
    assert filter_taint_toleration(make_pod(tolerations=[equal]), node) is None
    wrong_value = dict(equal, value="core")
    assert filter_taint_toleration(make_pod(tolerations=[wrong_value]), node) is not None
    wrong_effect = dict(equal, effect="NoExecute")
    assert filter_taint_toleration(make_pod(tolerations=[wrong_effect]), node) is not None
    # An empty key with Exists tolerates everything.
    assert filter_taint_toleration(make_pod(tolerations=[{"operator": "Exists"}]), node) is None
    noexecute = make_node("m", taints=[{"key": "gone", "effect": "NoExecute"}])
    assert filter_taint_toleration(make_pod(), noexecute) == "node(s) had untolerated taint {gone}"


# --- scores ------------------------------------------------------------------


def test_default_normalize_score():
    assert default_normalize_score({"a": 2, "b": 5, "c": 0}) == {"a": 40, "b": 100, "c": 0}
    assert default_normalize_score({"a": 2, "b": 5, "c": 0}, reverse=True) == {
        "a": 60,
        "b": 0,
        "c": 100,
    }
    assert default_normalize_score({"a": 0}, reverse=True) == {"a": 100}
    assert default_normalize_score({"a": 0}) == {"a": 0}


def test_node_affinity_score_sums_matching_weights():
    preferred = [
        {
            "weight": 30,
            "preference": {
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]
            },
        },
        {"weight": 20, "preference": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}},
        {"weight": 50, "preference": {"matchExpressions": [{"key": "tpu", "operator": "Exists"}]}},
    ]
    pod = make_pod(affinity=affinity(preferred=preferred))
    assert score_node_affinity(pod, make_node("n", labels=LABELS)) == 50
    assert score_node_affinity(pod, make_node("m", labels={"tpu": ""})) == 50
    assert score_node_affinity(pod, make_node("o")) == 0


def test_taint_toleration_score_counts_prefer_no_schedule():
    node = make_node(
        "n",
        taints=[
            {"key": "a", "effect": "PreferNoSchedule"},
            {"key": "b", "effect": "PreferNoSchedule"},
            {"key": "c", "effect": "NoSchedule"},
        ],
    )
    assert score_taint_toleration(make_pod(), node) == 2
    tolerate_a = {"key": "a", "operator": "Exists", "effect": "PreferNoSchedule"}
    assert score_taint_toleration(make_pod(tolerations=[tolerate_a]), node) == 1
    # A toleration for NoSchedule does not count for PreferNoSchedule taints.
    no_schedule = {"key": "b", "operator": "Exists", "effect": "NoSchedule"}
    assert score_taint_toleration(make_pod(tolerations=[no_schedule]), node) == 2


def test_normalized_image_name():
    assert normalized_image_name("busybox") == "busybox:latest"
    assert normalized_image_name("localhost:5000/img") == "localhost:5000/img:latest"
    assert normalized_image_name("localhost:5000/img:1") == "localhost:5000/img:1"


def test_image_locality_worked_example():
    # 4 nodes; a 500 MiB image on two of them, a 300 MiB one on one.
    nodes = [
        make_node("n1", images=[(["big:1"], 500 * MB), (["small:1"], 300 * MB)]),
        make_node("n2", images=[(["big:1"], 500 * MB)]),
        make_node("n3"),
        make_node("n4"),
    ]
    states = image_states(nodes)
    assert states == {"big:1": (500 * MB, 2), "small:1": (300 * MB, 1)}
    pod = make_pod(image="big:1")
    # sum = 500 MiB * 2/4 = 250 MiB; 100 * (250 - 23) / (1000 - 23) = 23.2 -> 23
    assert score_image_locality(pod, nodes[0], states, 4) == 23
    assert score_image_locality(pod, nodes[2], states, 4) == 0
    # Two containers: threshold max 2000 MiB; 250 + 300 * 1/4 = 325 MiB
    # 100 * (325 - 23) / (2000 - 23) = 15.3 -> 15
    two = make_pod(image="big:1")
    two["spec"]["containers"].append({"name": "d", "image": "small:1"})
    assert score_image_locality(two, nodes[0], states, 4) == 15
    # Below the 23 MiB floor scores 0; above 1000 MiB per container is 100.
    tiny = [make_node("t", images=[(["tiny:1"], 40 * MB)]), make_node("u")]
    assert score_image_locality(make_pod(image="tiny:1"), tiny[0], image_states(tiny), 2) == 0
    huge = [make_node("h", images=[(["huge:1"], 5000 * MB)])]
    assert score_image_locality(make_pod(image="huge:1"), huge[0], image_states(huge), 1) == 100
    # Untagged pod images match ":latest" entries.
    latest = [make_node("l", images=[(["repo/x:latest"], 1000 * MB)])]
    assert score_image_locality(make_pod(image="repo/x"), latest[0], image_states(latest), 1) == 100


def test_resources_fit_least_and_most_allocated():
    node = make_node("n", cpu="4", memory="8Gi")
    usage = NodeUsage.of([make_pod(cpu="1", memory="2Gi")])
    pod = make_pod(cpu="1", memory="2Gi")
    # requested cpu 2000/4000, memory 4/8 GiB
    # LeastAllocated: (4000-2000)*100/4000 = 50; memory 50 -> 50
    assert score_resources_fit(pod, node, usage, KUBE_DEFAULT) == 50
    # MostAllocated: 50 and 50 -> 50; with cpu 3000/4000 = 75 and memory 50 -> 62
    assert score_resources_fit(pod, node, usage, Z2JH_USER_SCHEDULER) == 50
    pod = make_pod(cpu="2", memory="2Gi")
    assert score_resources_fit(pod, node, usage, Z2JH_USER_SCHEDULER) == 62
    # LeastAllocated: cpu 25, memory 50 -> 37
    assert score_resources_fit(pod, node, usage, KUBE_DEFAULT) == 37
    # Over capacity: LeastAllocated 0 for that resource, MostAllocated clamps to 100.
    pod = make_pod(cpu="10", memory="2Gi")
    assert score_resources_fit(pod, node, usage, KUBE_DEFAULT) == 25
    assert score_resources_fit(pod, node, usage, Z2JH_USER_SCHEDULER) == 75
    # Pods without requests count 100m and 200 MiB.
    empty = make_pod()
    idle = make_node("i", cpu="1", memory="1000Mi")
    # cpu (1000-100)*100/1000 = 90; memory (1000-200)*100/1000 = 80 -> 85
    assert score_resources_fit(empty, idle, NodeUsage(), KUBE_DEFAULT) == 85


def test_balanced_allocation():
    node = make_node("n", cpu="4", memory="8Gi")
    # cpu 3/4 = 0.75, memory 2/8 = 0.25: std = 0.25 -> 75
    assert (
        score_balanced_allocation(make_pod(cpu="3", memory="2Gi"), node, NodeUsage(), KUBE_DEFAULT)
        == 75
    )
    assert (
        score_balanced_allocation(make_pod(cpu="2", memory="4Gi"), node, NodeUsage(), KUBE_DEFAULT)
        == 100
    )


def test_weighted_sum_kube_default():
    # Two nodes, both empty, 4 cpu / 8 GiB; n1 holds the 600 MiB image.
    nodes = [
        make_node("n1", cpu="4", memory="8Gi", images=[(["img:1"], 600 * MB)]),
        make_node("n2", cpu="4", memory="8Gi"),
    ]
    pod = make_pod(image="img:1", cpu="1", memory="2Gi")
    result = score_nodes(pod, nodes, nodes, {}, KUBE_DEFAULT)
    # ImageLocality n1: 600 * 1/2 = 300 MiB -> 100*(300-23)/977 = 28
    assert result.plugins["ImageLocality"] == {"n1": 28, "n2": 0}
    # LeastAllocated: cpu 75, memory 75; balanced: std 0 -> 100
    assert result.plugins["NodeResourcesFit"] == {"n1": 75, "n2": 75}
    assert result.plugins["NodeResourcesBalancedAllocation"] == {"n1": 100, "n2": 100}
    # No taints: reversed normalisation gives everyone 100; no preferred terms: 0.
    assert result.plugins["TaintToleration"] == {"n1": 100, "n2": 100}
    assert result.plugins["NodeAffinity"] == {"n1": 0, "n2": 0}
    # 3*100 + 2*0 + 1*75 + 1*100 + 1*28 = 503; n2: 475
    assert result.totals == {"n1": 503, "n2": 475}
    assert schedule(pod, nodes, {}, KUBE_DEFAULT) == ("n1", {})


def test_weighted_sum_z2jh_packs_and_follows_affinity():
    nodes = [make_node("n1", cpu="4", memory="8Gi"), make_node("n2", cpu="4", memory="8Gi")]
    busy = {"n2": [make_pod(cpu="2", memory="4Gi")]}
    pod = make_pod(cpu="1", memory="2Gi")
    result = score_nodes(pod, nodes, nodes, busy, Z2JH_USER_SCHEDULER)
    # MostAllocated: n1 25, n2 75 -> packs onto n2
    assert result.plugins["NodeResourcesFit"] == {"n1": 25, "n2": 75}
    assert result.totals == {"n1": 3 * 100 + 121 * 25, "n2": 3 * 100 + 121 * 75}
    assert schedule(pod, nodes, busy, Z2JH_USER_SCHEDULER)[0] == "n2"
    assert schedule(pod, nodes, busy, KUBE_DEFAULT)[0] == "n1"
    # A preferred term for n1 (weight 1, normalised to 100) outweighs packing:
    # 14631 * 100 beats 121 * 50.
    preferred = [
        {
            "weight": 1,
            "preference": {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}
                ]
            },
        }
    ]
    pod["spec"]["affinity"] = affinity(preferred=preferred)
    assert schedule(pod, nodes, busy, Z2JH_USER_SCHEDULER)[0] == "n1"


def test_schedule_reports_reasons_and_failed_scheduling_message():
    nodes = [
        make_node("a", memory="1Gi"),
        make_node("b", memory="1Gi"),
        make_node("c", unschedulable=True),
    ]
    pod = make_pod(memory="2Gi")
    node, reasons = schedule(pod, nodes, {})
    assert node is None
    assert reasons == {
        "a": "Insufficient memory",
        "b": "Insufficient memory",
        "c": "node(s) were unschedulable",
    }
    assert failed_scheduling_message(reasons, 3) == (
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient memory."
    )
    assert failed_scheduling_message({}, 0).startswith("0/0 nodes are available")


def test_ties_first_in_order_or_reservoir_sampling():
    totals = {"a": 5, "b": 7, "c": 7, "d": 7}
    assert select_host(totals, ["a", "b", "c", "d"]) == "b"
    picks = {select_host(totals, ["a", "b", "c", "d"], random.Random(seed)) for seed in range(50)}
    assert picks == {"b", "c", "d"}
    nodes = [make_node(n) for n in "xyz"]
    assert schedule(make_pod(), nodes, {})[0] == "x"


def test_custom_profile_disables_plugins():
    nodes = [
        make_node("n1", images=[(["img:1"], 900 * MB)]),
        make_node("n2"),
    ]
    busy = {"n1": [make_pod(cpu="2")]}
    only_images = SchedulerProfile("images", {"ImageLocality": 1})
    assert schedule(make_pod(image="img:1"), nodes, busy, only_images)[0] == "n1"
    only_fit = SchedulerProfile("fit", {"NodeResourcesFit": 1})
    assert schedule(make_pod(image="img:1"), nodes, busy, only_fit)[0] == "n2"
