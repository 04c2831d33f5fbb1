"""Every TIFF read lives here: whole (tifffile) or lazily, staying on disk.

Fusion reads a stack one (slice, tile window) at a time, so a lazy stack is never loaded whole. A
TIFF whose pages are stored uncompressed and contiguously is memory-mapped (zero copy, fastest); any
other TIFF (compressed, tiled, strips scattered) is opened through tifffile's zarr store, which
reads only the strips or tiles a window touches. Axes (ImageJ, OME, plain pages) become our
(T, Z, Y, X[, C]) order, and z step and pixel size come from the OME or ImageJ metadata.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import psutil

from ..errors import StackError
from .records import PathLike
from .stack import FocalStack, as_focal_stack, check_finite

_UNIT_ALIASES = {"micron": "um", "microns": "um", "µm": "um", "\\u00B5m": "um", "micrometer": "um", "nanometer": "nm"}


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


# ------------------------------------------------------------------------------ lazy views

#: load_stack(lazy=None) reads any TIFF lazily when the file is larger than this fraction of free RAM.
LAZY_FRACTION = 0.25
#: ... and a TIFF that can be memory-mapped (uncompressed, contiguous) from this size on: mapping costs
#: nothing (no copy, no decoding; speed at parity, benchmarks/bench_lazy_default.py), while loading it
#: holds the whole input in RAM next to the tile working memory. Below this the copy is noise.
LAZY_MEMMAP_BYTES = 64 << 20


class AxesView:
    """Array-like view of ``source`` with its axes in ``order`` and trailing size-1 axes dropped.

    Supports what :class:`~napari_stackmff.core.stack.FocalStack` needs (integers and slices
    per axis), reading only the requested part of ``source``; fancy indexing is refused.
    """

    def __init__(self, source: Any, order: Sequence[int], keep: int) -> None:
        self.source = source
        self.order = tuple(int(i) for i in order)
        self.keep = int(keep)
        self.shape = tuple(int(source.shape[i]) for i in self.order[: self.keep])
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"AxesView(shape={self.shape}, dtype={self.dtype}, source={type(self.source).__name__})"

    def _expand(self, key: Any) -> list:
        key = list(key) if isinstance(key, tuple) else [key]
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key[i : i + 1] = [slice(None)] * (self.ndim - len(key) + 1)
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for an array of {self.ndim} dimensions")
        key += [slice(None)] * (self.ndim - len(key))
        for k in key:
            if not isinstance(k, (slice, int, np.integer)):
                raise TypeError(f"AxesView supports integer and slice indices only, got {type(k).__name__}")
        return [int(k) if isinstance(k, np.integer) else k for k in key]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = self._expand(key)
        src_key: list = [0] * len(self.source.shape)  # dropped axes have size 1
        for out_axis, src_axis in enumerate(self.order[: self.keep]):
            src_key[src_axis] = key[out_axis]
        res = np.asarray(self.source[tuple(src_key)])
        remaining = [a for a in range(len(src_key)) if not isinstance(src_key[a], int)]
        want = [a for a in self.order[: self.keep] if not isinstance(src_key[a], int)]
        return res.transpose([remaining.index(a) for a in want])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype) if dtype is not None else out


def view_axes(data: Any, order: Sequence[int], keep: int) -> Any:
    """``data`` with axes reordered and trailing size-1 axes dropped, still lazy."""
    order = list(order)
    if order == list(range(len(order))) and keep == len(order):
        return data
    if isinstance(data, np.ndarray):  # memmap: numpy views are lazy already
        view = np.transpose(data, order)
        return view.reshape(view.shape[:keep]) if keep < view.ndim else view
    return AxesView(data, order, keep)


def open_tiff_lazy(path: str | os.PathLike, how: str = "auto") -> Any:
    """The first series of a TIFF as a lazy array-like in the file's own axis order.

    ``how``: "memmap", "zarr" or "auto" (memmap when the file allows it, else zarr).
    """
    import tifffile

    path = Path(path)
    if how in ("auto", "memmap"):
        try:
            return tifffile.memmap(path, series=0, mode="r")
        except Exception:
            if how == "memmap":
                raise
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0)
    arr = zarr.open(store, mode="r")
    if hasattr(arr, "shape"):
        return arr
    return arr["0"]  # a multiscale (pyramidal) file: its full-resolution level


def can_memmap(path: str | os.PathLike) -> bool:
    """True when the TIFF's first series is stored uncompressed and contiguous (reads only its header)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].dataoffset is not None
    except Exception:
        return False


def should_be_lazy(path: str | os.PathLike, fraction: float | None = None) -> bool:
    """True when loading the file whole is a bad idea: it is big against free RAM, or it can be
    memory-mapped and is big enough for the copy to matter (see the constants above)."""
    fraction = LAZY_FRACTION if fraction is None else fraction
    try:
        size = Path(path).stat().st_size
    except OSError:
        return False
    if size > fraction * psutil.virtual_memory().available:
        return True
    return size >= LAZY_MEMMAP_BYTES and can_memmap(path)
