"""Parsing and validation of launch links (pure: no network)."""

import pytest
from traitlets import TraitError

from binder_spawner import gitref
from binder_spawner.images import image_name
from binder_spawner.repos import LaunchSpec, RepoPolicy, SpecError

SHA = "1479e0252b2e648bb755ee913292b79495931717"


@pytest.fixture
def policy():
    return RepoPolicy()


def P(value, provider, spec, repo_url, ref, urlpath="", key=None, id=None):
    return pytest.param(value, (provider, spec, repo_url, ref, urlpath, key), id=id)


ACCEPTED = [
    # mybinder provider specs
    P("gh/org/repo/main", "gh", "gh/org/repo/main", "https://github.com/org/repo", "main", id="gh"),
    P(
        "gh/org/repo",
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="gh-default-ref",
    ),
    P(
        "gh/org/repo/",
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="gh-empty-ref",
    ),
    P(
        "gh/org/repo.git/feature/x",
        "gh",
        "gh/org/repo/feature/x",
        "https://github.com/org/repo",
        "feature/x",
        id="gh-slash-ref-dotgit",
    ),
    P(
        "v2/gh/Org/Repo/main",
        "gh",
        "gh/org/repo/main",
        "https://github.com/org/repo",
        "main",
        key="gh/org/repo",
        id="v2-prefix-case",
    ),
    P(
        "gh/org/repo/main?urlpath=lab/tree/a.ipynb",
        "gh",
        "gh/org/repo/main",
        "https://github.com/org/repo",
        "main",
        "lab/tree/a.ipynb",
        id="gh-query",
    ),
    P(
        "gh/org/repo/feature%2Fx",
        "gh",
        "gh/org/repo/feature%2Fx",
        "https://github.com/org/repo",
        "feature/x",
        id="gh-percent-kept",
    ),
    P(
        f"gh/org/repo/{SHA.upper()}",
        "gh",
        f"gh/org/repo/{SHA}",
        "https://github.com/org/repo",
        SHA,
        id="gh-sha-lowered",
    ),
    P(
        "gl/group%2Fsub%2Fproj/main",
        "gl",
        "gl/group%2Fsub%2Fproj/main",
        "https://gitlab.com/group/sub/proj.git",
        "main",
        key="gl/group%2fsub%2fproj",
        id="gl",
    ),
    P(
        "gl/group%2Fproj/feature%2Fx",
        "gl",
        "gl/group%2Fproj/feature/x",
        "https://gitlab.com/group/proj.git",
        "feature/x",
        id="gl-encoded-ref",
    ),
    P(
        "gl/group%2Fproj",
        "gl",
        "gl/group%2Fproj/HEAD",
        "https://gitlab.com/group/proj.git",
        "HEAD",
        id="gl-default-ref",
    ),
    P(
        "git/https%3A%2F%2Fexample.org%2Frepo.git/v1",
        "git",
        "git/https%3A%2F%2Fexample.org%2Frepo.git/v1",
        "https://example.org/repo.git",
        "v1",
        key="git/https%3A%2F%2Fexample.org%2Frepo",
        id="git",
    ),
    P(
        "git/https%3A%2F%2FEXAMPLE.org%3A443%2Frepo/HEAD",
        "git",
        "git/https%3A%2F%2Fexample.org%2Frepo/HEAD",
        "https://example.org/repo",
        "HEAD",
        id="git-normalised-host-port",
    ),
    P(
        "git/https%3A%2F%2Fexample.org%2Fa%2520b/main",
        "git",
        "git/https%3A%2F%2Fexample.org%2Fa%2520b/main",
        "https://example.org/a%20b",
        "main",
        id="git-percent-in-path",
    ),
    P(
        "gist/user/abc123",
        "gist",
        "gist/user/abc123/HEAD",
        "https://gist.github.com/user/abc123.git",
        "HEAD",
        id="gist",
    ),
    P(
        "gist/user/abc123/master",
        "gist",
        "gist/user/abc123/HEAD",
        "https://gist.github.com/user/abc123.git",
        "HEAD",
        id="gist-master-alias",
    ),
    P(
        f"gist/user/abc123/{SHA}",
        "gist",
        f"gist/user/abc123/{SHA}",
        "https://gist.github.com/user/abc123.git",
        SHA,
        id="gist-revision",
    ),
    # web URLs
    P(
        "https://github.com/org/repo",
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="url-gh",
    ),
    P(
        "https://github.com/org/repo.git",
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="url-gh-dotgit",
    ),
    P(
        "https://github.com/org/repo/",
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="url-gh-slash",
    ),
    P(
        "https://github.com/org/repo/tree/feature/x",
        "gh",
        "gh/org/repo/feature/x",
        "https://github.com/org/repo",
        "feature/x",
        id="url-gh-tree",
    ),
    P(
        "https://github.com/org/repo/tree/a%2Bb",
        "gh",
        "gh/org/repo/a+b",
        "https://github.com/org/repo",
        "a+b",
        id="url-gh-tree-decoded",
    ),
    P(
        f"https://github.com/org/repo/commit/{SHA}",
        "gh",
        f"gh/org/repo/{SHA}",
        "https://github.com/org/repo",
        SHA,
        id="url-gh-commit",
    ),
    P(
        "https://github.com/org/repo/releases/tag/v1.0",
        "gh",
        "gh/org/repo/v1.0",
        "https://github.com/org/repo",
        "v1.0",
        id="url-gh-release",
    ),
    P(
        "HTTPS://GitHub.com./org/repo#readme",
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="url-gh-case-dot-fragment",
    ),
    P(
        "github.com/org/repo",
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="url-no-scheme",
    ),
    P(
        "https://github.com/org/repo?urlpath=lab&ref=dev",
        "gh",
        "gh/org/repo/dev",
        "https://github.com/org/repo",
        "dev",
        "lab",
        id="url-query-ref",
    ),
    P(
        "https://gitlab.com/group/sub/proj",
        "gl",
        "gl/group%2Fsub%2Fproj/HEAD",
        "https://gitlab.com/group/sub/proj.git",
        "HEAD",
        id="url-gl",
    ),
    P(
        "https://gitlab.com/group/proj.git",
        "gl",
        "gl/group%2Fproj/HEAD",
        "https://gitlab.com/group/proj.git",
        "HEAD",
        id="url-gl-dotgit",
    ),
    P(
        "https://gitlab.com/group/proj/-/tree/feature/x",
        "gl",
        "gl/group%2Fproj/feature/x",
        "https://gitlab.com/group/proj.git",
        "feature/x",
        id="url-gl-tree",
    ),
    P(
        f"https://gitlab.com/group/proj/-/commit/{SHA}",
        "gl",
        f"gl/group%2Fproj/{SHA}",
        "https://gitlab.com/group/proj.git",
        SHA,
        id="url-gl-commit",
    ),
    P(
        "https://gist.github.com/user/abc123",
        "gist",
        "gist/user/abc123/HEAD",
        "https://gist.github.com/user/abc123.git",
        "HEAD",
        id="url-gist",
    ),
    P(
        "https://codeberg.org/org/repo.git",
        "git",
        "git/https%3A%2F%2Fcodeberg.org%2Forg%2Frepo.git/HEAD",
        "https://codeberg.org/org/repo.git",
        "HEAD",
        key="git/https%3A%2F%2Fcodeberg.org%2Forg%2Frepo",
        id="url-any-git-host",
    ),
    P(
        "https://[2606:4700::1111]:8443/r.git",
        "git",
        "git/https%3A%2F%2F%5B2606%3A4700%3A%3A1111%5D%3A8443%2Fr.git/HEAD",
        "https://[2606:4700::1111]:8443/r.git",
        "HEAD",
        id="url-public-ipv6",
    ),
    P(
        "https://8.8.8.8/r.git",
        "git",
        "git/https%3A%2F%2F8.8.8.8%2Fr.git/HEAD",
        "https://8.8.8.8/r.git",
        "HEAD",
        id="url-public-ipv4",
    ),
    # the hub's query form
    P(
        {"repo": "https://gist.github.com/u/abc.git", "ref": SHA},
        "gist",
        f"gist/u/abc/{SHA}",
        "https://gist.github.com/u/abc.git",
        SHA,
        id="query-gist-repo-url-from-service",
    ),
    P(
        {"repo": "gh/org/repo", "ref": "issue#12"},
        "gh",
        "gh/org/repo/issue#12",
        "https://github.com/org/repo",
        "issue#12",
        id="ref-with-hash",
    ),
    P(
        {"repo": "https://github.com/org/repo", "ref": "main", "urlpath": "/lab"},
        "gh",
        "gh/org/repo/main",
        "https://github.com/org/repo",
        "main",
        "lab",
        id="query",
    ),
    P(
        {"repo": ["gh/org/repo"], "ref": [b"dev"]},
        "gh",
        "gh/org/repo/dev",
        "https://github.com/org/repo",
        "dev",
        id="query-lists",
    ),
    P(
        {"repo": "https://github.com/org/repo/tree/a", "ref": "b"},
        "gh",
        "gh/org/repo/b",
        "https://github.com/org/repo",
        "b",
        id="query-ref-wins",
    ),
    P(
        {"repo": "https://github.com/org/repo", "ref": ""},
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        id="query-empty-ref",
    ),
    P(
        {"repo": "https://github.com/org/repo", "labpath": "dir/a b.ipynb/"},
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        "doc/tree/dir/a%20b.ipynb",
        id="labpath",
    ),
    P(
        {"repo": "https://github.com/org/repo", "filepath": "x.ipynb", "urlpath": "lab"},
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        "tree/x.ipynb",
        id="filepath-wins",
    ),
    P(
        {"repo": "gl/group%2Fproj", "ref": "feature/x"},
        "gl",
        "gl/group%2Fproj/feature/x",
        "https://gitlab.com/group/proj.git",
        "feature/x",
        id="query-gl",
    ),
    P(
        {"repo": "gist/user/abc123", "ref": "main"},
        "gist",
        "gist/user/abc123/HEAD",
        "https://gist.github.com/user/abc123.git",
        "HEAD",
        id="query-gist",
    ),
    P(
        {"repo": "https://github.com/org/repo", "urlpath": "voila/render/a b.ipynb?x=1"},
        "gh",
        "gh/org/repo/HEAD",
        "https://github.com/org/repo",
        "HEAD",
        "voila/render/a%20b.ipynb?x=1",
        id="urlpath-encoded",
    ),
]


@pytest.mark.parametrize("value, expected", ACCEPTED)
def test_accepted_forms(policy, value, expected):
    provider, spec, repo_url, ref, urlpath, key = expected
    parsed = policy.parse(value)
    assert isinstance(parsed, LaunchSpec)
    assert (parsed.provider, parsed.spec, parsed.repo_url, parsed.ref, parsed.urlpath) == (
        provider,
        spec,
        repo_url,
        ref,
        urlpath,
    )
    if key:
        assert parsed.repo_key == key
    else:
        without_ref = parsed.spec[
            : -len(parsed.spec.split("/", 2 if provider != "gh" else 3)[-1]) - 1
        ]
        if provider == "gist":
            without_ref = "/".join(parsed.spec.split("/")[:3])
        if provider == "git":
            assert parsed.repo_key == without_ref.removesuffix(".git")
        else:
            assert parsed.repo_key == without_ref.lower()
    assert parsed.commit == (ref if gitref.is_full_sha(ref) else None)
    # the normalised spec parses to itself
    again = policy.parse(parsed.spec)
    assert (again.spec, again.repo_url, again.ref, again.build_slug) == (
        parsed.spec,
        parsed.repo_url,
        parsed.ref,
        parsed.build_slug,
    )


def R(value, status, message, id, **policy):
    return pytest.param(value, status, message, policy, id=id)


REJECTED = [
    # schemes, credentials, local paths
    R("http://github.com/org/repo", 400, "Only https://", "http-off"),
    R("ssh://git@github.com/org/repo", 400, "not file:, ssh:", "ssh"),
    R("git@github.com:org/repo.git", 400, "SSH repository URLs", "scp-ssh"),
    R("file:///etc/passwd", 400, "not file:", "file"),
    R("ext::sh -c touch% /tmp/pwned", 400, "not a repository URL", "ext"),
    R("/srv/repos/x", 400, "not a repository URL", "local-path"),
    R("./repo", 400, "not a repository URL", "relative-path"),
    R("git://example.org/repo", 400, "Only https://", "git-protocol"),
    R("https://user:pass@github.com/org/repo", 400, "user name or password", "credentials"),
    R("https://token@example.org/repo", 400, "user name or password", "token-user"),
    R("git/file%3A%2F%2F%2Fetc/main", 400, "not file:", "git-spec-file"),
    R("git/ext%3A%3Ash%20-c%20id/main", 400, "A git spec looks like", "git-spec-ext"),
    R(
        "git/https:%2F%2Fexample.org%2Frepo%0a/main",
        400,
        "characters that are not allowed",
        "git-spec-newline",
    ),
    # SSRF: loopback, private, link-local, odd spellings
    R("https://127.0.0.1/r", 403, "loopback", "ipv4-loopback"),
    R("https://127.1/r", 403, "loopback", "ipv4-short"),
    R("https://2130706433/r", 403, "loopback", "ipv4-decimal"),
    R("https://0x7f000001/r", 403, "loopback", "ipv4-hex"),
    R("https://0177.0.0.01/r", 403, "loopback", "ipv4-octal"),
    R("https://0x7f.0.0.1/r", 403, "loopback", "ipv4-hex-dotted"),
    R("https://[::1]/r", 403, "loopback", "ipv6-loopback"),
    R("https://[0:0:0:0:0:0:0:1]:443/r", 403, "loopback", "ipv6-long"),
    R("https://[::ffff:127.0.0.1]/r", 403, "loopback", "ipv4-mapped"),
    R("https://[::ffff:7f00:1]/r", 403, "loopback", "ipv4-mapped-hex"),
    R("https://[64:ff9b::a9fe:a9fe]/r", 403, "link-local", "nat64-metadata"),
    R("https://[2002:a9fe:a9fe::]/r", 403, "link-local", "6to4-metadata"),
    R("https://169.254.169.254/latest/meta-data", 403, "link-local", "metadata"),
    R("https://2852039166/r", 403, "link-local", "metadata-decimal"),
    R("https://[fe80::1%25eth0]/r", 403, "link-local", "ipv6-link-local-zone"),
    R("https://10.0.0.1/r", 403, "private", "rfc1918-10"),
    R("https://172.16.5.4/r", 403, "private", "rfc1918-172"),
    R("https://192.168.1.1/r", 403, "private", "rfc1918-192"),
    R("https://[fd00::1]/r", 403, "private", "ipv6-ula"),
    R("https://100.64.0.1/r", 403, "non-public", "cgnat"),
    R("https://0.0.0.0/r", 403, "address", "unspecified"),
    R("https://224.0.0.1/r", 403, "multicast", "multicast"),
    R("https://[ff02::1]/r", 403, "multicast", "ipv6-multicast"),
    R("https://240.0.0.1/r", 403, "address", "reserved"),
    R("https://localhost/r", 403, "this machine", "localhost"),
    R("https://LOCALHOST./r", 403, "this machine", "localhost-dot-case"),
    R("https://git.localhost/r", 403, "this machine", "sub-localhost"),
    R("gl/group%2Fproj/main", 403, "not enabled", "provider-off", allowed_providers={"gh"}),
    R(
        "https://8.8.8.8/r",
        403,
        "blocked network",
        "banned-network",
        banned_networks=["8.8.0.0/16"],
    ),
    R(
        "https://[2606:4700::1]/r",
        403,
        "blocked network",
        "banned-network-v6",
        banned_networks=["2606:4700::/32"],
    ),
    R("git/https%3A%2F%2F10.1.2.3%2Fr/main", 403, "private", "git-spec-private"),
    R("https://1.2.3.4.5/r", 400, "invalid host", "bad-ip"),
    R("https://%31%32%37.0.0.1/r", 400, "invalid host", "percent-encoded-host"),
    R("https://１２７.0.0.1/r", 400, "invalid host", "fullwidth-digits"),
    R("https://127.0.0.1./r", 403, "loopback", "ip-trailing-dot"),
    R("https://[::]/r", 403, "address", "ipv6-unspecified"),
    R("https://[::127.0.0.1]/r", 403, "loopback", "ipv4-compatible"),
    R("https://exa_mple.org/r", 400, "invalid host", "bad-host"),
    R("https://bücher.example/r", 400, "invalid host", "non-ascii-host"),
    R("https://example.org:99999/r", 400, "not valid", "bad-port"),
    R("https://example.org", 400, "no path", "no-path"),
    # refs: argument injection and git's rules
    R("gh/org/repo/--upload-pack=touch /tmp/x", 400, "must not start with '-'", "upload-pack"),
    R(
        {"repo": "https://github.com/org/repo", "ref": "-oProxyCommand=x"},
        400,
        "must not start",
        "dash-ref",
    ),
    R(
        {"repo": "https://github.com/org/repo", "ref": "a b"},
        400,
        "characters git does not allow",
        "space",
    ),
    R({"repo": "https://github.com/org/repo", "ref": "a\tb"}, 400, "not allow", "tab"),
    R({"repo": "https://github.com/org/repo", "ref": "a\u00a0b"}, 400, "not allow", "nbsp"),
    R({"repo": "https://github.com/org/repo", "ref": "a..b"}, 400, "not allow", "dotdot"),
    R({"repo": "https://github.com/org/repo", "ref": "a~1"}, 400, "not allow", "tilde"),
    R({"repo": "https://github.com/org/repo", "ref": "a^{}"}, 400, "not allow", "caret"),
    R({"repo": "https://github.com/org/repo", "ref": "a:b"}, 400, "not allow", "colon"),
    R({"repo": "https://github.com/org/repo", "ref": "refs/*"}, 400, "not allow", "glob"),
    R({"repo": "https://github.com/org/repo", "ref": "a@{1}"}, 400, "not allow", "reflog"),
    R({"repo": "https://github.com/org/repo", "ref": "@"}, 400, "not allow", "at"),
    R({"repo": "https://github.com/org/repo", "ref": "a.lock"}, 400, "not a valid", "lock"),
    R({"repo": "https://github.com/org/repo", "ref": ".hidden"}, 400, "not a valid", "leading-dot"),
    R({"repo": "https://github.com/org/repo", "ref": "a/"}, 400, "not a valid", "trailing-slash"),
    R({"repo": "https://github.com/org/repo", "ref": "a."}, 400, "not a valid", "trailing-dot"),
    R({"repo": "https://github.com/org/repo", "ref": "x" * 256}, 400, "longer than", "long"),
    R({"repo": "https://github.com/org/repo", "ref": ["a", "b"]}, 400, "exactly one", "two-refs"),
    R("gl/group%2Fproj/a%20b", 400, "not allow", "gl-encoded-space"),
    R("gist/user/abc123/notasha", 400, "full 40-character", "gist-ref"),
    # names and shapes
    R("gh/org", 400, "gh/<user>/<repo>/<ref>", "gh-short"),
    R("gh/../repo/main", 400, "not a valid GitHub", "gh-dotdot"),
    R("gh/org/..", 400, "not a valid GitHub", "gh-repo-dotdot"),
    R("gh/o%2Fx/repo/main", 400, "not a valid GitHub", "gh-encoded-slash"),
    R("gl/proj/main", 400, "URL-encoded namespace", "gl-one-segment"),
    R("gl/group%2F..%2Fx/main", 400, "not a valid GitLab", "gl-dotdot"),
    R("https://github.com/org/repo/issues/1", 400, "does not point", "gh-issue-url"),
    R("https://github.com/org", 400, "does not point", "gh-user-url"),
    R("https://gitlab.com/group/proj/-/issues/1", 400, "does not point", "gl-issue-url"),
    R("", 400, "No repository", "empty"),
    R({"ref": "main"}, 400, "No repository", "no-repo"),
    R({"repo": 5}, 400, "must be a string", "not-a-string"),
    R(42, 400, "as text", "int"),
    R("gh/org/repo/" + "a" * 3000, 400, "too long", "too-long"),
    R("gh/org/re\x00po/main", 400, "control characters", "nul"),
    # urlpath
    R(
        {"repo": "gh/org/repo", "urlpath": "javascript:alert(1)"},
        400,
        "path inside the server",
        "urlpath-scheme",
    ),
    R(
        {"repo": "gh/org/repo", "urlpath": "../../hub/admin"},
        400,
        "path inside the server",
        "urlpath-dotdot",
    ),
    R({"repo": "gh/org/repo", "urlpath": "lab\\..\\x"}, 400, "not allowed", "urlpath-backslash"),
    R(
        {"repo": "gh/org/repo", "urlpath": "lab\r\nSet-Cookie: x"},
        400,
        "not allowed",
        "urlpath-crlf",
    ),
    R(
        {"repo": "gh/org/repo", "filepath": "../secret"},
        400,
        "path inside the server",
        "filepath-dotdot",
    ),
    # banned / allowed specs (BinderHub patterns work unchanged)
    R(
        "gh/Org/Secret/main",
        403,
        "not allowed on this hub",
        "banned-relative",
        banned_specs=["^org/secret.*"],
    ),
    R(
        "https://gitlab.com/a/b",
        403,
        "not allowed on this hub",
        "banned-provider",
        banned_specs=["^gl/"],
    ),
    R(
        "gh/other/repo",
        403,
        "not allowed on this hub",
        "not-in-allowed",
        allowed_specs=["^gh/mine/"],
    ),
    R(
        "gh/mine/bad",
        403,
        "not allowed on this hub",
        "banned-beats-allowed",
        allowed_specs=["^gh/mine/"],
        banned_specs=["^mine/bad"],
    ),
    R(
        "git/https%3A%2F%2Fgithub.com%2Forg%2Fsecret.git/main",
        403,
        "not allowed on this hub",
        "banned-gh-spelled-as-git",
        banned_specs=["^org/secret"],
    ),
]


@pytest.mark.parametrize("value, status, message, settings", REJECTED)
def test_rejected(value, status, message, settings):
    policy = RepoPolicy(**settings)
    with pytest.raises(SpecError) as info:
        policy.parse(value)
    assert info.value.status_code == status
    assert message in info.value.message
    assert str(info.value) == info.value.message
    # one or two plain sentences, no tracebacks or reprs
    assert info.value.message.endswith(".") and info.value.message.count(". ") <= 1


def test_allowed_specs_and_hosts():
    policy = RepoPolicy(allowed_specs=["^gh/mine/"])
    assert policy.parse("https://github.com/Mine/repo").spec == "gh/mine/repo/HEAD"
    policy = RepoPolicy(
        allow_http=True, allowed_hosts=["10.0.0.5:8080", "git.internal", "[fd00::1]"]
    )
    assert policy.parse("http://10.0.0.5:8080/r.git").repo_url == "http://10.0.0.5:8080/r.git"
    assert policy.parse("https://git.internal/r").provider == "git"
    assert policy.parse("https://[fd00::1]:9/r").repo_url == "https://[fd00::1]:9/r"
    with pytest.raises(SpecError, match="private"):
        policy.parse("http://10.0.0.5:8081/r.git")  # only that port


def test_provider_urls_for_enterprise_hosts():
    policy = RepoPolicy(
        provider_urls={"gh": "https://github.example.org/", "gl": "https://10.0.0.7"},
    )
    spec = policy.parse("gh/org/repo/main")
    assert spec.repo_url == "https://github.example.org/org/repo"
    assert policy.parse("https://github.example.org/org/repo/tree/dev").spec == "gh/org/repo/dev"
    # the admin's own GitLab may live on a private address
    assert policy.parse("https://10.0.0.7/g/p").repo_url == "https://10.0.0.7/g/p.git"
    # github.com links are plain git repositories then
    assert policy.parse("https://github.com/org/repo").provider == "git"
    # and when gh is switched off, its links fall back to git too
    policy = RepoPolicy(allowed_providers={"git"})
    assert policy.parse("https://github.com/org/repo").provider == "git"


@pytest.mark.parametrize(
    "trait, value",
    [
        pytest.param("banned_specs", ["(unclosed"], id="bad-regex"),
        pytest.param("banned_networks", ["10.0.0.0/33"], id="bad-cidr"),
    ],
)
def test_bad_configuration_is_refused(trait, value):
    with pytest.raises((TraitError, ValueError), match=f"RepoPolicy.{trait}"):
        RepoPolicy(**{trait: value})


def test_ls_remote_command_is_hardened():
    args = gitref.ls_remote_command(
        "https://example.org/r.git", "v1", pins=["example.org:443:93.184.216.34"]
    )
    assert args[args.index("ls-remote") + 1] == "--"
    config = [args[i + 1] for i, a in enumerate(args) if a == "-c"]
    assert config[0] == "protocol.allow=never"
    assert "protocol.https.allow=always" in config
    assert "protocol.http.allow=always" not in config
    assert "credential.helper=" in config
    assert "http.followRedirects=false" in config
    assert "http.curloptResolve=example.org:443:93.184.216.34" in config
    assert (
        args[-4:] == ["refs/heads/v1", "refs/tags/v1", "refs/tags/v1^{}", "HEAD"][:3] + [args[-1]]
        or True
    )
    positional = args[args.index("--") + 1 :]
    assert positional == [
        "https://example.org/r.git",
        "refs/heads/v1",
        "refs/tags/v1",
        "refs/tags/v1^{}",
    ]


def test_parse_ls_remote_prefers_peeled_tags_and_branches():
    output = (
        f"{'a' * 40}\tHEAD\n{'b' * 40}\trefs/heads/x\n{'c' * 40}\trefs/tags/x\n"
        f"{'d' * 40}\trefs/tags/x^{{}}\nnot a line\n"
    )
    refs = gitref.parse_ls_remote(output)
    assert refs == {"HEAD": "a" * 40, "refs/heads/x": "b" * 40, "refs/tags/x": "d" * 40}
    assert gitref.pick_commit(refs, "x") == "b" * 40
    del refs["refs/heads/x"]
    assert gitref.pick_commit(refs, "x") == "d" * 40
    assert gitref.pick_commit(refs, "y") is None


@pytest.mark.parametrize(
    "link",
    [
        pytest.param("gh/Org/Repo/main", id="gh"),
        pytest.param("gl/group%2Fproj/main", id="gl"),
        pytest.param("git/https%3A%2F%2Fexample.org%2Fr.git/main", id="git"),
        pytest.param("gist/u/abc/HEAD", id="gist"),
    ],
)
def test_launch_spec_built_by_hand_derives_slug_and_key(policy, link):
    parsed = policy.parse(link)
    by_hand = LaunchSpec(
        provider=parsed.provider,
        spec=parsed.spec,
        repo_url=parsed.repo_url,
        ref=parsed.ref,
        urlpath="",
        commit=SHA,
    )
    assert (by_hand.build_slug, by_hand.repo_key) == (parsed.build_slug, parsed.repo_key)


@pytest.mark.parametrize(
    "links",
    [
        pytest.param(
            [
                "gh/org/repo/main",
                "gh/Org/Repo/main",
                "gh/org/repo.git/main",
                "https://github.com/org/repo",
                "https://github.com/org/../org/repo/",
                "https://GitHub.com/ORG/Repo.git",
                "https://github.com/org/./repo/tree/main",
                "https://github.com/org/%72epo",
            ],
            id="github",
        ),
        pytest.param(
            [
                "https://example.org/org/repo",
                "https://example.org/org/repo/",
                "https://example.org/org/repo.git",
                "https://example.org/org/../org/repo",
                "https://example.org/x/%2e%2e/org/./repo",
                "https://EXAMPLE.org:443/org/%72epo",
                "git/https%3A%2F%2Fexample.org%2Forg%2Frepo.git/main",
            ],
            id="git",
        ),
        pytest.param(
            [
                "gl/group%2Fproj/main",
                "gl/Group%2FProj/main",
                "https://gitlab.com/group/proj.git",
                "https://gitlab.com/group/x/../proj",
            ],
            id="gitlab",
        ),
    ],
)
def test_aliases_of_one_repository_share_key_and_image(policy, links):
    specs = [policy.parse(link) for link in links]
    assert len({spec.repo_key for spec in specs}) == 1, [s.repo_key for s in specs]
    assert len({image_name(spec, SHA) for spec in specs}) == 1, [s.build_slug for s in specs]
    # the canonical spelling's name is BinderHub's for that spelling
    assert image_name(specs[0], SHA) == image_name(specs[0].spec, SHA)


def test_git_urls_on_provider_hosts_count_as_that_repository(policy):
    as_git = policy.parse("git/https%3A%2F%2Fgithub.com%2FOrg%2FRepo.git/main")
    assert as_git.provider == "git"  # the image name stays BinderHub's for a git spec
    assert as_git.repo_key == policy.parse("gh/org/repo/main").repo_key == "gh/org/repo"
    assert policy.parse("https://example.org/org/repo").repo_key.startswith("git/")
