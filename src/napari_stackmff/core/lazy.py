"""Stacks that stay on disk: TIFFs opened as memory maps or zarr arrays, viewed in our axis order.

Fusion reads a stack one (slice, tile window) at a time, so nothing here ever loads a whole
stack. A TIFF whose pages are stored uncompressed and contiguously is memory-mapped (zero
copy, fastest); any other TIFF (compressed, tiled, strips scattered) is opened through
tifffile's zarr store, which reads only the strips or tiles a window touches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import psutil

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
