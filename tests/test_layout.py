"""The package's shape (docs/architecture.md): stages import only themselves and the stages before them, no import
circle anywhere (imports inside functions and under TYPE_CHECKING count), and every pre-0.x module path still
imports — the same module object, with a DeprecationWarning naming the new path."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from car_hf._moved import BECAME_PACKAGES, MOVED, new_path

PACKAGE = Path(__file__).resolve().parents[1] / "car_hf"
#: the flow a user walks; core is what every stage uses (see docs/architecture.md for why publishing is early)
LAYERS = ("core", "plots", "publishing", "generation", "scoring", "ranking", "training", "evaluation")
TOP = ("cli", "demo", "__init__")  # may import any stage
BASE = ("_version", "_lazy", "_moved")  # import no car_hf module at all


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "metrics" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every car_hf module ``path`` imports, wherever the import statement is."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found |= {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer(name: str) -> int:
    part = name.split(".")[1] if name.count(".") else "__init__"
    if part in BASE:
        return -1
    if part in TOP:
        return len(LAYERS)
    return LAYERS.index(part)


def test_every_module_belongs_to_a_stage():
    strays = [m for m in modules() if m != "car_hf" and m.split(".")[1] not in (*LAYERS, *TOP, *BASE)]
    assert strays == []


def test_stages_import_only_earlier_stages():
    against = sorted(f"{src} ({src.split('.')[1] if '.' in src else src}) imports {dst}"
                     for src, dsts in graph().items() for dst in dsts if layer(dst) > layer(src))
    assert against == []
    base = {src: dsts for src, dsts in graph().items() if layer(src) == -1 and dsts}
    assert base == {}


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_a_circle_would_be_found(tmp_path):
    """The graph sees imports inside functions and under TYPE_CHECKING (what the two old circles used)."""
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from car_hf.core import cache\n"
                    "def f():\n    from car_hf.ranking.trial import rank_teachers\n")
    assert imports_of("car_hf.core.x", path, {"car_hf.core.cache", "car_hf.ranking.trial"}) == {
        "car_hf.core.cache", "car_hf.ranking.trial"}


def test_moved_paths_point_at_modules_that_exist():
    assert all((PACKAGE.parent / (new.replace(".", "/") + ".py")).exists()
               or (PACKAGE.parent / new.replace(".", "/") / "__init__.py").exists() for new in MOVED.values())
    assert new_path("car_hf.cards.pilot") == "car_hf.publishing.cards.pilot"
    assert new_path("car_hf.generation.generate") is None


OLD_PATHS_SCRIPT = r"""
import importlib, json, sys, warnings
from car_hf._moved import BECAME_PACKAGES, MOVED
old_paths = sorted(MOVED) + ["car_hf.cards.pilot", "car_hf.cards.dataset", "car_hf.engines.vllm_engine"]
report = {}
for old in old_paths:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    from car_hf._moved import new_path
    new = importlib.import_module(new_path(old))
    public = [n for n in vars(new) if not n.startswith("_")]
    report[old] = {"same": module is new, "warned": [str(w.message) for w in caught
                                                       if w.category is DeprecationWarning and old in str(w.message)],
                   "names": all(getattr(module, n) is getattr(new, n) for n in public)}
from car_hf.data import write_ranking, load_data
from car_hf.publishing.folders import write_ranking as moved
from car_hf.core.data import load_data as kept
report["car_hf.data names"] = write_ranking is moved and load_data is kept
for old, new in BECAME_PACKAGES.items():
    module = importlib.import_module(new)
    package = importlib.import_module(old)
    public = [n for n in vars(module) if not n.startswith("_") and not isinstance(getattr(module, n), type(sys))]
    report[old] = all(getattr(package, n) is getattr(module, n) for n in public)
from car_hf.ranking import rank_generators, bootstrap_car  # a stage's name, and a name of the old module
from car_hf.adaptive import AdaptiveResult, rank_adaptive
report["names"] = [rank_generators.__module__, bootstrap_car.__module__, AdaptiveResult.__module__]
print(json.dumps(report))
"""


def test_every_old_module_path_still_imports():
    out = subprocess.run([sys.executable, "-c", OLD_PATHS_SCRIPT], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for old in [*MOVED, "car_hf.cards.pilot", "car_hf.engines.vllm_engine"]:
        if old == "car_hf.data":
            assert report[old]["warned"] and report["car_hf.data names"]
            continue
        assert report[old]["same"] and report[old]["names"], old
        assert len(report[old]["warned"]) == 1 and new_path(old) in report[old]["warned"][0], old
    assert all(report[old] for old in BECAME_PACKAGES)
    assert report["names"] == ["car_hf.ranking.leaderboard", "car_hf.ranking.leaderboard", "car_hf.ranking.results"]


@pytest.mark.parametrize("stage", LAYERS)
def test_each_stage_documents_itself(stage):
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 10


def test_stage_exports_are_the_same_objects_as_car_hf_exports():
    """``from car_hf.ranking import rank_generators`` and ``car_hf.rank_generators`` are one object; a stage
    exports only names its own modules define."""
    import importlib

    import car_hf

    for stage in LAYERS:
        package = importlib.import_module(f"car_hf.{stage}")
        for name in getattr(package, "__all__", ()):
            value = getattr(package, name)
            assert value.__module__.startswith(f"car_hf.{stage}.") if hasattr(value, "__module__") else True, name
            if name in car_hf.__all__:
                assert getattr(car_hf, name) is value, name
