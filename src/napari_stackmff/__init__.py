"""napari-stackmff: all-in-focus fusion of focal stacks, in napari or headless.

>>> from napari_stackmff import fuse, load_stack
>>> result = fuse("path/to/stack_folder", method="auto")
>>> result.all_in_focus, result.focus_map
"""

from .core import FocalStack, FusionCancelled, FusionResult, available_methods, fuse, load_stack, save_result
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
