"""Headless core of napari-stackmff: no napari, no Qt. Scripts, the CLI and the widgets share it.

Rooms, each importing only the rooms below it (docs/ARCHITECTURE.md; tests/test_layering.py checks):
batch -> training -> fusion -> models -> tiles -> events -> io -> base (errors, defaults, devices).

The public names are imported on first use (PEP 562), so `import napari_stackmff` and
`stackmff --help` do not pay for importing torch until something is fused. Old module paths
(``core.pipeline``, ``core.train``...) still import, with a DeprecationWarning (:mod:`._moved`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _moved
from ._exports import lazy_exports

#: public name -> the core module that defines it
_EXPORTS = {
    "FocalStack": "io.stack",
    "FusionCancelled": "tiles.pipeline",
    "FusionResult": "io.result",
    "available_methods": "fusion.dispatch",
    "fuse": "fusion.dispatch",
    "load_stack": "io.read",
    "save_result": "io.write",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
_moved.install()

if TYPE_CHECKING:  # pragma: no cover
    from .fusion.dispatch import available_methods, fuse
    from .io.read import load_stack
    from .io.result import FusionResult
    from .io.stack import FocalStack
    from .io.write import save_result
    from .tiles.pipeline import FusionCancelled
