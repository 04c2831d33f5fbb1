"""The core's rooms import one way (issue 25): a module may import its own room and the rooms below it,
never a room above, and no modules import each other in a circle (docs/ARCHITECTURE.md).

Checked on the source (ast), so a lazy import inside a function counts like a top-level one: the
rule is about what a room needs, not when it is loaded. ``if TYPE_CHECKING:`` imports are not run
and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_stackmff"
ROOT = "napari_stackmff"
#: bottom to top; a module may import its own rank or lower. The doors (cli, widgets, reader, sample
#: data, the package's __init__) are above everything.
LAYERS = ["base", "io", "events", "tiles", "models", "fusion", "retouch", "render", "training", "batch", "doors"]
BASE = {"errors", "defaults", "devices", "_exports", "_moved", "__init__"}


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[:2] != [ROOT, "core"]:
        return "doors"
    if len(parts) == 2 or parts[2] in BASE:
        return "base"
    return parts[2]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (a ``from pkg import name`` counts the submodule
    ``pkg.name`` when there is one, else ``pkg``)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for child in node.body for n in ast.walk(child)}
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(ROOT)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(ROOT):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (PKG.parent / Path(*sub.split(".")) / "__init__.py").exists()
                found.add(sub if is_module else target)
    return found - {me}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def test_no_room_imports_a_room_above_it() -> None:
    upward = []
    for mod, deps in graph().items():
        for dep in deps:
            a, b = room_of(mod), room_of(dep)
            if LAYERS.index(b) > LAYERS.index(a) and not (a == "base" and mod.endswith(("_exports", "_moved"))):
                upward.append(f"{mod} ({a}) imports {dep} ({b})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circles() -> None:
    g = graph()
    # A package's __init__ is not an edge of a circle here: the rooms' __init__ files import nothing at
    # import time (lazy names, PEP 562), so a module importing its own room's door does not loop.
    g = {m: {d for d in deps if not (d in g and (PKG.parent / Path(*d.split("."))).is_dir())} for m, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(circles)


@pytest.mark.parametrize("bad, rule", [("napari_stackmff.core.io.read imports napari_stackmff.core.fusion.dispatch", "up"),
                                       ("a -> b -> a", "circle")])
def test_the_checks_can_fail(tmp_path, monkeypatch, bad, rule) -> None:
    """The two checks above find what they look for: an upward import and a circle planted in a copy."""
    import shutil

    copy = tmp_path / ROOT
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    monkeypatch.setattr(__import__(__name__), "PKG", copy)
    if rule == "up":
        (copy / "core" / "io" / "read.py").write_text((copy / "core" / "io" / "read.py").read_text()
                                                       + "\nfrom ..fusion.dispatch import fuse  # planted\n")
        with pytest.raises(AssertionError, match="io.read .io. imports napari_stackmff.core.fusion"):
            test_no_room_imports_a_room_above_it()
    else:
        (copy / "core" / "io" / "records.py").write_text((copy / "core" / "io" / "records.py").read_text()
                                                          + "\nfrom .read import load_stack  # planted\n")
        with pytest.raises(AssertionError, match="io.re"):
            test_no_import_circles()


def test_public_imports_and_old_paths_keep_working() -> None:
    """Public names import without a warning; an old module path (gone, or a room now) still gives the
    same objects, with a DeprecationWarning naming the new path (for one release)."""
    import importlib
    import sys
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from napari_stackmff import FocalStack, fuse, load_stack  # noqa: F401
        from napari_stackmff.core.events import bin_events  # noqa: F401
        from napari_stackmff.core.fusion import FusionResult, fuse as fuse2, prepare  # noqa: F401
        from napari_stackmff.core.io import load_stack as load2, save_result  # noqa: F401
        from napari_stackmff.core.training import TrainConfig, train  # noqa: F401
    assert fuse2 is fuse and load2 is load_stack and callable(train)

    from napari_stackmff.core.fusion.classical_engine import ClassicalEngine

    sys.modules.pop("napari_stackmff.core.pipeline", None)
    with pytest.warns(DeprecationWarning, match="core.pipeline is deprecated"):
        old = importlib.import_module("napari_stackmff.core.pipeline")
    with pytest.warns(DeprecationWarning, match="moved to napari_stackmff.core.fusion.classical_engine.ClassicalEngine"):
        assert old.ClassicalEngine is ClassicalEngine
    with pytest.warns(DeprecationWarning, match="core.fusion.gather moved to napari_stackmff.core.tiles.pipeline"):
        from napari_stackmff.core.fusion import gather  # noqa: F401
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


def test_every_old_name_has_a_home() -> None:
    """Each name the old modules defined resolves at its new home (the forwarding table is right)."""
    import importlib

    from napari_stackmff.core._moved import CORE, MOVED

    missing = [f"{old}.{name} -> {module}" for old, homes in MOVED.items() for module, names in homes.items()
               for name in names.split() if not hasattr(importlib.import_module(f"{CORE}.{module}"), name)]
    assert not missing, missing
