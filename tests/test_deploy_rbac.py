"""The Kubernetes permissions of a chart deployment: sufficient, and each one needed.

The emulated API server enforces RBAC. The spawner (in the hub) and
binder_service both authenticate as the chart's hub service account ``hub``
(a kubeconfig with its bearer token), which holds exactly:

- the chart's own hub Role, as zero-to-jupyterhub 4.4.0 defines it
  (``jupyter/templates/hub/rbac.yaml``: core ``pods``, ``persistentvolumeclaims``,
  ``secrets``, ``services``: get, watch, list, create, delete; ``events``: get,
  watch, list), bound to ``hub``;
- every object of ``chart-values/rbac.yaml``, its namespace rewritten to the
  test's namespace.

A launch with a build and a cull succeed with them. Then each rule the code
uses is taken away in turn (the Role is edited in the store; RBAC is checked
per request, so the running hub sees it at once) and the smallest operation
that needs it fails; the rule is put back afterwards. docs/permissions.md
lists which granted rules are unused.
"""

import asyncio
import contextlib
import copy
import json
import os
import sys
import textwrap

import aiohttp
import pytest
import pytest_asyncio
import yaml

from binder_spawner import build

from .clockseam import clock_env
from .gitserver import GitServer
from .hub import start_hub
from .k8s.catalog import SINGLEUSER
from .k8s.cluster import Cluster
from .k8s.fixtures import reset_kubespawner_config
from .registry import Registry
from .utils import REPO_ROOT, free_port, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAMESPACE = "default"
FILES = {"requirements.txt": "numpy\n"}

# zero-to-jupyterhub 4.4.0, jupyterhub/templates/hub/rbac.yaml (Role of the hub)
CHART_HUB_ROLE_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
        "verbs": ["get", "watch", "list", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
]


def chart_rbac_objects(namespace):
    """The chart's hub Role and RoleBinding, and chart-values/rbac.yaml in ``namespace``."""
    objects = [
        ("roles", {"metadata": {"name": "hub"}, "rules": copy.deepcopy(CHART_HUB_ROLE_RULES)}),
        (
            "rolebindings",
            {
                "metadata": {"name": "hub"},
                "subjects": [{"kind": "ServiceAccount", "name": "hub", "namespace": namespace}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hub"},
            },
        ),
    ]
    text = (REPO_ROOT / "chart-values" / "rbac.yaml").read_text()
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            if "namespace" in subject:
                subject["namespace"] = namespace
        objects.append((doc["kind"].lower() + "s", doc))
    return objects


def without(rules, resource, verb):
    """``rules`` with ``verb`` on ``resource`` taken away, everything else kept."""
    result = []
    for rule in rules:
        if resource in rule["resources"] and verb in rule["verbs"]:
            others = [r for r in rule["resources"] if r != resource]
            if others:
                result.append(dict(rule, resources=others))
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:
                result.append(dict(rule, resources=[resource], verbs=verbs))
        else:
            result.append(rule)
    return result


async def test_without_takes_away_one_verb_of_one_resource():
    rules = without(CHART_HUB_ROLE_RULES, "pods", "delete")
    assert rules[0]["resources"] == ["persistentvolumeclaims", "secrets", "services"]
    assert rules[0]["verbs"] == CHART_HUB_ROLE_RULES[0]["verbs"]
    assert rules[1] == {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "watch", "list", "create"],
    }
    assert rules[2] == CHART_HUB_ROLE_RULES[1]
    assert (
        without([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}], "nodes", "list")
        == []
    )


class Deployment:
    def __init__(self, cluster, registry, git, directory, service_port, offset_file):
        self.cluster = cluster
        self.registry = registry
        self.git = git
        self.directory = directory
        self.service_port = service_port
        self.offset_file = offset_file
        self.hub = None
        self.build_pods = {}  # name -> pod as created
        self.failed = False
        cluster.store.on_change(self._record)

    def _record(self, type_, resource, obj):
        labels = obj.get("metadata", {}).get("labels") or {}
        if resource == "pods" and labels.get(build.COMPONENT_LABEL) == build.BUILD_COMPONENT:
            if type_ == "ADDED":
                self.build_pods[obj["metadata"]["name"]] = copy.deepcopy(obj)

    def role_objects(self):
        """(resource, namespace, name) of every Role and ClusterRole the hub holds."""
        found = []
        for resource, obj in chart_rbac_objects(NAMESPACE):
            if resource in ("roles", "clusterroles"):
                namespace = NAMESPACE if resource == "roles" else None
                found.append((resource, namespace, obj["metadata"]["name"]))
        return found

    @contextlib.contextmanager
    def revoked(self, resource, verb):
        """Take ``verb`` on ``resource`` away from every role of the hub, then give it back."""
        store = self.cluster.store
        saved = []
        for kind, namespace, name in self.role_objects():
            role = store.get(kind, namespace, name)
            saved.append((kind, namespace, name, copy.deepcopy(role["rules"])))
            changed = copy.deepcopy(role)
            changed["rules"] = without(role["rules"], resource, verb)
            store.update(kind, namespace, name, changed)
        assert any(
            resource in r["resources"] and verb in r["verbs"] for *_, rules in saved for r in rules
        ), f"{verb} {resource} is not granted"
        try:
            yield
        finally:
            for kind, namespace, name, rules in saved:
                role = store.get(kind, namespace, name)
                role["rules"] = rules
                store.update(kind, namespace, name, role)

    async def user(self, name):
        """An anonymous user (the culler's rules apply to them)."""
        status, body = await self.hub.api("POST", f"/users/{name}")
        assert status in (201, 409), (status, body)
        status, body = await self.hub.api("POST", "/groups/binder-anonymous")
        assert status in (201, 409), (status, body)
        status, body = await self.hub.api(
            "POST", "/groups/binder-anonymous/users", json={"users": [name]}
        )
        assert status == 200, (status, body)

    async def launch(self, user, repo_url):
        """Start ``user``'s default server from ``repo_url``; its progress events."""
        await self.user(user)
        status, body = await self.hub.api(
            "POST", f"/users/{user}/server", json={"repo": repo_url, "ref": "main"}
        )
        assert status in (201, 202), (status, body)
        url = f"{self.hub.api_url}/users/{user}/server/progress"
        headers = {"Authorization": f"token {self.hub.token}"}
        events = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        event = json.loads(line[len("data:") :])
                        events.append(event)
                        if event.get("ready") or event.get("failed"):
                            break
        return events

    async def server(self, user):
        status, body = await self.hub.api("GET", f"/users/{user}")
        if status == 404:
            return None
        assert status == 200, body
        return body["servers"].get("")

    def user_pods(self, user):
        return [
            p
            for p in self.cluster.store.select("pods", NAMESPACE)
            if (p["metadata"].get("annotations") or {}).get("hub.jupyter.org/username") == user
        ]

    def builds_of(self, repo_name):
        return [pod for pod in self.build_pods.values() if repo_name in json.dumps(pod)]

    def build_pod_exists(self, name):
        return self.cluster.store.exists("pods", NAMESPACE, name)

    async def service(self, path):
        url = f"http://127.0.0.1:{self.service_port}/services/binder/{path}"
        headers = {"Authorization": f"token {self.hub.token}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=headers) as resp:
                text = await resp.text()
                return resp.status, (json.loads(text) if text else None)


def hub_config(registry, git, service_port, kubeconfig, offset_file):
    values = yaml.safe_load((REPO_ROOT / "chart-values" / "01-binder.yaml").read_text())
    chart_command = values["hub"]["services"]["binder"]["command"]
    # the chart's flags, on a free port of the loopback
    command = [sys.executable, "-m", "binder_service"] + [
        a for a in chart_command[3:] if not a.startswith(("--ip=", "--port="))
    ]
    command += [
        f"--port={service_port}",
        f"--namespace={NAMESPACE}",
        "--cull-every=0.5",
        "--reconcile-every=1",
    ]
    scopes = values["hub"]["loadRoles"]["binder-service"]["scopes"]
    return f"""
    c.JupyterHub.spawner_class = "binder"
    c.JupyterHub.authenticator_class = "binder-anonymous"
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
    c.BinderSpawner.image_prefix = "{registry.host}/binder-"
    c.BinderSpawner.registry_url = "{registry.url}"
    c.BinderSpawner.start_timeout = 120
    c.BinderSpawner.delete_grace_period = 0
    c.BinderSpawner.http_timeout = 90
    c.BinderSpawner.k8s_api_request_retry_timeout = 5
    c.RepoPolicy.allow_http = True
    c.RepoPolicy.allowed_hosts = ["{git.host}"]
    c.BinderServiceClient.url = "http://127.0.0.1:{service_port}/services/binder/"
    c.JupyterHub.services.append(
        {{
            "name": "binder",
            "url": "http://127.0.0.1:{service_port}",
            "command": {command!r},
            "environment": {{"KUBECONFIG": "{kubeconfig}", **{clock_env(offset_file)!r}}},
        }}
    )
    c.JupyterHub.load_roles.append(
        {{"name": "binder-service", "scopes": {scopes!r}, "services": ["binder"]}}
    )
    """


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory):
    directory = tmp_path_factory.mktemp("deploy-rbac")
    registry = Registry(directory / "registry").start()
    git = GitServer(directory / "git").start()
    cluster = Cluster(
        nodes=2, rbac=True, registry_url=registry.url, directory=directory / "k8s", seed=7
    )
    cluster.catalog.add(f"{registry.host}/binder-*", SINGLEUSER, in_registry=True)
    await cluster.start()
    for resource, obj in chart_rbac_objects(NAMESPACE):
        namespace = None if resource.startswith("cluster") else NAMESPACE
        cluster.store.create(resource, obj, namespace=namespace)
    kubeconfig = cluster.write_kubeconfig(
        directory / "hub-kubeconfig", token=cluster.token_for(NAMESPACE, "hub")
    )
    offset_file = directory / "clock-offset"
    offset_file.write_text("0")
    old_kubeconfig = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    reset_kubespawner_config()
    service_port = free_port()
    env = Deployment(cluster, registry, git, directory / "hub", service_port, offset_file)
    env.kubeconfig = kubeconfig
    config = textwrap.dedent(hub_config(registry, git, service_port, kubeconfig, offset_file))
    try:
        env.hub = await start_hub(
            env.directory, config, env={"KUBECONFIG": str(kubeconfig)}, timeout=90
        )

        async def service_up():
            with contextlib.suppress(aiohttp.ClientError):
                status, _ = await env.service("health")
                return status == 200

        await poll(service_up, timeout=60, message="binder_service to answer")
        yield env
    finally:
        if env.hub is not None:
            await env.hub.stop()
            if env.failed:
                sys.stderr.write(f"\n===== hub log =====\n{env.hub.log()[-30000:]}\n")
        await cluster.stop()
        git.stop()
        registry.stop()
        if old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_kubeconfig
        reset_kubespawner_config()


@pytest.fixture(autouse=True)
def dump_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if (rep is None or rep.failed) and "deployment" in request.fixturenames:
        request.getfixturevalue("deployment").failed = True


def steps(events):
    return [e["message"] for e in events if e.get("message", "").startswith("Step ")]


# every rule chart-values/rbac.yaml adds, each taken away by a test below
PROVEN_NEEDED = {("pods/log", "get"), ("nodes", "list")}


async def test_every_added_rule_is_proven_needed():
    granted = set()
    for resource, obj in chart_rbac_objects(NAMESPACE):
        if resource in ("roles", "clusterroles") and obj["metadata"]["name"] != "hub":
            for rule in obj["rules"]:
                granted |= {(r, v) for r in rule["resources"] for v in rule["verbs"]}
    assert granted == PROVEN_NEEDED


async def test_the_service_account_cannot_do_more(deployment):
    # the token is not an admin's: what no rule grants is refused
    authorizer = deployment.cluster.authorizer
    (user,) = [u for u in authorizer.tokens.values() if u.service_account == (NAMESPACE, "hub")]
    assert "system:masters" not in user.groups
    status, body = await deployment.service("health")
    assert status == 200 and {"service": "kubernetes", "ok": True} in body["checks"], body


async def test_launch_with_a_build_then_cull(deployment):
    url = deployment.git.create_repo("org/first", FILES)
    events = await deployment.launch("first", url)
    assert events[-1].get("ready"), events[-1]
    # the build's log streamed into the progress (pods/log)
    assert steps(events), [e.get("message") for e in events]
    (build_pod,) = deployment.builds_of("org/first")
    # placed on the repository's sticky build node (nodes list)
    assert "affinity" in build_pod["spec"], build_pod["spec"]
    # and deleted once the image was pushed (pods delete)
    name = build_pod["metadata"]["name"]
    await poll(lambda: not deployment.build_pod_exists(name), timeout=30, message="build cleanup")
    assert len(deployment.user_pods("first")) == 1

    # the culler: an idle server is stopped, its pod deleted
    deployment.offset_file.write_text(str(24 * 3600))
    try:

        async def culled():
            return await deployment.server("first") is None and not deployment.user_pods("first")

        await poll(culled, timeout=60, interval=0.2, message="the idle server culled")
    finally:
        deployment.offset_file.write_text("0")


@pytest.mark.parametrize("verb", ["create", "watch"])
async def test_pods_create_and_watch_are_needed_for_a_build(deployment, verb):
    repo = f"org/needs-pods-{verb}"
    # the build still runs when the launch starts to follow it (a build that ended
    # before the launch's first list needs no watch)
    url = deployment.git.create_repo(repo, {**FILES, "SLOW_BUILD": "3"})
    with deployment.revoked("pods", verb):
        events = await deployment.launch(f"pods-{verb}", url)
    assert events[-1].get("failed"), events[-1]
    assert not deployment.user_pods(f"pods-{verb}")


async def test_pods_delete_is_needed_to_clean_up_builds(deployment):
    url = deployment.git.create_repo("org/needs-pods-delete", FILES)
    with deployment.revoked("pods", "delete"):
        events = await deployment.launch("pods-delete", url)
        assert events[-1].get("ready"), events[-1]
        (build_pod,) = deployment.builds_of("org/needs-pods-delete")
        # the build finished and its image was pushed, but the pod stays
        assert deployment.build_pod_exists(build_pod["metadata"]["name"])


async def test_pods_log_is_needed_for_the_build_log(deployment):
    url = deployment.git.create_repo("org/needs-pods-log", FILES)
    with deployment.revoked("pods/log", "get"):
        events = await deployment.launch("pods-log", url)
    # the launch works, but the spawn page shows no build log
    assert events[-1].get("ready"), events[-1]
    assert steps(events) == []


async def test_nodes_list_is_needed_for_sticky_builds(deployment):
    url = deployment.git.create_repo("org/needs-nodes-list", FILES)
    with deployment.revoked("nodes", "list"):
        events = await deployment.launch("nodes-list", url)
    assert events[-1].get("ready"), events[-1]
    (build_pod,) = deployment.builds_of("org/needs-nodes-list")
    assert "affinity" not in build_pod["spec"]


async def test_pods_list_is_needed_by_the_service(deployment):
    with deployment.revoked("pods", "list"):
        status, body = await deployment.service("health")
        assert {"service": "kubernetes", "ok": False} in body["checks"], (status, body)
    status, body = await deployment.service("health")
    assert {"service": "kubernetes", "ok": True} in body["checks"], (status, body)


@pytest.mark.parametrize("kind", ["pods", "events"])
@pytest.mark.parametrize("verb", [None, "list", "watch"])
async def test_kubespawner_reflectors_need_list_and_watch(deployment, monkeypatch, kind, verb):
    # KubeSpawner's pod and event reflectors start once per hub process, so
    # they are run here, as the hub runs them, with the hub's kubeconfig
    from kubernetes_asyncio.client import ApiException
    from kubernetes_asyncio.config import kube_config
    from kubespawner import clients
    from kubespawner.spawner import EventReflector, PodReflector

    from .k8s.errors import ApiError

    authorizer = deployment.cluster.authorizer
    refused, allowed = [], []
    authorize = authorizer.authorize

    def recording(user, info):
        try:
            authorize(user, info)
        except ApiError:
            refused.append((info.verb, info.resource))
            raise
        allowed.append((info.verb, info.resource))

    monkeypatch.setattr(authorizer, "authorize", recording)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(deployment.kubeconfig))
    reset_kubespawner_config()
    clients.load_config()
    if kind == "pods":
        reflector = PodReflector(namespace=NAMESPACE, labels={"component": "singleuser-server"})
    else:
        reflector = EventReflector(namespace=NAMESPACE, fields={"involvedObject.kind": "Pod"})
    try:
        with deployment.revoked(kind, verb) if verb else contextlib.nullcontext():
            if verb == "list":
                with pytest.raises(ApiException) as raised:
                    await reflector.start()
                assert raised.value.status == 403
            else:
                await reflector.start()
                assert reflector.first_load_future.done()
                # then it watches: what keeps the hub's view of pods and events current
                outcome = refused if verb == "watch" else allowed
                await poll(lambda: ("watch", kind) in outcome, timeout=30, message="the watch")
        if verb is None:
            assert ("list", kind) in allowed
            assert refused == []
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reflector.stop(), 10)
        reset_kubespawner_config()
