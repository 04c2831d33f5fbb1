"""FusionResult: what fusion gives back, shared by the fusion driver and the writers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FusionResult:
    """What fusion gives back.

    Attributes
    ----------
    all_in_focus
        (T?, Y, X, C?) with the input's dtype and channels; each pixel copied from one slice, but for
        the open field next to a bright field's change of slice, cross-faded (``blend="exact"``: none;
        ``blend="soft"``: a weighted mix of slices, see :mod:`napari_stackmff.core.tiles.blend`).
    focus_map
        float32 (T?, Y, X): the in-focus slice index, sub-slice where the method resolves it.
    confidence
        float32 (T?, Y, X) in [0, 1]: how clearly one slice wins at that pixel.
    height_map
        float32 focus position in physical units (``unit``) when the z positions are known, else None.
    z_positions
        The slices' z positions in ``unit`` (None when unknown).
    display_range
        (low, high) pixel values that 8-bit previews of this stack are stretched over: the input
        stack's own range, the same for every method (None for 8-bit input, shown as stored).
    """

    all_in_focus: np.ndarray
    focus_map: np.ndarray
    confidence: np.ndarray
    method: str
    n_slices: int
    height_map: np.ndarray | None = None
    z_step: float | None = None
    unit: str | None = None
    pixel_size: tuple[float, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    z_positions: np.ndarray | None = None
    display_range: tuple[float, float] | None = None
    alignment: list[dict] | None = None  # per time point: motion, matrices (reference -> slice), shifts, scales
    blend: str = "hard"  # "exact": every pixel one slice's; "soft": all_in_focus mixes slices (tiles.blend)
    excluded: list[dict] | None = None  # per time point: slices left out of the fusion and why (core.checks)
    decision: str | None = None  # classical methods: "legacy", "halo" or "glow" (core.tiles.decision), as taken
    runtime: str | None = None  # networks: "torch" or "onnxruntime" (core.models.onnx_runtime)
    edits: np.ndarray | None = None  # retouched (core.retouch): uint16 (T?, Y, X), k > 0 = slice k-1 painted

    @property
    def n_times(self) -> int:
        return self.focus_map.shape[0] if self.focus_map.ndim == 3 else 1

    @property
    def index(self) -> np.ndarray:
        """Integer slice index each output pixel was taken from."""
        return np.clip(np.rint(self.focus_map), 0, self.n_slices - 1).astype(np.intp)
