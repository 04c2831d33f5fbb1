"""File names: which files are images and stacks, what a stack's result set is called, and which
files an earlier run of ours wrote (its ``<name>_fusion.json``).

A record read from disk is trusted only for names its own stack's result set can have, so no
record can make us hide, skip or replace a user's file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import OutputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
TIFF_SUFFIXES = {".tif", ".tiff"}

PathLike = str | os.PathLike


def recorded_outputs(folder: PathLike) -> set[str]:
    """Names of files an earlier run of ours wrote in ``folder``: each ``<name>_fusion.json`` and
    what it lists under "outputs". Results written next to their inputs (``-o`` = the input's
    folder) are thereby never read back as slices or stacks. A record is trusted only for names its
    stack's result set can have (:func:`result_paths`), so no record can hide a user's file."""
    names: set[str] = set()
    for info in Path(folder).glob("*_fusion.json"):
        listed = listed_outputs(info)
        if listed is not None:
            names.add(info.name)
            names.update(listed)
    return names


def listed_outputs(info: PathLike) -> set[str] | None:
    """File names a ``<name>_fusion.json`` lists as its result set, kept only where they are names
    that set can have (``<name>_all_in_focus.tif``...). None: missing, unreadable or not ours."""
    info = Path(info)
    if not info.name.endswith("_fusion.json"):
        return None
    try:
        outputs = json.loads(info.read_text()).get("outputs")
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return None
    if not isinstance(outputs, dict):
        return None
    possible = {p.name for p in result_paths(info.parent, info.name[: -len("_fusion.json")]).values()}
    return {str(n) for n in outputs.values() if isinstance(n, str)} & possible


#: Endings of stack files that result names leave out, longest first (``a.ome.tif`` -> ``a``), and only
#: those: ``a.v2.tif`` -> ``a.v2``, not ``a`` (the old rule cut at the first dot, so ``a.tif`` and
#: ``a.v2.tif`` wrote the same files).
STACK_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr")


def stack_name(source: PathLike) -> str:
    """The name results of a stack file or folder are written under: its full name less the stack
    ending (:data:`STACK_SUFFIXES`, or an image file's suffix)."""
    p = Path(source)
    low = p.name.lower()
    for suffix in STACK_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return p.name[: -len(suffix)]
    if p.suffix.lower() in IMAGE_SUFFIXES and p.stem:
        return p.stem
    return p.name or "stack"


def result_paths(outdir: PathLike, name: str) -> dict[str, Path]:
    """Where :func:`save_result` puts each output for a stack called ``name``."""
    outdir = Path(outdir)
    return {
        "all_in_focus": outdir / f"{name}_all_in_focus.tif",
        "all_in_focus_png": outdir / f"{name}_all_in_focus.png",
        "focus_map": outdir / f"{name}_focus_map.tif",
        "focus_map_png": outdir / f"{name}_focus_map.png",
        "height_map": outdir / f"{name}_height_map.tif",
        "confidence": outdir / f"{name}_confidence.tif",
        "edits": outdir / f"{name}_edits.tif",  # retouched sets only (core.retouch): the painted labels
        "info": outdir / f"{name}_fusion.json",
    }


def check_output_safe(outputs: Iterable[PathLike], inputs: Iterable[PathLike]) -> None:
    """Refuse outputs that would overwrite an input, or land inside a slice folder being read."""
    ins = {Path(p).resolve() for p in inputs}
    in_dirs = {p.parent for p in ins if p.suffix.lower() in IMAGE_SUFFIXES and len(ins) > 1}
    for out in outputs:
        o = Path(out).resolve()
        if o in ins:
            raise OutputError(f"{out}: this output would overwrite an input file; choose another output folder.")
        if o.parent in in_dirs and o.suffix.lower() in IMAGE_SUFFIXES:
            raise OutputError(
                f"{Path(out).parent}: is the input slice folder; writing results there would add them to the "
                "stack next time. Choose another output folder (-o)."
            )


def _is_input(path: Path, inputs: Sequence[PathLike]) -> bool:
    try:
        return path.resolve() in {Path(p).resolve() for p in inputs}
    except OSError:
        return True  # cannot tell: keep it
