"""Replay a Binder launch trace on a simulated cluster; compare placement strategies.

    python benchmarks/placement.py --trace mybinder-launches-2019-03-04.jsonl.gz [--json] [--limit N]

A discrete-event simulation (no real time passes): every launch of the trace
becomes a user pod that is scheduled by the emulator's scheduler
(``tests/k8s/scheduler.py``) with one of three strategies:

- ``kube-default``: kube-scheduler's default profile;
- ``z2jh-user-scheduler``: the zero-to-jupyterhub user-scheduler's weights;
- ``binder``: ours, as a deployment runs it: the service's placement answer
  (``binder_service/placement.py``: inventory from pods and node status,
  capacity-aware rendezvous ranking) becomes preferred node-affinity terms
  (``preferred_node_affinity``) on the pod, which the z2jh user-scheduler
  weights then schedule.

The cluster and workload model (:class:`Model`, printed with ``--json``):
nodes with memory and pod capacity; every pod guarantees 1 GiB; image sizes
from a deterministic log-normal model keyed by the repository; pulls at a
fixed bandwidth, one at a time per node (the kubelet's default
``serializeImagePulls: true``); an image cache per node with LRU eviction of
images no running pod uses (the kubelet's image garbage collection);
``node.status.images`` lists the 50 largest cached images, which is all the
scheduler's ImageLocality and the service can see of a node's cache.
Sessions: most end at the idle cull (some activity, then 10 minutes idle),
a few run long, none beyond the 12-hour cap.

Metrics per strategy: hit_rate (launches whose node had the image cached,
of placed launches), pulls, gb_pulled, ttr_mean_s, ttr_p90_s and ttr_p99_s
(time to running: waiting for the node's pull queue, the pull, container
start), refused (launches no node had room for).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import heapq
import json
import math
import random
import re
import sys
import time
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from binder_service.placement import (  # noqa: E402
    ImageInventory,
    NodeRoom,
    pull_costs,
    rank_nodes,
)
from binder_spawner.nodes import preferred_node_affinity  # noqa: E402
from tests.k8s.scheduler import (  # noqa: E402
    KUBE_DEFAULT,
    Z2JH_USER_SCHEDULER,
    NodeUsage,
    schedule,
)

GB = 10**9
GiB = 2**30
STATUS_MAX_IMAGES = 50

STRATEGIES = ("kube-default", "z2jh-user-scheduler", "binder")
# Ours when the service may not read nodes: the inventory only has pods.
EXTRA_STRATEGIES = ("binder-pods-only",)


@dataclass(frozen=True)
class Model:
    """Everything the simulation assumes; reported with the results."""

    nodes: int = 20
    node_memory_gib: int = 64
    node_cpu: int = 16
    node_max_pods: int = 110
    pod_memory_gib: int = 1
    pull_mb_per_s: float = 100.0  # MB = 10**6 bytes
    cache_gb: float = 100.0
    container_start_s: float = 5.0
    # Image size: log-normal, median and sigma of ln(size), clamped, drawn
    # from sha256 of the launch spec without its ref (the repository).
    image_median_gb: float = 2.0
    image_sigma: float = 0.6
    image_min_gb: float = 0.3
    image_max_gb: float = 10.0
    # Session length: with probability long_fraction uniform in
    # [long_min_s, max_age_s]; otherwise exponential activity with mean
    # activity_mean_s plus the idle cull timeout.
    idle_cull_s: float = 600.0
    activity_mean_s: float = 600.0
    long_fraction: float = 0.05
    long_min_s: float = 3600.0
    max_age_s: float = 43200.0
    # binder: how many nodes the placement answer names.
    placement_nodes: int = 4
    seed: int = 20190304

    def describe(self) -> dict:
        out = asdict(self)
        out["image_size"] = (
            "ln(size) ~ Normal(ln(median), sigma) with the quantile taken from sha256 "
            "of provider/org/repo; clamped to [min, max]; one image per repository "
            "and ref for the whole trace"
        )
        out["session_length"] = (
            "long_fraction: uniform[long_min_s, max_age_s]; else idle_cull_s + "
            "Exponential(mean activity_mean_s), capped at max_age_s; seeded per launch"
        )
        out["pulls"] = "size / pull bandwidth, one pull at a time per node"
        out["time_to_running"] = "wait for the node's pull queue + pull + container_start_s"
        return out


@dataclass(frozen=True)
class Launch:
    t: float
    repo: str
    image: str
    size: int
    duration: float


def _uniform(text: str) -> float:
    digest = hashlib.sha256(text.encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def image_size(repo: str, model: Model) -> int:
    z = NormalDist().inv_cdf(_uniform(repo))
    gb = model.image_median_gb * math.exp(model.image_sigma * z)
    return int(min(max(gb, model.image_min_gb), model.image_max_gb) * GB)


def session_length(rng: random.Random, model: Model) -> float:
    if rng.random() < model.long_fraction:
        return rng.uniform(model.long_min_s, model.max_age_s)
    return min(model.idle_cull_s + rng.expovariate(1 / model.activity_mean_s), model.max_age_s)


def _image_name(provider: str, spec: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{provider}-{spec}".lower()).strip("-")[:60]
    tag = hashlib.sha256(f"{provider}/{spec}".encode()).hexdigest()[:12]
    return f"registry.example.org/binder/r2d-{slug}:{tag}"


def load_trace(path, model: Model, limit: int | None = None) -> list[Launch]:
    """Launches of a trace file (JSON lines ``{"t", "provider", "spec"}``, gzip or not).

    Timestamps have minute resolution: launches of one minute are spread
    evenly over it, in file order.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    rows = []
    with opener(path, "rt") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit and len(rows) >= limit:
                    break
    per_minute = Counter(int(r["t"]) for r in rows)
    seen: Counter = Counter()
    rng = random.Random(model.seed)
    launches = []
    for row in rows:
        t = int(row["t"])
        offset = 60 * seen[t] / per_minute[t]
        seen[t] += 1
        provider, spec = row.get("provider", ""), row["spec"]
        repo = f"{provider}/{spec.rsplit('/', 1)[0] if '/' in spec else spec}"
        launches.append(
            Launch(
                t=t + offset,
                repo=repo,
                image=_image_name(provider, spec),
                size=image_size(repo, model),
                duration=session_length(rng, model),
            )
        )
    launches.sort(key=lambda launch: launch.t)
    return launches


@dataclass
class SimNode:
    name: str
    manifest: dict
    usage: NodeUsage = field(default_factory=NodeUsage)
    cache: OrderedDict = field(default_factory=OrderedDict)  # image -> size, LRU first
    cached_bytes: int = 0
    in_use: Counter = field(default_factory=Counter)
    pulling: dict = field(default_factory=dict)  # image -> done time
    pull_free_at: float = 0.0
    reported: frozenset = frozenset()


class Simulation:
    """One strategy's replay of the launches."""

    def __init__(self, strategy: str, model: Model):
        self.strategy = strategy
        self.model = model
        self.profile = KUBE_DEFAULT if strategy == "kube-default" else Z2JH_USER_SCHEDULER
        self.rng = random.Random(model.seed)
        self.nodes = [self._node(i) for i in range(model.nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        self.manifests = [n.manifest for n in self.nodes]
        self.usages = {n.name: n.usage for n in self.nodes}
        # The scheduler cache's image states, kept in step with status.images.
        self.states: dict[str, tuple[int, int]] = {}
        self.inventory = ImageInventory(max_age=model.max_age_s * 2)
        if strategy == "binder":  # every node reports status.images, empty at first
            for node in self.nodes:
                self.inventory.set_node_images(node.name, [], 0.0)
        self.events: list = []
        self.seq = 0
        self.hits = self.pulls = self.refused = 0
        self.bytes_pulled = 0
        # Pulls by kind (bytes): an image's first pull; a re-pull after every
        # copy was evicted; an extra copy while another node holds it.
        self.pulled_before: set[str] = set()
        self.copies: Counter = Counter()  # image -> nodes holding or pulling it
        self.bytes_repulled = self.bytes_extra = 0
        self.ttrs: list[float] = []
        self.pod_memory = model.pod_memory_gib * GiB
        self.memory = model.node_memory_gib * GiB

    def _node(self, i: int) -> SimNode:
        name = f"node-{i:02d}"
        manifest = {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {
                    "cpu": str(self.model.node_cpu),
                    "memory": f"{self.model.node_memory_gib}Gi",
                    "pods": str(self.model.node_max_pods),
                },
                "images": [],
            },
        }
        return SimNode(name=name, manifest=manifest)

    def _push(self, when: float, kind: str, payload) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, payload))

    def _advance(self, now: float) -> None:
        while self.events and self.events[0][0] <= now:
            when, _, kind, payload = heapq.heappop(self.events)
            if kind == "pulled":
                self._pulled(when, *payload)
            else:
                self._ended(when, *payload)

    def _report(self, node: SimNode, now: float) -> None:
        """Refresh node.status.images (50 largest) and what the scheduler sees."""
        largest = sorted(node.cache.items(), key=lambda item: (-item[1], item[0]))
        largest = largest[:STATUS_MAX_IMAGES]
        node.manifest["status"]["images"] = [
            {"names": [image], "sizeBytes": size} for image, size in largest
        ]
        reported = frozenset(image for image, _ in largest)
        for image in node.reported - reported:
            size, count = self.states[image]
            if count == 1:
                del self.states[image]
            else:
                self.states[image] = (size, count - 1)
        for image in reported - node.reported:
            size, count = self.states.get(image, (node.cache[image], 0))
            self.states[image] = (size, count + 1)
        node.reported = reported
        if self.strategy == "binder":  # binder-pods-only cannot read nodes
            self.inventory.set_node_images(node.name, node.manifest["status"]["images"], now)

    def _pulled(self, now: float, node: SimNode, image: str, size: int) -> None:
        del node.pulling[image]
        limit = self.model.cache_gb * GB
        # Image garbage collection: least recently used images no pod uses.
        for old in list(node.cache):
            if node.cached_bytes + size <= limit:
                break
            if node.in_use[old] == 0:
                node.cached_bytes -= node.cache.pop(old)
                self.copies[old] -= 1
        node.cache[image] = size
        node.cached_bytes += size
        self._report(node, now)

    def _ended(self, now: float, node: SimNode, pod: dict, image: str) -> None:
        node.usage.remove(pod)
        node.in_use[image] -= 1
        if image in node.cache:
            node.cache.move_to_end(image)
        if self.strategy.startswith("binder"):
            # The service saw the pod running until its last listing.
            self.inventory.record(image, node.name, now)

    def _pod(self, launch: Launch) -> dict:
        memory = f"{self.model.pod_memory_gib}Gi"
        pod = {
            "metadata": {"name": "jupyter-x"},
            "spec": {
                "containers": [
                    {
                        "name": "notebook",
                        "image": launch.image,
                        "resources": {"requests": {"memory": memory}, "limits": {"memory": memory}},
                    }
                ]
            },
        }
        if self.strategy == "binder":
            # What node_room() computes from the node and pod lists, taken
            # from the running sums instead of re-reading every pod.
            rooms = {
                n.name: NodeRoom(
                    n.name,
                    self.memory - n.usage.requested.get("memory", 0),
                    self.model.node_max_pods - n.usage.pods,
                )
                for n in self.nodes
            }
        elif self.strategy == "binder-pods-only":
            # Without nodes the service knows the nodes its pods run on, not
            # their room (binder_service/placement_source.py).
            rooms = {n.name: NodeRoom(n.name, 2**62, 2**31) for n in self.nodes if n.usage.pods}
        if self.strategy.startswith("binder"):
            costs = None
            holders = self.inventory.holders(launch.image, launch.t)
            if self.strategy == "binder" and not any(
                rooms[h].fits(self.pod_memory) for h in holders if h in rooms
            ):
                # The answer's order among nodes that must pull matters only
                # when no holder has room (under the z2jh weights the first
                # listed node that fits takes the pod), so the cache estimates
                # are computed only then. The size is what the service knows:
                # as a node reported it, else the typical size.
                size = self.inventory.size(launch.image) or self.inventory.typical_size()
                costs = pull_costs(
                    self.inventory.cache_estimates(rooms, launch.t),
                    size,
                    {n.name: {i for i, c in n.in_use.items() if c} for n in self.nodes},
                )
            answer = rank_nodes(
                launch.image,
                rooms,
                holders,
                pod_memory=self.pod_memory,
                max_nodes=self.model.placement_nodes,
                pull_costs=costs,
            )
            if answer:
                pod["spec"]["affinity"] = {
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": preferred_node_affinity(
                            answer
                        )
                    }
                }
        return pod

    def launch(self, launch: Launch) -> None:
        self._advance(launch.t)
        pod = self._pod(launch)
        name, _ = schedule(
            pod, self.manifests, self.usages, self.profile, rng=self.rng, states=self.states
        )
        if name is None:
            self.refused += 1
            return
        node = self.by_name[name]
        node.usage.add(pod)
        node.in_use[launch.image] += 1
        image = launch.image
        if image in node.cache:
            self.hits += 1
            node.cache.move_to_end(image)
            ready = launch.t
        elif image in node.pulling:
            ready = node.pulling[image]
        else:
            start = max(launch.t, node.pull_free_at)
            ready = start + launch.size / (self.model.pull_mb_per_s * 10**6)
            node.pull_free_at = ready
            node.pulling[image] = ready
            self.pulls += 1
            self.bytes_pulled += launch.size
            if self.copies[image]:
                self.bytes_extra += launch.size
            elif image in self.pulled_before:
                self.bytes_repulled += launch.size
            self.pulled_before.add(image)
            self.copies[image] += 1
            self._push(ready, "pulled", (node, image, launch.size))
        ready += self.model.container_start_s
        self.ttrs.append(ready - launch.t)
        if self.strategy.startswith("binder"):
            self.inventory.record(image, name, launch.t)
        self._push(ready + launch.duration, "ended", (node, pod, image))

    def result(self) -> dict:
        ttrs = sorted(self.ttrs)
        placed = len(ttrs)
        return {
            "launches": placed + self.refused,
            "hit_rate": round(self.hits / placed, 4) if placed else 0.0,
            "pulls": self.pulls,
            "gb_pulled": round(self.bytes_pulled / GB, 1),
            "gb_repulled": round(self.bytes_repulled / GB, 1),
            "gb_extra_copies": round(self.bytes_extra / GB, 1),
            "ttr_mean_s": round(sum(ttrs) / placed, 1) if placed else 0.0,
            "ttr_p90_s": round(_percentile(ttrs, 0.9), 1) if placed else 0.0,
            "ttr_p99_s": round(_percentile(ttrs, 0.99), 1) if placed else 0.0,
            "refused": self.refused,
        }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def replay(launches: list[Launch], model: Model, strategy: str) -> dict:
    """One strategy's result on ``launches``, with its wall time."""
    started = time.perf_counter()
    sim = Simulation(strategy, model)
    for launch in launches:
        sim.launch(launch)
    result = sim.result()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def run(launches: list[Launch], model: Model, strategies=STRATEGIES) -> dict:
    return {strategy: replay(launches, model, strategy) for strategy in strategies}


# demand_score: an image launched e times as often as another is kept as if
# used this much later.
DEMAND_SECONDS = 24 * 3600.0


def demand_score(last_used: float, launches: int) -> float:
    """Last use + ``DEMAND_SECONDS`` x ln(launches): what ``one_demand_cache_gb`` keeps."""
    return last_used + DEMAND_SECONDS * math.log(max(launches, 1))


def _one_cache(launches: list[Launch], capacity: float, score) -> int:
    """Bytes one cache of ``capacity`` pulls when it evicts the images of lowest ``score``.

    ``score(i, launch, launches_so_far)`` is the image's priority after launch
    ``i``; no pod limits, no images pinned by running pods, no copies. The
    image just pulled may itself be the one evicted (once its session ends).
    """
    cached: dict[str, float] = {}
    heap: list = []
    counts: Counter = Counter()
    held = pulled = 0
    sizes = {}
    for i, launch in enumerate(launches):
        image = launch.image
        counts[image] += 1
        if image not in cached:
            pulled += launch.size
            held += launch.size
            sizes[image] = launch.size
        cached[image] = priority = score(i, launch, counts[image])
        heapq.heappush(heap, (priority, i, image))
        while held > capacity:
            priority, _, victim = heapq.heappop(heap)
            if cached.get(victim) == priority:  # else an outdated entry
                del cached[victim]
                held -= sizes[victim]
    return pulled


def lower_bound(launches: list[Launch], model: Model) -> dict:
    """Each distinct image of the trace pulled once: no strategy pulls less.

    With it, for reference, what one cache as large as all nodes' caches
    together would pull (no pod limits, no images pinned by running pods, no
    copy on two nodes), evicting:

    - ``one_lru_cache_gb``: the least recently used image, as each kubelet does;
    - ``one_demand_cache_gb``: the image of lowest :func:`demand_score`, its
      last use moved later by its launches so far (an online rule: it needs
      only the past);
    - ``one_offline_cache_gb``: the image launched again furthest in the
      future (Belady's rule: it needs the future, no online placement has it).

    The kubelets evict least recently used images, so a placement that only
    chooses which node's cache takes an image stays near or above the first.
    """
    sizes = {launch.image: launch.size for launch in launches}
    capacity = model.cache_gb * GB * model.nodes
    following = [math.inf] * len(launches)
    later: dict[str, int] = {}
    for i in range(len(launches) - 1, -1, -1):
        following[i] = later.get(launches[i].image, math.inf)
        later[launches[i].image] = i
    rules = {
        "one_lru_cache_gb": lambda i, launch, count: launch.t,
        "one_demand_cache_gb": lambda i, launch, count: demand_score(launch.t, count),
        "one_offline_cache_gb": lambda i, launch, count: -following[i],
    }
    out = {"images": len(sizes), "lower_bound_gb": round(sum(sizes.values()) / GB, 1)}
    for key, score in rules.items():
        out[key] = round(_one_cache(launches, capacity, score) / GB, 1)
    return out


def summary(week: dict) -> dict:
    """Add GB above the lower bound to each row, and ours against the better baseline."""
    results = week["strategies"]
    for row in results.values():
        row["gb_above_lower_bound"] = round(row["gb_pulled"] - week["lower_bound_gb"], 1)
    baselines = [s for s in ("kube-default", "z2jh-user-scheduler") if s in results]
    if "binder" in results and baselines:
        best = min(baselines, key=lambda s: results[s]["gb_pulled"])
        ours = results["binder"]
        gb = results[best]["gb_pulled"]
        week["margin"] = {
            "better_baseline": best,
            "fewer_gb": round(1 - ours["gb_pulled"] / gb, 4) if gb else 0.0,
            "p90_no_worse": ours["ttr_p90_s"] <= results[best]["ttr_p90_s"],
        }
    return week


def table(results: dict) -> str:
    keys = ["hit_rate", "pulls", "gb_pulled", "gb_above_lower_bound", "gb_repulled"]
    keys += ["gb_extra_copies", "ttr_mean_s", "ttr_p90_s", "ttr_p99_s", "refused", "wall_s"]
    widths = [max(len(k), 9) + 2 for k in keys]
    lines = [f"{'strategy':<20}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths, strict=True))]
    for strategy, row in results.items():
        cells = "".join(f"{row[k]:>{w}}" for k, w in zip(keys, widths, strict=True))
        lines.append(f"{strategy:<20}{cells}")
    return "\n".join(lines)


def margin_line(week: dict) -> str:
    margin = week.get("margin")
    if not margin:
        return ""
    results = week["strategies"]
    best = results[margin["better_baseline"]]
    return (
        f"binder pulls {margin['fewer_gb']:.1%} fewer GB than the better baseline "
        f"({margin['better_baseline']}); p90 time to running "
        f"{results['binder']['ttr_p90_s']} s vs {best['ttr_p90_s']} s"
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--set FIELD=VALUE`` (repeatable): one :class:`Model` parameter changed."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one model parameter, e.g. --set cache_gb=200 (repeatable)",
    )


def model_from(parser: argparse.ArgumentParser, args, **overrides) -> Model:
    """The :class:`Model` of ``args.set`` over ``overrides``; an unknown field is a usage error."""
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in Model.__dataclass_fields__:
            parser.error(f"unknown model parameter {key!r}")
        overrides[key] = type(getattr(Model, key))(value)
    return Model(**overrides)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trace",
        action="append",
        required=True,
        help="launch trace, JSON lines (.gz or plain); repeat for several weeks",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N launches")
    parser.add_argument("--nodes", type=int, default=Model.nodes, help="number of nodes")
    parser.add_argument(
        "--strategy",
        action="append",
        choices=STRATEGIES + EXTRA_STRATEGIES,
        help="run only these (repeatable); binder-pods-only: ours without node access",
    )
    add_model_options(parser)
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="replay this many (trace, strategy) pairs at once, in processes (default 1)",
    )
    args = parser.parse_args(argv)
    model = model_from(parser, args, nodes=args.nodes)
    strategies = args.strategy or STRATEGIES
    traces = [(path, load_trace(path, model, args.limit)) for path in args.trace]
    pairs = [(i, strategy) for i in range(len(traces)) for strategy in strategies]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(replay, traces[i][1], model, s) for i, s in pairs]
            rows = [f.result() for f in futures]
    else:
        rows = [replay(traces[i][1], model, s) for i, s in pairs]
    weeks = []
    for i, (path, launches) in enumerate(traces):
        week = {"trace": Path(path).name, "launches": len(launches), **lower_bound(launches, model)}
        week["strategies"] = {s: row for (j, s), row in zip(pairs, rows, strict=True) if j == i}
        weeks.append(summary(week))
    margins = [w["margin"] for w in weeks if "margin" in w]
    worst = min(margins, key=lambda m: m["fewer_gb"]) if margins else None
    if args.json:
        if len(weeks) == 1:
            out = dict(weeks[0])
        else:
            out = {"weeks": weeks}
            if worst:
                out["worst_margin"] = {
                    "fewer_gb": worst["fewer_gb"],
                    "p90_no_worse_every_week": all(m["p90_no_worse"] for m in margins),
                }
        out["model"] = model.describe()
        print(json.dumps(out, indent=1))
        return 0
    for week in weeks:
        print(
            f"{week['trace']}: {week['launches']} launches of {week['images']} images, "
            f"lower bound {week['lower_bound_gb']} GB, one cache of all nodes "
            f"{week['one_lru_cache_gb']} GB (LRU) / {week['one_demand_cache_gb']} GB "
            f"(demand) / {week['one_offline_cache_gb']} GB (offline), {model.nodes} nodes"
        )
        print(table(week["strategies"]))
        if "margin" in week:
            print(margin_line(week))
        print()
    if len(weeks) > 1:
        names = [s for s in strategies if s in weeks[0]["strategies"]]
        header = f"{'trace':<40}{'lower bound':>12}" + "".join(f"{s:>22}" for s in names)
        lines = [header + f"{'binder vs better':>18}{'p90 s':>8}"]
        for week in weeks:
            cells = "".join(f"{week['strategies'][s]['gb_pulled']:>22}" for s in names)
            margin = week.get("margin")
            tail = f"{margin['fewer_gb']:>18.1%}" if margin else f"{'':>18}"
            tail += f"{week['strategies']['binder']['ttr_p90_s']:>8}" if margin else ""
            lines.append(f"{week['trace']:<40}{week['lower_bound_gb']:>12}{cells}{tail}")
        print("GB pulled per week")
        print("\n".join(lines))
        if worst:
            every = all(m["p90_no_worse"] for m in margins)
            print(
                f"worst-case margin: binder pulls {worst['fewer_gb']:.1%} fewer GB than the "
                f"better baseline; p90 no worse on every week: {every}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
