"""Classical focus fusion resident on an accelerator: the whole tile's slices go up once, as raw integers.

The streaming engine (:class:`core.pipeline.ClassicalEngine`) suits the CPU: one slice at a time, float
luma made on the host. On a GPU the same loop spends its time on the host: a float32 conversion per
slice (twice the bytes of uint16), a pinned copy per slice, a Python round trip per slice, and the final
gather reading every slice again from host memory. Here, per tile:

1. slices are copied raw (uint8/uint16/float, gray or RGB) into one of two pinned staging buffers
   ``chunk`` slices at a time by a host thread, and uploaded on a side stream while the device measures
   the previous chunk (copy and compute overlap);
2. on the device: conversion to the focus image (same luma, channel and scale as ``stack.to_focus_image``),
   the focus measure on the whole chunk as one batch, and the running argmax with the two neighbours'
   scores for the sub-slice peak (same result as the streaming engine: earliest maximum wins);
3. the raw slices stay on the device, and the all-in-focus pixels are gathered there (:meth:`gather`).

It works on any torch device (the tests run it on the CPU against the streaming engine). Speed is
measured against the host->device copy floor in ``benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from ..io.stack import LUMA_WEIGHTS, FocalStack, dtype_scale
from ..tiles import classical, decision
from ..tiles.pipeline import FocusMaps, ProgressFn, check_cancel, peak_maps, renumber
from .classical_engine import classical_margins

#: Slices per upload: large copies reach the link's speed (a 2048² uint16 slice is 8 MB; 8 of them, 64 MB,
#: are well past the size where pinned copies saturate PCIe), yet the float work of a chunk stays small.
CHUNK_SLICES = 8
#: Device bytes per pixel of the tile besides the raw slices: two float chunks of ``CHUNK_SLICES``
#: (focus images and scores, with the measures' temporaries) and the running maps.
WORK_BYTES_PER_PIXEL = 4 * 4 * CHUNK_SLICES + 64

_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int16): torch.int16, np.dtype(np.uint16): torch.int16,
                 np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                 np.dtype(np.int32): torch.int32, np.dtype(np.float64): torch.float64}


def device_dtype_supported(dtype: np.dtype) -> bool:
    """Raw dtypes this engine uploads as they are (uint16 travels as int16 bits and is unwrapped there)."""
    return np.dtype(dtype) in _TORCH_DTYPES


class DeviceClassicalEngine:
    """A classical focus measure on tiles, every slice of the tile held on ``device`` (see the module doc)."""

    single_tile = False
    feather = 0  # tiles are exact, as for the streaming engine
    estimate_s = None

    def __init__(self, stack: FocalStack, t: int, method: str, device: torch.device, *, channel: int | None,
                 window: int, denoise: bool, fill_threshold: float = 0.25, exclude: Sequence[int] = (),
                 chunk: int = CHUNK_SLICES, halo: decision.Decision = decision.LEGACY) -> None:
        self.stack, self.t, self.method, self.device = stack, t, method, device
        keep = [z for z in range(stack.n_slices) if z not in set(exclude)]
        self.keep = None if len(keep) == stack.n_slices else keep
        self.channel, self.window, self.denoise, self.fill_threshold = channel, window, denoise, fill_threshold
        self.halo = halo  # the decision (decision.resolve_decision; falsy: legacy)
        self.overlap, self.min_overlap = classical_margins(method, window, denoise, fill_threshold, halo)
        self.chunk = max(1, int(chunk))
        self.raw_dtype = np.dtype(stack.dtype)
        self._raw: torch.Tensor | None = None  # (n, h, w[, C]) raw slices of the current tile, on the device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stackmff-stage")
        cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if cuda else None

    # ------------------------------------------------------------------ sizing, protocol
    def bytes_per_pixel(self) -> float:
        n = len(self.keep) if self.keep is not None else self.stack.n_slices
        return n * self.raw_dtype.itemsize * max(1, self.stack.n_channels) + WORK_BYTES_PER_PIXEL

    def schedule(self, windows: Sequence[tuple[slice, slice]]) -> None:
        """Nothing ahead of time: within a tile, chunks are staged one ahead."""

    def close(self) -> None:
        self._raw = None
        self._pool.shutdown(wait=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stackmff-stage")

    # ------------------------------------------------------------------ staging
    def _stage(self, zs: Sequence[int], window: tuple[slice, slice], buf: torch.Tensor) -> torch.Tensor:
        """Copy raw slices ``zs`` of ``window`` into the (pinned) host buffer ``buf``; runs in the host thread."""
        out = buf.numpy()
        for i, z in enumerate(zs):
            pix = self.stack.read_window(z, self.t, window)
            np.copyto(out[i], pix.view(np.int16) if pix.dtype == np.uint16 else pix, casting="no")
        return buf[: len(zs)]

    def _host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buf = torch.empty(shape, dtype=dtype)
        return buf.pin_memory() if self._copy_stream is not None else buf

    def _upload(self, host: torch.Tensor, dest: torch.Tensor) -> object | None:
        """Start copying ``host`` into ``dest``; on CUDA on the side stream (returns its event)."""
        if self._copy_stream is None:
            dest.copy_(host)
            return None
        with torch.cuda.stream(self._copy_stream):
            dest.copy_(host, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        return done

    # ------------------------------------------------------------------ device work
    def _focus_images(self, raw: torch.Tensor) -> torch.Tensor:
        """(k, h, w[, C]) raw -> (k, 1, h, w) float32 focus images, as ``stack.to_focus_image`` makes them."""
        x = raw
        if self.raw_dtype == np.uint16:
            x = x.to(torch.int32).bitwise_and_(0xFFFF)
        if x.ndim == 4:
            if self.channel is not None:
                x = x[..., self.channel].float()
            elif self.stack.rgb and x.shape[-1] in (3, 4):
                x = x[..., :3].float() @ torch.as_tensor(LUMA_WEIGHTS, dtype=torch.float32, device=x.device)
            else:
                x = x.float().mean(dim=-1)
        else:
            x = x.float()
        scale = dtype_scale(self.raw_dtype)
        if scale != 1.0:
            x = x * np.float32(1.0 / scale)
        return x[:, None]

    def maps(self, window: tuple[slice, slice], progress: ProgressFn | None,
             cancel: threading.Event | None) -> FocusMaps:
        zs = self.keep or list(range(self.stack.n_slices))
        n = len(zs)
        first = self.stack.read_window(zs[0], self.t, window)
        tdtype = _TORCH_DTYPES[first.dtype]
        k = min(self.chunk, n)
        bufs = [self._host_buffer((k, *first.shape), tdtype) for _ in range(2 if n > k else 1)]
        raw = torch.empty((n, *first.shape), dtype=tdtype, device=self.device)
        self._raw = None
        starts = list(range(0, n, k))
        staged: Future = self._pool.submit(self._stage, zs[0:k], window, bufs[0])
        state: dict[str, torch.Tensor] = {}
        glow = self.halo.streams_glow(self.denoise, self.fill_threshold)
        with torch.no_grad():
            for c, z0 in enumerate(starts):
                check_cancel(cancel)
                host = staged.result()
                done = self._upload(host, raw[z0:z0 + len(host)])
                if c + 1 < len(starts):
                    z1 = starts[c + 1]
                    if done is not None:
                        done.synchronize()  # the other buffer is free once its upload is done
                    staged = self._pool.submit(self._stage, zs[z1:z1 + k], window, bufs[(c + 1) % len(bufs)])
                if done is not None:
                    torch.cuda.current_stream(self.device).wait_event(done)
                x = self._focus_images(raw[z0:z0 + len(host)])
                scores = classical.focus_measure(x, self.method, self.window)[:, 0]
                _merge(state, scores, z0, x[:, 0] if glow else None)
                del x
                if progress is not None:
                    progress(min(z0 + len(host), n), n, "measuring focus")
            if self._copy_stream is not None:
                self._copy_stream.synchronize()  # the pinned buffers are freed on return: no copy may still read them
            self._raw = raw
            maps = peak_maps(state, n, window=self.window, fill_threshold=self.fill_threshold, denoise=self.denoise,
                             halo=self.halo, origin=(window[0].start or 0, window[1].start or 0))
            return renumber(maps, self.keep)

    def gather(self, crop: tuple[slice, slice], index: np.ndarray) -> np.ndarray | None:
        """All-in-focus pixels of the tile's ``crop`` for ``index`` (original slice numbers), gathered on the
        device from the raw slices :meth:`maps` left there."""
        raw = self._raw
        if raw is None:
            return None
        local = torch.as_tensor(index, device=self.device)
        if self.keep is not None:  # original slice numbers -> rows of ``raw``
            lookup = torch.full((self.stack.n_slices,), -1, dtype=torch.long, device=self.device)
            lookup[torch.as_tensor(self.keep, device=self.device)] = torch.arange(len(self.keep), device=self.device)
            local = lookup[local]
        sub = raw[(slice(None), *crop)]
        idx = local.long()[None]
        if sub.ndim == 4:
            idx = idx[..., None].expand(1, *sub.shape[1:])
        out = torch.gather(sub, 0, idx)[0].cpu().numpy()
        return out.view(np.uint16) if self.raw_dtype == np.uint16 else out.astype(self.raw_dtype, copy=False)


def _merge(state: dict[str, torch.Tensor], scores: torch.Tensor, z0: int, x: torch.Tensor | None = None) -> None:
    """Fold a chunk of scores (k, h, w) for slices z0..z0+k-1 into the running best, its index, the
    scores of its two neighbours and the sum (the streaming engine's state, a chunk at a time); with the
    chunk's focus images ``x`` (k, h, w), the glow decision's summed images and the winner's brightness."""
    k = scores.shape[0]
    carg = scores.argmax(dim=0)  # the first maximum, as the streaming engine's strict '>'
    cbest = scores.gather(0, carg[None])[0]
    if x is not None:  # before the best is updated: the winner's brightness follows the strict '>'
        clit = x.gather(0, carg[None])[0]
        if "best" not in state:
            glow = {"luma": x.sum(0), "lit": clit}
        else:
            glow = {"luma": state.pop("luma") + x.sum(0),
                    "lit": torch.where(cbest > state["best"], clit, state.pop("lit"))}
    nan = torch.full_like(cbest, float("nan"))
    c_left = torch.where(carg > 0, scores.gather(0, (carg - 1).clamp_min(0)[None])[0], state.get("prev", nan))
    c_right = torch.where(carg < k - 1, scores.gather(0, (carg + 1).clamp_max(k - 1)[None])[0], nan)
    if not state:
        state.update(best=cbest, idx=carg.to(torch.int32), left=c_left, right=c_right, total=scores.sum(0))
    else:
        # the running winner sat on the last slice before this chunk: its right neighbour is scores[0]
        state["right"] = torch.where(state["idx"] == z0 - 1, scores[0], state["right"])
        new = cbest > state["best"]
        state["left"] = torch.where(new, c_left, state["left"])
        state["right"] = torch.where(new, c_right, state["right"])
        state["idx"] = torch.where(new, carg.to(torch.int32) + z0, state["idx"])
        state["best"] = torch.maximum(state["best"], cbest)
        state["total"] += scores.sum(0)
    state["prev"] = scores[-1].clone()
    if x is not None:
        state.update(glow)
