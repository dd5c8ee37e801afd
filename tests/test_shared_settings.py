"""One configuration for the hub and binder_service, started as the docs say.

A real hub from the root ``jupyterhub_config.py`` (local mode), with the
shared settings set only in the hub's configuration; the hub starts
binder_service, which must run with the same values (``api/settings``, and a
launch link the hub's RepoPolicy allows). The chart's path is tested in
``test_chart_values.py``; the hand-over itself in process below.
"""

import contextlib
import json
import os
import tempfile

import aiohttp
import pytest
import pytest_asyncio
from traitlets.config import Config

from binder_service.app import BinderService
from binder_service.hubconfig import HUB_CONFIG_ENV, shared_settings
from binder_spawner.auth import AnonymousAuthenticator
from binder_spawner.local import LocalBinderSpawner
from binder_spawner.repos import RepoPolicy

from .hub import start_hub
from .utils import REPO_ROOT, free_port, poll

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT_CONFIG = str(REPO_ROOT / "jupyterhub_config.py")

# set only in the hub's configuration, none of them the default
HUB_SETTINGS = """
c.RepoPolicy.allowed_hosts = ["git.lan.example:8080"]
c.RepoPolicy.allow_http = True
c.RepoPolicy.allowed_providers = {"gh", "git"}
c.LocalBinderSpawner.idle_timeout = 1234
c.LocalBinderSpawner.max_age = 4321
c.AnonymousAuthenticator.group = "binder-guests"
c.Spawner.mem_guarantee = "3G"
"""
LAN_LINK = "v2/git/http%3A%2F%2Fgit.lan.example%3A8080%2Forg%2Frepo/main"


def hub_config():
    config = Config()
    exec(HUB_SETTINGS, {"c": config})
    return config


def hub_value(cls, name):
    """What the hub's own object of ``cls`` gets for ``name`` from the hub's settings."""
    return getattr(cls(config=hub_config()), name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory):
    state = tempfile.mkdtemp(prefix="binder-shared-settings-")
    os.chmod(state, 0o711)
    tmp = tmp_path_factory.mktemp("shared-settings")
    env = {
        "BINDER_PORT": str(free_port()),
        "BINDER_SERVICE_PORT": str(free_port()),
        "BINDER_HUB_PORT": str(free_port()),
        "BINDER_PROXY_API_PORT": str(free_port()),
        "BINDER_STATE_DIR": state,
        "KUBECONFIG": str(tmp / "no-kubeconfig"),
    }
    running = await start_hub(
        tmp / "hub",
        HUB_SETTINGS + f"load_subconfig({ROOT_CONFIG!r})\n",
        env=env,
        port=int(env["BINDER_PORT"]),
        timeout=90,
    )
    running.service = f"http://127.0.0.1:{env['BINDER_SERVICE_PORT']}/services/binder/"

    async def answers():
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session:
                async with session.get(running.service + "health") as resp:
                    return resp.status == 200

    try:
        await poll(answers, timeout=60, message="binder_service to answer")
        yield running
    except BaseException:
        print(running.log()[-20000:])
        raise
    finally:
        await running.stop()


async def service_settings(hub):
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"token {hub.token}"}
        async with session.get(hub.service + "api/settings", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def test_service_gets_the_hubs_repo_policy(hub):
    # the spawner's RepoPolicy, configured as the hub's, accepts the LAN link
    spec = RepoPolicy(config=hub_config()).parse(LAN_LINK[len("v2/") :])
    assert spec.repo_url == "http://git.lan.example:8080/org/repo"
    async with hub.browser() as browser:
        async with browser.get(hub.service + LAN_LINK, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            assert (
                "opt-repo=http%3A%2F%2Fgit.lan.example%3A8080%2Forg%2Frepo"
                in (resp.headers["Location"])
            )
        # and what the hub's policy leaves out stays out: gl/ is not an allowed provider
        async with browser.get(hub.service + "v2/gl/group/project/main") as resp:
            assert resp.status == 400, await resp.text()


async def test_service_culls_after_the_spawners_idle_timeout(hub):
    expected = hub_value(LocalBinderSpawner, "idle_timeout")
    assert expected == 1234
    assert (await service_settings(hub))["Culler"]["timeout"] == expected


async def test_service_culls_at_the_spawners_max_age(hub):
    expected = hub_value(LocalBinderSpawner, "max_age")
    assert expected == 4321
    assert (await service_settings(hub))["Culler"]["max_age"] == expected


async def test_service_knows_anonymous_users_by_the_authenticators_group(hub):
    expected = hub_value(AnonymousAuthenticator, "group")
    assert expected == "binder-guests"
    assert (await service_settings(hub))["Culler"]["anonymous_group"] == expected


async def test_service_places_pods_of_the_spawners_memory(hub):
    expected = hub_value(LocalBinderSpawner, "mem_guarantee")
    assert expected == 3 * 2**30
    assert (await service_settings(hub))["PlacementSource"]["pod_memory"] == expected


async def test_settings_are_for_admins_only(hub):
    async with hub.browser() as browser:
        async with browser.get(hub.service + "api/settings") as resp:
            assert resp.status in (401, 403)


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--timeout=60", "Culler.timeout is 60 in binder_service's own configuration"),
        ("--anonymous-group=other", "Culler.anonymous_group is 'other'"),
    ],
)
async def test_service_refuses_its_own_value_for_a_shared_setting(
    monkeypatch, capsys, argument, message
):
    settings = shared_settings(LocalBinderSpawner, AnonymousAuthenticator, hub_config())
    monkeypatch.setenv(HUB_CONFIG_ENV, json.dumps(settings, default=sorted))
    app = BinderService()
    with pytest.raises(SystemExit) as exit:
        app.initialize([argument])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Set it once, as the" in err


async def test_service_takes_the_hubs_value_and_its_own_others(monkeypatch):
    settings = shared_settings(LocalBinderSpawner, AnonymousAuthenticator, hub_config())
    monkeypatch.setenv(HUB_CONFIG_ENV, json.dumps(settings, default=sorted))
    app = BinderService()
    # the same value as the hub's is no conflict; settings the hub does not share are the service's
    app.initialize(["--timeout=1234", "--per-repo-limit=7"])
    assert app.culler.timeout == 1234
    assert app.per_repo_limit == 7
    assert app.policy.allow_http is True
