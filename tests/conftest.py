"""Shared fixtures: a real JupyterHub per test, dumped on failure."""

import itertools
import sys

import pytest

# Fixtures every test can use: git over smart HTTP and an OCI registry, on loopback.
from .gitserver import git_server, module_git_server  # noqa: F401
from .hub import start_hub
from .k8s.fixtures import k8s_cluster, k8s_cluster_factory  # noqa: F401
from .registry import registry, registry_auth, registry_token  # noqa: F401


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Remember each phase's report on the item, so fixtures can tell whether
    # the test failed and dump diagnostics only then.
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


def pytest_terminal_summary(terminalreporter, config):
    # The order of a random-order run (pytest-randomly), also under -q, which
    # hides the header that names it: a failure that depends on the order is
    # reproduced with the same seed.
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"Test order: random, reproduced with --randomly-seed={seed}")


def test_failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture(autouse=True)
def _fresh_resolve_cache():
    """Every test starts with an empty process-wide ref cache (loopback ports get reused)."""
    from binder_spawner.resolver import shared_resolve_cache

    shared_resolve_cache().clear()


@pytest.fixture
async def hub_factory(tmp_path, request):
    """Start real hubs: ``hub = await hub_factory(config_source, env=...)``.

    Every hub is stopped after the test; its log is printed if the test failed.
    """
    hubs = []
    numbers = itertools.count()

    async def factory(config="", **kwargs):
        # numbered before the start: hubs may start at once (asyncio.gather)
        directory = tmp_path / f"hub{next(numbers)}"
        hub = await start_hub(directory, config, **kwargs)
        hubs.append(hub)
        return hub

    yield factory
    failed = test_failed(request)
    for hub in hubs:
        await hub.stop()
        if failed:
            sys.stderr.write(f"\n===== hub log {hub.log_path} =====\n{hub.log()[-20000:]}\n")
