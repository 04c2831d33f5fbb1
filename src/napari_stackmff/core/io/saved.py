"""Reading a saved result set back (``<name>_fusion.json`` and its TIFFs), e.g. to retouch it again.

Only the file names a set of that name can have (:func:`~.records.result_paths`) are opened, never a
name read from the record; the record's settings are checked against the images before they are used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StackError
from .records import result_paths
from .result import FusionResult

PathLike = str | os.PathLike
INFO_SUFFIX = "_fusion.json"


def find_result_set(where: PathLike, name: str | None = None, *, retouched: bool | None = None) -> Path:
    """The ``<name>_fusion.json`` of a result set: ``where`` itself, or the one set in the folder ``where``
    (``name`` picks one; ``retouched`` False skips retouched sets when the folder holds both)."""
    where = Path(where)
    if where.is_file():
        if not where.name.endswith(INFO_SUFFIX):
            raise StackError(f"{where}: not a result record (*{INFO_SUFFIX}).")
        return where
    if not where.is_dir():
        raise StackError(f"{where}: no such result folder or record.")
    if name is not None:
        info = where / f"{name}{INFO_SUFFIX}"
        if not info.is_file():
            raise StackError(f"{info}: no result set named {name!r} here.")
        return info
    infos = sorted(where.glob(f"*{INFO_SUFFIX}"))
    if retouched is not None:
        infos = [p for p in infos if _is_retouched(p) == retouched] or infos
    if len(infos) != 1:
        what = ", ".join(p.name[: -len(INFO_SUFFIX)] for p in infos) or "none"
        raise StackError(f"{where}: {'no result set' if not infos else 'several result sets'} here ({what}); "
                         "name one (--name) or give its _fusion.json.")
    return infos[0]


def _is_retouched(info: Path) -> bool:
    try:
        return "retouched" in json.loads(info.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _read(path: Path, what: str) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise StackError(f"{path}: the {what} of this result set is missing.")
    try:
        return tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming it
        raise StackError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc}).") from None


def read_result(info_path: PathLike) -> tuple[FusionResult, dict[str, Any]]:
    """(the saved result, its record). The images are checked against each other and the record."""
    info_path = Path(info_path)
    try:
        info = json.loads(info_path.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StackError(f"{info_path}: cannot read this result record ({exc}).") from None
    name = info_path.name[: -len(INFO_SUFFIX)]
    paths = result_paths(info_path.parent, name)
    focus = _read(paths["focus_map"], "focus map").astype(np.float32)
    conf = _read(paths["confidence"], "confidence map").astype(np.float32)
    aif = _read(paths["all_in_focus"], "all-in-focus image")
    shape = tuple(int(s) for s in info.get("shape") or aif.shape)
    if aif.shape != shape and aif.ndim == len(shape) and np.moveaxis(aif, -3, -1).shape == shape:
        aif = np.moveaxis(aif, -3, -1)  # channels were stored C before YX (OME)
    if aif.shape[: focus.ndim] != focus.shape or conf.shape != focus.shape:
        raise StackError(f"{info_path}: the images of this set do not match (all-in-focus {aif.shape}, focus map "
                         f"{focus.shape}, confidence {conf.shape}).")
    height = _read(paths["height_map"], "height map").astype(np.float32) if paths["height_map"].is_file() else None
    edits = None
    if "retouched" in info:
        edits = _read(paths["edits"], "edit mask (painted labels)")
        if edits.shape != focus.shape:
            raise StackError(f"{paths['edits']}: edit mask of shape {edits.shape}, the result's is {focus.shape}.")
    try:
        n_slices = int(info["n_slices"])
        z = info.get("z_positions")
        result = FusionResult(
            all_in_focus=aif, focus_map=focus, confidence=conf, method=str(info.get("method", "?")),
            n_slices=n_slices, height_map=height, z_step=info.get("z_step"), unit=info.get("unit"),
            timings=dict(info.get("timings_s") or {}),
            z_positions=None if z is None else np.asarray(z, np.float64),
            alignment=info.get("alignment"), blend=str(info.get("blend") or "hard"),
            excluded=info.get("excluded_slices"), decision=info.get("decision"),
            runtime=info.get("runtime") if info.get("runtime") in ("torch", "onnxruntime") else None,
            edits=None if edits is None else edits.astype(np.uint16))
    except (KeyError, TypeError, ValueError) as exc:
        raise StackError(f"{info_path}: this result record is incomplete ({type(exc).__name__}: {exc}).") from None
    if result.z_positions is not None and len(result.z_positions) != n_slices:
        raise StackError(f"{info_path}: {len(result.z_positions)} z positions for {n_slices} slices.")
    return result, info


def recorded_inputs(info: dict[str, Any], info_path: PathLike) -> list[str]:
    """The input files a record names (the stack as fused), when they all still exist."""
    inputs = info.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(p, str) for p in inputs):
        raise StackError(f"{info_path}: the record names no input stack; give it (--stack).")
    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        raise StackError(f"{missing[0]}: the stack this result was fused from is gone"
                         f"{f' ({len(missing)} files)' if len(missing) > 1 else ''}; give it (--stack).")
    return inputs
