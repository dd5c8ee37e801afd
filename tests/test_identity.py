"""Pure rules of the anonymous authenticator: names, client addresses, rate limits, next URLs."""

import os
import re
import socket

import pytest

from binder_spawner.identity import (
    DEFAULT_TRUSTED_NETWORKS,
    SlidingWindowLimiter,
    address_bucket,
    anonymous_name,
    believes_forwarded_for,
    client_address,
    launch_repo,
    repo_slug,
    safe_next_url,
    socket_owner,
)
from binder_spawner.netcheck import parse_networks

SAFE_SLUG = re.compile(r"^[a-z]([a-z0-9]|-(?=[a-z0-9]))*$")


@pytest.mark.parametrize(
    "repo, slug",
    [
        pytest.param("https://github.com/org/My_Repo.git", "my-repo", id="url-dotgit"),
        pytest.param("https://gitlab.com/group/sub/project/", "project", id="gitlab-subgroup"),
        pytest.param("gh/org/numpy-tutorial/main", "numpy-tutorial", id="spec-drops-ref"),
        pytest.param("org/repo", "repo", id="short"),
        pytest.param("https://github.com/org/2048", "org", id="digits-use-parent"),
        pytest.param("https://example.org/x/%F0%9F%92%A5", "x", id="no-ascii-falls-back"),
        pytest.param("", "", id="empty"),
        pytest.param("https://github.com/org/-a--b-", "a-b", id="hyphens"),
    ],
)
def test_repo_slug(repo, slug):
    assert repo_slug(repo) == slug


def test_anonymous_names_are_safe_slugs_and_unique():
    names = {anonymous_name("https://github.com/org/Data.Science-101") for _ in range(500)}
    assert len(names) == 500
    for name in names:
        assert SAFE_SLUG.match(name), name
        assert name.startswith("data-science-")
        assert len(name) <= 30
    assert anonymous_name("").startswith("binder-")
    assert anonymous_name("x", prefix="anon-").startswith("anon-x-")


def test_launch_repo_reads_next_query():
    assert launch_repo("/hub/spawn?repo=https%3A%2F%2Fgithub.com%2Fa%2Fb&ref=main") == (
        "https://github.com/a/b"
    )
    assert launch_repo("/hub/spawn?opt-repo=gh/a/b/main") == "gh/a/b/main"
    assert launch_repo("/hub/home") == ""


TRUSTED = parse_networks(DEFAULT_TRUSTED_NETWORKS)
CLUSTER = parse_networks(["10.0.0.0/8"])


@pytest.mark.parametrize(
    "peer, xff, trusted, hops, expected",
    [
        pytest.param("203.0.113.5", [], TRUSTED, 1, "203.0.113.5", id="direct-no-header"),
        pytest.param(
            "203.0.113.5", ["198.51.100.1"], TRUSTED, 1, "203.0.113.5", id="untrusted-peer-ignored"
        ),
        pytest.param("127.0.0.1", ["198.51.100.1"], TRUSTED, 1, "198.51.100.1", id="proxy"),
        pytest.param(
            "127.0.0.1",
            ["6.6.6.6, 198.51.100.1"],
            TRUSTED,
            1,
            "198.51.100.1",
            id="client-prepended-spoof",
        ),
        # a client on the proxy's own machine: what the proxy appended is the end
        pytest.param("127.0.0.1", ["6.6.6.6, 127.0.0.1"], TRUSTED, 1, "127.0.0.1", id="local"),
        # a LAN client in a trusted network sends its own header through the proxy
        pytest.param(
            "10.0.0.2", ["6.6.6.6, 10.1.2.3"], CLUSTER, 1, "10.1.2.3", id="lan-client-spoof"
        ),
        pytest.param(
            "10.0.0.2",
            ["6.6.6.6, 198.51.100.1, 10.0.0.9"],
            CLUSTER,
            2,
            "198.51.100.1",
            id="ingress-then-proxy",
        ),
        # two hops allowed, but the first entry is a client, not a proxy
        pytest.param(
            "10.0.0.2", ["6.6.6.6, 198.51.100.1"], CLUSTER, 2, "198.51.100.1", id="hops-a-bound"
        ),
        pytest.param("127.0.0.1", ["198.51.100.1"], [], 1, "127.0.0.1", id="nothing-trusted"),
        pytest.param("127.0.0.1", ["198.51.100.1"], TRUSTED, 0, "127.0.0.1", id="zero-hops"),
        pytest.param("127.0.0.1", ["garbage"], TRUSTED, 1, "127.0.0.1", id="garbled"),
        pytest.param("::ffff:127.0.0.1", ["2001:db8::5"], TRUSTED, 1, "2001:db8::5", id="v4mapped"),
        pytest.param("127.0.0.1", ["[2001:db8::7]:443"], TRUSTED, 1, "2001:db8::7", id="bracketed"),
        pytest.param("127.0.0.1", ["10.1.1.1"], TRUSTED, 1, "10.1.1.1", id="private-client"),
        pytest.param(
            "10.0.0.2", ["10.0.0.3", "10.0.0.4"], CLUSTER, 3, "10.0.0.3", id="all-trusted"
        ),
    ],
)
def test_client_address(peer, xff, trusted, hops, expected):
    assert client_address(peer, xff, trusted, hops=hops) == expected


def test_default_trusts_one_proxy_on_loopback():
    assert client_address("127.0.0.1", ["6.6.6.6, 192.168.1.20"], TRUSTED) == "192.168.1.20"
    assert client_address("192.168.1.20", ["6.6.6.6"], TRUSTED) == "192.168.1.20"


def test_socket_owner_names_the_uid_of_a_connection_on_this_machine():
    with socket.create_server(("127.0.0.1", 0)) as server:
        hub = server.getsockname()
        with socket.create_connection(hub, source_address=("127.0.0.6", 0)) as client:
            peer = client.getsockname()
            tables = [open(path).read() for path in ("/proc/net/tcp", "/proc/net/tcp6")]
    assert socket_owner(tables, peer, hub) == os.geteuid()
    # a peer on another machine has no socket here
    assert socket_owner(tables, ("192.0.2.9", peer[1]), hub) is None


@pytest.mark.parametrize(
    "owner, runs_a_server, believed",
    [
        pytest.param(0, False, True, id="the-hubs-proxy-on-its-machine"),
        pytest.param(2000042, False, False, id="a-sandbox-on-the-hubs-machine"),
        pytest.param(None, False, True, id="a-proxy-elsewhere"),
        pytest.param(None, True, False, id="a-user-pod"),
    ],
)
def test_only_proxies_may_name_the_client(owner, runs_a_server, believed):
    assert believes_forwarded_for(owner, 0, runs_a_server) is believed


def test_address_bucket_groups_ipv6_networks():
    assert address_bucket("2001:db8:1:2::1") == address_bucket("2001:db8:1:2:ffff::9")
    assert address_bucket("2001:db8:1:2::1") != address_bucket("2001:db8:1:3::1")
    assert address_bucket("2001:db8:1:2::1", 48) == address_bucket("2001:db8:1:3::1", 48)
    assert address_bucket("192.0.2.1") == "192.0.2.1"


def test_sliding_window_limiter():
    limiter = SlidingWindowLimiter(2, window=60)
    assert limiter.hit("a", now=0) == (True, 0)
    assert limiter.hit("a", now=10) == (True, 0)
    assert limiter.hit("a", now=20) == (False, 40)
    assert limiter.hit("b", now=20) == (True, 0)
    # a refused attempt is not recorded: the first slot frees at 60
    assert limiter.hit("a", now=59.5) == (False, 1)
    assert limiter.hit("a", now=60.5) == (True, 0)
    assert limiter.usage("a", now=60.5) == 2


def test_sliding_window_limiter_bounded_memory():
    limiter = SlidingWindowLimiter(1, window=60, max_keys=100)
    for i in range(1000):
        assert limiter.hit(f"k{i}", now=i * 0.001)[0]
    assert len(limiter._events) <= 100
    assert SlidingWindowLimiter(0).hit("x") == (True, 0)


@pytest.mark.parametrize(
    "url, base, ok",
    [
        pytest.param("/hub/spawn?repo=x&ref=y", "/", True, id="plain"),
        pytest.param("/binder/hub/spawn?repo=x", "/binder/", True, id="under-base"),
        pytest.param("/other/app", "/binder/", False, id="other-prefix"),
        pytest.param("/binderx/hub", "/binder/", False, id="prefix-lookalike"),
        pytest.param("/binder", "/binder/", True, id="base-itself"),
        pytest.param("/binder/../other", "/binder/", False, id="dotdot"),
        pytest.param("/binder/%2e%2e/other", "/binder/", False, id="encoded-dotdot"),
        pytest.param("/\t/evil.example", "/", False, id="tab"),
        pytest.param("/%09/evil.example", "/", False, id="encoded-tab"),
        pytest.param("/%5Cevil.example", "/", False, id="encoded-backslash"),
        pytest.param("/%2F/evil.example", "/", False, id="encoded-slash"),
        pytest.param("//evil.example", "/", False, id="protocol-relative"),
        pytest.param("https://evil.example/", "/", False, id="absolute"),
        pytest.param("", "/", False, id="empty"),
    ],
)
def test_safe_next_url(url, base, ok):
    assert bool(safe_next_url(url, base)) is ok


def test_one_reading_of_query_values():
    """The router, the spawner's form and RepoPolicy.parse read a value the same way."""
    from binder_spawner.identity import first_repo_param
    from binder_spawner.querydata import first_value, first_values
    from binder_spawner.repos import RepoPolicy, SpecError

    assert first_value([b"gh/a/b", b"gh/c/d"]) == "gh/a/b"
    assert first_value(["gh/a/b"]) == "gh/a/b"
    assert first_value("gh/a/b") == "gh/a/b"
    assert first_value([]) == first_value(None) == first_value(7) == ""
    assert first_value([b"\xff"]) == "\ufffd"
    assert first_values({"repo": [b"x"], "ref": []}) == {"repo": "x", "ref": ""}
    # the router sees the first repo=, as the spawner's form reads it
    assert first_repo_param({"repo": [b"", b"gh/c/d"], "opt-repo": [b"gh/a/b"]}) == "gh/a/b"
    with pytest.raises(ValueError, match="exactly one value for ref"):
        first_value(["a", "b"], "ref")
    with pytest.raises(ValueError, match="ref is not valid UTF-8"):
        first_value([b"\xff"], "ref")
    with pytest.raises(ValueError, match="ref must be a string"):
        first_value(7, "ref")
    with pytest.raises(SpecError, match="exactly one value for repository"):
        RepoPolicy().parse({"repo": ["gh/a/b/main", "gh/c/d/main"]})
