"""kube-scheduler's filter and score plugins as pure functions.

The emulator's scheduler loop and ``benchmarks/placement.py`` call
:func:`schedule`; nothing here does I/O. Pods and nodes are Kubernetes JSON
dicts (``spec``, ``status``, ``metadata``), the shape the API server stores.

The formulas follow kube-scheduler v1.30.0; every plugin names the upstream
file it follows, relative to
https://github.com/kubernetes/kubernetes/tree/v1.30.0/pkg/scheduler/framework/plugins/

One scheduling cycle is what ``pkg/scheduler/schedule_one.go`` does:

1. filter: a node passes when every enabled filter plugin passes it; the first
   failing plugin's reason is recorded for the FailedScheduling event;
2. score: each score plugin scores every feasible node (0..100), normalises
   across nodes where upstream has a NormalizeScore extension, and the scores
   are summed with the plugin weights of the profile;
3. select: the highest total wins; ties are broken by reservoir sampling
   (``selectHost``) with the caller's random generator, or by node order when
   no generator is given, so tests get one deterministic answer.

Not emulated: InterPodAffinity and PodTopologySpread score 0 (they only
change scores when pods carry pod (anti-)affinity or the pod belongs to a
Service/ReplicaSet that default spreading selects; Binder user pods do
neither), volume plugins, NodePorts, preemption.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from binder_service.placement import parse_quantity as _placement_parse_quantity

# framework.MaxNodeScore (pkg/scheduler/framework/interface.go)
MAX_NODE_SCORE = 100

MB = 1024 * 1024
# imagelocality/image_locality.go: minThreshold and maxContainerThreshold
IMAGE_MIN_THRESHOLD = 23 * MB
IMAGE_MAX_CONTAINER_THRESHOLD = 1000 * MB

# pkg/scheduler/util/pod_resources.go: DefaultMilliCPURequest and
# DefaultMemoryRequest, used for scoring (not filtering) containers that
# request nothing, so that empty pods do not all land on one node.
DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * MB

LEAST_ALLOCATED = "LeastAllocated"
MOST_ALLOCATED = "MostAllocated"

TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"

# Reasons as upstream's filter plugins word them (they end up in the
# FailedScheduling event: "0/3 nodes are available: 3 Insufficient memory.").
REASON_NODE_NAME = "node(s) didn't match the requested node name"
REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_TOO_MANY_PODS = "Too many pods"


@dataclass(frozen=True)
class SchedulerProfile:
    """Score plugin weights and the NodeResourcesFit scoring strategy.

    ``weights`` maps upstream plugin names to their weight; a plugin with
    weight 0 or absent is disabled for scoring (filters always run).
    ``resources`` are NodeResourcesFit's (resource, weight) pairs.
    """

    name: str
    weights: Mapping[str, int]
    scoring_strategy: str = LEAST_ALLOCATED
    resources: tuple[tuple[str, int], ...] = (("cpu", 1), ("memory", 1))

    def weight(self, plugin: str) -> int:
        return int(self.weights.get(plugin, 0))


# kube-scheduler's default profile: pkg/scheduler/apis/config/v1/default_plugins.go
# (getDefaultPlugins) and NodeResourcesFit's default scoring strategy
# LeastAllocated with cpu and memory weight 1 (apis/config/v1/defaults.go).
KUBE_DEFAULT = SchedulerProfile(
    name="kube-default",
    weights={
        "TaintToleration": 3,
        "NodeAffinity": 2,
        "NodeResourcesFit": 1,
        "PodTopologySpread": 2,
        "InterPodAffinity": 2,
        "NodeResourcesBalancedAllocation": 1,
        "ImageLocality": 1,
    },
    scoring_strategy=LEAST_ALLOCATED,
)

# The zero-to-jupyterhub user-scheduler (jupyterhub/zero-to-jupyterhub-k8s,
# jupyterhub/values.yaml, scheduling.userScheduler.plugins and pluginConfig,
# chart 4.x): BalancedAllocation disabled, four plugins re-weighted, and
# NodeResourcesFit packing nodes (MostAllocated) so idle nodes can scale down.
# Plugins the chart does not touch keep their default weight.
Z2JH_USER_SCHEDULER = SchedulerProfile(
    name="z2jh-user-scheduler",
    weights={
        "TaintToleration": 3,
        "PodTopologySpread": 2,
        "NodeAffinity": 14631,
        "InterPodAffinity": 1331,
        "NodeResourcesFit": 121,
        "ImageLocality": 11,
    },
    scoring_strategy=MOST_ALLOCATED,
)

PROFILES = {p.name: p for p in (KUBE_DEFAULT, Z2JH_USER_SCHEDULER)}


# --------------------------------------------------------------------------
# Quantities

# One parser for the emulator and the service's placement code (re-exported
# here for the kubelet, runtime and validation modules).
parse_quantity = _placement_parse_quantity


def _milli(value) -> int:
    return math.ceil(parse_quantity(value) * 1000)


@functools.lru_cache(maxsize=1024)
def _amount(resource: str, value) -> int:
    """cpu in millicores, everything else in plain units (bytes, count)."""
    if resource == "cpu":
        return _milli(value)
    return math.ceil(parse_quantity(value))


# --------------------------------------------------------------------------
# Pod and node accessors


def node_name(node: dict) -> str:
    return node["metadata"]["name"]


def _container_requests(container: dict) -> dict:
    resources = container.get("resources") or {}
    requests = dict(resources.get("limits") or {})
    # API server defaulting: a limit without a request is also the request.
    requests.update(resources.get("requests") or {})
    return requests


def pod_requests(pod: dict, non_zero: bool = False) -> dict[str, int]:
    """The pod's effective requests (cpu in millicores, memory in bytes).

    Like ``k8s.io/component-helpers/resource.PodRequests``: the sum over
    containers, at least the largest init container, plus pod overhead. With
    ``non_zero`` containers without a cpu/memory request count the scoring
    defaults (``pkg/scheduler/util/pod_resources.go``).
    """
    spec = pod.get("spec") or {}
    total: dict[str, int] = {}
    for container in spec.get("containers") or []:
        requests = _container_requests(container)
        amounts = {r: _amount(r, v) for r, v in requests.items()}
        if non_zero:
            amounts.setdefault("cpu", DEFAULT_MILLI_CPU_REQUEST)
            amounts.setdefault("memory", DEFAULT_MEMORY_REQUEST)
        for resource, amount in amounts.items():
            total[resource] = total.get(resource, 0) + amount
    for container in spec.get("initContainers") or []:
        for resource, value in _container_requests(container).items():
            total[resource] = max(total.get(resource, 0), _amount(resource, value))
    for resource, value in (spec.get("overhead") or {}).items():
        total[resource] = total.get(resource, 0) + _amount(resource, value)
    return total


def _active(pods) -> list[dict]:
    # The scheduler cache only holds pods that have not terminated.
    return [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def node_allocatable(node: dict) -> dict[str, int]:
    status = node.get("status") or {}
    allocatable = status.get("allocatable") or status.get("capacity") or {}
    return {r: _amount(r, v) for r, v in allocatable.items()}


@dataclass
class NodeUsage:
    """What the pods bound to a node request, summed.

    Upstream's NodeInfo keeps the same sums (``Requested``, ``NonZeroRequested``,
    pkg/scheduler/framework/types.go). Callers that schedule many pods (the
    placement benchmark) keep one per node up to date with :meth:`add` and
    :meth:`remove` and pass it in ``pods_by_node`` instead of a pod list.
    """

    pods: int = 0
    requested: dict[str, int] = field(default_factory=dict)
    non_zero: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, pods) -> NodeUsage:
        usage = cls()
        for pod in _active(pods):
            usage.add(pod)
        return usage

    def add(self, pod: dict, sign: int = 1) -> None:
        self.pods += sign
        for total, non_zero in ((self.requested, False), (self.non_zero, True)):
            for resource, amount in pod_requests(pod, non_zero).items():
                total[resource] = total.get(resource, 0) + sign * amount

    def remove(self, pod: dict) -> None:
        self.add(pod, -1)


def node_usage(pods_by_node: Mapping, name: str) -> NodeUsage:
    pods = pods_by_node.get(name)
    if isinstance(pods, NodeUsage):
        return pods
    return NodeUsage.of(pods or [])


# --------------------------------------------------------------------------
# Filter plugins: each returns None when the node passes, else the reason.


def filter_node_unschedulable(pod: dict, node: dict) -> str | None:
    """nodeunschedulable/node_unschedulable.go: spec.unschedulable unless tolerated."""
    if not (node.get("spec") or {}).get("unschedulable"):
        return None
    taint = {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}
    if any(tolerates(t, taint) for t in (pod.get("spec") or {}).get("tolerations") or []):
        return None
    return REASON_UNSCHEDULABLE


def filter_node_name(pod: dict, node: dict) -> str | None:
    """nodename/node_name.go: spec.nodeName, when set, must be this node."""
    wanted = (pod.get("spec") or {}).get("nodeName")
    if wanted and wanted != node_name(node):
        return REASON_NODE_NAME
    return None


def _match_expression(expression: dict, value_of) -> bool:
    """One NodeSelectorRequirement (k8s.io/component-helpers/scheduling/corev1/nodeaffinity)."""
    key = expression["key"]
    operator = expression["operator"]
    values = expression.get("values") or []
    present, value = value_of(key)
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt"):
        if not present or len(values) != 1:
            return False
        try:
            have, want = int(value), int(values[0])
        except ValueError:
            return False
        return have > want if operator == "Gt" else have < want
    return False


def match_node_selector_term(term: dict, node: dict) -> bool:
    """A NodeSelectorTerm: all matchExpressions (labels) and matchFields hold.

    An empty term matches no node (nodeaffinity.go: "nil or empty term
    matches no objects"). matchFields supports ``metadata.name`` only.
    """
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}

    def label(key):
        return key in labels, labels.get(key)

    def field_value(key):
        if key == "metadata.name":
            return True, node_name(node)
        return False, None

    return all(_match_expression(e, label) for e in expressions) and all(
        f.get("operator") in ("In", "NotIn") and _match_expression(f, field_value) for f in fields
    )


def _node_affinity(pod: dict) -> dict:
    return ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}


def filter_node_affinity(pod: dict, node: dict) -> str | None:
    """nodeaffinity/node_affinity.go Filter: nodeSelector and required terms (ORed)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return REASON_AFFINITY
    required = _node_affinity(pod).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is not None:
        terms = required.get("nodeSelectorTerms") or []
        if not any(match_node_selector_term(t, node) for t in terms):
            return REASON_AFFINITY
    return None


def tolerates(toleration: dict, taint: dict) -> bool:
    """v1.Toleration.ToleratesTaint (k8s.io/api/core/v1/toleration.go)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def filter_taint_toleration(pod: dict, node: dict) -> str | None:
    """tainttoleration/taint_toleration.go Filter: NoSchedule and NoExecute taints."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            value = taint.get("value")
            shown = f"{taint['key']}: {value}" if value else taint["key"]
            return f"node(s) had untolerated taint {{{shown}}}"
    return None


def filter_node_resources_fit(pod: dict, node: dict, usage: NodeUsage) -> str | None:
    """noderesources/fit.go fitsRequest: pod count, then each requested resource.

    Upstream reports every insufficient resource; the first one is enough for
    the event message here.
    """
    allocatable = node_allocatable(node)
    allowed_pods = allocatable.get("pods")
    if allowed_pods is not None and usage.pods + 1 > allowed_pods:
        return REASON_TOO_MANY_PODS
    requests = pod_requests(pod)
    if not any(requests.values()):
        return None
    used = usage.requested
    for resource in sorted(requests, key=lambda r: (r not in ("cpu", "memory"), r)):
        amount = requests[resource]
        if amount == 0 or resource == "pods":
            continue
        if amount > allocatable.get(resource, 0) - used.get(resource, 0):
            return f"Insufficient {resource}"
    return None


def filter_node(pod: dict, node: dict, usage: NodeUsage) -> str | None:
    """Run the filter plugins in kube-scheduler's default order; first failure wins."""
    for check in (
        filter_node_unschedulable,
        filter_node_name,
        filter_taint_toleration,
        filter_node_affinity,
    ):
        reason = check(pod, node)
        if reason:
            return reason
    return filter_node_resources_fit(pod, node, usage)


# --------------------------------------------------------------------------
# Score plugins: raw scores per feasible node, then normalisation.


def default_normalize_score(scores: dict[str, int], reverse: bool = False) -> dict[str, int]:
    """helper.DefaultNormalizeScore (plugins/helper/normalize_score.go).

    Scales so the highest score becomes 100; ``reverse`` flips (100 - score).
    All zeros stay zeros, or become 100 each when reversed.
    """
    highest = max(scores.values(), default=0)
    if highest == 0:
        return {n: MAX_NODE_SCORE if reverse else 0 for n in scores}
    out = {}
    for n, score in scores.items():
        score = MAX_NODE_SCORE * score // highest
        out[n] = MAX_NODE_SCORE - score if reverse else score
    return out


def score_node_affinity(pod: dict, node: dict) -> int:
    """nodeaffinity/node_affinity.go Score: sum of weights of matching preferred terms."""
    preferred = _node_affinity(pod).get("preferredDuringSchedulingIgnoredDuringExecution") or []
    return sum(
        int(term.get("weight", 0))
        for term in preferred
        if term.get("weight") and match_node_selector_term(term.get("preference") or {}, node)
    )


def score_taint_toleration(pod: dict, node: dict) -> int:
    """tainttoleration/taint_toleration.go Score: untolerated PreferNoSchedule taints.

    Only tolerations with effect PreferNoSchedule or empty count; the plugin
    normalises reversed, so fewer untolerated taints score higher.
    """
    tolerations = [
        t
        for t in (pod.get("spec") or {}).get("tolerations") or []
        if (t.get("effect") or "") in ("", "PreferNoSchedule")
    ]
    return sum(
        1
        for taint in (node.get("spec") or {}).get("taints") or []
        if taint.get("effect") == "PreferNoSchedule"
        and not any(tolerates(t, taint) for t in tolerations)
    )


def normalized_image_name(name: str) -> str:
    """imagelocality/image_locality.go normalizedImageName: add ":latest" when untagged."""
    if name.rfind(":") <= name.rfind("/"):
        name += ":latest"
    return name


def image_states(nodes: list[dict]) -> dict[str, tuple[int, int]]:
    """image name -> (size in bytes, number of nodes holding it).

    The scheduler cache's ImageStateSummary (pkg/scheduler/internal/cache/
    cache.go), built from ``node.status.images``; every name of an entry counts.
    """
    states: dict[str, tuple[int, int]] = {}
    for node in nodes:
        seen = set()
        for image in (node.get("status") or {}).get("images") or []:
            size = int(image.get("sizeBytes") or 0)
            for name in image.get("names") or []:
                if name in seen:
                    continue
                seen.add(name)
                old_size, count = states.get(name, (size, 0))
                states[name] = (old_size, count + 1)
    return states


def node_image_names(node: dict) -> set[str]:
    return {
        name
        for image in (node.get("status") or {}).get("images") or []
        for name in image.get("names") or []
    }


def score_image_locality(
    pod: dict, node: dict, states: dict[str, tuple[int, int]], total_nodes: int
) -> int:
    """imagelocality/image_locality.go (v1.30) Score.

    sumScores = sum over the pod's containers and init containers whose image
    the node holds of ``size * numNodesWithImage / totalNumNodes`` (the spread
    factor that avoids piling pods onto the few nodes with an image); clamped
    to [23 MiB, 1000 MiB * numContainers] and scaled linearly to 0..100.
    """
    spec = pod.get("spec") or {}
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    held = node_image_names(node)
    total = 0
    for container in containers:
        name = normalized_image_name(container.get("image") or "")
        if name in held and name in states:
            size, count = states[name]
            total += int(size * (count / total_nodes))
    max_threshold = IMAGE_MAX_CONTAINER_THRESHOLD * max(len(containers), 1)
    total = min(max(total, IMAGE_MIN_THRESHOLD), max_threshold)
    return MAX_NODE_SCORE * (total - IMAGE_MIN_THRESHOLD) // (max_threshold - IMAGE_MIN_THRESHOLD)


def _resource_vectors(pod, node, usage: NodeUsage, resources):
    """Requested (including this pod, non-zero defaults) and allocatable per resource.

    noderesources/resource_allocation.go calculateResourceAllocatableRequest.
    """
    allocatable = node_allocatable(node)
    used = usage.non_zero
    mine = pod_requests(pod, non_zero=True)
    requested = [used.get(r, 0) + mine.get(r, 0) for r, _ in resources]
    capacity = [allocatable.get(r, 0) for r, _ in resources]
    return requested, capacity


def score_resources_fit(pod, node, usage: NodeUsage, profile: SchedulerProfile) -> int:
    """NodeResourcesFit Score with the profile's strategy.

    LeastAllocated (noderesources/least_allocated.go):
    ``(capacity - requested) * 100 / capacity`` per resource, 0 when over;
    MostAllocated (noderesources/most_allocated.go): ``requested * 100 /
    capacity``, requested clamped to capacity. Both: weighted integer mean over
    the resources the node has.
    """
    requested, capacity = _resource_vectors(pod, node, usage, profile.resources)
    total = weights = 0
    for (_, weight), req, cap in zip(profile.resources, requested, capacity, strict=True):
        if cap == 0:
            continue
        if profile.scoring_strategy == MOST_ALLOCATED:
            score = min(req, cap) * MAX_NODE_SCORE // cap
        else:
            score = 0 if req > cap else (cap - req) * MAX_NODE_SCORE // cap
        total += score * weight
        weights += weight
    return total // weights if weights else 0


def score_balanced_allocation(pod, node, usage: NodeUsage, profile: SchedulerProfile) -> int:
    """noderesources/balanced_allocation.go: ``(1 - std(fractions)) * 100``."""
    requested, capacity = _resource_vectors(pod, node, usage, profile.resources)
    fractions = [min(r / c, 1.0) for r, c in zip(requested, capacity, strict=True) if c]
    if len(fractions) == 2:
        std = abs(fractions[0] - fractions[1]) / 2
    elif len(fractions) > 2:
        mean = sum(fractions) / len(fractions)
        std = math.sqrt(sum((f - mean) ** 2 for f in fractions) / len(fractions))
    else:
        std = 0.0
    return int((1 - std) * MAX_NODE_SCORE)


@dataclass
class ScoreResult:
    """Per-node totals and each plugin's normalised (unweighted) scores."""

    totals: dict[str, int] = field(default_factory=dict)
    plugins: dict[str, dict[str, int]] = field(default_factory=dict)


def score_nodes(
    pod: dict,
    feasible: list[dict],
    all_nodes: list[dict],
    pods_by_node: Mapping[str, list[dict]],
    profile: SchedulerProfile = KUBE_DEFAULT,
    states: dict[str, tuple[int, int]] | None = None,
) -> ScoreResult:
    """Score the feasible nodes: plugin scores, normalised, weighted and summed."""
    names = [node_name(n) for n in feasible]
    plugins: dict[str, dict[str, int]] = {}
    if profile.weight("NodeAffinity"):
        raw = {node_name(n): score_node_affinity(pod, n) for n in feasible}
        plugins["NodeAffinity"] = default_normalize_score(raw)
    if profile.weight("TaintToleration"):
        raw = {node_name(n): score_taint_toleration(pod, n) for n in feasible}
        plugins["TaintToleration"] = default_normalize_score(raw, reverse=True)
    if profile.weight("ImageLocality"):
        # totalNumNodes counts every node in the snapshot, not only feasible ones.
        if states is None:
            states = image_states(all_nodes)
        plugins["ImageLocality"] = {
            node_name(n): score_image_locality(pod, n, states, len(all_nodes)) for n in feasible
        }
    pods_of = {name: node_usage(pods_by_node, name) for name in names}
    if profile.weight("NodeResourcesFit"):
        plugins["NodeResourcesFit"] = {
            node_name(n): score_resources_fit(pod, n, pods_of[node_name(n)], profile)
            for n in feasible
        }
    if profile.weight("NodeResourcesBalancedAllocation"):
        plugins["NodeResourcesBalancedAllocation"] = {
            node_name(n): score_balanced_allocation(pod, n, pods_of[node_name(n)], profile)
            for n in feasible
        }
    totals = {
        name: sum(profile.weight(p) * scores[name] for p, scores in plugins.items())
        for name in names
    }
    return ScoreResult(totals=totals, plugins=plugins)


def select_host(totals: dict[str, int], order: list[str], rng=None) -> str | None:
    """schedule_one.go selectHost: the highest total; ties by reservoir sampling.

    With ``rng`` (a ``random.Random``), each of the k tied nodes wins with
    probability 1/k as upstream; without, the first tied node in ``order``.
    """
    best = None
    best_score = None
    tied = 0
    for name in order:
        score = totals[name]
        if best_score is None or score > best_score:
            best, best_score, tied = name, score, 1
        elif score == best_score:
            tied += 1
            if rng is not None and rng.randrange(tied) == 0:
                best = name
    return best


def schedule(
    pod: dict,
    nodes: list[dict],
    pods_by_node: Mapping[str, list[dict]],
    weights: SchedulerProfile = KUBE_DEFAULT,
    rng=None,
    states: dict[str, tuple[int, int]] | None = None,
) -> tuple[str | None, dict[str, str]]:
    """Choose a node for ``pod``: ``(node name or None, {node: reason filtered out})``.

    ``pods_by_node`` maps node names to the pods bound there (terminated pods
    are ignored) or to their :class:`NodeUsage`. ``weights`` is a
    :class:`SchedulerProfile` (:data:`KUBE_DEFAULT`, :data:`Z2JH_USER_SCHEDULER`
    or your own). ``rng`` breaks ties (see :func:`select_host`); ``states``
    is :func:`image_states` of ``nodes`` when the caller keeps it up to date.
    """
    usages = {node_name(n): node_usage(pods_by_node, node_name(n)) for n in nodes}
    reasons: dict[str, str] = {}
    feasible = []
    for node in nodes:
        name = node_name(node)
        reason = filter_node(pod, node, usages[name])
        if reason:
            reasons[name] = reason
        else:
            feasible.append(node)
    if not feasible:
        return None, reasons
    if len(feasible) == 1:
        # schedule_one.go: with one feasible node scoring is skipped.
        return node_name(feasible[0]), reasons
    result = score_nodes(pod, feasible, nodes, usages, weights, states)
    return select_host(result.totals, [node_name(n) for n in feasible], rng), reasons


def failed_scheduling_message(reasons: Mapping[str, str], total_nodes: int) -> str:
    """The FailedScheduling event message, worded like kube-scheduler's FitError.

    "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient memory."
    """
    if total_nodes == 0:
        return "0/0 nodes are available: no nodes available to schedule pods."
    counts: dict[str, int] = {}
    for reason in reasons.values():
        counts[reason] = counts.get(reason, 0) + 1
    parts = sorted(f"{n} {r}" for r, n in counts.items())
    return f"0/{total_nodes} nodes are available: {', '.join(parts)}."
