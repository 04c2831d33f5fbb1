"""8-bit pictures a person reads: previews that compare across methods, a focus map with its legend.

The TIFFs hold the data; these PNGs are for looking. Two rules make them honest:
* every preview of one stack is stretched the same way, from the stack's own range (not each image's),
  so the previews of two methods differ only where their pixels do;
* a colour-coded focus map carries a colour bar that says what the colours mean (slice number, or
  height in physical units when the z positions are known).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Percentiles of the stack's pixels mapped to 0 and 255: clipping the brightest 0.1% keeps a few hot
#: pixels from darkening the whole preview.
PREVIEW_PERCENTILES = (0.1, 99.9)
#: Pixels sampled (strided, every slice) to find that range: exact enough, and cheap on a 2k x 2k x 200 stack.
RANGE_SAMPLES = 2_000_000
#: ... read in windows of at most this side (in samples), so a lazy stack is never read a whole slice at once.
READ_BLOCK = 256

# Viridis sampled at 9 points; linear interpolation between them is indistinguishable by eye.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float32)


def stack_display_range(stack: Any, samples: int = RANGE_SAMPLES) -> tuple[float, float] | None:
    """(low, high) pixel values for 8-bit previews of anything gathered from ``stack``.

    None for 8-bit data, which is shown as stored. Read from a strided sample of every slice and time
    point (all channels), so it depends on the stack alone, never on the fusion method.
    """
    if np.dtype(stack.dtype) == np.uint8:
        return None
    h, w = stack.yx_shape
    per_plane = max(1, samples // max(1, stack.n_slices * stack.n_times))
    step = max(1, int(np.sqrt(h * w / per_plane)))
    block = READ_BLOCK * step  # each read returns at most READ_BLOCK² pixels, as fusion's own reads do
    parts = [np.asarray(stack.read_window(z, t, (slice(y, min(y + block, h), step), slice(x, min(x + block, w), step))),
                        dtype=np.float32).ravel()
             for t in range(stack.n_times) for z in range(stack.n_slices)
             for y in range(0, h, block) for x in range(0, w, block)]
    lo, hi = np.percentile(np.concatenate(parts), PREVIEW_PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


def to_uint8_preview(img: np.ndarray, value_range: tuple[float, float] | None = None, *,
                     low: float = PREVIEW_PERCENTILES[0], high: float = PREVIEW_PERCENTILES[1]) -> np.ndarray:
    """8-bit version of an image: uint8 as is; others stretched linearly over ``value_range``
    (pass the stack's, see :func:`stack_display_range`), or over the image's own percentiles."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    f = img.astype(np.float32)
    lo, hi = value_range if value_range is not None else np.percentile(f, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((f - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map a float image to RGB uint8 with a perceptually uniform (viridis-like) colormap."""
    t = np.clip((np.asarray(values, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    pos = t * (len(_VIRIDIS) - 1)
    i0 = np.minimum(pos.astype(np.int32), len(_VIRIDIS) - 2)
    w = (pos - i0)[..., None]
    rgb = _VIRIDIS[i0] * (1 - w) + _VIRIDIS[i0 + 1] * w
    return (rgb + 0.5).astype(np.uint8)


def _ticks(n_slices: int, max_ticks: int = 8) -> list[int]:
    """Slice indices to label: first and last always, evenly spaced whole steps between."""
    step = max(1, int(np.ceil((n_slices - 1) / max(1, max_ticks - 1))))
    ticks = list(range(0, n_slices, step))
    if ticks[-1] != n_slices - 1:
        if n_slices - 1 - ticks[-1] < step / 2 and len(ticks) > 1:
            ticks[-1] = n_slices - 1
        else:
            ticks.append(n_slices - 1)
    return ticks


def focus_map_picture(focus: np.ndarray, n_slices: int, *, z_positions: Sequence[float] | None = None,
                      unit: str | None = None) -> np.ndarray:
    """The focus map in colour with a colour bar on its right: RGB uint8 (H, W + bar).

    Colours span slice 0 (first) to n-1 (last). Tick labels are slice numbers as in the focus-map
    TIFF (0 = first slice), followed by the physical z of that slice when ``z_positions`` are known.
    """
    from PIL import Image, ImageDraw, ImageFont

    vmax = max(n_slices - 1, 1)
    body = colorize(focus, 0, vmax)
    h = body.shape[0]
    font_px = int(np.clip(h / 40, 10, 40))
    font = ImageFont.load_default(size=font_px)
    shown_unit = {"µm": "um", "micron": "um"}.get(unit or "", unit or "")  # Pillow's bundled font has no µ
    labels = {}
    for k in _ticks(n_slices):
        text = str(k)
        if z_positions is not None:
            text += f" ({float(z_positions[k]):.4g}{' ' + shown_unit if shown_unit else ''})"
        labels[k] = text
    title = "slice (z)" if z_positions is not None else "slice"
    pad = max(4, font_px // 2)
    bar_w = max(8, font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textlength(t, font=font) for t in [*labels.values(), title])
    panel_w = int(pad + bar_w + pad // 2 + pad + text_w + pad)
    panel = Image.new("RGB", (panel_w, h), (255, 255, 255))
    top, bottom = 2 * pad + 2 * font_px, h - pad - font_px // 2  # room for the title and the top label
    if bottom - top < 16:  # too small an image for a legend: the bar alone, full height
        top, bottom = 0, h
    ramp = np.linspace(vmax, 0, max(bottom - top, 1), dtype=np.float32)  # last slice at the top
    bar = np.repeat(colorize(ramp, 0, vmax)[:, None, :], bar_w, axis=1)
    panel.paste(Image.fromarray(bar), (pad, top))
    draw = ImageDraw.Draw(panel)
    if top > 0:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
        x_tick = pad + bar_w
        for k, text in labels.items():
            y = top + (bottom - top - 1) * (1 - k / vmax)
            draw.line([(x_tick, y), (x_tick + pad // 2, y)], fill=(0, 0, 0), width=max(1, font_px // 12))
            draw.text((x_tick + pad, y), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.concatenate([body, np.asarray(panel)], axis=1)
