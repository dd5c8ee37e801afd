"""Local mode refuses to start rather than fail every launch, and says why, once, to the admin.

The root ``jupyterhub_config.py`` run by a real ``jupyterhub`` process: a state
directory the sandbox uids cannot reach, a host without usable cgroups (and the
admin's explicit opt-out), and the default state directory when the checkout
lives in root's private home.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from .utils import REPO_ROOT, free_port, uid_base

ROOT_CONFIG = str(REPO_ROOT / "jupyterhub_config.py")


def _env(state_dir, tmp_path):
    env = dict(os.environ)
    env.update(
        BINDER_PORT=str(free_port()),
        BINDER_SERVICE_PORT=str(free_port()),
        KUBECONFIG=str(tmp_path / "no-kubeconfig"),
        PYTHONPATH=str(REPO_ROOT),
    )
    env.pop("BINDER_STATE_DIR", None)
    if state_dir is not None:
        env["BINDER_STATE_DIR"] = str(state_dir)
    return env


async def _run_hub_until_exit(config, env, cwd, timeout=60):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jupyterhub",
        "-f",
        str(config),
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the hub started instead of refusing to") from None
    return proc.returncode, out.decode()


async def _all(*awaitables):
    """Await side by side (hub starts are slow); raise the first error once all are done."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def test_unreachable_state_dir_is_refused_at_start(tmp_path):
    private = tmp_path / "root-home"
    private.mkdir(mode=0o700)
    code, out = await _run_hub_until_exit(
        ROOT_CONFIG, _env(private / "state", tmp_path), cwd=tmp_path
    )
    assert code != 0
    assert "must be reachable by the sandbox uids" in out, out[-3000:]
    assert "BINDER_STATE_DIR" in out


async def test_no_cgroups_refused_unless_the_admin_opts_out(hub_factory, tmp_path):
    # pytest's tmp is private to root: state directories the sandbox uids can
    # reach, one per hub (the two start at once and would share a database)
    state, refused_state = (tempfile.mkdtemp(prefix="binder-startup-") for _ in range(2))
    os.chmod(state, 0o711)
    os.chmod(refused_state, 0o711)
    config = tmp_path / "no-cgroups.py"
    config.write_text(
        f"c.Sandbox.cgroup_root = '/nonexistent-cgroup-root'\nload_subconfig({ROOT_CONFIG!r})\n"
    )
    # the refusal, and beside it the opt-out: that hub starts and its log says what
    # is not enforced
    env = _env(state, tmp_path)
    (code, out), hub = await _all(
        _run_hub_until_exit(config, _env(refused_state, tmp_path), cwd=tmp_path),
        hub_factory(
            textwrap.dedent(
                f"""
                c.Sandbox.cgroup_root = "/nonexistent-cgroup-root"
                c.Sandbox.require_cgroups = False
                load_subconfig({ROOT_CONFIG!r})
                """
            ),
            env={k: v for k, v in env.items() if k.startswith("BINDER_") or k == "KUBECONFIG"},
            port=int(env["BINDER_PORT"]),
            timeout=90,
        ),
    )
    assert code != 0
    assert "cannot use cgroups" in out and "require_cgroups = False" in out, out[-3000:]
    assert "Local mode limits on this host: NO cgroup" in hub.log()


def test_default_state_dir_as_root_is_reachable_from_a_private_checkout(tmp_path):
    # a checkout in root's home (0700): ./state would be unreachable, the default is not
    checkout = tmp_path / "root-home" / "checkout"
    checkout.mkdir(parents=True)
    os.chmod(tmp_path / "root-home", 0o700)
    code = textwrap.dedent(
        f"""
        import json
        from traitlets.config.loader import PyFileConfigLoader
        c = PyFileConfigLoader({ROOT_CONFIG!r}).load_config()
        print(json.dumps({{"envs": c.EnvironmentBuilder.envs_dir, "db": c.JupyterHub.db_url}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=checkout,
        env=_env(None, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["envs"] == "/var/lib/jupyterhub-binder/local/envs"
    assert found["db"].startswith("sqlite:////var/lib/jupyterhub-binder/hub/")


@pytest.fixture(autouse=True)
def _root_only():
    if os.geteuid() != 0:
        pytest.fail("local mode's start-up checks are tested as root (as CI runs)")


def _second_hub_env(tmp_path, name, uid_offset=0):
    state = tempfile.mkdtemp(prefix=f"binder-startup-{name}-")
    os.chmod(state, 0o711)
    env = _env(state, tmp_path)
    env.update(
        BINDER_HUB_PORT=str(free_port()),
        BINDER_PROXY_API_PORT=str(free_port()),
        BINDER_UID_BASE=str(uid_base() + uid_offset),
    )
    return env


async def test_two_hubs_side_by_side(hub_factory, tmp_path):
    async def start(name, uid_offset):
        env = _second_hub_env(tmp_path, name, uid_offset)
        hub = await hub_factory(
            f"load_subconfig({ROOT_CONFIG!r})\n",
            env={k: v for k, v in env.items() if k.startswith("BINDER_") or k == "KUBECONFIG"},
            port=int(env["BINDER_PORT"]),
            timeout=90,
        )
        return hub, env

    (first, first_env), (second, _) = await _all(start("first", 0), start("second", 1_000_000))
    # each public port leads to its own hub: one hub's token means nothing to the other
    for hub, other in ((first, second), (second, first)):
        assert (await hub.api("GET", "/user"))[0] == 200
        assert (await hub.api("GET", "/user", token=other.token))[0] == 403
        async with hub.browser() as browser:
            async with browser.get(hub.url + "/services/binder/health") as resp:
                assert resp.status == 200

    # a third hub given the first one's proxy API port refuses to start, naming it;
    # a fourth, whose sandboxes would run as the first hub's uids, refuses to start,
    # naming the variable (both tried at once); the first hub goes on, its routes untouched
    third_env = _second_hub_env(tmp_path, "third")
    third_env["BINDER_PROXY_API_PORT"] = first_env["BINDER_PROXY_API_PORT"]
    fourth_env = _second_hub_env(tmp_path, "fourth")
    (code, out), (fourth_code, fourth) = await _all(
        _run_hub_until_exit(ROOT_CONFIG, third_env, cwd=tmp_path),
        _run_hub_until_exit(ROOT_CONFIG, fourth_env, cwd=tmp_path),
    )
    assert code != 0
    assert f"BINDER_PROXY_API_PORT={first_env['BINDER_PROXY_API_PORT']}" in out, out[-3000:]
    assert fourth_code != 0
    assert f"uids from {uid_base()}" in fourth and "BINDER_UID_BASE" in fourth, fourth[-3000:]
    assert (await first.api("GET", "/user"))[0] == 200
    async with first.browser() as browser:
        async with browser.get(first.url + "/services/binder/health") as resp:
            assert resp.status == 200
