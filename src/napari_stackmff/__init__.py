"""napari-stackmff: all-in-focus fusion of focal stacks, in napari or headless.

>>> from napari_stackmff import fuse, load_stack
>>> result = fuse("path/to/stack_folder", method="auto")
>>> result.all_in_focus, result.focus_map

Names are imported on first use, so importing the package (napari does, to find the plugin's
readers) costs nothing until a stack is fused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.errors import StackMFFError

__version__ = "0.1.0"
__all__ = [
    "FocalStack",
    "FusionCancelled",
    "FusionResult",
    "StackMFFError",
    "available_methods",
    "fuse",
    "load_stack",
    "save_result",
]

if TYPE_CHECKING:  # pragma: no cover
    from .core import FocalStack, FusionCancelled, FusionResult, available_methods, fuse, load_stack, save_result


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import core

    value = getattr(core, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
