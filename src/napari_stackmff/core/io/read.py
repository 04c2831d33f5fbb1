"""Reading focal stacks: a folder of numbered slices, a list of image files, or a TIFF (through
:mod:`.tiff`), into a :class:`FocalStack` with z positions when the metadata has them.

Which files of a folder are slices is decided here once (natural order, the folder's naming
pattern, ``include``), and results of ours found beside the slices (:mod:`.records`) are never read
as slices.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StackError
from .records import IMAGE_SUFFIXES, TIFF_SUFFIXES, PathLike, recorded_outputs
from .stack import FocalStack, as_focal_stack, check_finite
from .tiff import read_tiff_stack, read_tiff_stack_lazy, should_be_lazy


# --------------------------------------------------------------------------------------- reading
def natural_key(path: Path) -> list:
    """Sort key that puts slice 2 before slice 10 (numbers compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")  # the last run of digits in the stem is the slice number

Include = str | Sequence[str] | None


def slice_pattern(path: Path) -> tuple[str, str] | None:
    """(prefix, suffix + extension) around a file's slice number, or None for a name without one.

    ``pcb_003.jpg`` -> ("pcb_", ".jpg"); ``3.png`` -> ("", ".png"). The extension compares without
    case so ``.JPG`` and ``.jpg`` slices of one camera stay together.
    """
    m = _NUMBERED.match(path.stem)
    if m is None:
        return None
    return m.group(1), m.group(3) + path.suffix.lower()


def select_slices(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Split a folder's images into (the stack, images left out), both in natural order.

    The stack is the largest group sharing one naming pattern (prefix + number + suffix), so a
    reference such as ``expected.jpg`` next to ``pcb_001.jpg ...`` is not fused as a slice. When
    no pattern holds two files (``a.png, b.png`` or ``top.png, side1.png``) every image is a slice:
    names without numbers give no better evidence than the folder itself. Ties go to the group
    whose first file sorts first.
    """
    ordered = sorted(files, key=natural_key)
    groups: dict[tuple[str, str], list[Path]] = {}
    for f in ordered:
        key = slice_pattern(f)
        if key is not None:
            groups.setdefault(key, []).append(f)
    best = max(groups.values(), key=len, default=[])  # max keeps the first of equal groups
    if len(best) < 2:
        return ordered, []
    chosen = set(best)
    return best, [f for f in ordered if f not in chosen]


def _image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(image files, names of other entries) of a folder; hidden files and our own results
    (see :func:`recorded_outputs`) are neither."""
    images, other = [], []
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise StackError(f"{folder}: cannot read this folder ({exc.strerror or exc}).") from None
    ours = recorded_outputs(folder)
    for p in entries:
        if p.name.startswith(".") or p.name in ours:
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            other.append(p.name)
    return images, other


def _included(folder: Path, images: list[Path], include: str | Sequence[str]) -> list[Path]:
    """The files ``include`` names: a glob over the folder's images (natural order, case-blind),
    or a list of file names (kept in the given order)."""
    if isinstance(include, str):
        chosen = [p for p in images if fnmatch.fnmatch(p.name.lower(), include.lower())]
        if not chosen:
            raise StackError(f"{folder}: no image file matches include={include!r} "
                             f"(images here: {', '.join(sorted(p.name for p in images)[:5]) or 'none'}).")
        return sorted(chosen, key=natural_key)
    chosen = []
    for name in include:
        p = folder / name
        if not p.is_file():
            raise StackError(f"{p}: named in include= but not found.")
        chosen.append(p)
    return chosen


def list_slice_files(folder: PathLike, *, warn: bool = True, include: Include = None) -> list[Path]:
    """The slices of a folder in natural order (2 before 10).

    Without ``include`` these are the images sharing the dominant naming pattern (see
    :func:`select_slices`); images left out are named in one warning, and other files in another.
    ``include`` overrides the choice: a glob such as ``"*.jpg"`` or a list of file names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StackError(f"{folder}: not a folder.")
    images, ignored = _image_files(folder)
    if include is not None:
        return _included(folder, images, include)
    files, left_out = select_slices(images)
    if ignored and warn:
        shown = ", ".join(sorted(ignored)[:5]) + (" ..." if len(ignored) > 5 else "")
        warnings.warn(f"{folder}: ignoring {len(ignored)} non-image entr{'y' if len(ignored) == 1 else 'ies'}: {shown}",
                      stacklevel=2)
    if left_out and warn:
        warnings.warn(f"{folder}: {len(files)} slices named like {files[0].name}; left out {len(left_out)} other "
                      f"image{'s' if len(left_out) > 1 else ''}: {', '.join(p.name for p in left_out)} "
                      "(include= / --include to choose the files)", stacklevel=2)
    return files


def read_image(path: PathLike) -> np.ndarray:
    """One 2-D image (gray or RGB[A]) as stored: uint8, uint16 or float, never rescaled."""
    path = Path(path)
    if not path.exists():
        raise StackError(f"{path}: file not found.")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            img = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
                    arr = np.asarray(im)
                    return arr.astype(np.uint16) if arr.min() >= 0 and arr.max() <= 65535 else arr
                elif im.mode in ("1", "LA", "CMYK", "YCbCr"):
                    im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
                img = np.asarray(im)
    except StackError:
        raise
    except Exception as exc:  # corrupt, truncated, unknown format
        raise StackError(f"{path}: cannot read this image ({type(exc).__name__}: {exc}). Is the file complete?") from None
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] not in (3, 4):
        img = np.moveaxis(img, 0, -1)  # planar RGB TIFF
    if img.ndim not in (2, 3):
        raise StackError(f"{path}: expected one 2-D image per file, got an array of shape {img.shape}.")
    return img


def read_slices(paths: Sequence[PathLike], *, source: str | None = None) -> FocalStack:
    """Stack a list of single-image files (in the given order) into a FocalStack."""
    paths = [Path(p) for p in paths]
    source = source or (str(paths[0].parent) if paths else None)
    if len(paths) == 0:
        raise StackError(f"{source}: no image files (png, jpg, bmp, tif) found.")
    if len(paths) == 1:
        raise StackError(f"{paths[0]}: a focal stack needs at least 2 slices, only one image was given.")
    first = read_image(paths[0])
    data = np.empty((len(paths), *first.shape), dtype=first.dtype)
    data[0] = first
    for i, p in enumerate(paths[1:], start=1):
        img = read_image(p)
        if img.shape != first.shape:
            raise StackError(
                f"{p}: slice shape {img.shape} differs from {paths[0].name} {first.shape}; "
                "all slices of a stack must have the same size and channels."
            )
        if img.dtype != first.dtype:
            raise StackError(
                f"{p}: pixel type {img.dtype} differs from {paths[0].name} ({first.dtype}); "
                "save all slices with the same bit depth."
            )
        data[i] = img
    if data.dtype.kind == "f":
        check_finite(data, source)
    stack = as_focal_stack(data, source=source)
    stack.metadata["files"] = [str(p) for p in paths]
    return stack


def _tiff_path(source: Any, include: Include = None) -> Path | None:
    """The TIFF a path source names (itself, or a folder's only slice file), else None."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
            return path
        if path.is_dir():
            files = list_slice_files(path, warn=False, include=include)
            if len(files) == 1 and files[0].suffix.lower() in TIFF_SUFFIXES:
                return files[0]
    return None


def load_stack(
    source: PathLike | Sequence[PathLike] | np.ndarray | FocalStack,
    *,
    z_step: float | None = None,
    unit: str | None = None,
    lazy: bool | str | None = None,
    include: Include = None,
    axes: str | None = None,
) -> FocalStack:
    """Load a focal stack from a folder of slices, a TIFF, a list of image files or an array.

    Parameters
    ----------
    source
        A folder of numbered slices (natural sort: 2 before 10), a multi-page/ImageJ/OME TIFF,
        a list of single-image files (kept in the given order), an array or a FocalStack.
        A folder's slices are the images sharing its dominant naming pattern (``pcb_001.jpg``...,
        leaving out e.g. ``expected.jpg`` with a warning); a folder whose images carry no common
        numbered pattern is read whole, in natural order.
    z_step, unit
        Slice spacing to use when the files do not say (overrides nothing the metadata gives
        unless the metadata has none).
    lazy
        For a TIFF: False loads it into memory; True (or "memmap"/"zarr") keeps the pixels on disk
        and fusion reads them a tile at a time; None (default) decides from the file: lazy when it
        is bigger than a quarter of free RAM, or memory-mappable and at least 64 MiB
        (:func:`napari_stackmff.core.lazy.should_be_lazy`). Lazy float pixels are checked for
        NaN/inf as each tile is read. Other sources are unaffected.
    include
        For a folder: which files are the slices, instead of the naming pattern: a glob
        (``"*.jpg"``) or a list of file names (read in that order).
    axes
        For an array: its axes when its shape fits several readings (see
        :func:`napari_stackmff.core.stack.as_focal_stack`), e.g. ``"TZYX"`` or ``"CZYX"``.
    """
    is_array = hasattr(source, "shape") and hasattr(source, "dtype") and not isinstance(source, FocalStack)
    if axes is not None and not (is_array or (isinstance(source, (list, tuple)) and source
                                               and all(hasattr(s, "shape") for s in source))):
        what = source.source if isinstance(source, FocalStack) else source
        raise StackError(f"{what}: axes= describes an array; files and stacks carry their own axes.")
    if include is not None and (not isinstance(source, (str, os.PathLike)) or Path(source).is_file()):
        what = source if isinstance(source, (str, os.PathLike)) else f"a {type(source).__name__}"
        raise StackError(f"{what}: include (--include) chooses files in a slice folder; this is not a folder.")
    tiff = _tiff_path(source, include) if lazy is not False else None
    if tiff is not None:

        if lazy is None:
            lazy = should_be_lazy(tiff)
        if lazy:
            source = read_tiff_stack_lazy(tiff, "auto" if lazy is True else str(lazy))
    if isinstance(source, FocalStack):
        # Never change the caller's stack: a later call with another z_step must not see this one's.
        stack = dataclasses.replace(source) if (z_step is not None or unit) else source
    elif isinstance(source, (list, tuple)):
        if source and all(hasattr(s, "shape") for s in source):
            shapes = [tuple(s.shape) for s in source]
            odd = next((i for i, sh in enumerate(shapes) if sh != shapes[0]), None)
            if odd is not None:
                raise StackError(f"slice {odd} of the list is {shapes[odd]}, slice 0 is {shapes[0]}: the slices of "
                                 "a stack must all have one shape.")
            stack = as_focal_stack(np.stack([np.asarray(s) for s in source]), axes=axes)
        else:
            stack = read_slices(source)
    elif hasattr(source, "shape") and hasattr(source, "dtype"):
        stack = as_focal_stack(source, axes=axes)
    else:
        path = Path(source)
        if not path.exists():
            raise StackError(f"{path}: no such file or folder.")
        if path.is_dir():
            files = list_slice_files(path, include=include)
            if not files:
                raise StackError(f"{path}: the folder has no image files (png, jpg, bmp, tif).")
            if len(files) == 1 and files[0].suffix.lower() in TIFF_SUFFIXES:
                stack = read_tiff_stack(files[0])
            else:
                stack = read_slices(files, source=str(path))
        elif path.suffix.lower() in TIFF_SUFFIXES:
            stack = read_tiff_stack(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            raise StackError(
                f"{path}: a single {path.suffix} image is not a focal stack. Pass the folder that holds "
                "all the slices, or a multi-page TIFF."
            )
        else:
            raise StackError(f"{path}: unsupported file type {path.suffix!r}; use a folder of slices or a TIFF.")
    if stack.z_positions is None and z_step is not None:
        stack.z_positions = np.arange(stack.n_slices, dtype=np.float64) * float(z_step)
        stack.unit = unit or stack.unit
    elif unit and not stack.unit:
        stack.unit = unit
    return stack


def input_files(stack: FocalStack) -> list[Path]:
    """Files a stack was read from (to refuse outputs that would overwrite them)."""
    return [Path(p) for p in stack.metadata.get("files", [])]
