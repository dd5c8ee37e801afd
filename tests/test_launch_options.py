"""Launch options: the spawn form, the query form and user_options validation (no hub)."""

import asyncio

import pytest
from jupyterhub.spawner import Spawner

from binder_spawner import launch
from binder_spawner.errors import SpawnException
from binder_spawner.launch import BinderLaunchMixin
from binder_spawner.repos import LaunchSpec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class ParentSpawner(Spawner):
    """The parent a launch hands over to: yields one event of its own."""

    async def progress(self):
        yield {"progress": 50, "message": "parent event"}

    async def start(self):
        raise NotImplementedError("not started in these tests")

    async def stop(self, now=False):
        pass

    async def poll(self):
        return 0


class ProbeSpawner(BinderLaunchMixin, ParentSpawner):
    pass


@pytest.fixture
def spawner():
    return ProbeSpawner()


def query(**values):
    # what the hub passes: lists of strings
    return {k: [v] for k, v in values.items()}


def test_query_launches_with_repo_ref_and_urlpath(spawner):
    options = spawner.options_from_query(
        query(repo="https://github.com/org/repo", ref="main", urlpath="lab/tree/a.ipynb")
    )
    assert options == {
        "repo": "https://github.com/org/repo",
        "ref": "main",
        "urlpath": "lab/tree/a.ipynb",
    }
    spec = spawner.launch_spec(options)
    assert (spec.provider, spec.spec, spec.ref) == ("gh", "gh/org/repo/main", "main")
    assert spec.urlpath == "lab/tree/a.ipynb"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(
            {"opt-repo": "gh/org/repo/main", "opt-urlpath": "lab"},
            id="prefixed-as-jupyterhub-5-passes",
        ),
        pytest.param({"repo": "gh/org/repo/main", "urlpath": "lab"}, id="unprefixed"),
        pytest.param(
            {"opt-repo": "gh/org/repo/main", "opt-urlpath": "lab", "repo": "gh/evil/x/main"},
            id="mixed-prefixed-wins",
        ),
    ],
)
def test_query_with_or_without_opt_prefix(spawner, values):
    options = spawner.options_from_query(query(**values))
    assert options == {"repo": "gh/org/repo/main", "urlpath": "lab"}


def test_query_ignores_other_parameters(spawner):
    options = spawner.options_from_query(
        query(repo="gh/org/repo/main", image="evil/image", cpu_limit="64", profile="x")
    )
    assert options == {"repo": "gh/org/repo/main"}


def test_form_reads_the_same_fields(spawner):
    options = spawner.run_options_from_form(
        query(repo="https://github.com/org/repo", ref="", urlpath="lab", node_selector="x")
    )
    assert options == {"repo": "https://github.com/org/repo", "urlpath": "lab"}


@pytest.mark.parametrize(
    "values, status",
    [
        pytest.param({"repo": "https://127.0.0.1/org/repo"}, 403, id="loopback"),
        pytest.param({"repo": "file:///etc/passwd"}, 400, id="file-url"),
        pytest.param({"repo": "gh/org/repo/--upload-pack=evil"}, 400, id="option-ref"),
        pytest.param({"repo": "not a repo"}, 400, id="garbage"),
        pytest.param(
            {"repo": "gh/org/repo/main", "urlpath": "https://evil.example"}, 400, id="url"
        ),
        pytest.param({"ref": "main"}, 400, id="no-repo"),
    ],
)
def test_bad_links_are_refused_on_the_form(spawner, values, status):
    with pytest.raises(SpawnException) as info:
        spawner.options_from_query(query(**values))
    assert info.value.status_code == status
    assert info.value.message
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    "user_options, fragment",
    [
        pytest.param({"repo": "gh/org/repo/main", "image": "evil/image"}, "image", id="image"),
        pytest.param(
            {"repo": "gh/org/repo/main", "mem_limit": "100G", "cpu_limit": 64},
            "cpu_limit, mem_limit",
            id="resources",
        ),
        pytest.param(
            {"repo": "gh/org/repo/main", "node_selector": {"a": "b"}}, "node_selector", id="nodes"
        ),
        pytest.param({"repo": "gh/org/repo/main", "profile": "gpu"}, "profile", id="profile"),
        pytest.param({"repo": ["gh/org/repo/main"]}, "string", id="list"),
        pytest.param({"repo": {"x": 1}}, "string", id="object"),
        pytest.param({"repo": "gh/org/repo/main", "ref": 5}, "string", id="int-ref"),
        pytest.param({"repo": "gh/org/" + "r" * 5000 + "/main"}, "too long", id="long"),
        pytest.param({}, "No repository", id="empty"),
        pytest.param({"repo": "https://10.0.0.1/x/y"}, "", id="private-address"),
    ],
)
def test_user_options_abuse_is_refused(spawner, user_options, fragment):
    with pytest.raises(SpawnException) as info:
        spawner.launch_spec(user_options)
    assert info.value.status_code in (400, 403, 422)
    assert fragment in info.value.message


def test_user_options_keys_only_repo_ref_urlpath():
    assert launch.check_user_options(
        {"repo": " gh/org/repo/main ", "ref": "v1", "labpath": "a.ipynb"}
    ) == {"repo": "gh/org/repo/main", "ref": "v1", "labpath": "a.ipynb"}
    with pytest.raises(ValueError):
        launch.check_user_options(["repo"])


def test_labpath_and_filepath_become_urlpath(spawner):
    spec = spawner.launch_spec({"repo": "gh/org/repo/main", "labpath": "dir/a.ipynb"})
    assert spec.urlpath == "doc/tree/dir/a.ipynb"
    spec = spawner.launch_spec({"repo": "gh/org/repo/main", "filepath": "a.ipynb"})
    assert spec.urlpath == "tree/a.ipynb"


def test_options_form_shows_previous_values_escaped(spawner):
    spawner.user_options = {"repo": '"><script>alert(1)</script>', "ref": "main"}
    form = spawner.options_form(spawner)
    assert 'name="repo"' in form and 'name="ref"' in form and 'name="urlpath"' in form
    assert "<script>" not in form
    assert "&quot;&gt;&lt;script&gt;" in form
    assert 'value="main"' in form


def resolved(provider="gh", spec="gh/org/repo/main", url="https://github.com/org/repo"):
    return LaunchSpec(
        provider=provider,
        spec=spec,
        repo_url=url,
        ref="main",
        urlpath="lab",
        commit=COMMIT,
        key=spec.rsplit("/", 1)[0],
    )


def test_binder_environment_as_binderhub_sets_it():
    env = launch.binder_environment(resolved(), "https://hub.example.org/services/binder/")
    assert env == {
        "BINDER_REPO_URL": "https://github.com/org/repo",
        "BINDER_REF_URL": f"https://github.com/org/repo/tree/{COMMIT}",
        "BINDER_LAUNCH_HOST": "https://hub.example.org/services/binder/",
        "BINDER_REQUEST": "v2/gh/org/repo/main",
        "BINDER_PERSISTENT_REQUEST": f"v2/gh/org/repo/{COMMIT}",
    }
    git = resolved(
        "git", "git/https%3A%2F%2Fgit.example.org%2Fr.git/main", "https://git.example.org/r.git"
    )
    assert launch.binder_environment(git, "")["BINDER_REF_URL"] == "https://git.example.org/r.git"
    gl = resolved("gl", "gl/group%2Fr/main", "https://gitlab.com/group/r")
    assert launch.binder_environment(gl, "")["BINDER_REF_URL"].endswith(f"/-/tree/{COMMIT}")


def test_launch_host_defaults_to_the_hubs_public_url(spawner):
    assert spawner.launch_host == ""
    other = ProbeSpawner(public_hub_url="https://hub.example.org/hub/")
    assert other.launch_host == "https://hub.example.org/services/binder/"


@pytest.mark.parametrize(
    "urlpath, default_url",
    [
        pytest.param("", "", id="none"),
        pytest.param("lab", "/lab", id="lab"),
        pytest.param("/tree/a.ipynb", "/tree/a.ipynb", id="leading-slash"),
        pytest.param("//evil.example", "/evil.example", id="no-protocol-relative"),
    ],
)
def test_default_url_stays_inside_the_server(urlpath, default_url):
    assert launch.default_url_for(urlpath) == default_url


ESCAPING_URLPATHS = [
    pytest.param("lab/%2e%2e/%2e%2e/%2e%2e/hub/admin", id="encoded-dotdot"),
    pytest.param("%2E%2E/%2e./.%2E/hub/admin", id="mixed-case-and-half-encoded"),
    pytest.param("lab/%252e%252e/%252e%252e/hub/admin", id="double-encoded"),
    pytest.param("lab%2f..%2f..%2fhub", id="encoded-slash"),
    pytest.param("lab/%5c..%5c..%5chub", id="encoded-backslash"),
    pytest.param("lab/./../../hub", id="plain-dots"),
    pytest.param("lab/%2e%2e%3fx=1", id="encoded-query-mark"),
    pytest.param("lab/%25252525252e%25252525252e/hub", id="encoded-over-and-over"),
]


@pytest.mark.parametrize("urlpath", ESCAPING_URLPATHS)
def test_escaping_urlpaths_are_refused(spawner, urlpath):
    for key, value in (("urlpath", urlpath), ("labpath", urlpath), ("filepath", urlpath)):
        with pytest.raises(SpawnException) as info:
            spawner.launch_spec({"repo": "gh/org/repo/main", key: value})
        assert info.value.status_code == 400
        assert "urlpath" in info.value.message
    # and if one ever reached the server's default_url (a spec from elsewhere)
    with pytest.raises(SpawnException):
        launch.default_url_for(urlpath)


@pytest.mark.parametrize(
    "urlpath",
    [
        pytest.param("lab/tree/a%20b.ipynb", id="space"),
        pytest.param("lab/tree/..a/b..", id="dots-in-names"),
        pytest.param("lab/tree/a.ipynb?path=../x#/../y", id="dots-in-query"),
        pytest.param("voila/render/%2e%2eweird.ipynb", id="encoded-dots-in-a-name"),
    ],
)
def test_harmless_dots_pass(spawner, urlpath):
    spec = spawner.launch_spec({"repo": "gh/org/repo/main", "urlpath": urlpath})
    assert launch.default_url_for(spec.urlpath) == "/" + spec.urlpath


def test_state_round_trip(spawner):
    spawner.launch_state = {"repo": "gh/org/repo", "commit": COMMIT, "reservation": "r1"}
    state = spawner.get_state()
    other = ProbeSpawner()
    other.load_state(state)
    assert other.launch_state == spawner.launch_state
    other.clear_state()
    assert other.launch_state is None
    assert "binder" not in other.get_state()


async def test_progress_replays_then_hands_over(spawner):
    spawner.emit_progress("resolving", "Resolving")

    async def collect():
        return [event async for event in spawner.progress()]

    reader = asyncio.ensure_future(collect())
    spawner.emit_progress("building", "line 1")
    spawner.emit_progress("building", "line 2")
    spawner.emit_progress("pushing", "pushing")
    spawner.emit_progress("built", "built")
    spawner.emit_progress("launching", "launching")
    spawner.launch_progress.hand_over()
    events = await asyncio.wait_for(reader, 5)
    assert [e["message"] for e in events] == [
        "Resolving",
        "line 1",
        "line 2",
        "pushing",
        "built",
        "launching",
        "parent event",
    ]
    assert [e.get("phase") for e in events[:-1]] == [
        "resolving",
        "building",
        "building",
        "pushing",
        "built",
        "launching",
    ]
    numbers = [e["progress"] for e in events[:-1]]
    assert numbers == sorted(numbers) and numbers[-1] < 30
    # a late reader (a reloaded spawn page) gets everything from the start
    assert len(await asyncio.wait_for(collect(), 5)) == len(events)


async def test_progress_ends_when_the_launch_fails(spawner):
    spawner.emit_progress("resolving", "Resolving")
    spawner.launch_progress.close()
    events = [event async for event in spawner.progress()]
    assert [e["message"] for e in events] == ["Resolving"]


async def test_unreachable_service_refuses_the_launch_unless_allowed():
    from types import SimpleNamespace

    from binder_spawner.service_client import BinderServiceClient

    from .utils import free_port

    # nothing listens on this port
    client = BinderServiceClient(url=f"http://127.0.0.1:{free_port()}/services/binder/", timeout=2)
    spawner = ProbeSpawner(user=SimpleNamespace(name="u"), service_client=client)
    spec = spawner.launch_spec({"repo": "gh/org/repo/main"})
    with pytest.raises(SpawnException) as info:
        await spawner.reserve_slot(spec)
    assert info.value.status_code == 503
    assert "Try again" in info.value.message
    spawner.allow_launch_without_service = True
    assert await spawner.reserve_slot(spec) is None


async def test_a_reader_waiting_before_the_launch_sees_its_events(spawner):
    async def collect():
        return [event["message"] async for event in spawner.progress()]

    reader = asyncio.ensure_future(collect())
    await asyncio.sleep(0)  # the reader is waiting before start() begins
    spawner.user_options = {}
    with pytest.raises(SpawnException):
        # no repository: refused after the progress object is set up
        await spawner.start()
    # the reader ends with the failed launch (it would wait forever on a
    # progress object the launch had replaced)
    assert await asyncio.wait_for(reader, 5) == []
