"""Image and build pod names: BinderHub-compatible, DNS-safe (pure)."""

import dataclasses
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binder_spawner.images import build_pod_name, image_name, names_repository, split_image
from binder_spawner.repos import RepoPolicy

COMMIT = "1479e0252b2e648bb755ee913292b79495931717"


def sha6(slug):
    return hashlib.sha256(slug.encode()).hexdigest()[:6]


def test_issue_example():
    assert (
        image_name("gh/binder-examples/octave", COMMIT)
        == "binder-2dexamples-2doctave-03025a:1479e0252b2e648bb755ee913292b79495931717"
    )


@pytest.mark.parametrize(
    "link, expected_name",
    [
        pytest.param(
            "https://github.com/binder-examples/octave/tree/main",
            "binder-2dexamples-2doctave-03025a",
            id="gh-url-same-as-spec",
        ),
        pytest.param(
            # GitHub ignores case: BinderHub's name for the lower-case spelling
            "gh/Org/My_Repo.git/main",
            f"org-2dmy-5frepo-{sha6('org-my_repo')}",
            id="gh-case-underscore-dotgit",
        ),
        pytest.param(
            "gl/group%2Fsub-proj/main",
            # GitLab slug: "-" doubled as "_-", "/" as "-", then escaped
            f"group-2dsub-5f-2dproj-{sha6('group-sub_-proj')}",
            id="gl",
        ),
        pytest.param(
            # with or without .git: BinderHub's name for the URL without
            "git/https%3A%2F%2Fexample.org%2Fr.git/main",
            f"https-3a-2f-2fexample-2eorg-2fr-{sha6('https://example.org/r')}",
            id="git-url-slug",
        ),
        pytest.param("gist/someone/0123abcd", f"0123abcd-{sha6('0123abcd')}", id="gist"),
    ],
)
def test_names_match_binderhub_rules(link, expected_name):
    spec = RepoPolicy().parse(link)
    assert image_name(spec, COMMIT) == f"{expected_name}:{COMMIT}"
    # the spec string gives the same name as the parsed spec
    assert image_name(spec.spec, COMMIT) == image_name(spec, COMMIT)


def test_prefix_and_length_limit():
    prefix = "registry.example.org:5000/binder/prod-"
    spec = RepoPolicy().parse("git/https%3A%2F%2Fexample.org%2F" + "x" * 400 + "/main")
    image = image_name(spec, COMMIT, prefix=prefix)
    name, tag = image.rsplit(":", 1)
    assert name.startswith(prefix) and tag == COMMIT
    assert len(name) == 255
    assert name.endswith("-" + sha6(spec.build_slug))
    assert split_image(image) == ("registry.example.org:5000", name.split("/", 1)[1], COMMIT)


@pytest.mark.parametrize("prefix", ["", "registry.example.org:5000/binder/prod-", "r/" + "p" * 120])
def test_an_image_names_its_repository_whatever_the_prefix(prefix):
    policy = RepoPolicy()
    long = policy.parse("git/https%3A%2F%2Fexample.org%2F" + "x" * 400 + "/main")
    for spec in (policy.parse("gh/binder-examples/octave/main"), long):
        image = image_name(spec, COMMIT, prefix=prefix)
        assert names_repository(image, spec)
        assert names_repository(image.rsplit(":", 1)[0], spec)
    other = policy.parse("gh/binder-examples/octave-fork/main")
    assert not names_repository(image_name(other, COMMIT, prefix=prefix), long)
    assert not names_repository(
        image_name(other, COMMIT, prefix=prefix), policy.parse("gh/binder-examples/octave/main")
    )
    # the same slug's hash is not enough: the slug must be there too
    octave = policy.parse("gh/binder-examples/octave/main")
    forged = prefix + "x" + image_name(octave, COMMIT)[-len(COMMIT) - 8 :]
    assert not names_repository(forged, octave)


def test_image_name_needs_commit():
    with pytest.raises(ValueError):
        image_name("gh/org/repo/main", None)


@pytest.mark.parametrize(
    "image, expected",
    [
        pytest.param("ubuntu", ("", "ubuntu", "latest"), id="bare"),
        pytest.param("jupyter/base:1", ("", "jupyter/base", "1"), id="hub-user"),
        pytest.param("localhost/x:2", ("localhost", "x", "2"), id="localhost"),
        pytest.param("127.0.0.1:5000/a/b:c", ("127.0.0.1:5000", "a/b", "c"), id="host-port"),
        pytest.param("ghcr.io/o/i@sha256:ab", ("ghcr.io", "o/i", "sha256:ab"), id="digest"),
    ],
)
def test_split_image(image, expected):
    assert split_image(image) == expected


DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def test_build_pod_names():
    short = build_pod_name(f"binder-2dexamples-2doctave-03025a:{COMMIT}")
    assert short.startswith("build-binder-2dexamples-2doctave-03025a-") and short.endswith(
        "-1479e0"
    )
    assert DNS_LABEL.match(short)
    # deterministic, and different images (even differing only by registry) differ
    assert build_pod_name(f"a.io/x:{COMMIT}") == build_pod_name(f"a.io/x:{COMMIT}")
    assert build_pod_name(f"a.io/x:{COMMIT}") != build_pod_name(f"b.io/y/x:{COMMIT}")
    assert build_pod_name(f"a.io/x:{COMMIT}") != build_pod_name(f"a.io/x:{'0' * 40}")


BASE_SPEC = RepoPolicy().parse("gh/org/repo/main")


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=300),
    st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
    st.sampled_from(["", "reg.io/binder-", "127.0.0.1:5000/p/"]),
)
def test_names_always_valid(slug_text, commit, prefix):
    spec = dataclasses.replace(BASE_SPEC, build_slug=slug_text)
    image = image_name(spec, commit, prefix=prefix)
    name, tag = image.rsplit(":", 1)
    assert tag == commit and len(name) <= 255
    assert re.match(r"^[a-z0-9./:-]+$", name)
    pod = build_pod_name(image)
    assert DNS_LABEL.match(pod) and len(pod) <= 63
