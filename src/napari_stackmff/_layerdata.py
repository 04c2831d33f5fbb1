"""Translation between core objects and napari layer data, without importing napari or Qt.

napari shows the last two axes of an array as the image plane, so a (Z, Y, X, C) stack of
fluorescence channels must be handed over as (C, Z, Y, X); RGB stays (Z, Y, X, 3) with
``rgb=True``. The readers, the samples and the widgets all go through here, so the order of the
axes, the scale (z step, pixel size) and ``metadata["stackmff"]`` are written and read in one
place. ``metadata["stackmff"]["axes"]`` names the axes of the *layer* data, e.g. ``"CZYX"``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .core.io.stack import FocalStack, moveaxis_last

LayerDataTuple = tuple[Any, dict, str]

#: Layer axis orders the fusion widget accepts, by number of (non-RGB) dimensions.
LAYER_AXES_CHOICES: dict[int, tuple[str, ...]] = {3: ("ZYX",), 4: ("TZYX", "CZYX"), 5: ("TCZYX",)}
_PINT_UNITS = {"nm": "nm", "um": "um", "µm": "um", "micron": "um", "mm": "mm", "cm": "cm", "m": "m"}
#: Blue (negative) - black (no events) - red (positive): events read at a glance on napari's dark canvas.
EVENT_COLORMAP = {"name": "stackmff events", "colors": [[0.15, 0.35, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0],
                                                       [1.0, 0.2, 0.1, 1.0]], "controls": [0.0, 0.5, 1.0]}


def layer_axes_for(stack_axes: str, rgb: bool) -> str:
    """Axis order of the layer for a stack: channels (unless RGB) go before Z."""
    if stack_axes.endswith("C") and not rgb:
        return stack_axes.replace("ZYXC", "CZYX")
    return stack_axes


def guess_layer_axes(ndim: int, rgb: bool, metadata: dict | None = None) -> str:
    """Axes of an image layer's data: from our metadata when present, else the likeliest guess."""
    meta = (metadata or {}).get("stackmff") or {}
    axes = meta.get("axes")
    if isinstance(axes, str) and len(axes) == ndim + (1 if rgb else 0):
        return axes
    if rgb:
        return {3: "ZYXC", 4: "TZYXC"}.get(ndim, "")
    return LAYER_AXES_CHOICES.get(ndim, ("",))[0]


def _units(unit: str | None) -> str | None:
    return _PINT_UNITS.get(unit or "", None)


def stack_scale(stack_axes_no_c: str, z_step: float | None, pixel_size: Sequence[float] | None) -> list[float]:
    """napari scale for the given axes (no C): z step on Z, pixel size on Y/X, 1 elsewhere."""
    py, px = pixel_size if pixel_size else (1.0, 1.0)
    scale = {"T": 1.0, "C": 1.0, "Z": abs(z_step) if z_step else 1.0, "Y": float(py), "X": float(px)}
    return [scale[a] for a in stack_axes_no_c]


def stack_layer_data(stack: FocalStack, name: str | None = None, **extra: Any) -> LayerDataTuple:
    """An image LayerDataTuple for a focal stack, with scale, units and ``metadata["stackmff"]``."""
    axes = layer_axes_for(stack.axes, stack.rgb)
    data = stack.data
    if axes != stack.axes:  # (T?, Z, Y, X, C) -> (T?, C, Z, Y, X)
        data = np.moveaxis(np.asarray(data), -1, axes.index("C"))
    dims = axes[:-1] if stack.rgb else axes
    # With an uneven focus step, napari's scale is the mean step; the positions stay in metadata.
    z_step = stack.z_step if stack.z_positions is not None and stack.n_slices > 1 else None
    kwargs: dict[str, Any] = {
        "name": name or _stack_name(stack),
        "rgb": bool(stack.rgb),
        "scale": stack_scale(dims, z_step, stack.pixel_size),
        "axis_labels": [a.lower() for a in dims],
        "metadata": {"stackmff": {
            "axes": axes,
            "z_positions": None if stack.z_positions is None else [float(z) for z in stack.z_positions],
            "unit": stack.unit,
            "pixel_size": None if stack.pixel_size is None else [float(p) for p in stack.pixel_size],
            "rgb": bool(stack.rgb),
            "source": stack.source,
            "channel_names": list(stack.channel_names) if stack.channel_names else None,
        }},
    }
    unit = _units(stack.unit)
    if unit and (z_step or stack.pixel_size):
        kwargs["units"] = [unit if a in "ZYX" else "pixel" for a in dims]
    if not stack.rgb and "C" in axes and stack.n_channels > 1:
        kwargs["colormap"] = "gray"
    kwargs.update(extra)
    return data, kwargs, "image"


def event_layer_data(events: np.ndarray, name: str, *, scale: Sequence[float] | None = None,
                     source: str | None = None, units: Sequence[str] | None = None) -> LayerDataTuple:
    """An image LayerDataTuple for signed event frames: diverging colormap, symmetric limits."""
    events = np.asarray(events, dtype=np.float32)
    peak = float(np.percentile(np.abs(events), 99.9)) if events.size else 1.0
    peak = peak if peak > 0 else max(float(np.abs(events).max()), 1.0)
    kwargs: dict[str, Any] = {
        "name": name,
        "colormap": EVENT_COLORMAP,
        "contrast_limits": (-peak, peak),
        "blending": "additive",
        "axis_labels": ["z", "y", "x"][-events.ndim:] if events.ndim <= 3 else None,
        "metadata": {"stackmff": {"axes": "TZYX"[-events.ndim:], "kind": "events", "source": source}},
    }
    if scale is not None:
        kwargs["scale"] = list(scale)
    if units is not None:
        kwargs["units"] = list(units)
    return events, kwargs, "image"


def _stack_name(stack: FocalStack) -> str:
    from pathlib import Path

    if not stack.source:
        return "focal stack"
    p = Path(stack.source)
    return p.name[: -len("".join(p.suffixes))] if p.suffixes and p.is_file() else p.name


# ------------------------------------------------------------------------ layer -> FocalStack
def layer_to_stack(
    data: Any,
    layer_axes: str,
    *,
    rgb: bool,
    z_positions: Sequence[float] | None = None,
    unit: str | None = None,
    pixel_size: Sequence[float] | None = None,
    events: Any = None,
    source: str | None = None,
) -> FocalStack:
    """The FocalStack that a layer's data holds; channels go back to the last axis (a view)."""
    stack_axes = layer_axes
    if "C" in layer_axes and not rgb:
        c = layer_axes.index("C")
        data = moveaxis_last(data, c)
        stack_axes = layer_axes.replace("C", "") + "C"
    stack = FocalStack(
        data=data,
        axes=stack_axes,
        z_positions=None if z_positions is None else np.asarray(z_positions, dtype=np.float64),
        unit=unit,
        pixel_size=None if pixel_size is None else (float(pixel_size[0]), float(pixel_size[1])),
        rgb=bool(rgb),
        events=events,
        source=source,
    )
    return stack


def drop_axes(values: Sequence[float], layer_axes_no_rgb: str, drop: str) -> list[float]:
    """Per-axis values (scale, translate) of a layer with the axes in ``drop`` removed."""
    return [float(v) for v, a in zip(values, layer_axes_no_rgb) if a not in drop]


def to_layer_order(result_array: np.ndarray, layer_axes: str, rgb: bool) -> np.ndarray:
    """A fused image (T?, Y, X, C?) in the layer's axis order without Z, e.g. (C, Y, X)."""
    if "C" in layer_axes and not rgb:
        return np.moveaxis(result_array, -1, layer_axes.replace("Z", "").index("C"))
    return result_array


# ------------------------------------------------------------------------ 3-D height surface
def height_surface(focus_map: np.ndarray, values: np.ndarray, confidence: np.ndarray | None = None,
                   min_confidence: float = 0.0, max_side: int = 192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A triangle mesh (vertices (z, y, x) in slice/pixel units, faces, values) of a focus map.

    At most ``max_side`` vertices per side, so a 2048² image stays interactive. Each vertex takes
    the median of its block: isolated wrong picks would otherwise stand out as spikes in 3-D.
    Triangles touching a vertex with confidence below ``min_confidence`` are left out: where no
    slice is clearly sharp (flat background) the height is a guess, and a hole says so honestly.
    """
    h, w = focus_map.shape
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    ny, nx = -(-h // step), -(-w // step)

    def blocks(a: np.ndarray) -> np.ndarray:
        if step == 1:
            return a.astype(np.float32)
        pad = np.pad(a.astype(np.float32), ((0, ny * step - h), (0, nx * step - w)), mode="edge")
        return np.median(pad.reshape(ny, step, nx, step).swapaxes(1, 2).reshape(ny, nx, -1), axis=-1)

    z, vals = blocks(focus_map), blocks(values)
    yy, xx = np.meshgrid(np.minimum(np.arange(ny) * step + (step - 1) / 2, h - 1),
                         np.minimum(np.arange(nx) * step + (step - 1) / 2, w - 1), indexing="ij")
    verts = np.stack([z, yy, xx], axis=-1).reshape(-1, 3).astype(np.float32)
    idx = np.arange(ny * nx).reshape(ny, nx)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    if confidence is not None and min_confidence > 0:
        ok = (blocks(confidence) >= min_confidence).reshape(-1)
        faces = faces[ok[faces].all(axis=1)]
    return verts, faces.astype(np.int64), vals.reshape(-1).astype(np.float32)
