"""Reading focal stacks and writing fusion results.

Readers turn a folder of numbered slices, a list of files, or a (multi-page, ImageJ, OME) TIFF
into a :class:`FocalStack` with z positions when the metadata has them. Writers never leave a
half-written file behind: everything goes to a temporary file in the target folder first, then
is renamed into place.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .errors import OutputError, StackError
from .safe_files import atomic_write, check_output_folder, commit, discard, sweep_stale_temps, temp_path  # noqa: F401
from .preview import colorize, focus_map_picture, to_uint8_preview  # noqa: F401  (colorize: re-exported)
from .stack import FocalStack, as_focal_stack, check_finite

if TYPE_CHECKING:  # pragma: no cover
    from .result import FusionResult

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
TIFF_SUFFIXES = {".tif", ".tiff"}
_UNIT_ALIASES = {"micron": "um", "microns": "um", "µm": "um", "\\u00B5m": "um", "micrometer": "um", "nanometer": "nm"}

PathLike = str | os.PathLike


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


def _ome_physical(tif: Any) -> tuple[float | None, str | None, tuple[float, float] | None]:
    """(z step, unit, (y, x) pixel size) from OME-XML, when present."""
    try:
        root = ET.fromstring(tif.ome_metadata)
    except Exception:
        return None, None, None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None, None, None
    def num(key: str) -> float | None:
        v = pixels.get(key)
        return float(v) if v not in (None, "") else None
    dz, dy, dx = num("PhysicalSizeZ"), num("PhysicalSizeY"), num("PhysicalSizeX")
    unit = pixels.get("PhysicalSizeZUnit") or pixels.get("PhysicalSizeXUnit") or ("um" if (dz or dx) else None)
    unit = _UNIT_ALIASES.get(unit, unit)
    pixel = (dy, dx) if dy and dx else None
    return dz, unit, pixel


def _imagej_physical(tif: Any) -> tuple[float | None, str | None, tuple[float, float] | None]:
    meta = tif.imagej_metadata or {}
    dz = meta.get("spacing")
    unit = meta.get("unit")
    unit = _UNIT_ALIASES.get(unit, unit) if unit else None
    pixel = None
    try:
        page = tif.pages[0]
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        px, py = xr[1] / xr[0], yr[1] / yr[0]
        if px != 1.0 or py != 1.0:
            pixel = (float(py), float(px))
    except Exception:
        pass
    return (float(dz) if dz else None), unit, pixel


def _tiff_physical(tif: Any) -> tuple[float | None, str | None, tuple[float, float] | None]:
    """(z step, unit, (y, x) pixel size) from OME or ImageJ metadata; Nones when the file has neither."""
    if tif.is_ome:
        return _ome_physical(tif)
    if tif.is_imagej:
        return _imagej_physical(tif)
    return None, None, None


def _canonical_axes(axes: str, shape: tuple[int, ...], path: Path) -> tuple[list[int], str, bool]:
    """Map tifffile's axes letters onto our (T, Z, Y, X, C) order.

    Returns the transpose order, the resulting axes string and whether C holds RGB samples.
    """
    axes = axes.upper()
    letters = list(axes)
    if "Z" not in letters:  # plain multi-page files label the page axis I, Q or T
        for cand in ("I", "Q", "T"):
            if cand in letters:
                letters[letters.index(cand)] = "Z"
                break
    rgb = "S" in letters and shape[letters.index("S")] in (3, 4)
    if "S" in letters and "C" not in letters:
        letters[letters.index("S")] = "C"
    keep = [a for a in "TZYXC" if a in letters]
    extra = [i for i, a in enumerate(letters) if a not in keep]
    for i in extra:
        if shape[i] != 1:
            raise StackError(f"{path}: axis {axes[i]!r} of size {shape[i]} is not supported (axes {axes}, shape {shape}).")
    if "Z" not in keep or "Y" not in keep or "X" not in keep:
        raise StackError(
            f"{path}: holds a single image (axes {axes}, shape {shape}); a focal stack needs several "
            "z-slices (a multi-page TIFF or a folder of slices)."
        )
    order = [letters.index(a) for a in keep] + extra
    return order, "".join(keep), rgb


def read_tiff_stack(path: PathLike) -> FocalStack:
    """A multi-page, ImageJ-hyperstack or OME TIFF as a FocalStack (T and C kept)."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
            data = series.asarray()
            dz, unit, pixel = _tiff_physical(tif)
    except StackError:
        raise
    except Exception as exc:
        raise StackError(f"{path}: cannot read this TIFF ({type(exc).__name__}: {exc}). Is the file complete?") from None
    order, canon, rgb = _canonical_axes(axes, shape, path)
    data = np.transpose(data, order).reshape([data.shape[i] for i in order[: len(canon)]])
    if data.dtype.kind == "f":
        check_finite(data, str(path))
    stack = as_focal_stack(data, axes=canon, z_step=dz, unit=unit, rgb=rgb, source=str(path))
    stack.pixel_size = pixel
    stack.metadata["files"] = [str(path)]
    return stack


def read_tiff_stack_lazy(path: PathLike, how: str = "auto") -> FocalStack:
    """A TIFF as a FocalStack whose pixels stay on disk (memory-mapped, or read via zarr).

    Same axes and metadata as :func:`read_tiff_stack`; pixels are read one window at a time
    while fusing. Float files are not scanned for NaN here (that would read them whole).
    """
    import tifffile

    from .lazy import open_tiff_lazy, view_axes

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, tuple(series.shape)
            dz, unit, pixel = _tiff_physical(tif)
        raw = open_tiff_lazy(path, how)
    except StackError:
        raise
    except Exception as exc:
        raise StackError(f"{path}: cannot read this TIFF ({type(exc).__name__}: {exc}). Is the file complete?") from None
    if tuple(raw.shape) != shape:
        raise StackError(f"{path}: the lazy reader sees shape {tuple(raw.shape)}, the file says {shape}; "
                         "load it without lazy reading.")
    order, canon, rgb = _canonical_axes(axes, shape, path)
    data = view_axes(raw, order, len(canon))
    n = data.shape[canon.index("Z")]
    z = np.arange(n, dtype=np.float64) * float(dz) if dz else None
    stack = FocalStack(data=data, axes=canon, z_positions=z, unit=unit, rgb=rgb, source=str(path))
    stack.pixel_size = pixel
    stack.metadata["files"] = [str(path)]
    stack.metadata["lazy"] = type(raw).__name__
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
        from .lazy import should_be_lazy

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


def result_bytes(shape_yx: tuple[int, int], n_times: int, n_channels: int, itemsize: int,
                 height: bool) -> int:
    """Upper bound of a result set's size on disk (uncompressed TIFFs, 8-bit RGB previews), for the
    free-space check before fusing."""
    px = int(shape_yx[0]) * int(shape_yx[1]) * max(1, int(n_times))
    return px * (max(1, n_channels) * itemsize + 4 * (3 if height else 2)) + 2 * 3 * shape_yx[0] * shape_yx[1]


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
                                             aif0.dtype.itemsize, result.height_map is not None))
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


def _is_input(path: Path, inputs: Sequence[PathLike]) -> bool:
    try:
        return path.resolve() in {Path(p).resolve() for p in inputs}
    except OSError:
        return True  # cannot tell: keep it


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
    info = {
        "method": result.method,
        "blend": result.blend,  # "soft": pixels are mixes of slices, not copies
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
        "outputs": {k: paths[k].name for k in written},
    }
    info.update(extra_info or {})
    written["info"] = write_json(stage("info"), info)
    return list(written)
