"""benchmarks/placement.py on tiny synthetic traces, so the benchmark cannot rot."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "placement.py"
KEYS = {"hit_rate", "pulls", "gb_pulled", "ttr_mean_s", "ttr_p90_s", "ttr_p99_s", "refused"}


def write_trace(path, launches):
    with gzip.open(path, "wt") as f:
        for t, spec in launches:
            f.write(json.dumps({"t": t, "provider": "GitHub", "spec": spec}) + "\n")
    return path


def run(*args):
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def test_repeated_launches_pull_each_image_once_with_binder(tmp_path):
    # 60 repositories launched in turn, 12 a minute, on 10 nodes: every image
    # fits every cache and nobody runs out of room, but about 120 sessions
    # run at once, so the baselines' spreading and packing move launches away
    # from the nodes that hold their image.
    specs = [f"org/repo{i}/main" for i in range(60)]
    launches = [(1_500_000_000 + 5 * i // 60 * 60, specs[7 * i % 60]) for i in range(600)]
    trace = write_trace(tmp_path / "trace.jsonl.gz", launches)
    report = json.loads(run("--trace", trace, "--json", "--nodes", 10))
    strategies = report["strategies"]
    assert set(strategies) == {"kube-default", "z2jh-user-scheduler", "binder"}
    for row in strategies.values():
        assert KEYS <= set(row)
        assert row["launches"] == 600 and row["refused"] == 0
        assert 0 <= row["hit_rate"] <= 1
        assert row["pulls"] >= 60
        assert row["ttr_p90_s"] >= report["model"]["container_start_s"]
    ours = strategies["binder"]
    # Each image is pulled once: later launches go where it already is.
    assert ours["pulls"] == 60
    assert ours["hit_rate"] == round(540 / 600, 4)
    for baseline in ("kube-default", "z2jh-user-scheduler"):
        assert ours["gb_pulled"] < strategies[baseline]["gb_pulled"]
        assert ours["ttr_p90_s"] <= strategies[baseline]["ttr_p90_s"]
    assert report["model"]["nodes"] == 10
    assert "session_length" in report["model"]


def test_full_cluster_refuses_and_limit_and_table(tmp_path):
    # 100 launches in one minute on one 64 GiB node: 64 fit, 36 are refused.
    launches = [(1_500_000_000, f"org/repo{i % 3}/main") for i in range(100)]
    launches.append((1_500_000_000 + 60, "org/late/main"))
    trace = write_trace(tmp_path / "busy.jsonl", [])
    trace.write_text("".join(json.dumps({"t": t, "spec": s}) + "\n" for t, s in launches))
    report = json.loads(run("--trace", trace, "--json", "--nodes", 1, "--limit", 100))
    for row in report["strategies"].values():
        assert row["launches"] == 100
        assert row["refused"] == 36
        assert row["pulls"] == 3
    table = run("--trace", trace, "--nodes", 1, "--strategy", "binder")
    assert "binder" in table and "kube-default" not in table
    assert "hit_rate" in table


def test_several_traces_report_each_week_and_the_worst_margin(tmp_path):
    first = write_trace(
        tmp_path / "a.jsonl.gz",
        [(1_500_000_000 + 5 * i // 60 * 60, f"org/repo{7 * i % 30}/main") for i in range(300)],
    )
    second = write_trace(
        tmp_path / "b.jsonl.gz",
        [(1_600_000_000 + 5 * i // 60 * 60, f"org/other{3 * i % 20}/main") for i in range(200)],
    )
    report = json.loads(run("--trace", first, "--trace", second, "--json", "--nodes", 5))
    assert "strategies" not in report
    weeks = report["weeks"]
    assert [w["trace"] for w in weeks] == ["a.jsonl.gz", "b.jsonl.gz"]
    assert [w["images"] for w in weeks] == [30, 20]
    for week in weeks:
        bound = week["lower_bound_gb"]
        assert week["one_lru_cache_gb"] >= bound
        for row in week["strategies"].values():
            assert row["gb_pulled"] >= bound
            assert row["gb_above_lower_bound"] == round(row["gb_pulled"] - bound, 1)
            # every pull is a first pull, a re-pull after eviction or an extra copy
            assert row["gb_repulled"] + row["gb_extra_copies"] <= row["gb_above_lower_bound"] + 0.2
        margin = week["margin"]
        best = week["strategies"][margin["better_baseline"]]["gb_pulled"]
        assert margin["fewer_gb"] == round(1 - week["strategies"]["binder"]["gb_pulled"] / best, 4)
    assert report["worst_margin"]["fewer_gb"] == min(w["margin"]["fewer_gb"] for w in weeks)
    # One trace keeps the one-week shape.
    single = json.loads(run("--trace", first, "--json", "--nodes", 5))
    assert set(single["strategies"]) == {"kube-default", "z2jh-user-scheduler", "binder"}
    assert single["lower_bound_gb"] == weeks[0]["lower_bound_gb"]
    text = run("--trace", first, "--trace", second, "--nodes", 5)
    assert "worst-case margin" in text and "b.jsonl.gz" in text


def test_answer_benchmark_runs_on_a_small_cluster():
    script = BENCHMARK.parent / "placement_answer.py"
    result = subprocess.run(
        [sys.executable, str(script), "--pods", "300", "--nodes", "5", "--images", "80"]
        + ["--answers", "20", "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["setup"] == {"pods": 300, "nodes": 5, "images": 80}
    measures = {row["measure"]: row for row in report["results"]}
    assert len(measures) == 6
    assert measures["answer: image new"]["samples"] == 20
    assert all(row["ms"] > 0 for row in report["results"])


def test_one_cache_references():
    sys.path.insert(0, str(BENCHMARK.parent.parent))
    from benchmarks.placement import GB, Launch, Model, lower_bound

    def launches(names):
        return [
            Launch(t=60.0 * i, repo=n, image=n, size=2 * GB, duration=1)
            for i, n in enumerate(names)
        ]

    # One node of 5 GB holds two of the three 2 GB images.
    model = Model(nodes=1, cache_gb=5.0)
    # A cycle: LRU always evicts the image launched next; Belady keeps two of
    # them and pulls only the third again.
    cycle = lower_bound(launches("abcabcabc"), model)
    assert cycle["lower_bound_gb"] == 6.0
    assert cycle["one_lru_cache_gb"] == 18.0
    assert cycle["one_offline_cache_gb"] == 10.0
    # "a" launched six times, then "b" and "c" once each, then "a" again:
    # LRU evicts "a" for "c"; counting launches keeps it (six launches an
    # hour ago outweigh one launch a minute ago).
    demand = lower_bound(launches("aaaaaabca"), model)
    assert demand["one_lru_cache_gb"] == 8.0
    assert demand["one_demand_cache_gb"] == 6.0
    assert demand["one_offline_cache_gb"] == 6.0


def test_routing_references():
    sys.path.insert(0, str(BENCHMARK.parent))
    from placement_routing import GB, RULES, Launch, Model, fit_return_probability, route

    def launches(names):
        return [
            Launch(t=60.0 * i, repo=n, image=n, size=2 * GB, duration=1)
            for i, n in enumerate(names)
        ]

    # Two nodes of 4 GB, two 2 GB images each: a and b fill node 0, c and d
    # node 1. e evicts a (the oldest) under LRU, so a is pulled again; knowing
    # the future, e evicts c, which never comes back, and a is a hit.
    model = Model(nodes=2, cache_gb=4.0)
    trace = launches("abcdea")
    pulled = {rule: route(trace, model, rule) / GB for rule in RULES}
    assert pulled["lru"] == 12.0
    assert pulled["next-launch"] == 10.0
    assert pulled["within-day"] == 10.0
    assert pulled["demand"] == 12.0  # one launch each: no better than LRU
    assert all(10.0 <= gb <= 12.0 for gb in pulled.values())
    # An image cached anywhere is a hit: pulls never exceed one per launch,
    # and every distinct image is pulled at least once.
    assert route(launches("abab"), model, "lru") / GB == 4.0

    # a launched twice an hour apart, then never again; z much later, so that
    # the trace runs on for more than a day after a's launches.
    fitted = fit_return_probability(
        [Launch(t=t, repo="a", image="a", size=GB, duration=1) for t in (0.0, 3600.0)]
        + [Launch(t=200_000.0, repo="z", image="z", size=GB, duration=1)]
    )
    assert fitted[0, 0] == 1.0  # after one launch: back within a day
    assert fitted[0, 1] == 1.0  # ... also once idle for 30 min
    assert (0, 2) not in fitted  # never idle for an hour after one launch
    # after two launches: not back, at every idle time the trace can tell
    # (up to 24 h: it ends 55 h after a, less than 36 h + one day)
    assert {key: p for key, p in fitted.items() if key[0] == 1} == {(1, i): 0.0 for i in range(8)}
    assert len(fitted) == 10  # nothing for z: the trace ends with it


def test_routing_benchmark_reports_every_rule(tmp_path):
    specs = [f"org/repo{i}/main" for i in range(30)]
    launches = [(1_500_000_000 + 60 * i, specs[(i * i) % 30]) for i in range(300)]
    trace = write_trace(tmp_path / "trace.jsonl.gz", launches)
    script = BENCHMARK.parent / "placement_routing.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--trace",
            str(trace),
            "--json",
            *("--set", "nodes=3", "--set", "cache_gb=5"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout)
    assert (report["model"]["nodes"], report["model"]["cache_gb"]) == (3, 5.0)
    (week,) = report["weeks"]
    assert week["launches"] == 300
    rows = week["rules"]
    assert set(rows) == {
        "lru",
        "demand",
        "fitted",
        "next-launch",
        "within-day",
        "within-day-5%-wrong",
        "within-day-10%-wrong",
    }
    assert rows["lru"]["vs_lru"] == 0.0
    for row in rows.values():
        assert row["gb_pulled"] >= week["lower_bound_gb"]
        assert row["gb_above_lower_bound"] == round(row["gb_pulled"] - week["lower_bound_gb"], 1)
    # knowing the next launch never does worse than LRU here, where caches are tight
    assert rows["next-launch"]["gb_pulled"] < rows["lru"]["gb_pulled"]
