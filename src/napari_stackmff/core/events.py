"""Event focal stacks: one signed event frame per focal slice.

An event camera fires where log intensity changes by a contrast threshold; during a focal sweep
that happens most where focus changes fastest, i.e. around each pixel's in-focus plane. We read
event frames (red = positive, blue = negative polarity, as in the EventStackMFF previews) and
simulate them ESIM-style from a rendered sweep, since no public simulator ships with the method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import StackError
from .synth import simulate_events  # noqa: F401  (re-exported: events are rendered with the stacks)


def frame_to_signed(rgb: np.ndarray) -> np.ndarray:
    """Red/blue event frame -> signed polarity in [-1, 1] (R - B; white or black background -> 0)."""
    f = rgb.astype(np.float32)
    if f.ndim == 2:
        raise StackError("event frames must be colour images (red = positive, blue = negative polarity).")
    scale = 255.0 if rgb.dtype == np.uint8 else (65535.0 if rgb.dtype == np.uint16 else 1.0)
    return np.clip((f[..., 0] - f[..., 2]) / scale, -1, 1)


def read_event_frames(folder: str | Path) -> np.ndarray:
    """A folder of red/blue event frames (natural order) -> (Z, Y, X) float32 signed counts."""
    from .io import list_slice_files, read_image

    files = list_slice_files(folder)
    if len(files) < 2:
        raise StackError(f"{folder}: an event stack needs at least 2 event frames, found {len(files)}.")
    frames = [frame_to_signed(read_image(p)) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise StackError(f"{folder}: event frames have different sizes {sorted(shapes)}.")
    return np.stack(frames).astype(np.float32)
