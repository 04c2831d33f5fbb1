"""Lazy public names for a package (PEP 562): importing a room imports none of its modules.

`import napari_stackmff` and `stackmff --help` stay quick (no torch) until a name is used; a room
that kept an old module's name also forwards the names that left it (:mod:`._moved`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str], old: str | None = None
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the module
    (relative to the package) defining it; ``old`` names the old core module whose moved names forward."""
    namespace = import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(import_module(f".{exports[name]}", package), name)
            namespace[name] = value  # later look-ups skip this function
            return value
        if old is not None:
            from ._moved import moved_name

            return moved_name(old, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
