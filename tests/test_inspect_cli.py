"""`jupyterhub-binder inspect`, run as admins run it: a subprocess."""

import asyncio
import json
import sys

import pytest

from .archiveserver import Archives

COMMIT = "1479e0252b2e648bb755ee913292b79495931717"


async def inspect(*args):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "binder_service.cli",
        "inspect",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode in (0, 2), err.decode()
    return proc.returncode, json.loads(out)


async def test_offline_with_full_sha():
    code, result = await inspect(f"https://github.com/binder-examples/octave/commit/{COMMIT}")
    assert code == 0
    assert result == {
        "provider": "gh",
        "provider_name": "GitHub",
        "spec": f"gh/binder-examples/octave/{COMMIT}",
        "repo_url": "https://github.com/binder-examples/octave",
        "ref": COMMIT,
        "commit": COMMIT,
        "image": f"binder-2dexamples-2doctave-03025a:{COMMIT}",
        "build_pod_name": "build-binder-2dexamples-2doctave-03025a-5ed01b-1479e0",
        "urlpath": "",
        "repo_key": "gh/binder-examples/octave",
        "resolved_spec": None,
    }


async def test_offline_makes_no_network_access():
    # a host that cannot resolve: fine offline, refused once contacted
    link = "git/https%3A%2F%2Frepo.example.invalid%2Fr.git/main?urlpath=lab"
    code, result = await inspect(link)
    assert code == 0
    assert result["commit"] is None and result["image"] is None
    assert result["build_pod_name"] is None and result["urlpath"] == "lab"
    code, result = await inspect("--resolve", link)
    assert (code, result) == (
        2,
        {"error": "The repository host repo.example.invalid could not be found.", "status": 404},
    )


@pytest.mark.parametrize(
    "link, status, fragment",
    [
        pytest.param("https://0x7f.1/r", 403, "loopback", id="hex-loopback"),
        pytest.param("gh/org/repo/--upload-pack=x", 400, "must not start with '-'", id="inject"),
        pytest.param("file:///etc", 400, "https://", id="file"),
    ],
)
async def test_refused_links_exit_2(link, status, fragment):
    code, result = await inspect(link)
    assert code == 2
    assert set(result) == {"error", "status"} and result["status"] == status
    assert fragment in result["error"]


async def test_resolve_with_config_file(git_server, tmp_path):
    git_server.create_repo("org/repo", {"a.txt": "a"})
    sha = git_server.commit("org/repo", {"b.txt": "b"}, branch="dev")
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c = get_config()  # noqa\n"
        "c.RepoPolicy.allow_http = True\n"
        f"c.RepoPolicy.provider_urls = {{'gh': {git_server.url!r}}}\n"
        "c.BinderSpawner.image_prefix = 'registry.example.org/binder-'\n"
    )
    code, result = await inspect("--resolve", "--config", str(config), "gh/org/repo/dev")
    assert code == 0
    assert result["repo_url"] == f"{git_server.url}/org/repo"
    assert result["commit"] == sha
    assert result["image"] == f"registry.example.org/binder-org-2drepo-{_sha6('org-repo')}:{sha}"
    code, result = await inspect("--resolve", "--config", str(config), "gh/org/repo/nope")
    assert (
        code == 2 and result["status"] == 404 and "no branch or tag named nope" in result["error"]
    )
    # the same link without the config: http is refused
    code, result = await inspect(f"{git_server.url}/org/repo")
    assert code == 2 and result["status"] in (400, 403)


def _sha6(slug):
    import hashlib

    return hashlib.sha256(slug.encode()).hexdigest()[:6]


async def test_archive_record_resolved_with_the_hubs_settings(tmp_path):
    archives = Archives()
    try:
        archives.zenodo_record("3242074", {"a.txt": b"a"}, doi="10.5281/zenodo.3242073")
        config = tmp_path / "config.json"
        config.write_text(
            json.dumps(
                {
                    "RepoPolicy": archives.policy_config(),
                    "BinderSpawner": {"image_prefix": "registry.example.org/binder-"},
                }
            )
        )
        code, result = await inspect("--config", str(config), "10.5281/zenodo.3242073")
        assert code == 0 and result["commit"] is None and result["provider_name"] == "Zenodo"
        code, result = await inspect("--config", str(config), "--resolve", "10.5281/zenodo.3242073")
    finally:
        archives.stop()
    assert code == 0
    assert result["commit"] == "3242074"
    assert result["resolved_spec"] == "zenodo/10.5281/zenodo.3242074"
    assert result["image"] == "registry.example.org/binder-zenodo-2d3242074-b993d2:3242074"
    assert result["repo_url"] == "10.5281/zenodo.3242073"
