"""The git server and registry fixtures serve what real ones serve."""

import json
import os
import subprocess
import urllib.error
import urllib.request

from .registry import DOCKER_MANIFEST, OCI_MANIFEST


def ls_remote(url):
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    result = subprocess.run(
        ["git", "ls-remote", "--", url], capture_output=True, text=True, env=env, check=False
    )
    refs = {}
    for line in result.stdout.splitlines():
        sha, ref = line.split("\t")
        refs[ref] = sha
    return result.returncode, refs, result.stderr


def test_git_server_serves_branches_tags_and_head(git_server):
    url = git_server.create_repo("org/repo", {"a.txt": "a"})
    main = git_server.commit("org/repo", {"b.txt": "b"}, message="second")
    feature = git_server.branch("org/repo", "feature/x")
    tagged = git_server.tag("org/repo", "v1", annotated=True)
    for candidate in (url, url + ".git"):
        code, refs, err = ls_remote(candidate)
        assert code == 0, err
        assert refs["HEAD"] == refs["refs/heads/main"] == main
        assert refs["refs/heads/feature/x"] == feature
        assert refs["refs/tags/v1^{}"] == tagged == main
    git_server.delete_branch("org/repo", "feature/x")
    assert "refs/heads/feature/x" not in ls_remote(url)[1]
    assert git_server.requests["org/repo"] == 3


def test_git_server_empty_private_and_missing(git_server):
    empty = git_server.create_empty_repo("empty")
    assert ls_remote(empty)[:2] == (0, {})
    url = git_server.create_repo("secret")
    git_server.set_private("secret")
    code, _, err = ls_remote(url)
    assert code != 0 and "Username" in err
    code, _, err = ls_remote(git_server.url + "/missing")
    assert code != 0 and "not found" in err


def manifest_status(reg, name, tag, accept):
    request = urllib.request.Request(
        f"{reg.url}/v2/{name}/manifests/{tag}", method="HEAD", headers={"Accept": accept}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers


def test_registry_push_oci_and_docker(registry):
    digest = registry.push_image("binder/oci", "t1")
    status, headers = manifest_status(registry, "binder/oci", "t1", OCI_MANIFEST)
    assert status == 200 and headers["Docker-Content-Digest"] == digest
    registry.push_image("binder/docker", "t1", media_type=DOCKER_MANIFEST)
    status, headers = manifest_status(registry, "binder/docker", "t1", DOCKER_MANIFEST)
    assert status == 200 and headers["Content-Type"] == DOCKER_MANIFEST
    assert manifest_status(registry, "binder/oci", "nope", OCI_MANIFEST)[0] == 404
    assert registry.delete_image("binder/oci", "t1")
    assert manifest_status(registry, "binder/oci", "t1", OCI_MANIFEST)[0] == 404


def test_registry_auth_variants(registry_auth, registry_token):
    registry_auth.push_image("private/img", "t")
    status, headers = manifest_status(registry_auth, "private/img", "t", OCI_MANIFEST)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    accept = {"Accept": OCI_MANIFEST}
    assert registry_auth.request("HEAD", "/v2/private/img/manifests/t", headers=accept)[0] == 200

    registry_token.push_image("private/img", "t")
    status, headers = manifest_status(registry_token, "private/img", "t", OCI_MANIFEST)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer realm=")
    # an anonymous token grants nothing
    url = registry_token.token_server.url + "/token?scope=repository:private/img:pull"
    token = json.load(urllib.request.urlopen(url))["token"]
    request = urllib.request.Request(
        f"{registry_token.url}/v2/private/img/manifests/t",
        method="HEAD",
        headers={"Authorization": "Bearer " + token, "Accept": OCI_MANIFEST},
    )
    try:
        urllib.request.urlopen(request)
        raise AssertionError("anonymous token was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 401
