"""Dependencies point one way: scripts/import_graph.py on this tree finds no cycle.

binder_service imports binder_spawner, never the reverse; inside each
package no two modules import each other, counting imports inside functions
and under ``TYPE_CHECKING`` (a deferred cycle is still a cycle).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "import_graph.py"


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_no_import_cycles_in_the_tree(graph):
    package_cycles, module_cycles = graph.cycles(graph.module_edges(ROOT))
    assert package_cycles == []
    assert module_cycles == []


def test_binder_spawner_imports_nothing_of_binder_service(graph):
    across = graph.package_edges(graph.module_edges(ROOT))
    assert ("binder_spawner", "binder_service") not in across
    assert ("binder_service", "binder_spawner") in across


def test_pure_modules_import_no_launch_or_io_code(graph):
    edges = graph.module_edges(ROOT)
    for pure in ("binder_spawner.build", "binder_spawner.images", "binder_spawner.nodes"):
        imported = {dst for src, dst in edges if src == pure}
        assert "binder_spawner.launch" not in imported, pure
        assert "binder_spawner.spawner" not in imported, pure


def test_finds_package_and_module_cycles_however_deep(graph, tmp_path):
    write(
        tmp_path,
        {
            "lower/__init__.py": "",
            "lower/a.py": "def f():\n    from upper.b import x\n",
            "lower/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import y\n",
            "lower/d.py": "from . import c\n",
            "lower/sub/__init__.py": "from .e import z\n",
            "lower/sub/e.py": "from ..a import f\n",
            "upper/__init__.py": "",
            "upper/b.py": "from lower import a\n",
        },
    )
    edges = graph.module_edges(tmp_path, ("lower", "upper"))
    assert edges[("lower.a", "upper.b")] == "deferred"
    assert edges[("lower.c", "lower.d")] == "typing"
    assert edges[("lower.sub.e", "lower.a")] == "module"
    assert edges[("lower.sub", "lower.sub.e")] == "module"
    package_cycles, module_cycles = graph.cycles(edges)
    assert package_cycles == [["lower", "upper"]]
    assert module_cycles == [["lower.a", "upper.b"], ["lower.c", "lower.d"]]


def test_check_exits_1_on_a_cycle(tmp_path):
    write(
        tmp_path,
        {
            "binder_spawner/__init__.py": "",
            "binder_spawner/x.py": "from binder_service import y\n",
            "binder_service/__init__.py": "",
            "binder_service/y.py": "import binder_spawner.x\n",
        },
    )
    cycle = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert cycle.returncode == 1
    assert "package cycle: binder_service <-> binder_spawner" in cycle.stdout
    clean = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout
    report = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert "binder_service -> binder_spawner" in report.stdout
    assert "== cycles ==\nnone" in report.stdout
