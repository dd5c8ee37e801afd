"""BinderSpawner through a real hub + proxy + binder_service, on the emulated cluster.

One setup for the module: the Kubernetes emulator (two nodes, kubelets that run
``tests/k8s/fake_repo2docker.py`` for the repo2docker image and
``jupyterhub-singleuser`` for built images), a real OCI registry the builds push
to and the kubelets pull from, a git server, and a hub that starts the real
binder_service. Tests share it and use their own repositories and servers.
"""

import asyncio
import contextlib
import json
import os
import sys
import textwrap
import urllib.request

import aiohttp
import pytest
import pytest_asyncio

from binder_service.limits import reservation_id
from binder_service.permissions import service_role
from binder_spawner import build
from binder_spawner.images import image_name, repo_hash
from binder_spawner.repos import RepoPolicy

from .authhub import browser_api
from .gitserver import GitServer
from .hub import start_hub
from .k8s.catalog import GENERIC, SINGLEUSER
from .k8s.cluster import Cluster
from .k8s.fixtures import reset_kubespawner_config
from .registry import Registry
from .utils import free_port, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

PER_REPO_LIMIT = 20
FILES = {"requirements.txt": "numpy\n", "README.md": "hello\n"}


def server_path(user, server):
    return f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"


class Env:
    """Everything the tests share, and helpers around it."""

    def __init__(self, cluster, registry, git, directory, service_port):
        self.cluster = cluster
        self.registry = registry
        self.git = git
        self.directory = directory
        self.service_port = service_port
        self.hub = None
        self.hub_config = ""
        # every build pod ever created: (name, labels)
        self.build_pods = []
        self.deleted_build_pods = []
        # build pod name -> the node it was scheduled to
        self.build_nodes = {}
        self.failed = []
        cluster.store.on_change(self._record)

    def _record(self, type_, resource, obj):
        labels = obj.get("metadata", {}).get("labels") or {}
        if resource != "pods" or labels.get(build.COMPONENT_LABEL) != build.BUILD_COMPONENT:
            return
        node = (obj.get("spec") or {}).get("nodeName")
        if node:
            self.build_nodes[obj["metadata"]["name"]] = node
        if type_ == "ADDED":
            self.build_pods.append((obj["metadata"]["name"], dict(labels)))
        elif type_ == "DELETED":
            self.deleted_build_pods.append(obj["metadata"]["name"])

    popular = None

    async def popular_image(self):
        """(repository URL, image) of a built repository: the ten launches' when
        that test ran first, else one built here, so each test passes alone."""
        if self.popular is None:
            url = self.git.create_repo("org/popular-alone", FILES)
            status, body = await self.launch("alice", "popular", {"repo": url, "ref": "main"})
            assert status == 202, body
            await self.wait_ready("alice", "popular", timeout=180)
            image = self.user_pod("alice", "popular")["spec"]["containers"][0]["image"]
            await self.stop("alice", "popular")
            self.popular, self.popular_name = (url, image), "org/popular-alone"
        return self.popular

    def builds_of(self, repo_url):
        key = self.repo_key(repo_url)
        return [name for name, labels in self.build_pods if labels[build.REPO_HASH_LABEL] == key]

    @staticmethod
    def raw_repo_key(repo_url):
        from binder_spawner.repos import RepoPolicy

        policy = RepoPolicy(allow_http=True, allowed_hosts=[repo_url.split("/")[2]])
        return policy.parse(repo_url).repo_key

    def repo_key(self, repo_url):
        return repo_hash(self.raw_repo_key(repo_url))

    async def start_hub(self):
        env = {"KUBECONFIG": str(self.cluster.kubeconfig_path)}
        self.hub = await start_hub(self.directory, self.hub_config, env=env, timeout=90)
        await poll(self.service_up, timeout=60, message="binder_service to answer")

    async def service_up(self):
        with contextlib.suppress(aiohttp.ClientError):
            status, _ = await self.service("GET", "health")
            return status == 200

    async def service(self, method, path):
        url = f"http://127.0.0.1:{self.service_port}/services/binder/{path}"
        headers = {"Authorization": f"token {self.hub.token}"}
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, headers=headers) as resp:
                text = await resp.text()
                return resp.status, (json.loads(text) if text else None)

    async def usage(self, repo_url):
        status, body = await self.service("GET", "api/usage")
        assert status == 200, body
        from binder_spawner.repos import RepoPolicy

        host = repo_url.split("/")[2]
        key = RepoPolicy(allow_http=True, allowed_hosts=[host]).parse(repo_url).repo_key
        return body["repos"].get(key, 0)

    async def user(self, name):
        status, body = await self.hub.api("POST", f"/users/{name}")
        assert status in (201, 409), (status, body)

    async def launch(self, user, server, options):
        # the user may not exist yet when a test runs alone
        status, _ = await self.hub.api("POST", f"/users/{user}")
        assert status in (201, 409), status
        status, body = await self.hub.api("POST", f"/users/{user}/servers/{server}", json=options)
        return status, body

    async def progress(self, user, server):
        """The progress events of a pending spawn, until ready or failed."""
        url = f"{self.hub.api_url}{server_path(user, server)}/progress"
        events = []
        headers = {"Authorization": f"token {self.hub.token}"}
        timeout = aiohttp.ClientTimeout(total=180)
        async with aiohttp.ClientSession(timeout=timeout) as session:
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

    async def server(self, user, server):
        status, body = await self.hub.api("GET", f"/users/{user}")
        assert status == 200, body
        return body["servers"].get(server)

    async def wait_ready(self, user, server, timeout=120):
        async def ready():
            found = await self.server(user, server)
            return found and found["ready"]

        await poll(ready, timeout=timeout, interval=0.2, message=f"{user}/{server} ready")

    async def stop(self, user, server):
        status, body = await self.hub.api("DELETE", server_path(user, server))
        assert status in (202, 204), (status, body)

        async def stopped():
            return await self.server(user, server) is None

        await poll(stopped, timeout=60, interval=0.2, message=f"{user}/{server} stopped")

    def pods(self, label_selector=None):
        return self.cluster.store.select("pods", "default", label_selector=label_selector)

    def user_pod(self, user, server):
        for pod in self.pods():
            annotations = pod["metadata"].get("annotations") or {}
            if (
                annotations.get("hub.jupyter.org/username") == user
                and annotations.get("hub.jupyter.org/servername", "") == server
            ):
                return pod
        return None

    def build_pods_now(self):
        return self.pods(f"{build.COMPONENT_LABEL}={build.BUILD_COMPONENT}")

    def image_in_registry(self, image):
        name, tag = image.split("/", 1)[1].rsplit(":", 1)
        request = urllib.request.Request(
            f"{self.registry.url}/v2/{name}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False


def hub_config(registry, git, service_port, kubeconfig):
    command = [
        sys.executable,
        "-m",
        "binder_service",
        f"--port={service_port}",
        f"--per-repo-limit={PER_REPO_LIMIT}",
        "--kubernetes",
        "--namespace=default",
        "--reconcile-every=1",
        "--debug",
    ]
    return f"""
    c.JupyterHub.spawner_class = "binder"
    c.JupyterHub.authenticator_class = "binder-anonymous"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
    # as zero-to-jupyterhub: servers (and builds) outlive a hub restart
    c.JupyterHub.cleanup_servers = False
    c.BinderSpawner.image_prefix = "{registry.host}/binder-"
    c.BinderSpawner.registry_url = "{registry.url}"
    c.BinderSpawner.start_timeout = 120
    c.BinderSpawner.delete_grace_period = 0
    c.BinderSpawner.http_timeout = 90
    c.BinderSpawner.placement_timeout = 5
    c.RepoPolicy.allow_http = True
    # a new commit is seen at once (the test pushes one and relaunches)
    c.RepoPolicy.resolve_cache_ttl = 0
    c.RepoPolicy.allowed_hosts = ["{git.host}"]
    c.BinderServiceClient.url = "http://127.0.0.1:{service_port}/services/binder/"

    def short_timeout_for_slow_repos(spawner, spec):
        # the timed-out build test: a repository named "slow" gets 3 s
        if spec.repo_url.rstrip("/").endswith("/slow"):
            spawner.build_timeout = 3

    c.BinderSpawner.pre_launch_hook = short_timeout_for_slow_repos
    c.JupyterHub.services.append(
        {{
            "name": "binder",
            "url": "http://127.0.0.1:{service_port}",
            "command": {command!r},
            "environment": {{"KUBECONFIG": "{kubeconfig}"}},
        }}
    )
    # as jupyterhub_config.py and the chart values: the service reads the
    # launches' repositories with the hub's RepoPolicy
    from binder_service.hubconfig import hand_over

    hand_over(c.JupyterHub.services[-1])
    c.JupyterHub.load_roles.append({service_role()!r})
    """


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("binderspawner")
    registry = Registry(directory / "registry").start()
    git = GitServer(directory / "git").start()
    cluster = Cluster(nodes=2, registry_url=registry.url, directory=directory / "k8s", seed=5)
    # built images run jupyterhub-singleuser; those of repositories named
    # "cheap-*" are a plain HTTP answer (the hub gets its 200 at once)
    cluster.catalog.add(f"{registry.host}/binder-*", SINGLEUSER, in_registry=True)
    cluster.catalog.add(f"{registry.host}/binder-*cheap-*", GENERIC, in_registry=True)
    await cluster.start()
    old_kubeconfig = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
    reset_kubespawner_config()
    service_port = free_port()
    env = Env(cluster, registry, git, directory / "hub", service_port)
    env.hub_config = textwrap.dedent(
        hub_config(registry, git, service_port, cluster.kubeconfig_path)
    )
    try:
        await env.start_hub()
        yield env
    finally:
        if env.hub is not None:
            await env.hub.stop()
        if env.failed and env.hub is not None:
            sys.stderr.write(f"\n===== hub log =====\n{env.hub.log()[-40000:]}\n")
            sys.stderr.write(f"\n===== k8s =====\n{cluster.store.dump()[-20000:]}\n")
        await cluster.stop()
        git.stop()
        registry.stop()
        if old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_kubeconfig
        reset_kubespawner_config()


@pytest.fixture(autouse=True)
def dump_on_failure(request, env):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        env.failed.append(request.node.name)


def messages(events):
    return [e.get("message", "") for e in events]


async def test_anonymous_launch_builds_then_reaches_server(env):
    url = env.git.create_repo("org/first", FILES)
    browser = env.hub.browser()
    # other tests of the module share the hub: look only at what this launch adds
    log_start = len(env.hub.log())
    _, before = await env.hub.api("GET", "/users")
    known = {u["name"] for u in before}
    # the documented launch link: JupyterHub 6's opt- form, read by the spawner on 5 too
    async with browser.get(
        env.hub.url + "/hub/spawn",
        params={"opt-repo": url, "opt-ref": "main", "opt-urlpath": "lab"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert "User options should be prefixed" not in env.hub.log()[log_start:]
    status, users = await env.hub.api("GET", "/users")
    (user,) = [u["name"] for u in users if u["name"] not in known and u["servers"]]
    events = await env.progress(user, "")
    assert events[-1].get("ready"), events[-1]
    await env.wait_ready(user, "")

    # the build log, in order, between the launch phases, then KubeSpawner's events
    phases = [e.get("phase") for e in events if e.get("phase")]
    assert phases[0] == "resolving"
    assert phases.index("waiting") < phases.index("building") < phases.index("pushing")
    assert phases.index("pushing") < phases.index("built") < phases.index("launching")
    text = messages(events)
    steps = [m for m in text if m.startswith("Step ")]
    assert steps == ["Step 1/3 : FROM docker.io/library/buildpack-deps:jammy"] + steps[1:]
    assert [s.split(" ")[1] for s in steps] == ["1/3", "2/3", "3/3"]
    assert text.index(steps[-1]) < text.index("Successfully built image")
    pushed = [m for m in text if m.startswith("Successfully pushed")]
    assert len(pushed) == 1 and text.index("Successfully built image") < text.index(pushed[0])
    launching = [e.get("phase") for e in events].index("launching")
    assert any("raw_event" in e for e in events[launching:]), "no pod events after launching"

    # one build, on the repository's sticky node, cleaned up, image pushed
    (build_pod,) = env.builds_of(url)
    assert env.build_nodes[build_pod] == build.build_node(
        ["node-1", "node-2"], env.raw_repo_key(url)
    )
    await poll(lambda: not env.build_pods_now(), timeout=30, message="build pod cleanup")
    pod = env.user_pod(user, "")
    image = pod["spec"]["containers"][0]["image"]
    assert image.startswith(env.registry.host + "/binder-")
    assert env.image_in_registry(image)

    # the user pod
    container = pod["spec"]["containers"][0]
    environment = {e["name"]: e.get("value") for e in container["env"]}
    assert environment["BINDER_REPO_URL"] == url
    assert environment["BINDER_REQUEST"].startswith("v2/git/")
    tag = image.rsplit(":", 1)[1]
    assert environment["BINDER_PERSISTENT_REQUEST"].endswith("/" + tag)
    assert environment["BINDER_IDLE_TIMEOUT"] == "600"
    assert environment["BINDER_MAX_AGE"] == "43200"
    assert environment["JUPYTERHUB_DEFAULT_URL"] == "/lab"
    labels = pod["metadata"]["labels"]
    assert labels[build.REPO_HASH_LABEL] == env.repo_key(url)
    assert labels[build.COMMIT_LABEL] == tag
    assert url not in json.dumps(labels)
    assert container["resources"]["requests"]["memory"] == "1G" or container["resources"][
        "requests"
    ]["memory"] in ("1073741824", 1073741824)
    assert str(container["resources"]["limits"]["memory"]) in ("2G", "2147483648")
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not pod["spec"].get("volumes")
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms and all(1 <= t["weight"] <= 100 for t in terms)
    nodes = {v for t in terms for e in t["preference"]["matchExpressions"] for v in e["values"]}
    assert nodes <= {"node-1", "node-2"}

    # the user reaches the server through the proxy, at urlpath
    async with browser.get(env.hub.url + f"/user/{user}/") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.url.path == f"/user/{user}/lab"
    async with browser.get(env.hub.url + f"/user/{user}/api/status") as resp:
        assert resp.status == 200
        assert "started" in await resp.json()
    assert await env.usage(url) == 1
    await env.stop(user, "")
    assert await env.usage(url) == 0


async def test_ten_concurrent_launches_make_one_build(env):
    url = env.git.create_repo("org/cheap-popular", FILES)
    await env.user("alice")
    names = [f"c{i}" for i in range(10)]
    results = await asyncio.gather(
        *(env.launch("alice", name, {"repo": url, "ref": "main"}) for name in names)
    )
    assert all(status == 202 for status, _ in results), results
    await asyncio.gather(*(env.wait_ready("alice", name, timeout=180) for name in names))
    (build_pod,) = env.builds_of(url)
    # the hub followed the build with one watch and one log stream, not one per launch
    about_the_build = [
        info
        for info in list(env.cluster.api.request_log)
        if info.resource == "pods"
        and (
            info.name == build_pod
            or info.query.get("fieldSelector") == f"metadata.name={build_pod}"
        )
    ]
    verbs = sorted(info.verb for info in about_the_build)
    assert verbs.count("watch") <= 2 and verbs.count("list") <= 3, verbs
    assert len(verbs) <= 10, verbs
    images = {env.user_pod("alice", name)["spec"]["containers"][0]["image"] for name in names}
    assert len(images) == 1
    assert await env.usage(url) == 10
    await asyncio.gather(*(env.stop("alice", name) for name in names))
    assert await env.usage(url) == 0
    env.popular, env.popular_name = (url, images.pop()), "org/cheap-popular"


async def test_relaunch_of_the_same_commit_does_not_build(env):
    url, image = await env.popular_image()
    builds = len(env.builds_of(url))
    # the built commit (a later test may add commits to main)
    commit = image.rsplit(":", 1)[1]
    status, body = await env.launch("alice", "again", {"repo": url, "ref": commit})
    assert status == 202, body
    events = await env.progress("alice", "again")
    assert events[-1].get("ready"), events[-1]
    phases = {e.get("phase") for e in events}
    assert "building" not in phases and "waiting" not in phases
    assert any(m.startswith("Found built image") for m in messages(events))
    assert len(env.builds_of(url)) == builds
    assert env.user_pod("alice", "again")["spec"]["containers"][0]["image"] == image
    assert await env.usage(url) == 1
    await env.stop("alice", "again")
    assert await env.usage(url) == 0


async def test_new_commit_builds_again(env):
    url, image = await env.popular_image()
    before = len(env.builds_of(url))
    sha = env.git.commit(env.popular_name, {"b.txt": "more\n"}, message="more")
    status, body = await env.launch("alice", "new", {"repo": url, "ref": "main"})
    assert status == 202, body
    events = await env.progress("alice", "new")
    assert events[-1].get("ready"), events[-1]
    assert "building" in {e.get("phase") for e in events}
    builds = [labels for name, labels in env.build_pods if labels[build.COMMIT_LABEL] == sha]
    assert len(builds) == 1
    assert len(env.builds_of(url)) == before + 1
    new_image = env.user_pod("alice", "new")["spec"]["containers"][0]["image"]
    assert new_image.endswith(":" + sha) and new_image != image
    await env.stop("alice", "new")


async def test_failing_build_shows_reason_and_last_lines(env):
    url = env.git.create_repo(
        "org/broken", {**FILES, "FAIL_BUILD": "ERROR: No matching distribution for nosuchpkg\n"}
    )
    status, body = await env.launch("alice", "broken", {"repo": url, "ref": "main"})
    assert status == 202, body
    events = await env.progress("alice", "broken")
    final = events[-1]
    assert final.get("failed"), final
    assert f"Building {url} failed" in final["message"]
    assert "No matching distribution for nosuchpkg" in final["message"]
    assert "ERROR: No matching distribution for nosuchpkg" in messages(events)
    await poll(lambda: not env.build_pods_now(), timeout=30, message="failed build cleanup")
    assert await env.server("alice", "broken") is None
    assert await env.usage(url) == 0


async def test_timed_out_build_is_stopped_and_reported(env):
    url = env.git.create_repo("org/slow", {**FILES, "SLOW_BUILD": "120"})
    status, body = await env.launch("alice", "slow", {"repo": url, "ref": "main"})
    assert status == 202, body
    events = await env.progress("alice", "slow")
    final = events[-1]
    assert final.get("failed"), final
    assert "took longer than 3 seconds" in final["message"]
    # the build's own log reached the progress page before the timeout (on a busy
    # machine the 3 s may end before the slow phase prints "Still building...")
    assert "Picked Git content provider." in messages(events)
    await poll(lambda: not env.build_pods_now(), timeout=30, message="timed-out build deleted")
    assert await env.usage(url) == 0


@pytest.mark.parametrize(
    "options, status, fragment",
    [
        pytest.param({"image": "evil/image"}, 400, "image", id="image"),
        pytest.param({"mem_limit": "64G", "node_selector": {"a": "b"}}, 400, "mem_limit", id="res"),
        pytest.param({"ref": "--upload-pack=touch /tmp/x"}, 400, "", id="option-ref"),
        pytest.param({"repo": "http://127.0.0.1:1/org/repo"}, 403, "", id="loopback"),
        pytest.param({"repo": "file:///etc/passwd"}, 400, "", id="file"),
        pytest.param({"repo": ["a", "b"]}, 400, "string", id="list"),
        pytest.param(
            {"urlpath": "lab/%2e%2e/%2e%2e/%2e%2e/hub/admin"}, 400, "dot segments", id="urlpath"
        ),
        pytest.param({"labpath": "%2E%2E/.%2e/hub/admin"}, 400, "dot segments", id="labpath"),
    ],
)
async def test_user_options_abuse_through_the_api_is_refused(env, options, status, fragment):
    url = env.git.url + "/org/first"
    await env.user("mallory")
    token_status, token = await env.hub.api(
        "POST", "/users/mallory/tokens", json={"expires_in": 600}
    )
    assert token_status in (200, 201), token
    server = "abuse"
    body = {"repo": url, "ref": "main", **options}
    answer, message = await env.hub.api(
        "POST", f"/users/mallory/servers/{server}", json=body, token=token["token"]
    )
    # slow_spawn_timeout is 0 here: the refusal usually arrives as the spawn's
    # failure (202, or 201 when it failed before the hub looked), else as the answer
    assert answer in (201, 202, status), (answer, message)
    final = (await env.progress("mallory", server))[-1]
    assert final.get("failed"), final
    assert fragment in final["message"]
    # the sentence alone, on JupyterHub 5 and 6 (whose str(SpawnException) starts
    # with "400 SpawnException(reason=invalid):")
    assert "SpawnException" not in final["message"], final["message"]
    assert env.user_pod("mallory", server) is None
    assert await env.server("mallory", server) is None
    status, usage = await env.service("GET", "api/usage")
    assert usage["total"] == sum(usage["repos"].values())


async def test_hub_restart_during_a_build_reattaches(env):
    release = env.directory.parent / "release-restart-build"
    url = env.git.create_repo("org/cheap-restart", {**FILES, "HOLD_BUILD": str(release)})
    await env.user("alice")
    status, body = await env.launch("alice", "r", {"repo": url, "ref": "main"})
    assert status == 202, body

    def running_build():
        return [
            p
            for p in env.build_pods_now()
            if p["metadata"]["labels"][build.REPO_HASH_LABEL] == env.repo_key(url)
            and (p.get("status") or {}).get("phase") == "Running"
        ]

    await poll(running_build, timeout=60, message="the build to run")
    assert await env.usage(url) == 1
    await env.hub.stop()
    await env.start_hub()
    # the build went on without the hub; the slot is not counted twice
    assert running_build(), (env.deleted_build_pods, env.build_pods_now())
    assert await env.usage(url) <= 1
    status, body = await env.launch("alice", "r", {"repo": url, "ref": "main"})
    # the cut-off launch is a failed spawn now (its reason is shown); JupyterHub's
    # get_spawner(replace_failed=True) does not keep the replacement it makes
    # (jupyterhub 6.1 user.py), so the API may answer 201 for the pending spawn
    assert status in (201, 202), body
    await poll(lambda: "exists, attaching to it" in env.hub.log(), timeout=60, message="attaching")
    release.write_text("go")
    events = await env.progress("alice", "r")
    assert events[-1].get("ready"), events[-1]
    text = messages(events)
    assert "Found a build of this image in progress, attaching to it" in text
    assert text.index("Still building...") < text.index("Successfully built image")
    assert len(env.builds_of(url)) == 1, env.builds_of(url)
    assert await env.usage(url) == 1
    await env.stop("alice", "r")
    assert await env.usage(url) == 0


URLPATH_ESCAPES = [
    ("urlpath", "lab/%2e%2e/%2e%2e/%2e%2e/hub/admin"),
    ("urlpath", "%2E%2E/.%2e/hub/admin"),
    ("urlpath", "lab/%252e%252e/%252e%252e/hub/admin"),
    ("urlpath", "lab%2f..%2f..%2f..%2fhub%2fadmin"),
    ("labpath", "%2e%2e/%2e%2e/%2e%2e/hub/admin"),
    ("filepath", "../../../hub/admin"),
]


async def test_urlpath_never_leaves_the_server(env):
    url = env.git.create_repo("org/urlpath", FILES)
    browser = env.hub.browser()
    # a launch link whose urlpath would climb out of /user/<name>/ to any hub page
    for key, value in URLPATH_ESCAPES:
        params = {"repo": url, "ref": "main", key: value}
        async with browser.get(env.hub.url + "/hub/spawn", params=params) as resp:
            page = await resp.text()
            assert resp.status == 400, (key, value, resp.status)
            assert "without dot segments" in page or "too many times" in page, (key, value)
    status, users = await env.hub.api("GET", "/users")
    (user,) = [u for u in users if u["name"].startswith("urlpath-")]
    assert user["servers"] == {}

    # a name with encoded dots in it is no dot segment: it opens, inside the server
    params = {"repo": url, "ref": "main", "urlpath": "tree/%2e%2e%2eREADME.md"}
    async with browser.get(env.hub.url + "/hub/spawn", params=params) as resp:
        assert resp.status == 200, await resp.text()
    events = await env.progress(user["name"], "")
    assert events[-1].get("ready"), events[-1]
    async with browser.get(env.hub.url + f"/user/{user['name']}/", allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    path = location.split("?", 1)[0]
    assert path == f"/user/{user['name']}/tree/%2e%2e%2eREADME.md", location
    await env.stop(user["name"], "")
    assert await env.usage(url) == 0


async def test_anonymous_token_cannot_free_its_slot_or_list_repositories(env):
    url = env.git.create_repo("org/cheap-slot", FILES)
    browser = env.hub.browser()
    async with browser.get(env.hub.url + "/hub/spawn", params={"repo": url, "ref": "main"}) as resp:
        assert resp.status == 200, await resp.text()
    status, users = await env.hub.api("GET", "/users")
    (name,) = [u["name"] for u in users if u["name"].startswith("cheap-slot-")]
    await env.wait_ready(name, "")
    # any visitor can make itself a token; the slot's id is predictable
    status, text = await browser_api(
        env.hub, browser, "POST", f"/users/{name}/tokens", json={"expires_in": 600}
    )
    assert status in (200, 201), text
    token = json.loads(text)["token"]
    base = f"http://127.0.0.1:{env.service_port}/services/binder/"
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(base + "api/usage") as resp:
            assert resp.status == 403, await resp.text()
        slot = reservation_id(name, "")
        async with session.delete(base + f"api/reservations/{slot}") as resp:
            assert resp.status == 403, await resp.text()
        # Nor where another repository's image is cached: the nodes that hold an
        # image tell who launched (repository, commit). Its own launch's, yes.
        own = env.user_pod(name, "")["spec"]["containers"][0]["image"]
        elsewhere = RepoPolicy().parse("gh/someone/else/main")
        other = image_name(elsewhere, "0" * 40, prefix=f"{env.registry.host}/binder-")
        for image, status in ((own, 200), (other, 403)):
            async with session.get(base + "api/placement", params={"image": image}) as resp:
                assert resp.status == status, (image, await resp.text())
    assert await env.usage(url) == 1
    # stopping the server is what gives the slot back
    await env.stop(name, "")
    assert await env.usage(url) == 0


async def test_aliases_of_one_repository_share_a_build_and_a_limit(env):
    url = env.git.create_repo("org/cheap-alias", FILES)
    host, path = url.rsplit("/org/", 1)
    aliases = [
        url,
        url + ".git",
        url + "/",
        f"{host}/org/../org/{path}",
        f"{host}/org/./%63heap-alias",
    ]
    await env.user("alice")
    names = [f"alias{i}" for i in range(len(aliases))]
    results = await asyncio.gather(
        *(
            env.launch("alice", n, {"repo": a, "ref": "main"})
            for n, a in zip(names, aliases, strict=True)
        )
    )
    assert all(status == 202 for status, _ in results), results
    await asyncio.gather(*(env.wait_ready("alice", n, timeout=180) for n in names))
    # one build, one image, and every alias counts against the one repository
    assert len(env.builds_of(url)) == 1, env.build_pods
    images = {env.user_pod("alice", n)["spec"]["containers"][0]["image"] for n in names}
    assert len(images) == 1, images
    labels = {env.user_pod("alice", n)["metadata"]["labels"][build.REPO_HASH_LABEL] for n in names}
    assert labels == {env.repo_key(url)}
    assert await env.usage(url) == len(aliases)
    status, usage = await env.service("GET", "api/usage")
    assert [k for k in usage["repos"] if "cheap-alias" in k] == [env.raw_repo_key(url)]
    await asyncio.gather(*(env.stop("alice", n) for n in names))
    assert await env.usage(url) == 0
