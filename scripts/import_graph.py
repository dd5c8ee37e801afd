#!/usr/bin/env python3
"""Print who imports whom inside jupyterhub-binder, and any import cycles.

    python scripts/import_graph.py            # packages, then modules, then cycles
    python scripts/import_graph.py --check    # exit 1 when there is a cycle

It reads the source with :mod:`ast` and imports nothing, so it runs without
the dependencies installed. Every ``import`` counts, wherever it stands: at
the top of a module, inside a function (marked ``deferred``) or under
``if TYPE_CHECKING:`` (marked ``typing``). A cycle through a deferred import
is still a cycle: it only moves the failure from import time to call time.
``tests/test_import_graph.py`` runs :func:`cycles` on the tree.
"""

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("binder_spawner", "binder_service")


def module_files(root=ROOT, packages=PACKAGES):
    """``{dotted module name: path}`` of every ``.py`` file in the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree):
    """Yield ``(node, kind)`` for every import; kind is module, deferred or typing."""

    def walk(node, kind):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, kind
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, "deferred" if kind == "module" else kind)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                yield from walk(child, kind)

    yield from walk(tree, "module")


def _resolve(name, modules):
    """The longest prefix of dotted ``name`` that is one of our modules, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def module_edges(root=ROOT, packages=PACKAGES):
    """``{(importer, imported): kind}`` between our modules.

    kind is ``module`` when any import of the pair runs at import time,
    else ``deferred`` or ``typing``.
    """
    modules = module_files(root, packages)
    rank = {"module": 0, "deferred": 1, "typing": 2}
    edges = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, kind in _imports(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # ``from . import x`` names a submodule when x is one.
                for alias in node.names:
                    sub = f"{prefix}.{alias.name}"
                    targets.append(sub if sub in modules else prefix)
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is None or resolved == name:
                    continue
                pair = (name, resolved)
                if pair not in edges or rank[kind] < rank[edges[pair]]:
                    edges[pair] = kind
    return edges


def package_of(module):
    return module.split(".")[0]


def package_edges(edges):
    """``{(package, package): [(importer, imported, kind), ...]}`` across packages."""
    across = defaultdict(list)
    for (importer, imported), kind in sorted(edges.items()):
        if package_of(importer) != package_of(imported):
            across[(package_of(importer), package_of(imported))].append((importer, imported, kind))
    return dict(across)


def _strongly_connected(nodes, graph):
    """Tarjan's algorithm; components of more than one node, each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return sorted(found)


def cycles(edges):
    """``(package cycles, module cycles)``: each a sorted list of sorted name lists.

    A subpackage's ``__init__`` importing its own modules, and those modules
    importing the subpackage's siblings, are ordinary edges; a module that
    imports its own package's ``__init__`` (``from . import __version__``)
    counts too.
    """
    module_graph = defaultdict(set)
    package_graph = defaultdict(set)
    for importer, imported in edges:
        module_graph[importer].add(imported)
        if package_of(importer) != package_of(imported):
            package_graph[package_of(importer)].add(package_of(imported))
    nodes = {name for pair in edges for name in pair}
    packages = {package_of(name) for name in nodes}
    return _strongly_connected(packages, package_graph), _strongly_connected(nodes, module_graph)


def report(edges, out=sys.stdout):
    def say(line=""):
        print(line, file=out)

    say("== packages ==")
    across = package_edges(edges)
    if not across:
        say("(no package imports another)")
    for (src, dst), pairs in sorted(across.items()):
        say(f"{src} -> {dst}  ({len(pairs)} module imports)")
        for importer, imported, kind in pairs:
            mark = "" if kind == "module" else f"  [{kind}]"
            say(f"    {importer} -> {imported}{mark}")
    say()
    say("== modules ==")
    by_importer = defaultdict(list)
    for (importer, imported), kind in sorted(edges.items()):
        by_importer[importer].append(imported if kind == "module" else f"{imported} [{kind}]")
    for importer in sorted(by_importer):
        say(f"{importer} -> {', '.join(by_importer[importer])}")
    say()
    package_cycles, module_cycles = cycles(edges)
    say("== cycles ==")
    for cycle in package_cycles:
        say("package cycle: " + " <-> ".join(cycle))
    for cycle in module_cycles:
        say("module cycle: " + " <-> ".join(cycle))
    if not package_cycles and not module_cycles:
        say("none")
    return package_cycles, module_cycles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the source tree (default: this one)"
    )
    parser.add_argument(
        "--check", action="store_true", help="print only the cycles; exit 1 when there is one"
    )
    args = parser.parse_args(argv)
    edges = module_edges(args.root)
    if args.check:
        package_cycles, module_cycles = cycles(edges)
        for cycle in package_cycles:
            print("package cycle: " + " <-> ".join(cycle))
        for cycle in module_cycles:
            print("module cycle: " + " <-> ".join(cycle))
        return 1 if package_cycles or module_cycles else 0
    report(edges)
    return 0


if __name__ == "__main__":
    sys.exit(main())
