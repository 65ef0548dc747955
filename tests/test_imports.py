"""Imports point one way: no cycle between the package's modules and no import of a higher layer.

The package's sources are parsed (``ast``), never imported; every ``import`` counts, also one
inside a function. Layers, lowest first (:data:`LAYERS`): base modules, data, models,
callbacks, evaluation, inference, training, report. A module may import its own layer and
those below; an entry point (:data:`ENTRY_POINTS`) may import anything and nothing imports it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = "cxr_lightning"
SOURCES = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("cxr_lightning", "cxr_lightning.findings", "cxr_lightning.errors",
              "cxr_lightning.integrity",
              "cxr_lightning.commands", "cxr_lightning.resolvers", "cxr_lightning.preset",
              "cxr_lightning.provenance", "cxr_lightning.console",
              "cxr_lightning.config_checks", "cxr_lightning.published")),
    ("data", ("cxr_lightning.data",)),
    ("models", ("cxr_lightning.models",)),
    ("callbacks", ("cxr_lightning.callbacks",)),
    # statistics on saved predictions, imports only base modules; below training because
    # results.py (metrics into results.json) and tracking.py (curves to W&B) use it
    ("evaluation", ("cxr_lightning.evaluation",)),
    # a trained model as a file and its use: training saves its bundle through it
    ("inference", ("cxr_lightning.inference",)),
    ("training", ("cxr_lightning.train", "cxr_lightning.job", "cxr_lightning.training",
                  "cxr_lightning.job_record",
                  "cxr_lightning.results", "cxr_lightning.sweep", "cxr_lightning.tracking",
                  "cxr_lightning.csv_log")),
    ("report", ("cxr_lightning.report",)),
    # the whole study: runs the cohort, the cache, cxr-train multiruns and the report
    ("study", ("cxr_lightning.study",)),
    ("entry points", ("cxr_lightning.predict", "cxr_lightning.export")),
)
"""Module prefixes per layer, lowest first; a module belongs to its longest matching prefix."""

ENTRY_POINTS = frozenset({"cxr_lightning.train", "cxr_lightning.predict",
                          "cxr_lightning.export", "cxr_lightning.report.__main__",
                          "cxr_lightning.study.__main__"})
"""Commands: they may import any layer, and no module imports them."""

KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()
"""Imports that break a rule today. The list may only shrink: an entry that no longer breaks a
rule fails :func:`test_known_exceptions_are_still_needed`, so that it is removed."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCES.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCES.rglob("*.py"))}


def imported_modules(tree: ast.Module, name: str, is_package: bool,
                     modules: Iterable[str]) -> set[str]:
    """The package's modules that ``tree`` imports (``from x import y``: ``x.y`` when that is a
    module, else ``x``), wherever the import statement is."""
    known = set(modules)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules()
    return {name: imported_modules(ast.parse(path.read_text(), str(path)), name,
                                   path.name == "__init__.py", modules)
            for name, path in modules.items()}


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix matching ``module`` (the package itself
    matches only its ``__init__``); KeyError if none."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS)
               for prefix in prefixes if module == prefix
               or (prefix != PACKAGE and module.startswith(prefix + "."))]
    if not matches:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_imports.py")
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Imports of a higher layer, or of an entry point, by a module that is no entry point."""
    return {(module, target) for module, targets in graph.items() if module not in ENTRY_POINTS
            for target in targets
            if target in ENTRY_POINTS or layer_of(target) > layer_of(module)}


def cyclic_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The imports that lie on a cycle: ``a -> b`` where ``b`` leads back to ``a``."""
    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for target in graph.get(stack.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return seen

    reach = {module: reachable(module) for module in graph}
    return {(module, target) for module, targets in graph.items() for target in targets
            if module in reach[target]}


def _listing(edges: set[tuple[str, str]]) -> str:
    return "\n".join(f"  {a} -> {b}  ({LAYERS[layer_of(a)][0]} -> {LAYERS[layer_of(b)][0]})"
                     for a, b in sorted(edges))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_walk_sees_the_package(graph):
    """Guards the parser: imports written three ways are found, in their own modules."""
    assert len(graph) > 60
    assert "cxr_lightning.models.classifier" in graph["cxr_lightning.inference.bundle"]
    # ``from cxr_lightning.report import build`` style (a submodule, not the package)
    assert "cxr_lightning.report.build" in graph["cxr_lightning.report"]
    # an import inside a function (data/cache.py's main)
    assert "cxr_lightning.data.sources" in graph["cxr_lightning.data.cache"]


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("cxr_lightning.somewhere_new")


def test_no_module_imports_a_higher_layer(graph):
    upward = upward_imports(graph) - KNOWN_EXCEPTIONS
    assert not upward, f"imports of a higher layer (see LAYERS):\n{_listing(upward)}"


def test_no_import_cycle(graph):
    cycles = cyclic_imports(graph) - KNOWN_EXCEPTIONS
    assert not cycles, f"imports on a cycle:\n{_listing(cycles)}"


def test_known_exceptions_are_still_needed(graph):
    breaking = upward_imports(graph) | cyclic_imports(graph)
    assert not KNOWN_EXCEPTIONS - breaking, (
        f"no longer breaks a rule, remove from KNOWN_EXCEPTIONS:\n"
        f"{_listing(KNOWN_EXCEPTIONS - breaking)}")


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """On a made-up graph: models importing inference, and data modules importing each other."""
    made_up = {
        "cxr_lightning.models.classifier": {"cxr_lightning.inference.bundle"},
        "cxr_lightning.inference.bundle": {"cxr_lightning.models.classifier"},
        "cxr_lightning.data.a": {"cxr_lightning.data.b"},
        "cxr_lightning.data.b": {"cxr_lightning.data.a", "cxr_lightning.findings"},
        "cxr_lightning.findings": set(),
        "cxr_lightning.evaluation.metrics": {"cxr_lightning.predict"},
        "cxr_lightning.predict": {"cxr_lightning.report.build"},
        "cxr_lightning.report.build": set(),
    }
    assert upward_imports(made_up) == {
        ("cxr_lightning.models.classifier", "cxr_lightning.inference.bundle"),
        ("cxr_lightning.evaluation.metrics", "cxr_lightning.predict")}
    assert cyclic_imports(made_up) == {
        ("cxr_lightning.models.classifier", "cxr_lightning.inference.bundle"),
        ("cxr_lightning.inference.bundle", "cxr_lightning.models.classifier"),
        ("cxr_lightning.data.a", "cxr_lightning.data.b"),
        ("cxr_lightning.data.b", "cxr_lightning.data.a")}
