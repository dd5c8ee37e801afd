"""The emulated kubelet, image catalog, scheduler loop and repo2docker stand-in.

Everything runs in process against the cluster's store (the API server's own
behaviour is tested in test_k8s_api.py); pods run real local processes.
"""

import asyncio
import base64
import json
import os
import time

import aiohttp
import pytest

from .k8s.catalog import GENERIC, REPO2DOCKER, SINGLEUSER, Catalog
from .k8s.clusterdns import service_records
from .k8s.kubelet import NODE_STATUS_MAX_IMAGES, PodNetwork
from .k8s.oci import parse_image
from .k8s.runtime import ConfigError, container_env
from .utils import poll

MB = 1024 * 1024
FAST = {"time_scale": 0.01}
IMAGE = "registry.example.org/tool:1"


def pod_manifest(name, image=IMAGE, command=None, **spec):
    container = {"name": "main", "image": image}
    if command is not None:
        container["command"] = command
    container.update(spec.pop("container", {}))
    return {
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"containers": [container], **spec},
    }


def python(code):
    """A container command running ``code`` with the test environment's Python."""
    import sys

    return [sys.executable, "-c", code]


async def phase(store, name, *phases, timeout=30):
    def current():
        if not store.exists("pods", "default", name):
            return None
        pod = store.get("pods", "default", name)
        return pod if pod["status"].get("phase") in phases else None

    return await poll(current, timeout=timeout, message=f"pod {name} in {phases}")


def reasons(store, name):
    events, _ = store.list("events", field_selector=f"involvedObject.name={name}")
    return [e["reason"] for e in events]


def messages(store, name):
    events, _ = store.list("events", field_selector=f"involvedObject.name={name}")
    return [e["message"] for e in events]


@pytest.fixture
async def cluster(k8s_cluster_factory):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=FAST)
    cluster.catalog.add(IMAGE, GENERIC, size=40 * MB)
    return cluster


# ---------------------------------------------------------------- pure parts


def test_image_references():
    assert str(parse_image("python")) == "docker.io/library/python:latest"
    ref = parse_image("127.0.0.1:5000/binder-x:abc")
    assert (ref.host, ref.name, ref.tag) == ("127.0.0.1:5000", "binder-x", "abc")
    digest = "sha256:" + "a" * 64
    assert parse_image(f"quay.io/org/img@{digest}").reference == digest
    with pytest.raises(ValueError):
        parse_image("Bad/Name")


def test_catalog_matching_and_launch():
    catalog = Catalog()
    assert catalog.lookup("quay.io/jupyterhub/singleuser:5.2.1").kind == SINGLEUSER
    assert catalog.lookup("quay.io/jupyterhub/repo2docker:2024.07.0").kind == REPO2DOCKER
    assert catalog.lookup("unknown.example/x:1") is None
    catalog.add("127.0.0.1:*/binder-*", SINGLEUSER, in_registry=True)
    entry = catalog.lookup("127.0.0.1:5000/binder-org-repo:abc")
    assert entry.kind == SINGLEUSER and entry.in_registry and entry.user == 1000
    launch = catalog.launch(entry, {"args": ["jupyterhub-singleuser", "--debug"]}, "127.9.0.5")
    assert launch.argv[0].endswith("/jupyterhub-singleuser")
    assert launch.argv[1:] == ["--debug", "--ip=127.9.0.5"]
    r2d = catalog.launch(
        catalog.lookup("quay.io/jupyterhub/repo2docker:1"),
        {"args": ["jupyter-repo2docker", "--no-run", "https://example.org/r"]},
        "127.9.0.6",
    )
    assert r2d.argv[1].endswith("fake_repo2docker.py") and r2d.argv[2:] == [
        "--no-run",
        "https://example.org/r",
    ]


def test_pod_network_unique_addresses():
    network = PodNetwork("127.77.0.0/16")
    ips = {network.allocate() for _ in range(600)}
    assert len(ips) == 600 and all(not ip.endswith((".0", ".255")) for ip in ips)
    network.release("127.77.0.1")
    assert network.allocate() == "127.77.0.1"


def test_service_records_point_at_ready_pods():
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "1"}},
        "status": {"podIP": "127.8.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    service = {"metadata": {"name": "svc", "namespace": "ns"}, "spec": {"selector": {"a": "1"}}}
    assert service_records([service], [pod])["svc.ns.svc.cluster.local"] == "127.8.0.9"
    pod["status"]["conditions"][0]["status"] = "False"
    assert service_records([service], [pod]) == {}


# ---------------------------------------------------------------- lifecycle


async def test_pod_runs_with_env_status_events_and_logs(cluster):
    store = cluster.store
    store.create(
        "secrets", {"metadata": {"name": "s", "namespace": "default"}, "stringData": {"k": "v"}}
    )
    code = (
        "import os, pathlib; print('ip', os.environ['MY_IP']); print('secret', os.environ['S']);"
        "print('greeting', os.environ['GREETING']); print('cwd', os.getcwd());"
        "print('uid', os.getuid()); print('mounted', pathlib.Path(os.environ['KUBELET_EMULATOR_MOUNTS'] and "
        "__import__('json').loads(os.environ['KUBELET_EMULATOR_MOUNTS'])['/etc/s'] + '/k').read_text())"
    )
    env = [
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "NAME", "value": "world"},
        {"name": "GREETING", "value": "hello $(NAME)"},
    ]
    store.create(
        "pods",
        pod_manifest(
            "envy",
            command=python(code),
            restartPolicy="Never",
            securityContext={"runAsUser": 1234, "runAsGroup": 1234},
            volumes=[{"name": "s", "secret": {"secretName": "s"}}],
            container={"env": env, "volumeMounts": [{"name": "s", "mountPath": "/etc/s"}]},
        ),
    )
    pod = await phase(store, "envy", "Succeeded")
    status = pod["status"]
    ip = status["podIP"]
    assert ip.startswith("127.") and status["hostIP"] != ip
    state = status["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    lines = [line for _, line in store.read_log("default", "envy")]
    assert f"ip {ip}" in lines
    assert "secret v" in lines and "greeting hello world" in lines and "mounted v" in lines
    if os.geteuid() == 0:
        assert "uid 1234" in lines
    assert reasons(store, "envy") == ["Scheduled", "Pulling", "Pulled", "Created", "Started"]


async def test_exit_codes_and_restart_policy(cluster):
    store = cluster.store
    store.create("pods", pod_manifest("fails", command=python("exit(3)"), restartPolicy="Never"))
    pod = await phase(store, "fails", "Failed")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"

    store.create("pods", pod_manifest("crashes", command=python("exit(1)"), restartPolicy="Always"))

    def restarted():
        statuses = store.get("pods", "default", "crashes")["status"].get("containerStatuses")
        return statuses and statuses[0]["restartCount"] >= 2 and statuses[0]

    status = await poll(restarted, timeout=30)
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert store.get("pods", "default", "crashes")["status"]["phase"] == "Running"
    assert "BackOff" in reasons(store, "crashes")


async def test_graceful_delete_waits_for_the_grace_period(cluster):
    store = cluster.store
    # ignores SIGTERM: only SIGKILL after the grace period ends it
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    store.create("pods", pod_manifest("stubborn", command=python(code)))
    await phase(store, "stubborn", "Running")
    await poll(lambda: store.read_log("default", "stubborn"), message="the process to start")
    started = time.monotonic()
    store.delete("pods", "default", "stubborn", grace_period_seconds=1)
    assert store.get("pods", "default", "stubborn")["metadata"]["deletionTimestamp"]
    await poll(lambda: not store.exists("pods", "default", "stubborn"), timeout=20)
    assert time.monotonic() - started >= 0.9
    assert "Killing" in reasons(store, "stubborn")

    # a process that exits on SIGTERM goes at once, well before 30 s
    store.create("pods", pod_manifest("polite", command=python("import time; time.sleep(600)")))
    await phase(store, "polite", "Running")
    store.delete("pods", "default", "polite")
    await poll(lambda: not store.exists("pods", "default", "polite"), timeout=10)


async def test_logs_follow_until_exit(cluster):
    store = cluster.store
    code = "import time\nfor i in range(3):\n    print('line', i, flush=True); time.sleep(0.2)"
    store.create("pods", pod_manifest("talker", command=python(code), restartPolicy="Never"))
    await poll(lambda: store.exists("pods", "default", "talker") and _log_open(store, "talker"))
    seen = [line async for _, line in store.follow_log("default", "talker")]
    assert seen == ["line 0", "line 1", "line 2"]


def _log_open(store, name):
    try:
        store.read_log("default", name)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- images


async def test_pull_time_cache_and_node_images(k8s_cluster_factory):
    # 100 MiB at 100 MiB/s with time scale 0.5: a 0.5 s pull, then cached
    cluster = await k8s_cluster_factory(
        nodes=1, node_defaults={"bandwidth": 100 * MB, "time_scale": 0.5}
    )
    cluster.catalog.add("big.example.org/img:1", GENERIC, size=100 * MB)
    small = {f"small.example.org/img{i}:1": (i + 1) * MB for i in range(60)}
    cluster.add_node("node-2", images=small, **FAST)
    node2 = cluster.store.get("nodes", None, "node-2")
    listed = node2["status"]["images"]
    assert len(listed) == NODE_STATUS_MAX_IMAGES
    sizes = [image["sizeBytes"] for image in listed]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 60 * MB

    store = cluster.store
    pinned = {"nodeSelector": {"kubernetes.io/hostname": "node-1"}}
    started = time.monotonic()
    store.create("pods", pod_manifest("first", image="big.example.org/img:1", **pinned))
    await phase(store, "first", "Running")
    assert time.monotonic() - started >= 0.5
    assert any("Image size: 104857600 bytes" in m for m in messages(store, "first"))
    node = store.get("nodes", None, "node-1")
    assert any("big.example.org/img:1" in i["names"] for i in node["status"]["images"])

    store.create("pods", pod_manifest("second", image="big.example.org/img:1", **pinned))
    await phase(store, "second", "Running")
    assert 'Container image "big.example.org/img:1" already present on machine' in messages(
        store, "second"
    )
    assert "Pulling" not in reasons(store, "second")


async def test_missing_image_backs_off_until_pushed(k8s_cluster_factory, registry):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=FAST, registry_url=registry.url)
    image = f"{registry.host}/binder-demo:abc123"
    store = cluster.store
    store.create("pods", pod_manifest("later", image=image))

    def waiting_reason():
        status = store.get("pods", "default", "later")["status"].get("containerStatuses")
        waiting = status and status[0]["state"].get("waiting")
        return waiting and waiting["reason"]

    # ErrImagePull, then ImagePullBackOff, retried with back-off (the events stay)
    await poll(lambda: "Error: ImagePullBackOff" in messages(store, "later"), timeout=20)
    assert "Error: ErrImagePull" in messages(store, "later")
    assert waiting_reason() in ("ErrImagePull", "ImagePullBackOff")
    assert any("not found" in m for m in messages(store, "later"))
    assert store.get("pods", "default", "later")["status"]["phase"] == "Pending"

    digest = await asyncio.to_thread(registry.push_image, "binder-demo", "abc123")
    pod = await phase(store, "later", "Running", timeout=30)
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(digest)

    store.create(
        "pods",
        pod_manifest(
            "never", image=f"{registry.host}/other:1", container={"imagePullPolicy": "Never"}
        ),
    )
    await poll(lambda: "ErrImageNeverPull" in reasons(store, "never"), timeout=20)


# ---------------------------------------------------------------- scheduling


async def test_unschedulable_pod_waits_for_a_node(k8s_cluster_factory):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults={**FAST, "cpu": "1"})
    cluster.catalog.add(IMAGE, GENERIC, size=MB)
    store = cluster.store
    big = pod_manifest(
        "big",
        command=python("import time; time.sleep(600)"),
        container={"resources": {"requests": {"cpu": "2"}}},
    )
    store.create("pods", big)

    def failed_scheduling():
        return "FailedScheduling" in reasons(store, "big")

    await poll(failed_scheduling, timeout=10)
    pod = store.get("pods", "default", "big")
    condition = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert condition["status"] == "False" and condition["reason"] == "Unschedulable"
    assert "0/1 nodes are available: 1 Insufficient cpu." in messages(store, "big")

    cluster.add_node("node-2", cpu="4", **FAST)
    pod = await phase(store, "big", "Running")
    assert pod["spec"]["nodeName"] == "node-2"


# ---------------------------------------------------------------- repo2docker


R2D_IMAGE = "quay.io/jupyterhub/repo2docker:2024.07.0"


def build_pod(name, repo, image, ref="main"):
    args = [
        "jupyter-repo2docker",
        "--ref",
        ref,
        "--image",
        image,
        "--no-clean",
        "--no-run",
        "--json-logs",
        "--user-name",
        "jovyan",
        "--user-id",
        "1000",
        "--push",
        repo,
    ]
    return pod_manifest(name, image=R2D_IMAGE, restartPolicy="Never", container={"args": args})


async def test_repo2docker_stand_in_builds_and_pushes(k8s_cluster_factory, registry, git_server):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=FAST, registry_url=registry.url)
    store = cluster.store
    good = git_server.create_repo("good", {"requirements.txt": "numpy\n"})
    bad = git_server.create_repo("bad", {"FAIL_BUILD": "postBuild: command not found\n"})
    image = f"{registry.host}/binder-good:1"
    store.create("pods", build_pod("build-good", good, image))
    store.create("pods", build_pod("build-bad", bad, f"{registry.host}/binder-bad:1"))

    await phase(store, "build-good", "Succeeded", timeout=60)
    logs = [json.loads(line) for _, line in store.read_log("default", "build-good")]
    phases = {entry["phase"] for entry in logs}
    assert {"fetching", "building", "pushing"} <= phases
    assert any("Using PythonBuildPack builder" in e["message"] for e in logs)
    assert (
        await asyncio.to_thread(lambda: registry.request("GET", "/v2/binder-good/tags/list")[0])
        == 200
    )

    pod = await phase(store, "build-bad", "Failed", timeout=60)
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    last = json.loads(store.read_log("default", "build-bad")[-1][1])
    assert last["phase"] == "failed"
    assert any(
        "postBuild: command not found" in line for _, line in store.read_log("default", "build-bad")
    )

    # the pushed image now runs, as a single-user image would for a Binder launch
    cluster.catalog.add(f"{registry.host}/binder-*", GENERIC, in_registry=True)
    store.create("pods", pod_manifest("launch", image=image, command=None))
    await phase(store, "launch", "Running", timeout=30)


@pytest.mark.parametrize("fixture", ["registry_auth", "registry_token"])
async def test_docker_config_credentials_for_push(
    k8s_cluster_factory, git_server, request, fixture
):
    # basic auth, and the bearer-token challenge answered with the same credentials
    registry_auth = request.getfixturevalue(fixture)
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=FAST, registry_url=registry_auth.url)
    store = cluster.store
    config = json.dumps(registry_auth.docker_config())
    store.create(
        "secrets",
        {
            "metadata": {"name": "docker-config", "namespace": "default"},
            "data": {"config.json": base64.b64encode(config.encode()).decode()},
        },
    )
    repo = git_server.create_repo("auth", {"README.md": "hi\n"})
    pod = build_pod("build-auth", repo, f"{registry_auth.host}/binder-auth:1")
    pod["spec"]["volumes"] = [{"name": "docker", "secret": {"secretName": "docker-config"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "docker", "mountPath": "/root/.docker"}
    ]
    store.create("pods", pod)
    await phase(store, "build-auth", "Succeeded", timeout=60)
    status, _, _ = await asyncio.to_thread(
        registry_auth.request,
        "HEAD",
        "/v2/binder-auth/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        scope="repository:binder-auth:pull",
    )
    assert status == 200


async def test_slow_build_streams_logs_and_stops_on_delete(
    k8s_cluster_factory, registry, git_server
):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=FAST, registry_url=registry.url)
    store = cluster.store
    repo = git_server.create_repo("slow", {"SLOW_BUILD": "60\n"})
    store.create("pods", build_pod("build-slow", repo, f"{registry.host}/binder-slow:1"))
    await phase(store, "build-slow", "Running")
    # pods/log with follow=true through the API server, as a build watcher reads it
    url = f"{cluster.url}/api/v1/namespaces/default/pods/build-slow/log?follow=true"
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    seen = []
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as response:
            assert response.status == 200
            async for raw in response.content:
                seen.append(json.loads(raw))
                if seen[-1]["message"] == "Still building...\n":
                    break
    assert seen[0] == {"message": "Picked Git content provider.\n", "phase": "fetching"}
    started = time.monotonic()
    store.delete("pods", "default", "build-slow", grace_period_seconds=5)
    await poll(lambda: not store.exists("pods", "default", "build-slow"), timeout=10)
    assert time.monotonic() - started < 5  # it exits on SIGTERM, not after the grace period
    assert not await asyncio.to_thread(
        lambda: registry.request("GET", "/v2/binder-slow/tags/list")[0] == 200
    )


def test_container_env_like_the_kubelet():
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
        "spec": {"nodeName": "node-1"},
        "status": {"podIP": "127.9.0.2"},
    }
    objects = {
        ("configmaps", "cm"): {"data": {"A": "1", "B": "2"}},
        ("secrets", "s"): {"data": {"token": base64.b64encode(b"t0k").decode()}},
    }
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "X", "value": "$(CM_A)-$(UNKNOWN)-$$(CM_B)"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"limits": {"memory": "2Gi"}},
    }
    env = container_env(
        pod, container, lambda kind, name: objects.get((kind, name)), {"HOME": "/h"}
    )
    assert env == {
        "HOME": "/h",
        "CM_A": "1",
        "CM_B": "2",
        "X": "1-$(UNKNOWN)-$(CM_B)",
        "NODE": "node-1",
        "APP": "x",
        "T": "t0k",
        "MEM": "2048",
    }
    container["env"].append(
        {"name": "M", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}
    )
    with pytest.raises(ConfigError, match='secret "gone" not found'):
        container_env(pod, container, lambda kind, name: objects.get((kind, name)))


async def test_init_containers_run_first_and_share_volumes(cluster):
    store = cluster.store
    folder = "json.loads(os.environ['KUBELET_EMULATOR_MOUNTS'])['/work']"
    write = f"import json, os; open({folder} + '/x', 'w').write('from init')"
    read = f"import json, os; print(open({folder} + '/x').read())"
    mount = [{"name": "work", "mountPath": "/work"}]
    manifest = pod_manifest(
        "init",
        command=python(read),
        restartPolicy="Never",
        volumes=[{"name": "work", "emptyDir": {}}],
        container={"volumeMounts": mount},
    )
    manifest["spec"]["initContainers"] = [
        {"name": "prepare", "image": IMAGE, "command": python(write), "volumeMounts": mount}
    ]
    store.create("pods", manifest)
    pod = await phase(store, "init", "Succeeded")
    init_status = pod["status"]["initContainerStatuses"][0]
    assert init_status["state"]["terminated"]["exitCode"] == 0
    initialized = next(c for c in pod["status"]["conditions"] if c["type"] == "Initialized")
    assert initialized["status"] == "True"
    assert [line for _, line in store.read_log("default", "init", "main")] == ["from init"]


async def test_readiness_probe_gates_ready(cluster):
    store = cluster.store
    # the server binds its port only after a marker file appears
    code = (
        "import os, socket, time\n"
        "while not os.path.exists('go'): time.sleep(0.05)\n"
        "s = socket.socket(); s.bind((os.environ['IP'], 8080)); s.listen(); time.sleep(600)"
    )
    probe = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    env = [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    store.create(
        "pods",
        pod_manifest(
            "probed", command=python(code), container={"readinessProbe": probe, "env": env}
        ),
    )
    pod = await phase(store, "probed", "Running")
    assert not pod["status"]["containerStatuses"][0]["ready"]
    uid = pod["metadata"]["uid"]
    worker = cluster.kubelets["node-1"].workers[uid]
    (worker.dir / "home" / "go").touch()

    def ready():
        pod = store.get("pods", "default", "probed")
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        return conditions["Ready"] == "True" and pod["status"]["containerStatuses"][0]["ready"]

    await poll(ready, timeout=20, message="the probe to pass")


async def test_scheduler_names_and_profiles(k8s_cluster_factory):
    # a z2jh-style user scheduler under its own name; other names stay pending
    cluster = await k8s_cluster_factory(
        nodes=2,
        node_defaults=FAST,
        scheduler_config={
            "default-scheduler": "kube-default",
            "user-scheduler": "z2jh-user-scheduler",
        },
    )
    cluster.catalog.add(IMAGE, GENERIC, size=MB)
    store = cluster.store
    sleeper = python("import time; time.sleep(600)")
    store.create("pods", pod_manifest("packed-1", command=sleeper, schedulerName="user-scheduler"))
    first = (await phase(store, "packed-1", "Running"))["spec"]["nodeName"]
    store.create("pods", pod_manifest("packed-2", command=sleeper, schedulerName="user-scheduler"))
    # MostAllocated packs the second pod next to the first
    assert (await phase(store, "packed-2", "Running"))["spec"]["nodeName"] == first
    events, _ = store.list("events", field_selector="involvedObject.name=packed-2")
    assert events[0]["source"]["component"] == "user-scheduler"

    store.create("pods", pod_manifest("orphan", command=sleeper, schedulerName="nobody"))
    store.create("pods", pod_manifest("marker", command=sleeper))
    await phase(store, "marker", "Running")  # the loop has run since "orphan" was created
    orphan = store.get("pods", "default", "orphan")
    assert not orphan["spec"].get("nodeName") and reasons(store, "orphan") == []


async def test_unschedulable_pod_retried_when_a_pod_goes(k8s_cluster_factory):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults={**FAST, "cpu": "1"})
    cluster.catalog.add(IMAGE, GENERIC, size=MB)
    store = cluster.store
    sleeper = python("import time; time.sleep(600)")
    requests = {"resources": {"requests": {"cpu": "800m"}}}
    store.create("pods", pod_manifest("a", command=sleeper, container=requests))
    await phase(store, "a", "Running")
    store.create("pods", pod_manifest("b", command=sleeper, container=requests))
    await poll(lambda: "FailedScheduling" in reasons(store, "b"), timeout=10)
    store.delete("pods", "default", "a")
    pod = await phase(store, "b", "Running")
    assert pod["spec"]["nodeName"] == "node-1"
    assert reasons(store, "b").count("FailedScheduling") == 1


async def test_image_garbage_collection_keeps_images_in_use(k8s_cluster_factory):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults={**FAST, "image_cache": 250 * MB})
    for name in "abc":
        cluster.catalog.add(f"img.example.org/{name}:1", GENERIC, size=100 * MB)
    store = cluster.store
    sleeper = python("import time; time.sleep(600)")
    store.create("pods", pod_manifest("a", image="img.example.org/a:1", command=sleeper))
    await phase(store, "a", "Running")
    for name in "bc":
        store.create(
            "pods",
            pod_manifest(
                name, image=f"img.example.org/{name}:1", command=sleeper, restartPolicy="Never"
            ),
        )
        await phase(store, name, "Running")
        store.delete("pods", "default", name, grace_period_seconds=0)
        await poll(lambda n=name: not store.exists("pods", "default", n))

    def names():
        node = store.get("nodes", None, "node-1")
        return {n for image in node["status"]["images"] for n in image["names"]}

    # "b" was least recently used and no pod uses it: evicted for "c"; "a" is in use
    assert "img.example.org/a:1" in names() and "img.example.org/c:1" in names()
    assert "img.example.org/b:1" not in names()


async def test_pull_with_image_pull_secrets(k8s_cluster_factory, registry_auth):
    cluster = await k8s_cluster_factory(nodes=1, node_defaults=FAST, registry_url=registry_auth.url)
    store = cluster.store
    await asyncio.to_thread(registry_auth.push_image, "private", "1")
    image = f"{registry_auth.host}/private:1"
    store.create("pods", pod_manifest("anonymous", image=image))
    await poll(lambda: "Error: ErrImagePull" in messages(store, "anonymous"), timeout=20)

    config = json.dumps(registry_auth.docker_config()).encode()
    store.create(
        "secrets",
        {
            "metadata": {"name": "pull", "namespace": "default"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config).decode()},
        },
    )
    store.create(
        "pods", pod_manifest("authorized", image=image, imagePullSecrets=[{"name": "pull"}])
    )
    await phase(store, "authorized", "Running")
