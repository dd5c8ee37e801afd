"""docs/reference.md is generated from the traits' help texts and kept current.

Each configurable trait of binder_spawner and binder_service is listed by
class, with its help; each help text has an example ``c.Class.trait = ...``.
"""

import importlib.util
import re
import subprocess
import sys

import pytest

from .utils import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "config_reference.py"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_is_up_to_date(reference):
    current = (REPO_ROOT / "docs" / "reference.md").read_text()
    assert current == reference.render(), (
        "docs/reference.md is stale (a trait or its help text changed): "
        "run `python scripts/config_reference.py` and commit docs/reference.md"
    )


def test_every_config_trait_has_an_example(reference):
    missing = [
        f"{cls.__name__}.{name}"
        for cls, traits in reference.our_classes()
        for name, trait in traits.items()
        if not re.search(rf"c\.\w+\.{name}\s*=", trait.help or "")
    ]
    assert missing == [], "help texts without an example `c.Class.trait = ...`"


def test_reference_lists_our_traits_only(reference):
    text = reference.render()
    headings = re.findall(r"^### `(\w+)\.(\w+)`", text, re.M)
    classes = {cls for cls, _ in headings}
    assert {"BinderSpawner", "AnonymousAuthenticator", "RepoPolicy", "Culler"} <= classes
    assert ("BinderLaunchMixin", "idle_timeout") in headings
    # inherited traits are KubeSpawner's and JupyterHub's to document
    names = {name for _, name in headings}
    assert not names & {"mem_guarantee", "image", "start_timeout", "cmd", "admin_users"}
    assert "Taken by BinderSpawner, LocalBinderSpawner" in text


def test_check_says_how_to_regenerate(tmp_path):
    # the script's --check on a stale copy exits 1 and names the command
    stale = tmp_path / "reference.md"
    stale.write_text("# stale\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--output", str(stale)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1, result.stderr
    assert "run `python scripts/config_reference.py`" in result.stderr
