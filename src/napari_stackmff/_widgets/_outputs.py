"""Fusion results -> napari layers that overlay the input they came from.

Every result layer copies the input layer's Y/X (and T) scale and translate, so it lies exactly
over the stack; the focus map is in physical units when the z spacing is known; the 3-D surface
sits inside the stack in the 3-D view. Existing result layers of the same input are updated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import napari
import numpy as np
from napari.layers import Layer

from .._layerdata import drop_axes, height_surface, to_layer_order
from ..core.fusion.align import crop_offset
from ..core.io.result import FusionResult
from ._layers import find_result, remove_result, upsert_result

FOCUS_COLORMAP = "viridis"
CONFIDENCE_COLORMAP = "magma"
#: First 3-D look at a height surface: from 30° above the image plane. Top-down (90°) shows no
#: relief at all; 30° shows it clearly and still keeps the whole image in view.
SURFACE_ELEVATION_DEG = 30.0


@dataclass
class OutputOptions:
    confidence: bool = False
    surface: bool = False
    surface_min_confidence: float = 0.0


def _geometry(layer: Layer, dims: str, drop: str, offset: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """Scale, translate, units and labels of ``layer`` without the axes in ``drop``; ``offset`` (y, x)
    pixels moves a cropped result (aligned stacks are cropped) back over its place in the input."""
    kept = [a for a in dims if a not in drop]
    scale = drop_axes(layer.scale, dims, drop)
    translate = list(drop_axes(layer.translate, dims, drop))
    for a, px in zip("YX", offset):
        if a in kept and px:
            i = kept.index(a)
            translate[i] = float(translate[i]) + px * float(scale[i])
    kwargs: dict[str, Any] = {"scale": scale, "translate": translate}
    try:
        kwargs["units"] = [str(u) for u, a in zip(layer.units, dims) if a not in drop]
        kwargs["axis_labels"] = [str(lab) for lab, a in zip(layer.axis_labels, dims) if a not in drop]
    except (AttributeError, TypeError):  # napari without units/axis labels
        pass
    return kwargs


def focus_values(result: FusionResult, z_positions: np.ndarray | None = None
                 ) -> tuple[np.ndarray, tuple[float, float], str]:
    """The focus map to show (physical when known), its display range and its unit.

    The range is the whole stack (first to last slice), not the map's own min/max, so colours
    mean the same height from one run to the next.
    """
    if result.height_map is not None:
        if z_positions is not None and len(z_positions) == result.n_slices:
            lo, hi = float(np.min(z_positions)), float(np.max(z_positions))
        else:
            lo, hi = float(np.nanmin(result.height_map)), float(np.nanmax(result.height_map))
        unit = "µm" if result.unit == "um" else (result.unit or "")
        return result.height_map, (lo, hi if hi > lo else lo + 1.0), unit
    return result.focus_map, (0.0, float(max(result.n_slices - 1, 1))), "slices"


def focus_map_name(source_name: str, unit: str) -> str:
    """``cells focus map (µm)``: the unit in the name, so the colour bar's label (the name, drawn beside
    it) and napari's value read-out in the status bar both say what the numbers are."""
    return f"{source_name} focus map ({unit})" if unit else f"{source_name} focus map"


def show_legend(layer: Layer) -> None:
    """napari's colour bar for ``layer``, with the layer's name (which carries the unit) beside it at the
    top right of the canvas; both show while the layer is visible, and are toggled in napari as usual."""
    try:
        layer.colorbar.visible = True
        layer.name_overlay.position = "top_right"  # tiled next to the colour bar
        layer.name_overlay.visible = True
    except AttributeError:  # pragma: no cover - a napari without layer overlays (< 0.6)
        pass


def show_result(viewer: napari.Viewer, source: Layer, source_id: str, axes: str, result: FusionResult,
                options: OutputOptions, z_positions: np.ndarray | None = None) -> dict[str, Layer]:
    """Add or update the result layers of ``source``; returns them by kind."""
    dims = axes[:-1] if source.rgb else axes
    name = source.name
    out: dict[str, Layer] = {}
    values, limits, unit = focus_values(result, z_positions)
    info = {"method": result.method, "n_slices": result.n_slices, "units": unit, "z_step": result.z_step,
            "timings_s": dict(result.timings), "blend": result.blend,
            **({"alignment": result.alignment} if result.alignment else {})}
    off = crop_offset(result.alignment)
    if options.confidence:
        out["confidence"] = upsert_result(
            viewer, source_id, "confidence", "image", result.confidence, name=f"{name} confidence",
            colormap=CONFIDENCE_COLORMAP, contrast_limits=(0.0, 1.0), metadata={"stackmff": info},
            **_geometry(source, dims, "ZC", off))
    else:
        remove_result(viewer, source_id, "confidence")
    if options.surface and result.n_times == 1:
        verts, faces, vals = height_surface(result.focus_map, values, result.confidence,
                                            options.surface_min_confidence)
        out["surface"] = upsert_result(
            viewer, source_id, "surface", "surface", (verts, faces, vals), name=f"{name} height surface",
            colormap=FOCUS_COLORMAP, contrast_limits=limits, metadata={"stackmff": info},
            **_geometry(source, dims, "TC", off))
    else:
        remove_result(viewer, source_id, "surface")
    before = find_result(viewer, source_id, "focus_map")
    out["focus_map"] = upsert_result(
        viewer, source_id, "focus_map", "image", values, name=focus_map_name(name, unit), colormap=FOCUS_COLORMAP,
        contrast_limits=limits, metadata={"stackmff": info}, **_geometry(source, dims, "ZC", off))
    if out["focus_map"] is not before:  # a new layer: show its legend; a re-run keeps what the user chose
        show_legend(out["focus_map"])
    aif_kwargs: dict[str, Any] = {"rgb": bool(source.rgb)}
    if not source.rgb:
        aif_kwargs.update(contrast_limits=tuple(source.contrast_limits), colormap=source.colormap,
                          gamma=source.gamma)
    out["all_in_focus"] = upsert_result(
        viewer, source_id, "all_in_focus", "image", to_layer_order(result.all_in_focus, axes, bool(source.rgb)),
        name=f"{name} all-in-focus", metadata={"stackmff": info}, **aif_kwargs, **_geometry(source, dims, "Z", off))
    return out


def oblique_view(camera: Any, elevation_deg: float = SURFACE_ELEVATION_DEG) -> None:
    """Tilt a 3-D camera to look at the (y, x) plane from ``elevation_deg`` above it, from the bottom edge.

    Directions are in (z, y, x): napari's top-down view looks along -z with -y up the screen; this
    keeps -y (the image's top) at the far side and +z (later slices) pointing up.
    """
    e = np.deg2rad(elevation_deg)
    camera.set_view_direction((-np.sin(e), -np.cos(e), 0.0), (np.cos(e), -np.sin(e), 0.0))
