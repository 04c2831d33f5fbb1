"""Retouch: the user paints which slice a region of a fused image comes from (issue 27).

No automatic decision is right everywhere (a hand-focused stack, a leg that moved, a halo that fools
every measure), so, as in the commercial focus stackers, the user paints over a region and it is
taken from the slice they name. The edit is a label image of the result's shape: 0 keeps the
automatic choice, k > 0 takes slice k - 1 (napari's labels layer paints exactly this).

* Painted pixels are copied from their slice: pixel-faithful in any dtype and any channels. The
  focus and height maps follow the edit; confidence is 1 on edited pixels (the user decided) and
  :attr:`FusionResult.edits` keeps the label image, so what was edited is always known.
* A soft-blended result (not pixel-faithful to begin with) gets the painted region's edge feathered
  over :data:`FEATHER_PX` pixels, so a painted patch does not show a seam the blend would not have;
  a hard result stays hard, pixel for pixel.
* The stack is read one window at a time (``FocalStack.read_window``), so lazy stacks stay lazy; an
  aligned (cropped) result re-reads each slice through the transforms its fusion recorded.
* :class:`Retoucher` recomputes one box in place: the napari widget calls it per brush stroke.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterator

import numpy as np
from scipy import ndimage as ndi

from .errors import StackMFFError
from .fusion.align import AlignedArray
from .io.result import FusionResult
from .io.stack import FocalStack, cast_to
from .tiles.blend import SOFT_RADIUS

#: Feather width (px) at a painted region's edge on soft-blended results: the soft blend's own reach
#: (two box filters of radius :data:`~napari_stackmff.core.tiles.blend.SOFT_RADIUS`), so a painted
#: edge is exactly as soft as the blend's own changes of slice.
FEATHER_PX = 2 * SOFT_RADIUS
#: Rows x columns recomputed per step when a whole edit is applied: bounds the memory of one step
#: (a few slices' windows) whatever the image's size.
TILE = 1024
#: Label dtype of :attr:`FusionResult.edits` and of saved edit masks: up to 65535 slices.
EDITS_DTYPE = np.uint16


def check_labels(labels: Any, result: FusionResult, source: str = "labels") -> np.ndarray:
    """``labels`` as an integer array of the result's (T?, Y, X) shape with values 0..n_slices; one
    clear line naming ``source`` otherwise."""
    arr = np.asarray(labels)
    want = tuple(result.focus_map.shape)
    if arr.dtype.kind not in "uib":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.array_equal(arr, np.rint(arr)):
            arr = arr.astype(np.int64)
        else:
            raise StackMFFError(f"{source}: labels must be whole numbers (0: keep, k: slice k-1), got {arr.dtype}.")
    if arr.shape != want:
        hint = " (a time series needs one label image per time point)" if len(want) == 3 and arr.ndim == 2 else ""
        raise StackMFFError(f"{source}: labels of shape {arr.shape} do not match the result's "
                            f"{want}{hint}.")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > result.n_slices:
            raise StackMFFError(f"{source}: labels run {lo}..{hi}; this result has {result.n_slices} slices, "
                                f"so labels must be 0 (keep) to {result.n_slices} (slice {result.n_slices - 1}).")
    return arr


def _aligned_records(result: FusionResult) -> list[dict] | None:
    recs = result.alignment or []
    return recs if any(r.get("aligned") for r in recs) else None


def matching_stack(stack: FocalStack, result: FusionResult) -> FocalStack:
    """``stack`` on the result's pixel grid: through the recorded transforms and crop when the result
    was aligned (the stack given is the input, as fused). Refuses a stack that cannot be the one fused."""
    src = stack.source or "the stack"
    recs = _aligned_records(result)
    if recs is not None:
        crop = next((r["crop"] for r in recs if "crop" in r), None)
        if crop is None:
            raise StackMFFError(f"{src}: this aligned result records no crop; re-fuse it to retouch it.")
        box = (int(crop["y"][0]), int(crop["y"][1]), int(crop["x"][0]), int(crop["x"][1]))
        h, w = stack.yx_shape
        if box[1] > h or box[3] > w:
            raise StackMFFError(f"{src}: {h}x{w} px is smaller than the alignment's crop "
                                f"(y {box[0]}:{box[1]}, x {box[2]}:{box[3]}); give the stack this result was fused from.")
        if len(recs) != stack.n_times:
            raise StackMFFError(f"{src}: {stack.n_times} time point(s), the result's alignment has {len(recs)}.")
        matrices = []
        for r in recs:
            m = np.asarray(r["matrices"], np.float64) if r.get("aligned") else None
            if m is not None and m.shape != (stack.n_slices, 3, 3):
                raise StackMFFError(f"{src}: {stack.n_slices} slices, the result's alignment has {len(m)}.")
            matrices.append(m)
        view = AlignedArray(stack.data, stack.has_time, matrices, box, stack.axes.index("Y"))
        in_memory = isinstance(stack.data, np.ndarray) and not isinstance(stack.data, np.memmap)
        stack = dataclasses.replace(stack, data=WholePlanes(view) if in_memory else view, events=None)
    problems = []
    if stack.n_slices != result.n_slices:
        problems.append(f"{stack.n_slices} slices, the result {result.n_slices}")
    if tuple(stack.yx_shape) != tuple(result.focus_map.shape[-2:]):
        problems.append(f"{stack.yx_shape[0]}x{stack.yx_shape[1]} px, the result "
                        f"{result.focus_map.shape[-2]}x{result.focus_map.shape[-1]}")
    if stack.n_times != result.n_times:
        problems.append(f"{stack.n_times} time point(s), the result {result.n_times}")
    if np.dtype(stack.dtype) != result.all_in_focus.dtype:
        problems.append(f"{np.dtype(stack.dtype)} pixels, the result {result.all_in_focus.dtype}")
    want_c = result.all_in_focus.shape[result.focus_map.ndim:]
    have_c = (stack.n_channels,) if stack.has_channels else ()
    if tuple(want_c) != have_c:
        problems.append(f"{have_c[0] if have_c else 1} channel(s), the result {want_c[0] if want_c else 1}")
    if problems:
        raise StackMFFError(f"{src}: not the stack this result was fused from ({'; '.join(problems)}).")
    return stack


class WholePlanes:
    """An in-memory aligned stack read as fusion read it: each slice warped whole (as ``align_stack`` warps
    an in-memory stack), kept for the next brush stroke. A window warped on its own can differ by one
    grey level (float32 sampling coordinates relative to the window), so an in-memory stack, which fits
    in memory anyway, is warped whole to keep painted pixels exactly the fused slice's. Lazy stacks are
    fused window by window and are retouched that way too (to one grey level)."""

    KEEP = 4  # warped slices kept: a retouch paints from a few slices at a time

    def __init__(self, view: AlignedArray) -> None:
        self.view, self.shape, self.dtype, self.ndim = view, view.shape, view.dtype, view.ndim
        self.n_lead = view.yx_axis
        self._planes: dict[tuple[int, ...], np.ndarray] = {}

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        lead = tuple(int(k) for k in key[: self.n_lead])
        plane = self._planes.pop(lead, None)
        if plane is None:
            plane = np.asarray(self.view[lead])
            while len(self._planes) >= self.KEEP:
                self._planes.pop(next(iter(self._planes)))
        self._planes[lead] = plane  # most recently used last
        return plane[key[self.n_lead:]]


def _boxes(mask: np.ndarray, tile: int) -> Iterator[tuple[slice, slice]]:
    """Tiles (at most ``tile`` square) covering the bounding box of ``mask`` (:meth:`Retoucher.update`
    itself reaches the feather's width beyond each)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    for ya in range(y0, y1, tile):
        for xa in range(x0, x1, tile):
            yield slice(ya, min(y1, ya + tile)), slice(xa, min(x1, xa + tile))


class Retoucher:
    """Applies edits to a copy of an automatic result, one box at a time.

    ``base`` (the automatic result) is never changed: :meth:`update` rebuilds a box of the output from
    it and the labels, so erasing a label (or napari's undo) brings the automatic pixels back.
    """

    def __init__(self, stack: Any, base: FusionResult, **load: Any) -> None:
        from .io.read import load_stack

        self.base = base
        self.stack = matching_stack(load_stack(stack, **load), base)
        self.feather = FEATHER_PX if base.blend in ("soft", "two-scale") else 0
        self.timed = base.focus_map.ndim == 3
        z = base.z_positions if base.z_positions is not None else self.stack.z_positions
        if z is None and base.z_step:
            z = np.arange(base.n_slices) * float(base.z_step)
        self.z = None if z is None else np.asarray(z, np.float32)

    def start(self) -> FusionResult:
        """A copy of the automatic result to edit (arrays copied; ``edits`` all zero)."""
        out = copy.copy(self.base)
        for name in ("all_in_focus", "focus_map", "confidence", "height_map"):
            a = getattr(self.base, name)
            setattr(out, name, None if a is None else np.array(a, copy=True))
        out.edits = np.zeros(self.base.focus_map.shape, EDITS_DTYPE)
        out.timings = dict(self.base.timings)
        return out

    def _plane(self, arr: np.ndarray | None, t: int) -> np.ndarray | None:
        return arr if arr is None or not self.timed else arr[t]

    def update(self, out: FusionResult, labels: np.ndarray, t: int, ys: slice, xs: slice) -> tuple[slice, slice]:
        """Rebuild ``out`` inside the box (ys, xs) of time point ``t`` from the automatic result and
        ``labels`` (the whole (Y, X) label image of that time point); returns the box written, which a
        feathered result grows by :data:`FEATHER_PX` (a label's reach)."""
        h, w = labels.shape
        f = self.feather
        wy = slice(max(0, (ys.start or 0) - f), min(h, (h if ys.stop is None else ys.stop) + f))
        wx = slice(max(0, (xs.start or 0) - f), min(w, (w if xs.stop is None else xs.stop) + f))
        # Labels are read f px beyond the written box: a feathered edge reaches that far.
        ry = slice(max(0, wy.start - f), min(h, wy.stop + f))
        rx = slice(max(0, wx.start - f), min(w, wx.stop + f))
        lab = np.asarray(labels[ry, rx])
        inner = (slice(wy.start - ry.start, wy.stop - ry.start), slice(wx.start - rx.start, wx.stop - rx.start))
        aif, fm = self._plane(out.all_in_focus, t), self._plane(out.focus_map, t)
        conf, hm = self._plane(out.confidence, t), self._plane(out.height_map, t)
        b_aif, b_fm = self._plane(self.base.all_in_focus, t), self._plane(self.base.focus_map, t)
        b_conf, b_hm = self._plane(self.base.confidence, t), self._plane(self.base.height_map, t)
        box = (wy, wx)
        painted = lab[inner] > 0
        fm[box] = np.where(painted, lab[inner].astype(np.float32) - 1, b_fm[box])
        conf[box] = np.where(painted, np.float32(1.0), b_conf[box])
        if hm is not None:
            zk = (self.z[np.maximum(lab[inner].astype(np.intp) - 1, 0)] if self.z is not None
                  else np.float32(np.nan))
            hm[box] = np.where(painted, zk, b_hm[box])
        self._plane(out.edits, t)[box] = lab[inner]
        aif[box] = b_aif[box]
        if f == 0:
            for k in np.unique(lab[inner][painted]):
                m = lab[inner] == k
                pix = self.stack.read_window(int(k) - 1, t, box)
                aif[box][m] = pix[m]
            return box
        base = b_aif[box].astype(np.float64)
        acc = base.copy()
        for k in np.unique(lab[lab > 0]):
            wk = self._feather_weight(lab == k, f)[inner]
            if not wk.any():
                continue
            pix = self.stack.read_window(int(k) - 1, t, box).astype(np.float64)
            wc = wk[..., None] if pix.ndim == 3 else wk
            acc = acc * (1 - wc) + pix * wc
        aif[box] = cast_to(acc, aif.dtype)
        return box

    @staticmethod
    def _feather_weight(mask: np.ndarray, f: int) -> np.ndarray:
        """Share of a (2f+1)-px square around each pixel that is painted: exactly 1 deep inside a painted
        region, exactly 0 more than f px outside it, a ramp across its edge (integer counts, no float ties)."""
        k = 2 * f + 1
        counts = ndi.correlate(mask.astype(np.int32), np.ones((k, k), np.int32), mode="nearest")
        return counts / float(k * k)




def retouch(stack: Any, result: FusionResult, labels: Any, *, tile: int = TILE, **load: Any) -> FusionResult:
    """The result with the painted regions taken from the painted slices (see the module's docstring).

    ``stack`` is the input the result was fused from (a path, an array or a :class:`FocalStack`; lazy
    ones are read one window at a time; ``load`` goes to ``load_stack``); ``labels`` an int array of the
    result's (T?, Y, X) shape, 0 keeping the automatic choice and k > 0 taking slice k - 1. ``result``
    is not changed. A result that was retouched before is edited again from its own pixels: pass the
    automatic result to replace an earlier edit.
    """
    labels = check_labels(labels, result)
    rt = Retoucher(stack, result, **load)
    out = rt.start()
    timed = result.focus_map.ndim == 3
    for t in range(result.n_times):
        lab = labels[t] if timed else labels
        for ys, xs in _boxes(lab > 0, tile):
            rt.update(out, lab, t, ys, xs)
    if result.edits is not None:  # edits on edits: keep the earlier marks where this edit paints nothing
        out.edits = np.where(out.edits > 0, out.edits, result.edits).astype(EDITS_DTYPE)
    return out
