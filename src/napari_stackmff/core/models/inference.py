"""Running a focus network over a stack: normalise, tile, pad, forward, read out the focus.

Everything model-agnostic lives here once (the networks only map slices to logits): how the
input is scaled, how big images are cut into overlapping tiles, how the probability volume
becomes a sub-slice focus map and a confidence map.

Big images: neighbouring tiles' maps are cross-faded over the tile margin (tiles normalise
themselves, so hard stitching left seams; an order-free model's per-slice probabilities), a model
with image-wide pools (V3) first gathers the whole image's pooled means so that its tiles decide in
the image's context (:meth:`ModelEngine._gather_context`), and the first tile's time, scaled to all
tiles and time points, is reported as an estimate of the run time before the rest of the run.

GPU path: fp16 autocast (bf16 where fp16 is missing), channels_last weights, optional
torch.compile, and the next tile read, pinned and copied to the GPU on a side CUDA stream while
the current tile computes (:class:`ModelEngine`). On the CPU the read-ahead still overlaps disk
reads with compute; the rest is off by default there.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StackMFFError
from ..io.stack import FocalStack
from ..tiles.pipeline import (
    EstimateMessage,
    FocusMaps,
    FusionCancelled,
    finish_maps,
    iter_fused_tiles,
    plan_tile,
    prob_maps,
    renumber,
)
from ..tiles.prefetch import prefetch
from ..tiles.tiling import auto_tile_side, iter_tiles, memory_budget
from .onnx_runtime import check_runtime, ort_forward
from .registry import get_spec, load_model

#: Rough peak bytes per pixel per slice of a V2 forward pass in float32 (measured 190-270 on
#: the CPU for N = 8..32, 512² tiles; kept with margin).
BYTES_PER_VOXEL = 400
#: Low-confidence fill of the model path: below this confidence a pixel's focus is blended toward its
#: confident neighbours' (Gaussian sigma 2 × MODEL_FILL_WINDOW = 8 px, support 25 px with the median,
#: inside TILE_OVERLAP). On 12 synthetic stacks (seed 900) it took our weights from 91.8% to 93.3% of
#: textured pixels within ±1 slice (87.0% -> 89.6% of all pixels), +0.07 dB.
MODEL_FILL_THRESHOLD = 0.25
MODEL_FILL_WINDOW = 4
#: Tile margin for networks. V2's tiles differ from the whole image mostly through its global
#: statistics (GroupNorm over the tile, the channel attention's global average pool), not its
#: receptive field: margins of 32, 64 and 96 px agree with the untiled map equally (93-95% of
#: pixels, 600x700x6, tile 256), so the cheapest is used. tests/test_scale_tiling.py holds the bound.
#: The margin is also the band over which neighbouring tiles' maps are cross-faded (fusion.TileFeather):
#: hard stitching left a step at every tile boundary (pcb_stack, 4 tiles of 1088 px: mean |step| 0.219
#: slice across the boundaries vs 0.016 elsewhere; cross-faded 0.023; synthetic stacks: focus error
#: against the truth unchanged; benchmarks/bench_v2_tiles.py). Whole-image statistics (a first pass over all tiles, frozen for the second) were
#: tried and dropped: closer to the untiled map but further from the truth on synthetic stacks
#: (focus MAE 0.22 -> 0.41 slice at 256-px tiles, 0.24 -> 0.29 at 448), and refining them diverged.
TILE_OVERLAP = 32
#: Mirror margin on tile sides at the image border; off by default. The network zero-pads, and on
#: cells3d_nuclei the leftmost ~20 px lose their nuclei (raw focus there ~10 slices vs ~35 inside).
#: Not the fill (the raw readout shows it), nor per-tile statistics (one tile), nor N (every 5th
#: slice, N = 12, the same). A 16-32 px mirror margin moves that edge halfway back (|focus - wavelet|
#: in the left 20 px 22.3 -> 13.7-16.2 slices) but makes synthetic stacks with known focus worse at
#: their borders (N = 12, raw readout: right 12 px MAE 0.57 -> 1.01 slice; N = 60: outer 8 px 1.17 ->
#: 1.95): the network handles its own zero-padded border better than a mirror axis. So it stays an option.
BORDER_PAD = 0

#: CPUs (torch's capability names) on which networks run channels_last by default. On AVX-512 (a 2-core
#: Sapphire Rapids VM, V2, 384² x 12, with the fused GRU step) 0.85 -> 0.60 s a stack; the focus index
#: is unchanged on 99.99% of pixels for our weights and 100% for the official ones (oneDNN's NCHW
#: convolutions reorder to blocked layouts every call). On AVX2 (a 2-core AMD EPYC VM, two 384² x 12
#: stacks, benchmarks/bench_layout.py, three runs) V2 1.03-1.12x, V3 1.02-1.15x, EventStackMFF 1.14-1.29x
#: faster, never slower, the index unchanged on >= 99.997% of pixels (RESULTS.md, 2026-12-07). Other CPUs
#: (no AVX2, ARM) are not measured and keep NCHW.
CPU_CHANNELS_LAST = ("AVX512", "AVX2")

#: Tiles of one time point from which cuDNN's per-shape kernel search is let run (see ModelRunner's
#: ``autotune``; tiles mostly share one shape). 8 is a first guess, not yet measured: bench_gpu.py's
#: small-stack rows time both settings on the next GPU.
AUTOTUNE_MIN_TILES = 8

ProgressFn = Callable[[int, int, str], None]
Pads = tuple[int, int, int, int]  # left, right, top, bottom


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 5 min': what a person reads in a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def normalise_stack(x: np.ndarray | torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Scale by the whole stack's robust range, so 12-bit data in a 16-bit file looks like 8-bit data
    did in training, and every slice keeps its brightness relative to the others."""
    x = torch.as_tensor(x)
    return ((x - lo) / max(hi - lo, 1e-6)).clamp_(0, 1)


def focus_block(stack: FocalStack, t: int, channel: int | None, window: tuple[slice, slice],
                slices: Sequence[int] | None = None) -> np.ndarray:
    """(N, h, w) float32 focus images of one window (of ``slices`` only, when given), read slice by
    slice with full (t, z, y, x) keys.

    Unlike ``FocalStack.focus_stack`` this never indexes ``data[t]`` alone, which would load a whole
    time point of a zarr-backed stack.
    """
    zs = list(range(stack.n_slices)) if slices is None else list(slices)
    first = stack.focus_window(zs[0], t, channel, window)
    out = np.empty((len(zs), *first.shape), dtype=np.float32)
    out[0] = first
    for i, z in enumerate(zs[1:], 1):
        out[i] = stack.focus_window(z, t, channel, window)
    return out


def event_block(stack: FocalStack, t: int, window: tuple[slice, slice],
                slices: Sequence[int] | None = None) -> np.ndarray:
    """(N, h, w) float32 event frames of one window (of ``slices`` only, when given)."""
    zs = list(range(stack.n_slices)) if slices is None else list(slices)
    ys, xs = window
    key = (lambda z: (t, z, ys, xs)) if stack.has_time else (lambda z: (z, ys, xs))
    return np.stack([np.asarray(stack.events[key(z)], np.float32) for z in zs])


def stack_range(stack: FocalStack, t: int, channel: int | None, samples: int = 2_000_000) -> tuple[float, float]:
    """0.05 and 99.95 percentiles of the focus images, from a strided sample (cheap on big stacks).

    Computed once per time point over the whole image, so every tile is scaled alike.
    """
    h, w = stack.yx_shape
    step = max(1, int(math.sqrt(h * w * stack.n_slices / samples)))
    sample = focus_block(stack, t, channel, (slice(None, None, step), slice(None, None, step)))
    lo, hi = np.percentile(sample, [0.05, 99.95])
    return float(lo), float(hi)


def auto_tile(n_slices: int, device: torch.device, budget_bytes: int | None = None) -> int:
    """Largest tile side (multiple of 32) whose forward pass fits the memory budget."""
    budget = memory_budget(str(device)) if budget_bytes is None else budget_bytes
    return auto_tile_side(BYTES_PER_VOXEL * max(n_slices, 1), budget, overlap=TILE_OVERLAP, hi=4096)


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad (B, N, H, W) on the bottom/right to a multiple (resizing would change pixels)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def readout(logits: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) logits -> (focus in slice units, confidence in [0, 1]).

    softargmax: the expectation of the slice index (what a depth-regression model is trained
    to output). argmax: the winning slice refined by the expectation over it and its neighbours.
    Confidence: how far the peak probability stands above a uniform guess.
    """
    n = logits.shape[0]
    prob = torch.softmax(logits.float(), dim=0)
    pmax, idx = prob.max(dim=0)
    steps = torch.arange(n, dtype=prob.dtype, device=prob.device).view(n, 1, 1)
    if mode == "softargmax":
        focus = (prob * steps).sum(dim=0)
    else:
        lo = (idx - 1).clamp(0, n - 1)
        hi = (idx + 1).clamp(0, n - 1)
        p_lo = prob.gather(0, lo[None])[0] * (lo != idx)
        p_hi = prob.gather(0, hi[None])[0] * (hi != idx)
        focus = (lo * p_lo + idx * pmax + hi * p_hi) / (p_lo + pmax + p_hi)
    conf = ((pmax - 1.0 / n) / (1.0 - 1.0 / n)).clamp(0, 1)
    return focus, conf


def order_free_maps(logits: torch.Tensor, *, denoise: bool, window: int = MODEL_FILL_WINDOW,
                    fill_threshold: float = MODEL_FILL_THRESHOLD) -> FocusMaps:
    """(N, H, W) logits of an order-free model -> focus maps, cleaned up on the probabilities.

    The ordered path smooths the focus map itself (fill, 3x3 median), which averages slice numbers:
    right when neighbouring numbers are neighbouring focus planes, wrong for a shuffled stack (the
    mean of slices 3 and 7 is some unrelated slice 5). Here the same clean-up acts on each slice's
    probability map instead (a 3x3 vote, then low-confidence pixels take the confidence-weighted
    probabilities of their neighbours), and the winner is the argmax, so every index is a real vote
    (:func:`pipeline.prob_maps`, which also reads the winner of cross-faded tiles).
    """
    from ..tiles import classical
    from ..tiles.classical import gaussian_blur

    n = logits.shape[0]
    prob = torch.softmax(logits.float(), dim=0)
    conf = ((prob.max(0).values - 1.0 / n) / (1.0 - 1.0 / n)).clamp(0, 1)
    if denoise:
        prob = classical.box_mean(prob[:, None].contiguous(), 3)[:, 0]
        if fill_threshold > 0:  # the ordered path's fill (pipeline.fill_low_confidence), per slice
            w = conf * conf
            num, den = gaussian_blur(prob[:, None] * w, 2.0 * window)[:, 0], gaussian_blur(w, 2.0 * window)
            filled = torch.where(den > 1e-12, num / den.clamp_min(1e-12), prob)
            alpha = (conf / fill_threshold).clamp(0, 1)
            prob = alpha * prob + (1 - alpha) * filled
    return prob_maps(prob, conf)


_compiled: dict[int, Any] = {}
_compiled_lock = threading.Lock()


def _compiled_model(model: torch.nn.Module) -> Any:
    """torch.compile once per model object (the registry caches one per worker): compiling is seconds."""
    with _compiled_lock:
        fn = _compiled.get(id(model))
        if fn is None:
            _compiled.clear()
            fn = torch.compile(model, dynamic=False)
            _compiled[id(model)] = fn
    return fn


def autocast_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (more mantissa than bf16, the activations are small), bf16 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


class ModelRunner:
    """Runs one focus network over stacks, tile by tile, on one device.

    Parameters
    ----------
    half
        Autocast to fp16 (CUDA) / bf16 (CPU). Default: on for CUDA, off on CPU: bf16 changes ~1%
        of the focus decisions of the official weights (by < 0.1 slice; benchmarks/bench_gpu.py),
        fp16 keeps 3 more mantissa bits.
    channels_last
        NHWC weights and activations (faster convolutions on tensor cores and AVX-512). Default: with
        ``half`` on CUDA; on CPUs in :data:`CPU_CHANNELS_LAST`.
    compile
        ``torch.compile`` the network (tiles are one fixed size, so it compiles once per run
        shape). Off by default: it pays only for long runs on a GPU.
    prefetch
        Read (and on CUDA, upload) the next tile while the current one computes.
    border_pad
        Pixels of mirror margin on image-border tile sides (default 0: the network's zero padding,
        better on synthetic stacks; see :data:`BORDER_PAD`).
    feather
        Cross-fade neighbouring tiles' maps over the tile margin instead of cutting them hard (an
        order-free model's per-slice probabilities, whose winner is then read again).
    context
        For a model with image-wide pools (V3): encoder passes over all tiles first gather the whole
        image's pooled means, which every tile then uses instead of its own (tiles no longer each decide
        in their own context). ~15% of a forward per pass (V3: 3); only when there are >= 2 tiles.
    overlap
        Tile margin in pixels (default: the model's ``tile_overlap``, else :data:`TILE_OVERLAP`).
    runtime
        ``"torch"`` (default) or ``"onnxruntime"`` (CPU only, the ``onnx`` extra): the network's heavy
        parts exported to ONNX Runtime, the same slice choices (:mod:`.onnx_runtime`, which says what runs
        where and what it measured: 0.89-1.02x torch's speed end to end on an AVX2 CPU).
    autotune
        Let cuDNN time its kernels for each new input shape (``torch.backends.cudnn.benchmark``). It pays
        when one shape repeats (many tiles of one size) and costs a search per shape otherwise: the
        issue-15 measurement had 0.94 s per small stack in fp32 against 0.06 for the official code,
        which leaves it off. Default (None): on when a time point has at least :data:`AUTOTUNE_MIN_TILES`
        tiles. Not yet measured on a GPU by this code; ``benchmarks/bench_gpu.py`` times both settings.
    """

    def __init__(
        self,
        name: str,
        device: torch.device,
        *,
        weights: str | None = None,
        tile: int | None = None,
        readout: str | None = None,
        compat: bool = False,
        half: bool | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        prefetch: bool = True,
        border_pad: int = BORDER_PAD,
        feather: bool = True,
        autotune: bool | None = None,
        context: bool = True,
        overlap: int | None = None,
        runtime: str = "torch",
    ) -> None:
        self.spec = get_spec(name)
        self.name = name
        self.device = device
        self.tile = tile
        self.compat = compat
        cuda = device.type == "cuda"
        self.half = cuda if half is None else bool(half)
        cpu_nhwc = device.type == "cpu" and torch.backends.cpu.get_cpu_capability() in CPU_CHANNELS_LAST
        self.channels_last = ((cuda and self.half) or cpu_nhwc) if channels_last is None else bool(channels_last)
        self.compile = bool(compile)
        self.prefetch = bool(prefetch)
        self.border_pad = int(border_pad)
        self.feather = bool(feather)
        self.context = bool(context)
        self.overlap = None if overlap is None else int(overlap)
        self.autotune = autotune
        self._tune = False  # this run's setting (ModelEngine.schedule decides it from the tile count)
        if self.border_pad < 0:
            raise StackMFFError(f"border_pad must be >= 0 pixels, got {border_pad}.")
        self.runtime = runtime
        check_runtime(runtime, device, half=self.half, compile=self.compile)
        if runtime != "torch" and compat:
            raise StackMFFError("compat (the published inference) runs on torch: drop runtime or compat.")
        self.model = load_model(name, weights, device, channels_last=self.channels_last)
        self.readout = readout or getattr(self.model, "stackmff_readout", None) or self.spec.readout
        if self.readout not in ("softargmax", "argmax"):
            raise StackMFFError(f"readout must be 'softargmax' or 'argmax', got {self.readout!r}.")
        if runtime == "onnxruntime":
            self._forward = ort_forward(self.model)
        else:
            self._forward = _compiled_model(self.model) if self.compile else self.model

    def _pad(self, x: torch.Tensor, pads: Pads) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """(N, h, w) -> (1, N, H, W) on the device, mirrored out by ``pads`` and then to a multiple
        of 32 on the bottom/right; also where the original pixels lie in it."""
        # The input needs no channels_last copy: the network sees it as (N, 1, H, W), where both
        # layouts are the same; the weights' layout carries channels_last through the network.
        xd = x[None].to(self.device, non_blocking=True)
        h, w = x.shape[-2:]
        left, right, top, bottom = pads
        if any(pads):
            mode = "reflect" if max(left, right) < w and max(top, bottom) < h else "replicate"
            xd = F.pad(xd, (left, right, top, bottom), mode=mode)
        xp, _, _ = pad_to_multiple(xd)
        return xp, (slice(top, top + h), slice(left, left + w))

    @torch.inference_mode()
    def collect_context(self, context: Any, x: torch.Tensor, pads: Pads, share: tuple[int, int, int, int], *,
                        first: int = 0, total: int | None = None) -> None:
        """Add one window to an image context (``model.new_image_context()``): ``x`` holds slices ``first``...
        of ``total``; ``share`` (y0, y1, x0, x1 in the window's pixels) is the part of the image it stands for."""
        xp, (ys, xs) = self._pad(x, pads)
        y0, y1, x0, x1 = share
        with torch.autocast(self.device.type, dtype=autocast_dtype(self.device), enabled=self.half):
            context.collect(self.model, xp, (ys.start + y0, ys.start + y1, xs.start + x0, xs.start + x1),
                            first=first, total=total)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, pads: Pads = (0, 0, 0, 0), context: Any = None) -> torch.Tensor:
        """(N, h, w) normalised focus images -> (N, h, w) logits (padding handled here). An event model
        gets (2N, h, w): the N slices, then their N event frames. ``context``: a frozen image context."""
        xp, (ys, xs) = self._pad(x, pads)
        args = (xp[:, :xp.shape[1] // 2], xp[:, xp.shape[1] // 2:]) if self.spec.uses_events else (xp,)
        with torch.autocast(self.device.type, dtype=autocast_dtype(self.device), enabled=self.half), \
                (self.model.use_context(context) if context is not None else contextlib.nullcontext()):
            if self.device.type == "cuda":
                tune = self._tune if self.autotune is None else self.autotune
                with torch.backends.cudnn.flags(enabled=True, benchmark=tune):
                    out = self._forward(*args)
            else:
                out = self._forward(*args)
        return out[0, :, ys, xs].float()

    def engine(self, stack: FocalStack, t: int = 0, *, channel: int | None = None,
               denoise: bool = True, exclude: Sequence[int] = ()) -> "ModelEngine":
        """The tile engine for one time point (normalisation range measured once, globally)."""
        return ModelEngine(self, stack, t, channel=channel, denoise=denoise, exclude=exclude)

    def maps(
        self,
        stack: FocalStack,
        t: int = 0,
        *,
        channel: int | None = None,
        denoise: bool = True,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> FocusMaps:
        """Whole-image maps of one time point, computed tile by tile."""
        engine = self.engine(stack, t, channel=channel, denoise=denoise)
        h, w = stack.yx_shape
        if engine.single_tile:
            return engine.maps((slice(0, h), slice(0, w)), progress, cancel)
        tile, overlap = plan_tile(stack, engine, self.device, self.tile)
        focus = torch.empty((h, w), dtype=torch.float32)
        conf = torch.empty((h, w), dtype=torch.float32)
        for out in iter_fused_tiles(stack, engine, t, tile, overlap, progress=progress, cancel=cancel):
            focus[out.write] = torch.from_numpy(out.focus)
            conf[out.write] = torch.from_numpy(out.confidence)
        index = torch.round(focus).long().clamp(0, stack.n_slices - 1)
        return FocusMaps(focus=focus, index=index, confidence=conf)

    def _official_maps(self, stack: FocalStack, t: int, channel: int | None) -> FocusMaps:
        """The published inference: luma/255, bilinear resize to a multiple of 32, batch min-max.

        Kept to compare against (and to reproduce the published outputs), not for real use. It
        is global (resize, min-max over the whole image), so it is never tiled.
        """
        from .v2 import official_postprocess

        x = torch.from_numpy(stack.focus_stack(t, channel))
        n, h, w = x.shape
        h32, w32 = max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)
        with torch.inference_mode():
            xi = x[None].to(self.device)
            if (h32, w32) != (h, w):
                xi = F.interpolate(xi, size=(h32, w32), mode="bilinear", align_corners=False)
            logits = self.model(xi)
            depth, _ = official_postprocess(logits)
            if (h32, w32) != (h, w):
                depth = F.interpolate(depth[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        depth = depth[0].cpu()
        focus = depth * (n - 1)
        index = torch.round(focus.clamp(0, n - 1)).long()
        prob = torch.softmax(logits[0].float(), 0).max(0).values.cpu()
        if prob.shape != (h, w):
            prob = F.interpolate(prob[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        conf = ((prob - 1 / n) / (1 - 1 / n)).clamp(0, 1)
        return FocusMaps(focus=focus, index=index, confidence=conf)


def tile_shares(windows: Sequence[tuple[slice, slice]]) -> list[tuple[int, int, int, int]]:
    """For each read window, the part of the image it stands for, (y0, y1, x0, x1) in the window's own
    pixels: overlapping windows are cut in the middle of their overlap, so the shares tile the image."""

    def cuts(spans: set[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        order = sorted(spans)
        out = {}
        for i, (a, b) in enumerate(order):
            lo = a if i == 0 else max(a, (a + order[i - 1][1]) // 2)
            hi = b if i == len(order) - 1 else min(b, (order[i + 1][0] + b) // 2)
            out[(a, b)] = (lo - a, hi - a)
        return out

    span = lambda s: (s.start, s.stop)  # noqa: E731
    ys = cuts({span(w[0]) for w in windows})
    xs = cuts({span(w[1]) for w in windows})
    return [(*ys[span(w[0])], *xs[span(w[1])]) for w in windows]


class ModelEngine:
    """A network on tiles of one time point: the tile engine :func:`core.fusion.dispatch.fuse` drives.

    With :meth:`schedule` called first, tile inputs are produced one ahead in a background
    thread: read from disk, reduced to focus images, normalised, and on CUDA pinned and copied
    to the GPU on a side stream, so the copy overlaps the previous tile's compute. The first
    tile of time point 0 is timed and scaled to the whole run (:attr:`estimate_s`).
    """

    def __init__(self, runner: ModelRunner, stack: FocalStack, t: int, *, channel: int | None,
                 denoise: bool, exclude: Sequence[int] = ()) -> None:
        self.runner, self.stack, self.t, self.channel, self.denoise = runner, stack, t, channel, denoise
        self.single_tile = runner.compat
        margin = getattr(runner.model, "tile_overlap", TILE_OVERLAP) if runner.overlap is None else runner.overlap
        self.overlap = 0 if runner.compat else margin
        self.min_overlap = 0 if runner.compat else min(16, margin)
        # Over the margin: an ordered model's focus maps, an order-free model's per-slice probabilities
        # (averaging its slice numbers would be wrong: a shuffled stack's 3 and 7 average to an unrelated 5).
        self.feather = margin if runner.feather and not runner.compat else 0
        if runner.spec.uses_events and stack.events is None:
            raise StackMFFError(f"{runner.name} reads event frames with the slices: pass events= (an array, a "
                                "folder of event frames, or a recording with slice_times=), or --events.")
        self.lo, self.hi = (0.0, 1.0) if runner.compat else stack_range(stack, t, channel)
        # The slices the network sees (``exclude``: flat and suspicious ones, core.checks); indices map back.
        keep = [z for z in range(stack.n_slices) if z not in set(exclude)] if not runner.compat else []
        self.keep = keep if 0 < len(keep) < stack.n_slices else None
        self.estimate_s: float | None = None
        self._plan: list[int] = []  # voxels the network computes for each scheduled tile
        self._windows: list[tuple[slice, slice]] = []  # the scheduled read windows
        self._context: Any = None  # the frozen image context (models with image-wide pools), once gathered
        self._context_due = False
        self._context_s = 0.0
        dev = runner.device
        self._copy_stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self._ahead: Iterator[tuple[tuple[slice, slice], torch.Tensor, Any, Pads]] | None = None

    def bytes_per_pixel(self) -> float:
        return getattr(self.runner.model, "bytes_per_voxel", BYTES_PER_VOXEL) * self.stack.n_slices

    # ---------------------------------------------------------------- input pipeline
    def _pads(self, window: tuple[slice, slice]) -> Pads:
        """Mirror margin on the sides of ``window`` that lie on the image border."""
        h, w = self.stack.yx_shape
        ys, xs = window
        b = self.runner.border_pad
        return (b if xs.start == 0 else 0, b if xs.stop >= w else 0, b if ys.start == 0 else 0,
                b if ys.stop >= h else 0)

    def _load(self, window: tuple[slice, slice], slices: Sequence[int] | None = None
              ) -> tuple[tuple[slice, slice], torch.Tensor, Any, Pads]:
        """The network's input for ``window``: the kept slices (or ``slices``), normalised, on the device."""
        zs = self.keep if slices is None else slices
        x = normalise_stack(focus_block(self.stack, self.t, self.channel, window, zs), self.lo, self.hi)
        if self.runner.spec.uses_events:  # events ride along as N more planes, padded with the slices
            from .event import event_scale

            ev = event_scale(torch.from_numpy(event_block(self.stack, self.t, window, zs)))
            x = torch.cat([x, ev])
        pads = self._pads(window)
        if self._copy_stream is None:
            return window, x, None, pads
        dev = self.runner.device
        if self.runner.half:
            x = x.half()  # autocast casts it for the first conv anyway: half the bytes over PCIe
        x = x.pin_memory()
        with torch.cuda.stream(self._copy_stream):
            xg = x.to(dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        return window, xg, done, pads

    def _ready(self, item: tuple[tuple[slice, slice], torch.Tensor, Any, Pads]) -> tuple[torch.Tensor, Pads]:
        _, x, done, pads = item
        if done is not None:
            stream = torch.cuda.current_stream(self.runner.device)
            stream.wait_event(done)
            x.record_stream(stream)  # the allocator must not reuse it while compute reads it
        return x, pads

    def schedule(self, windows: Sequence[tuple[slice, slice]]) -> None:
        """Start reading ``windows`` one ahead of :meth:`maps` (which must then follow that order)."""
        self._plan = [self._padded_voxels(w) for w in windows]
        self._windows = list(windows)
        self._context = None
        self._context_due = (self.runner.context and len(windows) > 1 and not self.single_tile
                             and hasattr(self.runner.model, "new_image_context"))
        self.runner._tune = len(windows) >= AUTOTUNE_MIN_TILES
        if self.runner.prefetch and not self.single_tile and len(windows) > 1:
            self.close()
            self._ahead = prefetch((self._load(w) for w in windows), depth=1)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()  # type: ignore[attr-defined]
            self._ahead = None

    def _input(self, window: tuple[slice, slice]) -> tuple[torch.Tensor, Pads]:
        if self._ahead is not None:
            item = next(self._ahead)
            if item[0] != window:
                raise RuntimeError("tiles requested out of the scheduled order")
        else:
            item = self._load(window)
        return self._ready(item)

    def _gather_context(self, progress: ProgressFn | None, cancel: threading.Event | None) -> None:
        """Image-wide pooled means (V3's context) from encoder passes, each window contributing its share of
        the image (:func:`tile_shares`).

        The windows are as large as the tile's memory allows the encoder (``model.context_pixels``), slices
        a group at a time: usually the whole image, where one pass gives the untiled means exactly. Else
        the image's tiles at that size, in ``model.context_passes`` passes (the pools are nested: each pass
        pools with the last one's means).
        """
        r = self.runner
        h, w = self.stack.yx_shape
        zs = self.keep or list(range(self.stack.n_slices))
        t0 = time.perf_counter()
        ctx = r.model.new_image_context()
        if len(zs) < 2:  # one informative slice: no network run (maps)
            self._context, self._context_due = ctx.freeze(), False
            return
        limit = r.model.context_pixels(max(self._plan) / len(zs) * self.bytes_per_pixel())
        if self._area((slice(0, h), slice(0, w))) <= limit:
            windows, passes = [(slice(0, h), slice(0, w))], 1
        else:
            side = max(self.overlap * 2 + 64, int(math.sqrt(limit)) // 32 * 32)
            windows = [tl.read for tl in iter_tiles(h, w, side, self.overlap)]
            passes = int(getattr(r.model, "context_passes", 1))
        shares = tile_shares(windows)
        steps = [(wi, z0) for wi, win in enumerate(windows)
                 for z0 in range(0, len(zs), max(1, limit // self._area(win)))]
        for k in range(passes):
            for j, (wi, z0) in enumerate(steps):
                if cancel is not None and cancel.is_set():
                    raise FusionCancelled()
                if progress is not None:
                    progress(0, 1, f"{r.name}: image context {k * len(steps) + j + 1}/{passes * len(steps)}")
                group = zs[z0:z0 + max(1, limit // self._area(windows[wi]))]
                _, x, done, pads = self._load(windows[wi], group)
                x, pads = self._ready((windows[wi], x, done, pads))
                r.collect_context(ctx, x, pads, shares[wi], first=z0, total=len(zs))
            ctx.freeze()
        self._context = ctx
        self._context_due = False
        self._context_s = time.perf_counter() - t0

    def _area(self, window: tuple[slice, slice]) -> int:
        """Pixels of ``window`` as the network sees them (border margin, multiple of 32)."""
        n = self.stack.n_slices if self.keep is None else len(self.keep)
        return self._padded_voxels(window) // n

    # ---------------------------------------------------------------- run-time estimate
    def _padded_voxels(self, window: tuple[slice, slice]) -> int:
        """Voxels the network computes for ``window``: border margin, then up to a multiple of 32."""
        left, right, top, bottom = self._pads(window)
        h = window[0].stop - window[0].start + top + bottom
        w = window[1].stop - window[1].start + left + right
        n = self.stack.n_slices if self.keep is None else len(self.keep)
        return n * (-(-h // 32) * 32) * (-(-w // 32) * 32)

    def _estimate(self, seconds: float, window: tuple[slice, slice]) -> EstimateMessage | None:
        """The first tile's time scaled to every tile of every time point (None: nothing to scale).

        Why the first tile and not a small probe: on a busy CPU a forward pass has seconds of fixed
        cost, and cost is not linear in the number of slices (1- and 2-slice probes predicted 53 s
        for a 25 s 60-slice tile), so only a real tile predicts the others. A single-tile run gets
        no estimate: the 4 GiB budget cap keeps a CPU tile near 10 M voxels at most (pcb_stack's
        1088-px tiles of 7 slices, 8 M: 21-29 s each on the 2-core test machine).
        """
        n_tiles, times = len(self._plan), self.stack.n_times
        if n_tiles * times < 2:
            return None
        self.estimate_s = (self._context_s + seconds * sum(self._plan) / self._padded_voxels(window)) * times
        per_time = f" x {times} time points" if times > 1 else ""
        return EstimateMessage(f"{self.runner.name}: about {format_duration(self.estimate_s)} for {n_tiles} "
                               f"tile{'s' if n_tiles > 1 else ''}{per_time}", self.estimate_s)

    # ---------------------------------------------------------------- compute
    def maps(self, window: tuple[slice, slice], progress: ProgressFn | None,
             cancel: threading.Event | None) -> FocusMaps:
        if cancel is not None and cancel.is_set():
            raise FusionCancelled()
        r = self.runner
        if self.single_tile:
            out = r._official_maps(self.stack, self.t, self.channel)
            if progress is not None:
                progress(1, 1, f"{r.name}: whole image")
            return out
        if self._context_due:
            self._gather_context(progress, cancel)
        t0 = time.perf_counter()
        x, pads = self._input(window)
        if x.shape[0] == (2 if r.spec.uses_events else 1):  # one informative slice: the answer everywhere
            logits = torch.zeros((1, *x.shape[-2:]), device=x.device)
        else:
            logits = r.logits(x, pads, self._context)
        if r.spec.order_free:
            maps = order_free_maps(logits, denoise=self.denoise)
            focus = None
        else:
            focus, conf = readout(logits, r.readout)
        estimate = None
        if self._plan and self.t == 0 and self.estimate_s is None:
            if r.device.type == "cuda":
                torch.cuda.synchronize(r.device)  # the GPU works asynchronously: wait to time it
            estimate = self._estimate(time.perf_counter() - t0, window)
        if progress is not None:
            progress(1, 1, estimate or f"{r.name}: tile")
        if focus is None:
            return renumber(maps, self.keep)
        # Where the network is unsure (flat areas), take the focus of confident neighbours, as the
        # classical path does; then remove isolated outliers.
        return renumber(finish_maps(focus, conf, logits.shape[0], window=MODEL_FILL_WINDOW,
                                    fill_threshold=MODEL_FILL_THRESHOLD, denoise=self.denoise), self.keep)


