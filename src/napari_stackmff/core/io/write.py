"""Writing images and result sets without ever losing a user's file.

Every file goes to a temporary name in the target folder first; a result set is switched in whole
under the folder lock (:mod:`.safe_files`), and only names of that stack's own set are ever replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import OutputError
from .preview import focus_map_picture, to_uint8_preview
from .records import PathLike, _is_input, check_output_safe, result_paths
from .safe_files import (
    atomic_write,
    check_output_folder,
    commit,
    discard,
    sweep_stale_temps,
    temp_path,
)
from .stack import FocalStack

if TYPE_CHECKING:  # pragma: no cover
    from .result import FusionResult


# --------------------------------------------------------------------------------------- writing
# Temporary names, the sweep and atomic writes live in safe_files (re-exported here for old imports).


def sweep_stale_parts(folder: PathLike, *, again: bool = False) -> list[Path]:
    """Old name of :func:`~napari_stackmff.core.safe_files.sweep_stale_temps`."""
    return sweep_stale_temps(folder, again=again)


def write_tiff(path: PathLike, data: np.ndarray, *, pixel_size: tuple[float, float] | None = None,
               unit: str | None = None, z_step: float | None = None, description: dict | None = None,
               axes: str | None = None) -> Path:
    """Write a TIFF (OME metadata with pixel size/z step/unit when known), atomically.

    ``axes`` defaults to YX / YXS (RGB) / TYX / TYXS by shape; pass e.g. "ZYX" for a stack.
    """
    import tifffile

    data = np.asarray(data)
    rgb = data.ndim >= 3 and data.shape[-1] in (3, 4) and data.dtype.kind == "u"
    axes = axes or {2: "YX", 3: "YXS" if rgb else "TYX", 4: "TYXS"}.get(data.ndim, None)
    meta: dict[str, Any] = {"axes": axes} if axes else {}
    u = "µm" if unit in ("um", "micron", None) else unit
    if pixel_size:
        meta.update(PhysicalSizeY=float(pixel_size[0]), PhysicalSizeX=float(pixel_size[1]),
                    PhysicalSizeYUnit=u, PhysicalSizeXUnit=u)
    if z_step:
        meta.update(PhysicalSizeZ=float(z_step), PhysicalSizeZUnit=u)
    if description:
        meta["Description"] = json.dumps(description)

    def _write(tmp: Path) -> None:
        tifffile.imwrite(tmp, data, ome=True, metadata=meta, photometric="rgb" if rgb else "minisblack",
                         compression="zlib" if data.dtype != np.float32 else None)

    return atomic_write(path, _write)


def write_stack(path: PathLike, stack: FocalStack) -> Path:
    """Save a FocalStack as an OME-TIFF that :func:`load_stack` reads back with its z positions."""
    axes = stack.axes.replace("C", "S") if stack.rgb else stack.axes
    return write_tiff(path, np.asarray(stack.data), pixel_size=stack.pixel_size, unit=stack.unit,
                      z_step=stack.z_step, axes=axes)


def write_png(path: PathLike, rgb_or_gray: np.ndarray) -> Path:
    """8-bit gray/RGB(A) or 16-bit gray PNG, atomically (Pillow writes no 16-bit colour PNG)."""
    from PIL import Image

    if rgb_or_gray.ndim == 3 and rgb_or_gray.dtype != np.uint8:
        raise OutputError(f"{path}: PNG here holds 8-bit colour only; write {rgb_or_gray.dtype} colour as TIFF.")

    def _write(tmp: Path) -> None:
        Image.fromarray(np.ascontiguousarray(rgb_or_gray)).save(tmp, format="PNG")

    return atomic_write(path, _write)


def write_json(path: PathLike, obj: dict) -> Path:
    def _write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default))

    return atomic_write(path, _write)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def retouch_summary(edits: np.ndarray, file_name: str) -> dict:
    """What ``_fusion.json`` says about a retouch: how many pixels were painted, from which slices, and
    the file holding the painted labels (to replay them: ``stackmff retouch``)."""
    labels, counts = np.unique(np.asarray(edits), return_counts=True)
    return {"edited_pixels": int(counts[labels > 0].sum()),
            "pixels_per_slice": {str(int(k) - 1): int(c) for k, c in zip(labels, counts) if k > 0},
            "edits": file_name, "labels": "0: automatic choice, k: slice k-1"}


def result_bytes(shape_yx: tuple[int, int], n_times: int, n_channels: int, itemsize: int,
                 height: bool, edits: bool = False) -> int:
    """Upper bound of a result set's size on disk (uncompressed TIFFs, 8-bit RGB previews), for the
    free-space check before fusing."""
    px = int(shape_yx[0]) * int(shape_yx[1]) * max(1, int(n_times))
    return (px * (max(1, n_channels) * itemsize + 4 * (3 if height else 2) + (2 if edits else 0))
            + 2 * 3 * shape_yx[0] * shape_yx[1])


def save_result(
    result: "FusionResult",
    outdir: PathLike,
    name: str,
    *,
    inputs: Sequence[PathLike] = (),
    extra_info: dict | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a fusion result: TIFFs with metadata, 8-bit PNG previews, and a JSON summary.

    A result set is replaced as a whole: existing results of ``name`` are refused unless
    ``overwrite``. Every file is written under a temporary name first; then the set is switched in
    under the folder's lock (:func:`~napari_stackmff.core.safe_files.commit`), and names of this
    set the new run does not write (say a height map, when the z-step is no longer known) are
    removed with the old set. What is removed is decided by :func:`result_paths`, never by the old
    ``_fusion.json`` (a record on disk can be anything). A failure (disk full, permission) leaves
    the old set as it was.
    """
    outdir = Path(outdir)
    paths = result_paths(outdir, name)
    check_output_safe(paths.values(), inputs)
    existing = [p for p in paths.values() if os.path.lexists(p)]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]}: results named {name!r} already exist here; pass --overwrite "
                          "(overwrite=True) to replace them, or choose another output.")
    aif0 = result.all_in_focus
    timed0 = result.focus_map.ndim == 3
    check_output_folder(outdir, result_bytes(result.focus_map.shape[-2:], result.focus_map.shape[0] if timed0 else 1,
                                             aif0.shape[-1] if aif0.ndim > result.focus_map.ndim else 1,
                                             aif0.dtype.itemsize, result.height_map is not None,
                                             result.edits is not None))
    sweep_stale_temps(outdir)
    staged: dict[str, Path] = {}
    try:
        written = _stage_result(result, paths, inputs, extra_info, staged)
    except BaseException as exc:
        for tmp in staged.values():
            discard(tmp)
        if isinstance(exc, OutputError):
            raise OutputError(f"{exc} Nothing in {outdir} was changed.") from None
        raise
    # Switch the set in whole (commit removes the temporaries itself if that fails).
    commit({paths[k]: staged[k] for k in written}, overwrite=overwrite,
           retire=[p for k, p in paths.items() if k not in written and not _is_input(p, inputs)])
    return {k: paths[k] for k in written}


def _stage_result(result: "FusionResult", paths: dict[str, Path], inputs: Sequence[PathLike],
                  extra_info: dict | None, staged: dict[str, Path]) -> list[str]:
    """Write every file of the set under a temporary name (``staged[key]``); returns the keys written."""
    def stage(key: str) -> Path:
        staged[key] = temp_path(paths[key])
        return staged[key]

    unit, z_step, pixel = result.unit, result.z_step, result.pixel_size
    written: dict[str, Path] = {}
    aif = result.all_in_focus
    timed = result.focus_map.ndim == 3
    channels = aif.ndim == result.focus_map.ndim + 1
    rgb = channels and aif.shape[-1] in (3, 4) and aif.dtype.kind == "u"
    tif_data, tif_axes = aif, ("T" if timed else "") + ("YXS" if rgb else "YX")
    if channels and not rgb:  # fluorescence channels: OME wants C before YX
        tif_data, tif_axes = np.moveaxis(aif, -1, -3), ("T" if timed else "") + "CYX"
    written["all_in_focus"] = write_tiff(stage("all_in_focus"), tif_data, pixel_size=pixel, unit=unit, z_step=z_step,
                                         description={"method": result.method}, axes=tif_axes)
    first = aif[0] if timed else aif
    # One stretch for every method's preview of this stack (its own range), so previews compare.
    span = result.display_range
    if first.ndim == 3 and first.shape[-1] not in (3, 4):
        # Fluorescence channels (2, 5...) have no PNG mode: preview the max of each channel stretched.
        preview = np.max([to_uint8_preview(first[..., c], span) for c in range(first.shape[-1])], axis=0)
    else:
        preview = to_uint8_preview(first, span)
    written["all_in_focus_png"] = write_png(stage("all_in_focus_png"), preview)
    written["focus_map"] = write_tiff(stage("focus_map"), result.focus_map.astype(np.float32), pixel_size=pixel,
                                      unit=unit, z_step=z_step, description={"units": "slice index"})
    fm = result.focus_map[0] if timed else result.focus_map
    written["focus_map_png"] = write_png(stage("focus_map_png"), focus_map_picture(
        fm, result.n_slices, z_positions=result.z_positions, unit=unit))
    if result.height_map is not None:
        written["height_map"] = write_tiff(stage("height_map"), result.height_map.astype(np.float32),
                                           pixel_size=pixel, unit=unit, z_step=z_step,
                                           description={"units": unit or "z units"})
    written["confidence"] = write_tiff(stage("confidence"), result.confidence.astype(np.float32), pixel_size=pixel,
                                       unit=unit)
    if result.edits is not None:
        written["edits"] = write_tiff(stage("edits"), np.asarray(result.edits, np.uint16), pixel_size=pixel, unit=unit,
                                      description={"units": "0: automatic choice, k: slice k-1 painted"})
    info = {
        "method": result.method,
        "blend": result.blend,  # "soft": pixels are mixes of slices, not copies
        "decision": result.decision,  # "halo": the brightfield decision, "glow": the dark-ground one (core.tiles.decision)
        **({"runtime": result.runtime} if result.runtime else {}),  # networks: torch or onnxruntime
        "n_slices": result.n_slices,
        "shape": list(aif.shape),
        "dtype": str(aif.dtype),
        "z_step": z_step,
        "unit": unit,
        "timings_s": result.timings,
        "previews": {
            "all_in_focus_png": ("8-bit as stored" if span is None else
                                 f"stretched linearly from {span[0]:.6g} (black) to {span[1]:.6g} (white): the "
                                 "input stack's 0.1-99.9 percentiles, the same for every method on this stack"),
            "focus_map_png": "viridis from slice 0 (first) to the last slice, colour bar on the right",
        },
        "inputs": [str(Path(p).resolve()) for p in inputs],  # the exact slices, in stack order
        **({"alignment": result.alignment} if result.alignment else {}),
        **({"excluded_slices": result.excluded} if result.excluded else {}),
        **({"z_positions": [float(z) for z in result.z_positions]} if result.z_positions is not None else {}),
        **({"retouched": retouch_summary(result.edits, paths["edits"].name)} if result.edits is not None else {}),
        "outputs": {k: paths[k].name for k in written},
    }
    info.update(extra_info or {})
    written["info"] = write_json(stage("info"), info)
    return list(written)
