"""Ref resolution against real repositories served over smart HTTP on loopback."""

import asyncio
import ipaddress
import os
import socket

import pytest

from binder_spawner import gitref, resolver
from binder_spawner.repos import RepoPolicy, ResolveCache, SpecError


@pytest.fixture
def policy(git_server):
    # the tests opt in to their loopback server explicitly
    return RepoPolicy(
        allow_http=True, allowed_hosts=[git_server.host], resolve_cache=ResolveCache()
    )


@pytest.fixture
def repo(git_server):
    url = git_server.create_repo("org/repo", {"README.md": "one"})
    shas = {"first": git_server.sha("org/repo", "main")}
    shas["main"] = git_server.commit("org/repo", {"b.txt": "two"}, message="second")
    shas["feature/x"] = git_server.branch("org/repo", "feature/x", start=shas["first"])
    shas["v1"] = git_server.tag("org/repo", "v1", ref=shas["first"], annotated=True)
    shas["light"] = git_server.tag("org/repo", "light", ref="main")
    return url, shas


@pytest.mark.parametrize(
    "ref, expected",
    [
        pytest.param("HEAD", "main", id="head"),
        pytest.param("main", "main", id="branch"),
        pytest.param("feature/x", "feature/x", id="branch-with-slash"),
        pytest.param("v1", "first", id="annotated-tag-peeled"),
        pytest.param("light", "main", id="lightweight-tag"),
        pytest.param("refs/heads/feature/x", "feature/x", id="full-ref"),
    ],
)
async def test_resolve_refs(policy, repo, ref, expected):
    url, shas = repo
    spec = policy.parse({"repo": url, "ref": ref})
    resolved = await policy.resolve(spec)
    assert resolved.commit == shas[expected]
    assert spec.commit is None  # resolve returns a copy
    assert resolved.ref == ref


async def test_resolve_full_sha_kept_and_repo_checked(policy, repo, git_server):
    url, shas = repo
    resolved = await policy.resolve(policy.parse({"repo": url, "ref": shas["first"].upper()}))
    assert resolved.commit == shas["first"]
    missing = policy.parse({"repo": git_server.url + "/org/missing", "ref": shas["first"]})
    with pytest.raises(SpecError, match="does not exist, or it is private"):
        await policy.resolve(missing)


async def test_resolve_gh_spec_with_configured_host(git_server, repo):
    _, shas = repo
    policy = RepoPolicy(allow_http=True, provider_urls={"gh": git_server.url})
    spec = policy.parse("gh/org/repo.git/feature/x")
    assert spec.repo_url == git_server.url + "/org/repo"
    assert (await policy.resolve(spec)).commit == shas["feature/x"]
    # the spec keeps its percent-encoding; the ref resolves decoded, as on GitHub
    spec = policy.parse("gh/org/repo/feature%2Fx")
    assert spec.spec == "gh/org/repo/feature%2Fx"
    assert (await policy.resolve(spec)).commit == shas["feature/x"]
    # a web URL on the configured host is read as a GitHub link
    spec = policy.parse(git_server.url + "/org/repo/tree/v1")
    assert spec.provider == "gh" and spec.spec == "gh/org/repo/v1"
    assert (await policy.resolve(spec)).commit == shas["first"]


async def test_unknown_and_deleted_branch(policy, repo, git_server):
    url, _ = repo
    with pytest.raises(SpecError, match="has no branch or tag named nope") as info:
        await policy.resolve(policy.parse({"repo": url, "ref": "nope"}))
    assert info.value.status_code == 404
    policy.resolve_negative_cache_ttl = 0
    git_server.delete_branch("org/repo", "feature/x")
    with pytest.raises(SpecError, match="no branch or tag named feature/x"):
        await policy.resolve(policy.parse({"repo": url, "ref": "feature/x"}))


async def test_empty_private_and_missing_repositories(policy, git_server):
    empty = git_server.create_empty_repo("empty")
    with pytest.raises(SpecError, match="has no commits yet"):
        await policy.resolve(policy.parse(empty))
    with pytest.raises(SpecError, match="empty or has no branch or tag named main"):
        await policy.resolve(policy.parse({"repo": empty, "ref": "main"}))
    private = git_server.create_repo("private")
    git_server.set_private("private")
    with pytest.raises(SpecError, match="does not exist, or it is private") as info:
        await policy.resolve(policy.parse(private))
    assert info.value.status_code == 404
    with pytest.raises(SpecError, match="does not exist, or it is private"):
        await policy.resolve(policy.parse(git_server.url + "/nobody/nothing"))


async def test_timeout_has_its_own_message(policy, git_server):
    url = git_server.create_repo("slow")
    policy.git_timeout = 0.5
    git_server.hold("slow")
    try:
        with pytest.raises(SpecError, match="Timed out contacting") as info:
            await policy.resolve(policy.parse(url))
        assert info.value.status_code == 408
    finally:
        git_server.release("slow")


async def test_cache_coalescing_and_expiry(policy, repo, git_server):
    url, shas = repo
    now = [1000.0]
    policy.clock = lambda: now[0]
    spec = policy.parse({"repo": url, "ref": "main"})
    before = git_server.requests["org/repo"]
    results = await asyncio.gather(*(policy.resolve(spec) for _ in range(10)))
    assert {r.commit for r in results} == {shas["main"]}
    assert git_server.requests["org/repo"] == before + 1  # ten launches, one git call
    # the branch moves; within the TTL the cached commit is served
    new = git_server.commit("org/repo", {"c.txt": "three"}, message="third")
    assert (await policy.resolve(spec)).commit == shas["main"]
    assert git_server.requests["org/repo"] == before + 1
    now[0] += policy.resolve_cache_ttl + 1
    assert (await policy.resolve(spec)).commit == new
    assert git_server.requests["org/repo"] == before + 2


async def test_misses_are_cached_briefly(policy, repo, git_server):
    url, shas = repo
    now = [1000.0]
    policy.clock = lambda: now[0]
    spec = policy.parse({"repo": url, "ref": "later"})
    for _ in range(3):
        with pytest.raises(SpecError):
            await policy.resolve(spec)
    assert git_server.requests["org/repo"] == 1
    git_server.branch("org/repo", "later")
    now[0] += policy.resolve_negative_cache_ttl + 1
    assert (await policy.resolve(spec)).commit == shas["main"]


async def test_cache_is_bounded(policy, repo):
    url, _ = repo
    policy.resolve_cache_size = 3
    for ref in ("main", "v1", "light", "feature/x", "HEAD"):
        await policy.resolve(policy.parse({"repo": url, "ref": ref}))
    assert len(policy.resolve_cache.entries) == 3


async def test_names_resolving_to_private_addresses_are_refused(git_server):
    """Without the allow-list, loopback is refused before git runs: the server sees nothing."""
    policy = RepoPolicy(allow_http=True)
    url = git_server.create_repo("org/repo")
    port = int(git_server.host.split(":")[1])
    with pytest.raises(SpecError, match="loopback address") as info:
        policy.parse(url)
    assert info.value.status_code == 403
    # This machine's own name resolves (via /etc/hosts) to a loopback or private
    # address on any Linux host or container: a DNS name that is not a literal.
    name = socket.gethostname().lower()
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    addresses = {ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}
    assert addresses and not any(a.is_global for a in addresses), addresses
    spec = policy.parse(f"http://{name}:{port}/org/repo")  # offline: a name is fine
    with pytest.raises(SpecError, match=f"{name} resolves to a (loopback|private)") as info:
        await policy.resolve(spec)
    assert info.value.status_code == 403
    # allowed explicitly: resolved, and git is pinned to the checked address
    trusting = RepoPolicy(allow_http=True, allowed_hosts=[f"{name}:{port}"])
    resolved = await trusting.resolve(trusting.parse(f"http://{name}:{port}/org/repo"))
    assert resolved.commit == git_server.sha("org/repo", "main")
    assert git_server.requests["org/repo"] == 1


async def test_redirects_are_not_followed(policy, repo, git_server):
    url, _ = repo
    git_server.redirect("old/name", url)
    before = git_server.requests["org/repo"]
    with pytest.raises(SpecError, match="redirects elsewhere") as info:
        await policy.resolve(policy.parse(git_server.url + "/old/name"))
    assert info.value.status_code == 404
    assert git_server.requests["org/repo"] == before  # the target was never asked


async def test_git_connects_to_the_pinned_address(repo, git_server):
    """git 2.37+ honours http.curloptResolve: a name DNS does not know reaches the pin."""
    _, shas = repo
    port = git_server.host.split(":")[1]
    url = f"http://pinned.invalid:{port}/org/repo"
    args = gitref.ls_remote_command(
        url, "HEAD", allowed_schemes=("http",), pins=[f"pinned.invalid:{port}:127.0.0.1"]
    )
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert gitref.parse_ls_remote(out.decode())["HEAD"] == shas["main"]


async def test_git_config_for_clones(repo, git_server, tmp_path):
    """The pinned, restricted configuration others use to clone, as environment variables."""
    _, shas = repo
    port = int(git_server.host.split(":")[1])
    name = socket.gethostname().lower()
    url = f"http://{name}:{port}/org/repo"
    with pytest.raises(SpecError, match="resolves to"):
        await RepoPolicy(allow_http=True).git_config(url)
    pairs = await RepoPolicy(allow_http=True, allowed_hosts=[name]).git_config(url)
    config = dict(pairs)
    assert config["protocol.allow"] == "never" and config["credential.helper"] == ""
    assert config["http.curloptResolve"].startswith(f"{name}:{port}:")
    # the same pins steer a clone of a name DNS does not know
    pairs = [(k, v) for k, v in pairs if k != "http.curloptResolve"]
    pairs.append(("http.curloptResolve", f"pinned.invalid:{port}:127.0.0.1"))
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", **gitref.config_env(pairs))
    proc = await asyncio.create_subprocess_exec(
        "git",
        "clone",
        "-q",
        "--",
        f"http://pinned.invalid:{port}/org/repo",
        str(tmp_path / "clone"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "clone" / "b.txt").read_text() == "two"
    # and file:// is refused by the same configuration
    proc = await asyncio.create_subprocess_exec(
        "git",
        "clone",
        "-q",
        "--",
        f"file://{git_server.path('org/repo')}",
        str(tmp_path / "local"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode != 0 and "not allowed" in err.decode()


async def test_spawners_share_the_default_cache(repo, git_server):
    """One policy per spawner (per user): the default cache is shared by all of them."""
    url, shas = repo
    settings = {"allow_http": True, "allowed_hosts": [git_server.host]}
    first, second = RepoPolicy(**settings), RepoPolicy(**settings)
    assert first.resolve_cache is second.resolve_cache is resolver.shared_resolve_cache()
    results = await asyncio.gather(
        first.resolve(first.parse({"repo": url, "ref": "dev-or-main"})),
        second.resolve(second.parse({"repo": url, "ref": "dev-or-main"})),
        return_exceptions=True,
    )
    assert all(isinstance(r, SpecError) for r in results)
    assert (await first.resolve(first.parse(url))).commit == shas["main"]
    assert (await second.resolve(second.parse(url))).commit == shas["main"]
    assert git_server.requests["org/repo"] == 2  # one miss, one hit, shared
    # other settings never see these results
    other = RepoPolicy(allow_http=True, allowed_hosts=[git_server.host, "example.org"])
    assert (await other.resolve(other.parse(url))).commit == shas["main"]
    assert git_server.requests["org/repo"] == 3


async def test_output_is_bounded(policy, repo, monkeypatch):
    """A server that sends more than a ref listing needs is cut off, not buffered."""
    url, _ = repo
    monkeypatch.setattr(resolver, "MAX_GIT_OUTPUT", 60)  # two ref lines are ~100 bytes
    with pytest.raises(SpecError, match="sent more data") as info:
        await policy.resolve(policy.parse({"repo": url, "ref": "light"}))
    assert info.value.status_code == 400
