"""Fusion results streamed to disk tile by tile: OME-Zarr or BigTIFF, never the whole image in RAM.

:func:`fuse_to_disk` drives the same tile engines as :func:`~napari_stackmff.core.fusion.dispatch.fuse`
and hands each finished tile to a sink:

* ``*.zarr`` -> one OME-Zarr (NGFF 0.4, zarr format 2) store: the root group is the all-in-focus
  image (``0``, axes ``[t,] [c,] y, x``), with ``focus_map/``, ``confidence/`` and ``height_map/``
  image groups beside it; each has minimal ``multiscales`` metadata (one level). Chunks equal the
  tiles' write windows, so every tile writes whole chunks.
* ``*.tif`` / ``*.tiff`` -> tiled BigTIFFs: the path holds the all-in-focus image (``[T,] Y, X[, S]``)
  and ``<stem>_focus_map.tif``, ``<stem>_confidence.tif``, ``<stem>_height_map.tif`` lie beside it.
  tifffile writes each file from a generator fed by a bounded queue, one thread per file.

Outputs appear atomically: they are written under temporary names and renamed at the end, so
a crash or cancel leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import OutputError, StackMFFError
from ..fusion.dispatch import plan_blend, prepare
from ..io.read import input_files
from ..io.records import check_output_safe
from ..io.safe_files import (
    DIR_STAMP,
    check_output_folder,
    commit,
    discard,
    make_temp_dir,
    stamp_temp_dir,
    sweep_stale_temps,
    temp_path,
    write_error,
)
from ..io.stack import FocalStack
from ..io.write import result_bytes
from ..tiles.pipeline import (
    ProgressFn,
    check_cancel,
    iter_fused_tiles,
    plan_tile,
    sub_progress,
)
from ..tiles.tiling import chunk_shape

MAPS = ("focus_map", "confidence", "height_map")
_NGFF_UNITS = {"um": "micrometer", "µm": "micrometer", "nm": "nanometer", "mm": "millimeter"}


@dataclass
class DiskResult:
    """What :func:`fuse_to_disk` wrote: the files (or zarr groups) per output, and how it went."""

    path: Path
    format: str  # "zarr" or "tiff"
    outputs: dict[str, Path]
    shape: tuple[int, ...]  # all-in-focus shape as written
    method: str
    n_slices: int
    tile: int
    overlap: int
    timings: dict[str, float] = field(default_factory=dict)
    alignment: list[dict] | None = None  # per time point, when align= was asked (core.align)


@dataclass(frozen=True)
class _Spec:
    """One output array: its on-disk shape, dtype and chunk (tile) shape."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]


def _specs(stack: FocalStack, tile: int, overlap: int, fmt: str, with_height: bool) -> dict[str, _Spec]:
    h, w = stack.yx_shape
    cy, cx = chunk_shape(h, w, tile, overlap)
    if fmt == "tiff":  # TIFF tiles are multiples of 16
        cy, cx = -(-cy // 16) * 16, -(-cx // 16) * 16
    lead = (stack.n_times,) if stack.has_time else ()
    lead_c = (1,) if stack.has_time else ()
    specs: dict[str, _Spec] = {}
    if stack.has_channels and fmt == "zarr":  # NGFF: channel before y, x
        specs["all_in_focus"] = _Spec((*lead, stack.n_channels, h, w), stack.dtype,
                                      (*lead_c, stack.n_channels, cy, cx))
    elif stack.has_channels:
        specs["all_in_focus"] = _Spec((*lead, h, w, stack.n_channels), stack.dtype,
                                      (*lead_c, cy, cx, stack.n_channels))
    else:
        specs["all_in_focus"] = _Spec((*lead, h, w), stack.dtype, (*lead_c, cy, cx))
    for name in MAPS:
        if name != "height_map" or with_height:
            specs[name] = _Spec((*lead, h, w), np.dtype(np.float32), (*lead_c, cy, cx))
    return specs


# ------------------------------------------------------------------------------------ zarr
def _ngff_attrs(name: str, stack: FocalStack, ndim_lead: int, channels: bool) -> dict[str, Any]:
    unit = _NGFF_UNITS.get(stack.unit or "", None)
    axes: list[dict[str, Any]] = []
    if ndim_lead:
        axes.append({"name": "t", "type": "time"})
    if channels:
        axes.append({"name": "c", "type": "channel"})
    for a in ("y", "x"):
        axes.append({"name": a, "type": "space", **({"unit": unit} if unit and stack.pixel_size else {})})
    py, px = stack.pixel_size or (1.0, 1.0)
    scale = [1.0] * (len(axes) - 2) + [float(py), float(px)]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
    return {"multiscales": [{"version": "0.4", "name": name, "axes": axes, "datasets": [level]}]}


def _open_group(path: Path) -> Any:
    import zarr

    try:
        return zarr.open_group(str(path), mode="w", zarr_format=2)
    except TypeError:  # zarr 2 has no zarr_format argument (and writes format 2 anyway)
        return zarr.open_group(str(path), mode="w")


def _create_array(group: Any, name: str, spec: _Spec) -> Any:
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype, fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"})
    return group.create_dataset(name, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype, fill_value=0,
                                dimension_separator="/")


class ZarrSink:
    """Writes tiles into an OME-Zarr store (one chunk per tile)."""

    def __init__(self, path: Path, specs: dict[str, _Spec], stack: FocalStack, info: dict[str, Any]) -> None:
        self.path = path
        self.stack = stack
        root = _open_group(path)
        lead = 1 if stack.has_time else 0
        root.attrs.update({**_ngff_attrs("all_in_focus", stack, lead, stack.has_channels),
                           "stackmff": {**info, "maps": [m for m in MAPS if m in specs]}})
        self.arrays = {"all_in_focus": _create_array(root, "0", specs["all_in_focus"])}
        for name in MAPS:
            if name in specs:
                g = root.create_group(name)
                g.attrs.update(_ngff_attrs(name, stack, lead, False))
                self.arrays[name] = _create_array(g, "0", specs[name])

    def write(self, name: str, t: int, window: tuple[slice, slice], data: np.ndarray) -> None:
        lead = (t,) if self.stack.has_time else ()
        if name == "all_in_focus" and self.stack.has_channels:
            self.arrays[name][(*lead, slice(None), *window)] = np.moveaxis(data, -1, 0)
        else:
            self.arrays[name][(*lead, *window)] = data

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


# ------------------------------------------------------------------------------------ tiff
_END = object()


class TiffSink:
    """One tiled BigTIFF per output, each written by tifffile from a generator in its own thread.

    Tiles must arrive in TIFF order (row-major, page by page), which is the order fusion makes them.
    """

    def __init__(self, paths: dict[str, Path], specs: dict[str, _Spec], stack: FocalStack,
                 info: dict[str, Any]) -> None:
        self.queues: dict[str, queue.Queue] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        for name, spec in specs.items():
            q: queue.Queue = queue.Queue(maxsize=2)
            self.queues[name] = q
            th = threading.Thread(target=self._run, args=(paths[name], spec, q, stack, name, info),
                                  name=f"stackmff-tiff-{name}", daemon=True)
            self.threads[name] = th
            th.start()

    def _tiles(self, q: queue.Queue) -> Iterator[np.ndarray]:
        while True:
            item = q.get()
            if item is _END:
                return
            yield item

    def _run(self, path: Path, spec: _Spec, q: queue.Queue, stack: FocalStack, name: str,
             info: dict[str, Any]) -> None:
        import tifffile

        try:
            rgb = name == "all_in_focus" and stack.rgb and stack.has_channels
            lead = 1 if stack.has_time else 0
            tile = spec.chunks[lead: lead + 2]
            samples = len(spec.shape) > lead + 2
            meta = {"axes": ("T" if lead else "") + "YX" + ("S" if samples else "")}
            desc = json.dumps({**info, "output": name})
            tifffile.imwrite(path, self._tiles(q), shape=spec.shape, dtype=spec.dtype, tile=tile, bigtiff=True,
                             photometric="rgb" if rgb else "minisblack",
                             planarconfig="contig" if samples else None,  # contig on YX reads X as samples
                             compression="zlib", metadata=meta, description=desc)
        except BaseException as exc:  # reported by write()/close() in the fusing thread
            self.errors.append(exc)
            while not self.stop.is_set():  # drain so the producer never blocks on a dead writer
                try:
                    if q.get(timeout=0.1) is _END:
                        return
                except queue.Empty:
                    continue

    def _put(self, name: str, item: Any) -> None:
        while True:
            if self.errors:
                raise OutputError(f"writing {name} failed: {self.errors[0]}")
            if not self.threads[name].is_alive():
                if item is _END:
                    return
                raise OutputError(f"writing {name} stopped early: the TIFF writer took fewer tiles than fusion made.")
            try:
                self.queues[name].put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def write(self, name: str, t: int, window: tuple[slice, slice], data: np.ndarray) -> None:
        self._put(name, np.ascontiguousarray(data))

    def close(self) -> None:
        for name in self.queues:
            self._put(name, _END)
        for th in self.threads.values():
            th.join()
        if self.errors:
            raise OutputError(f"writing the BigTIFF failed: {self.errors[0]}")

    def abort(self) -> None:
        self.stop.set()
        for name, q in self.queues.items():
            try:
                q.put_nowait(_END)
            except queue.Full:
                pass
        for th in self.threads.values():
            th.join(timeout=5)


# ---------------------------------------------------------------------------- fuse_to_disk
def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("zarr", "tiff"):
            raise StackMFFError(f"output format must be 'zarr' or 'tiff', got {fmt!r}.")
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in (".tif", ".tiff"):
        return "tiff"
    raise StackMFFError(f"{path}: name the output *.zarr (OME-Zarr) or *.tif (BigTIFF), or pass format=.")


def _tiff_paths(path: Path, specs: dict[str, _Spec]) -> dict[str, Path]:
    stem = path.name[: -len(path.suffix)]
    return {name: path if name == "all_in_focus" else path.with_name(f"{stem}_{name}{path.suffix}")
            for name in specs}


def _ours_zarr(path: Path) -> bool:
    """An OME-Zarr that fuse_to_disk wrote (its root attributes carry our "stackmff" record): the
    only kind of folder --overwrite may replace."""
    try:
        return "stackmff" in json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError, TypeError):
        return False


def fuse_to_disk(
    stack: Any,
    out_path: str | os.PathLike,
    method: str = "auto",
    device: str | torch.device = "auto",
    *,
    format: str | None = None,
    channel: int | None = None,
    window: int | None = None,
    weights: str | None = None,
    z_step: float | None = None,
    denoise: bool = True,
    tile: int | None = None,
    memory_budget: int | None = None,
    lazy: bool | str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> DiskResult:
    """Fuse a stack of any size straight to disk; memory is one tile's worth, not the image's.

    Same settings and same pixels as :func:`~napari_stackmff.core.fusion.dispatch.fuse` (tile for tile);
    ``out_path`` ending in ``.zarr`` gives OME-Zarr, ``.tif``/``.tiff`` BigTIFF (see module doc).
    A TIFF input is read lazily by default when it is large (``lazy=None``).
    """
    t0 = time.perf_counter()
    out = Path(out_path)
    fmt = _format_of(out, format)
    plan = prepare(stack, method, device, channel=channel, window=window, weights=weights, z_step=z_step,
                   denoise=denoise, lazy=lazy, **options)
    stack = plan.stack
    n, T = stack.n_slices, stack.n_times
    engine0 = plan.make_engine(0)
    side, overlap = plan_tile(stack, engine0, plan.device, tile, memory_budget, blend=plan.blend)
    if fmt == "tiff" and side < max(stack.yx_shape):
        side = -(-side // 32) * 32  # tile - 2*overlap must stay a multiple of 16
    specs = _specs(stack, side, overlap, fmt, with_height=stack.z_positions is not None)
    info = {"method": plan.method, "n_slices": n, "z_step": stack.z_step, "unit": stack.unit,
            "source": stack.source, "tile": side, "overlap": overlap,
            "blend": plan_blend(plan), "decision": plan.decision,
            **({"runtime": plan.runtime} if plan.runtime else {}),
            **({"alignment": plan.alignment} if plan.alignment else {})}
    finals = {"all_in_focus": out} if fmt == "zarr" else _tiff_paths(out, specs)
    check_output_safe(finals.values(), input_files(stack))
    for p in finals.values():
        if p.exists() and not overwrite:
            raise OutputError(f"{p}: already exists; choose another output or pass overwrite=True.")
    check_output_folder(out.parent, result_bytes(stack.yx_shape, T, stack.n_channels if stack.has_channels else 1,
                                                 stack.dtype.itemsize, "height_map" in specs))
    sweep_stale_temps(out.parent)  # what a killed earlier run left behind
    tmps: dict[str, Path] = {}
    sink: ZarrSink | TiffSink | None = None
    timings: dict[str, float] = {"load_s": time.perf_counter() - t0, "focus_s": 0.0, "gather_s": 0.0, "write_s": 0.0}
    try:
        if fmt == "zarr":
            tmps["all_in_focus"] = make_temp_dir(out)
            sink = ZarrSink(tmps["all_in_focus"], specs, stack, info)
            stamp_temp_dir(tmps["all_in_focus"])  # again: zarr's mode "w" may have cleared the folder
        else:
            tmps.update({k: temp_path(p) for k, p in finals.items()})
            sink = TiffSink(tmps, specs, stack, info)
        for t in range(T):
            check_cancel(cancel)
            engine = engine0 if t == 0 else plan.make_engine(t)
            sub = sub_progress(progress, t, T, f" (t={t})" if T > 1 else "")
            for tl in iter_fused_tiles(stack, engine, t, side, overlap, progress=sub, cancel=cancel,
                                       timings=timings, blend=plan.blend, fade=plan.fade):
                tw = time.perf_counter()
                sink.write("all_in_focus", t, tl.write, tl.all_in_focus)
                sink.write("focus_map", t, tl.write, tl.focus)
                sink.write("confidence", t, tl.write, tl.confidence)
                if "height_map" in specs:
                    zpos = stack.z_positions
                    assert zpos is not None
                    height = np.interp(tl.focus, np.arange(len(zpos)), zpos).astype(np.float32)
                    sink.write("height_map", t, tl.write, height)
                timings["write_s"] += time.perf_counter() - tw
        tw = time.perf_counter()
        sink.close()
        timings["write_s"] += time.perf_counter() - tw
        commit({finals[k]: tmps[k] for k in finals}, overwrite=overwrite, replaceable=_ours_zarr)
    except BaseException as exc:
        if sink is not None:
            sink.abort()
        for p in tmps.values():
            discard(p)
        if isinstance(exc, OSError):  # disk full, permission...: one line; the old results stay
            raise write_error(out.parent, exc, "The earlier results are as they were.") from None
        raise
    if fmt == "zarr":
        (out / DIR_STAMP).unlink(missing_ok=True)  # the published store keeps no temporary stamp
    outputs = {"all_in_focus": out, **{m: out / m for m in MAPS if m in specs}} if fmt == "zarr" else finals
    timings["total_s"] = time.perf_counter() - t0
    return DiskResult(path=out, format=fmt, outputs=outputs, shape=specs["all_in_focus"].shape, method=plan.method,
                      n_slices=n, tile=side, overlap=overlap, timings=timings, alignment=plan.alignment)
