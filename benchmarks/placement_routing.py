"""How much can choosing the node gain over the kubelets' LRU eviction, and what must it know?

    python benchmarks/placement_routing.py --trace WEEK.jsonl.gz [--trace ...] [--json] [--jobs N]

Every kubelet evicts its least recently used images; a placement only
chooses the node an image is pulled onto, and so whose least recently used
images the pull evicts. This replays a trace (``benchmarks/placement.py``'s
:class:`Model` and :func:`load_trace`, unchanged) on the model's nodes as
separate LRU caches, without pods: no pod limits, no images pinned by running
sessions, no second copies (an image cached on any node is a hit there). Each
pull goes to the node whose eviction costs least by one rule; a node with
room for the image costs nothing, ties go to the node that evicts the least
recently used images, then to the lower node number. What each rule knows:

- ``lru``: when each victim was last used: evict the oldest images of the
  cluster, as ``binder`` does when no holder has room.
- ``demand``: the highest demand score among the victims (last use plus one
  day per factor e of launches, ``placement.demand_score``): an online rule.
- ``fitted``: the expected GB of victims launched again within a day, from
  each victim's launches so far and idle time, with probabilities fitted on
  the whole week (hindsight: better calibrated than any online estimate).
- ``next-launch``: when each victim is launched next: keep the soonest
  (knows the future).
- ``within-day``: which victims are launched again within a day: evict the
  fewest GB of those (knows the future).
- ``within-day-5%-wrong`` and ``within-day-10%-wrong``: the same, with the
  answer wrong for 5 % or 10 % of an image's idle periods (a deterministic
  hash decides which): how good a prediction must be.

Prints, per trace, GB pulled by each rule, against the lower bound (each
distinct image pulled once) and against ``lru``.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import sys
import time
from collections import Counter, OrderedDict, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from placement import (  # noqa: E402
    GB,
    Launch,
    Model,
    add_model_options,
    demand_score,
    load_trace,
    lower_bound,
    model_from,
)

DAY = 86400.0
RULES = (
    "lru",
    "demand",
    "fitted",
    "next-launch",
    "within-day",
    "within-day-5%-wrong",
    "within-day-10%-wrong",
)
WRONG = {"within-day-5%-wrong": 0.05, "within-day-10%-wrong": 0.10}

# fitted: launches so far and idle time, bucketed by lower edges
COUNT_EDGES = (1, 2, 3, 5, 10, 30)
IDLE_EDGES = tuple(h * 3600.0 for h in (0, 0.5, 1, 2, 4, 8, 16, 24, 36, 48, 72, 96))


def _bucket(edges, value) -> int:
    return bisect.bisect_right(edges, value) - 1


def fit_return_probability(launches: list[Launch], horizon: float = DAY) -> dict:
    """P(launched again within ``horizon`` | launches so far, idle time), from the whole trace.

    An image idle for ``a`` after its ``c``-th launch counts in bucket (c, a)
    when the trace goes on for at least ``a + horizon`` after that launch;
    it returned if its next launch came before ``a + horizon``.
    """
    times = defaultdict(list)
    for launch in launches:
        times[launch.image].append(launch.t)
    end = launches[-1].t if launches else 0.0
    returned: Counter = Counter()
    seen: Counter = Counter()
    for ts in times.values():
        for j, t in enumerate(ts):
            gap = ts[j + 1] - t if j + 1 < len(ts) else math.inf
            count = _bucket(COUNT_EDGES, j + 1)
            for idle_bucket, idle in enumerate(IDLE_EDGES):
                if gap <= idle or end - t < idle + horizon:
                    break
                seen[count, idle_bucket] += 1
                returned[count, idle_bucket] += gap < idle + horizon
    return {key: returned[key] / seen[key] for key in seen}


def _wrong(image: str, last_used: float, rate: float) -> bool:
    digest = hashlib.sha256(f"{image}@{last_used}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def route(launches: list[Launch], model: Model, rule: str, fit_horizon: float = DAY) -> int:
    """Bytes pulled when every pull goes to the node whose eviction ``rule`` finds cheapest.

    ``fit_horizon``: the ``fitted`` rule's probabilities are of a relaunch
    within this many seconds.
    """
    following = [math.inf] * len(launches)
    later: dict[str, float] = {}
    for i in range(len(launches) - 1, -1, -1):
        following[i] = later.get(launches[i].image, math.inf)
        later[launches[i].image] = launches[i].t
    table = fit_return_probability(launches, fit_horizon) if rule == "fitted" else {}
    wrong = WRONG.get(rule, 0.0)
    capacity = model.cache_gb * GB
    caches = [OrderedDict() for _ in range(model.nodes)]  # image -> (size, last used), LRU first
    held = [0] * model.nodes
    where: dict[str, int] = {}
    counts: Counter = Counter()
    next_launch: dict[str, float] = {}

    def victim_cost(image, size, last_used, now):
        if rule == "demand":
            return demand_score(last_used, counts[image])
        if rule == "fitted":
            key = (_bucket(COUNT_EDGES, counts[image]), _bucket(IDLE_EDGES, now - last_used))
            return size * table.get(key, 0.0)
        if rule == "next-launch":
            return -next_launch[image]
        again = next_launch[image] - now < DAY
        if wrong and _wrong(image, last_used, wrong):
            again = not again
        return size if again else 0

    def cost(k, launch):
        need = held[k] + launch.size - capacity
        if need <= 0:
            return (-math.inf, -math.inf, k)
        total, newest = -math.inf, -math.inf
        for image, (size, last_used) in caches[k].items():
            newest = last_used
            if rule != "lru":
                c = victim_cost(image, size, last_used, launch.t)
                summed = rule.startswith("within-day") or rule == "fitted"
                total = (max(total, 0) + c) if summed else max(total, c)
            need -= size
            if need <= 0:
                break
        return (total, newest, k)

    pulled = 0
    for i, launch in enumerate(launches):
        image = launch.image
        counts[image] += 1
        next_launch[image] = following[i]
        k = where.get(image)
        if k is not None:
            caches[k][image] = (launch.size, launch.t)
            caches[k].move_to_end(image)
            continue
        k = min(range(model.nodes), key=lambda k: cost(k, launch))
        cache = caches[k]
        while held[k] + launch.size > capacity and cache:
            old, (size, _) = cache.popitem(last=False)
            held[k] -= size
            del where[old]
        cache[image] = (launch.size, launch.t)
        held[k] += launch.size
        where[image] = k
        pulled += launch.size
    return pulled


def _route_timed(launches, model, rule, fit_horizon):
    started = time.perf_counter()
    gb = round(route(launches, model, rule, fit_horizon) / GB, 1)
    return gb, round(time.perf_counter() - started, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", action="append", required=True, help="launch trace; repeatable")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rule", action="append", choices=RULES, help="only these (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="replays at once, in processes")
    parser.add_argument(
        "--fit-horizon-hours",
        type=float,
        default=24.0,
        help="fitted: the probability of a relaunch within this many hours (default 24)",
    )
    add_model_options(parser)
    args = parser.parse_args(argv)
    model = model_from(parser, args)
    rules = args.rule or RULES
    horizon = args.fit_horizon_hours * 3600
    traces = [(Path(path).name, load_trace(path, model)) for path in args.trace]
    pairs = [(i, rule) for i in range(len(traces)) for rule in rules]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(_route_timed, traces[i][1], model, r, horizon) for i, r in pairs]
            rows = [f.result() for f in futures]
    else:
        rows = [_route_timed(traces[i][1], model, r, horizon) for i, r in pairs]
    weeks = []
    for i, (name, launches) in enumerate(traces):
        bounds = lower_bound(launches, model)
        week = {
            "trace": name,
            "launches": len(launches),
            "lower_bound_gb": bounds["lower_bound_gb"],
            "one_lru_cache_gb": bounds["one_lru_cache_gb"],
            "rules": {},
        }
        for (j, rule), (gb, wall) in zip(pairs, rows, strict=True):
            if j == i:
                week["rules"][rule] = {"gb_pulled": gb, "wall_s": wall}
        base = week["rules"].get("lru", {}).get("gb_pulled")
        for row in week["rules"].values():
            row["gb_above_lower_bound"] = round(row["gb_pulled"] - week["lower_bound_gb"], 1)
            if base:
                row["vs_lru"] = round(row["gb_pulled"] / base - 1, 4)
        weeks.append(week)
    if args.json:
        out = {"weeks": weeks, "model": model.describe(), "fit_horizon_hours": horizon / 3600}
        print(json.dumps(out, indent=1))
        return 0
    for week in weeks:
        print(
            f"{week['trace']}: {week['launches']} launches, lower bound "
            f"{week['lower_bound_gb']} GB, one LRU cache of all nodes "
            f"{week['one_lru_cache_gb']} GB, {model.nodes} LRU caches of {model.cache_gb} GB"
        )
        print(f"{'rule':<24}{'GB pulled':>12}{'above bound':>13}{'vs lru':>9}{'wall s':>8}")
        for rule, row in week["rules"].items():
            vs = f"{row['vs_lru']:+.1%}" if "vs_lru" in row else ""
            print(
                f"{rule:<24}{row['gb_pulled']:>12}{row['gb_above_lower_bound']:>13}"
                f"{vs:>9}{row['wall_s']:>8}"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
