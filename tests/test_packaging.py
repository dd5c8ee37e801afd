"""The installed distribution matches what setup.cfg promises."""

import importlib
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

DIST = distribution("jupyterhub-binder")

EXPECTED_ENTRY_POINTS = {
    ("jupyterhub.spawners", "binder"): "binder_spawner.spawner:BinderSpawner",
    ("jupyterhub.spawners", "binder-local"): "binder_spawner.local:LocalBinderSpawner",
    ("jupyterhub.authenticators", "binder-anonymous"): "binder_spawner.auth:AnonymousAuthenticator",
    ("console_scripts", "jupyterhub-binder"): "binder_service.cli:main",
}


def test_metadata():
    assert DIST.metadata["Name"] == "jupyterhub-binder"
    assert DIST.metadata["Requires-Python"] == ">=3.10"


def test_dependencies():
    reqs = {
        Requirement(r).name.lower().replace("_", "-"): Requirement(r)
        for r in DIST.requires
        if "extra ==" not in r
    }
    for name in [
        "jupyterhub",
        "jupyterhub-kubespawner",
        "kubernetes-asyncio",
        "escapism",
        "tornado",
        "traitlets",
    ]:
        assert name in reqs, name
    jh = reqs["jupyterhub"].specifier
    assert "5.5.0" in jh and "6.1.0" in jh and "7.0.0" not in jh and "5.4.0" not in jh
    assert "7.0.0" in reqs["jupyterhub-kubespawner"].specifier
    assert "6.2.0" not in reqs["jupyterhub-kubespawner"].specifier


@pytest.mark.parametrize(
    "group, name", [pytest.param(g, n, id=f"{g}:{n}") for g, n in EXPECTED_ENTRY_POINTS]
)
def test_entry_point(group, name):
    eps = {ep.name: ep for ep in DIST.entry_points if ep.group == group}
    assert name in eps
    ep = eps[name]
    assert ep.value == EXPECTED_ENTRY_POINTS[(group, name)]
    obj = ep.load()
    module, _, attr = ep.value.partition(":")
    assert obj is getattr(importlib.import_module(module), attr)


def test_entry_points_resolve_through_jupyterhub():
    # JupyterHub resolves short names with its EntryPointType traits
    from jupyterhub.app import JupyterHub

    app = JupyterHub(spawner_class="binder", authenticator_class="binder-anonymous")
    assert app.spawner_class.__name__ == "BinderSpawner"
    assert app.authenticator_class.__name__ == "AnonymousAuthenticator"
    app = JupyterHub(spawner_class="binder-local")
    assert app.spawner_class.__name__ == "LocalBinderSpawner"


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "binder_service.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "jupyterhub-binder" in out
    # the script installed beside this interpreter (the venv's bin directory)
    exe = Path(sys.executable).parent / "jupyterhub-binder"
    assert exe.exists(), "console script not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: jupyterhub-binder" in out


def test_package_data_names_only_folders_that_exist():
    """Every package_data pattern in setup.cfg matches a file of the source tree."""
    import configparser

    root = Path(__file__).resolve().parent.parent
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    patterns = {
        package: [p.strip() for p in value.split(",") if p.strip()]
        for package, value in setup["options.package_data"].items()
    }
    assert patterns
    for package, globs in patterns.items():
        for pattern in globs:
            assert list((root / package).glob(pattern)), f"{package}: {pattern} matches nothing"


def test_python_310_reads_pyproject_toml_with_tomli(tmp_path):
    """Without tomllib (Python 3.10) local mode still finds a pyproject.toml-only package."""
    reqs = [Requirement(r) for r in DIST.requires if "extra ==" not in r]
    tomli = [r for r in reqs if r.name == "tomli"]
    assert tomli and tomli[0].marker.evaluate({"python_version": "3.10"})
    assert not tomli[0].marker.evaluate({"python_version": "3.11"})
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "1"\n[build-system]\nrequires = []\n'
    )
    probe = (
        "import sys; sys.modules['tomllib'] = None\n"  # import tomllib raises, as on 3.10
        "from binder_spawner import localplan\n"
        "print(localplan.tomllib.__name__, localplan._is_python_package(sys.argv[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["tomli", "True"]
