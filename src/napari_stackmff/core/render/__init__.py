"""Physically rendered focal stacks with exact truth (issue 28): microscopes (widefield fluorescence and
transmitted light, a wave-optics PSF) and lenses (Mitsuba 3's thin-lens camera, optional extra ``[render]``).

May import: io and the base. Training and the benchmarks use it; nothing below does.
"""

from __future__ import annotations

from .._exports import lazy_exports

_EXPORTS = {
    "MicroStack": "micro",
    "Optics": "micro",
    "render_micro": "micro",
    "MacroStack": "macro",
    "render_macro": "macro",
    "have_mitsuba": "macro",
    "write_physical_dataset": "dataset",
    "PHYSICAL_KINDS": "dataset",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
