"""Headless core of napari-stackmff: no napari, no Qt. Scripts, the CLI and the widgets share it.

The public names are imported on first use (PEP 562), so `import napari_stackmff` and
`stackmff --help` do not pay for importing torch until something is fused.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: public name -> the core module that defines it
_EXPORTS = {
    "FocalStack": "stack",
    "FusionCancelled": "fusion",
    "FusionResult": "fusion",
    "available_methods": "fusion",
    "fuse": "fusion",
    "load_stack": "io",
    "save_result": "io",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .fusion import FusionCancelled, FusionResult, available_methods, fuse
    from .io import load_stack, save_result
    from .stack import FocalStack


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
