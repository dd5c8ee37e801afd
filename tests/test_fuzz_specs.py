"""Fuzzing the front door: no input makes parsing fail with anything but SpecError,
and nothing a stranger writes reaches git as an option."""

import ipaddress
import socket

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from binder_spawner import gitref, netcheck
from binder_spawner.images import build_pod_name, image_name
from binder_spawner.repos import LaunchSpec, RepoPolicy, SpecError

POLICY = RepoPolicy(allow_http=True)

PREFIXES = [
    "",
    "gh/",
    "gh/org/",
    "gh/org/repo/",
    "gl/",
    "gl/group%2Fproj/",
    "git/",
    "git/https%3A%2F%2Fexample.org%2Fr/",
    "gist/",
    "gist/user/abc/",
    "v2/gh/",
    "https://github.com/",
    "https://github.com/org/repo/tree/",
    "https://gitlab.com/g/p/-/tree/",
    "https://",
    "http://",
    "https://example.org/",
    "https://[",
    "git@",
    "file://",
]
# characters that matter to URLs, refs and shells
ALPHABET = st.sampled_from(
    list("abcXYZ019-_.~/%:@?#&=+![]{}^*\\ \t\n\x00\x7f'\"$;`|<>") + ["é", "\u00a0", "\u202e"]
)
NASTY = st.text(ALPHABET, max_size=60) | st.text(max_size=60)
LINKS = st.builds(lambda p, t: p + t, st.sampled_from(PREFIXES), NASTY)
VALUES = NASTY | st.lists(NASTY, max_size=2) | st.binary(max_size=20) | st.none() | st.integers()
QUERIES = st.dictionaries(
    st.sampled_from(["repo", "ref", "urlpath", "labpath", "filepath", "other"]),
    VALUES | LINKS,
    max_size=5,
)


FIXED_OPTIONS = gitref.ls_remote_command("https://a.example/r", "HEAD", pins=["h:443:1.2.3.4"])[:-3]


def check_git_arguments(spec):
    """Everything derived from the link sits after "--" and none of it starts with "-"."""
    args = gitref.ls_remote_command(spec.repo_url, spec.ref, pins=["h:443:1.2.3.4"])
    split = args.index("--")
    user_derived = args[split + 1 :]
    assert user_derived[0] == spec.repo_url
    for arg in user_derived:
        assert not arg.startswith("-"), args
    # options are fixed: the same for every link
    assert args[:split] == FIXED_OPTIONS


def check(value):
    try:
        spec = POLICY.parse(value)
    except SpecError as e:
        assert 400 <= e.status_code < 500
        assert e.message and "\n" not in e.message
        return
    assert isinstance(spec, LaunchSpec)
    assert gitref.ref_problem(spec.ref) is None
    assert spec.repo_url.startswith(("https://", "http://"))
    check_git_arguments(spec)
    # normalised specs are stable, and names are always valid
    assert POLICY.parse(spec.spec).spec == spec.spec
    image = image_name(spec, "0" * 40, prefix="r.io/")
    assert len(image.rsplit(":", 1)[0]) <= 255
    assert len(build_pod_name(image)) <= 63


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LINKS | NASTY)
def test_strings_never_raise_anything_else(value):
    check(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(QUERIES)
def test_query_dicts_never_raise_anything_else(value):
    check(value)


@settings(max_examples=200, deadline=None)
@given(st.text(ALPHABET, min_size=1, max_size=40))
def test_refs_from_strangers(ref):
    try:
        spec = POLICY.parse({"repo": "https://github.com/org/repo", "ref": ref})
    except SpecError:
        return
    assert not spec.ref.startswith("-")
    check_git_arguments(spec)


NUMERIC_HOSTS = st.text(st.sampled_from(list("0123456789abcdefx.:[]XF")), min_size=1, max_size=24)


@settings(max_examples=500, deadline=None)
@given(NUMERIC_HOSTS)
@example("0x7f.1")
@example("127.1")
@example("2130706433")
@example("0177.0.0.1")
@example("[::ffff:127.0.0.1]")
@example("1.2.3")
def test_every_numeric_spelling_is_recognised(host):
    """Whatever the C library reads as an address, the checks read as the same address."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), 443, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return
    expected = ipaddress.ip_address(infos[0][4][0].split("%")[0])
    assert netcheck.parse_ip_literal(host) == expected
    try:
        assert netcheck.normalise_host(host.strip("[]")) == str(expected)
    except netcheck.HostError:
        raise AssertionError(f"{host!r} is {expected} but was refused as a name") from None
