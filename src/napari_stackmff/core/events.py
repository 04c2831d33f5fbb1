"""Event focal stacks: one signed event frame per focal slice.

An event camera fires where log intensity changes by a contrast threshold; during a focal sweep
that happens most where focus changes fastest, i.e. around each pixel's in-focus plane. We read
event frames (red = positive, blue = negative polarity, as in the EventStackMFF previews) and
simulate them ESIM-style from a rendered sweep, since no public simulator ships with the method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import StackError


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


def simulate_events(
    aif: np.ndarray,
    depth: np.ndarray,
    focus_positions: Sequence[float],
    *,
    max_radius: float = 8.0,
    substeps: int = 4,
    threshold: float = 0.2,
    threshold_jitter: float = 0.03,
    noise_rate: float = 0.002,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """ESIM-style events of a focal sweep, accumulated per focal slice -> (N, H, W) float32.

    The sweep is rendered at ``substeps`` positions between consecutive slices; a pixel fires
    each time its log intensity moves ``threshold`` (jittered per pixel) away from its last
    reference level; a few noise events are sprinkled in. Sub-steps nearest slice j count for j.
    """
    from .synth import render_stack

    rng = rng or np.random.default_rng(0)
    f = np.asarray(focus_positions, np.float32)
    n = len(f)
    fine = np.concatenate([np.linspace(f[i], f[i + 1], substeps, endpoint=False) for i in range(n - 1)] + [f[-1:]])
    owner = np.abs(fine[:, None] - f[None, :]).argmin(axis=1)
    sweep = render_stack(aif, depth, fine, max_radius=max_radius, layers=24, dtype=np.float32).slices
    if sweep.ndim == 4:
        sweep = sweep @ np.array([0.299, 0.587, 0.114], np.float32)
    logi = np.log(sweep + 1e-3)
    c = threshold + threshold_jitter * rng.standard_normal(logi.shape[1:]).astype(np.float32)
    c = np.maximum(c, 0.05)
    ref = logi[0].copy()
    out = np.zeros((n, *logi.shape[1:]), np.float32)
    for k in range(1, len(fine)):
        diff = logi[k] - ref
        count = np.floor(np.abs(diff) / c)
        ref += np.sign(diff) * count * c
        out[owner[k]] += np.sign(diff) * count
    noise = rng.random(out.shape) < noise_rate
    out[noise] += rng.choice([-1.0, 1.0], size=int(noise.sum()))
    return out
