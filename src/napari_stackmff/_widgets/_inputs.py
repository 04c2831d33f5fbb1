"""What the fusion widget needs to know about an input layer: its axes, channels and z spacing.

Our readers write ``metadata["stackmff"]``; layers from elsewhere are understood from their
shape, RGB flag, scale and units. Nothing here computes on pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Layer

from .._layerdata import LAYER_AXES_CHOICES, guess_layer_axes, layer_to_stack
from ..core.io.stack import FocalStack
from ._layers import is_result

AXES_TEXT = {
    "ZYX": "z, y, x", "ZYXC": "z, y, x, RGB", "TZYX": "time, z, y, x", "CZYX": "channel, z, y, x",
    "TCZYX": "time, channel, z, y, x", "TZYXC": "time, z, y, x, RGB",
}
UNITS = {"µm": "um", "nm": "nm", "mm": "mm"}


def _meta(layer: Layer) -> dict:
    return (layer.metadata or {}).get("stackmff") or {}


def is_event_layer(layer: Layer) -> bool:
    return _meta(layer).get("kind") == "events"


def is_stack_layer(layer: Layer) -> bool:
    """Image layers that can be focal stacks: 3 to 5 non-RGB dimensions, not one of our results."""
    return (isinstance(layer, Image) and not layer.multiscale and 3 <= layer.ndim <= 5
            and not is_result(layer) and not is_event_layer(layer))


def is_event_candidate(layer: Layer) -> bool:
    return isinstance(layer, Image) and not layer.rgb and layer.ndim >= 3 and not is_result(layer)


def axes_choices(layer: Layer) -> list[str]:
    """Possible axis orders of the layer's data (with a trailing C for RGB)."""
    if layer.rgb:
        return [{3: "ZYXC", 4: "TZYXC"}.get(layer.ndim, "")] if layer.ndim in (3, 4) else []
    guess = guess_layer_axes(layer.ndim, False, layer.metadata)
    options = list(LAYER_AXES_CHOICES.get(layer.ndim, ()))
    if guess in options:
        options.remove(guess)
        options.insert(0, guess)
    return options


def channel_choices(layer: Layer, axes: str) -> list[tuple[str, int | None]]:
    """(label, channel index) pairs for the focus-channel menu; the first is the default."""
    if layer.rgb:
        names = ["red", "green", "blue", "alpha"][: layer.data.shape[-1]]
        return [("luma (brightness)", None)] + [(n, i) for i, n in enumerate(names[:3])]
    if "C" not in axes:
        return [("single channel", None)]
    n = layer.data.shape[axes.index("C")]
    names = _meta(layer).get("channel_names") or []
    labels = [names[i] if i < len(names) and names[i] else f"channel {i}" for i in range(n)]
    return [("mean of all channels", None)] + [(lab, i) for i, lab in enumerate(labels)]


@dataclass
class ZInfo:
    """Physical z positions (None when unknown), their unit, and a sentence for the user."""

    positions: np.ndarray | None
    unit: str | None
    text: str


def z_info(layer: Layer, axes: str, user_step: float, user_unit: str) -> ZInfo:
    """Where the z spacing comes from: the user's value, the file's positions, or the layer scale."""
    dims = axes[:-1] if layer.rgb else axes
    n = layer.data.shape[dims.index("Z")]
    meta = _meta(layer)
    if user_step > 0:
        unit = UNITS.get(user_unit, user_unit)
        return ZInfo(np.arange(n) * user_step, unit, f"Focus map in {user_unit}: {user_step:g} {user_unit} steps (set here).")
    positions = meta.get("z_positions")
    unit = meta.get("unit")
    if positions is not None and len(positions) == n:
        step = float(np.mean(np.diff(positions))) if n > 1 else 0.0
        shown = "µm" if unit == "um" else (unit or "units")
        return ZInfo(np.asarray(positions, float), unit, f"Focus map in {shown}: {step:.3g} {shown} steps (from file).")
    zi = dims.index("Z")
    scale = float(layer.scale[zi])
    layer_unit = _layer_unit(layer, zi)
    if scale != 1.0 or layer_unit:
        shown = layer_unit or "units"
        return ZInfo(np.arange(n) * scale, UNITS.get(layer_unit or "", layer_unit),
                     f"Focus map in {shown}: {scale:g} {shown} steps (layer scale).")
    return ZInfo(None, None, "Z step unknown: the focus map counts slices (0 = first). Set a step for µm.")


def _layer_unit(layer: Layer, axis: int) -> str | None:
    """The layer's unit on one axis as µm/nm/mm, or None for napari's default 'pixel'."""
    try:
        unit = str(layer.units[axis])
    except (AttributeError, IndexError, TypeError):
        return None
    return {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}.get(unit)


def pixel_size(layer: Layer, axes: str) -> tuple[float, float] | None:
    dims = axes[:-1] if layer.rgb else axes
    sy, sx = float(layer.scale[dims.index("Y")]), float(layer.scale[dims.index("X")])
    return None if (sy, sx) == (1.0, 1.0) else (sy, sx)


def layer_stack(layer: Layer, axes: str, z: ZInfo, events: Any = None) -> FocalStack:
    """The FocalStack a layer holds (a view of its data: nothing is copied)."""
    return layer_to_stack(layer.data, axes, rgb=bool(layer.rgb), z_positions=z.positions, unit=z.unit,
                          pixel_size=pixel_size(layer, axes), events=events, source=layer.name)
