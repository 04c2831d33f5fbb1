"""Running a focus network over a stack: normalise, tile, pad, forward, read out the focus.

Everything model-agnostic lives here once (the networks only map slices to logits): how the
input is scaled, how big images are cut into overlapping tiles, how the probability volume
becomes a sub-slice focus map and a confidence map.

GPU path: fp16 autocast (bf16 where fp16 is missing), channels_last weights, optional
torch.compile, and the next tile read, pinned and copied to the GPU on a side CUDA stream while
the current tile computes (:class:`ModelEngine`). On the CPU the read-ahead still overlaps disk
reads with compute; the rest is off by default there.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StackMFFError
from ..fusion import FusionCancelled, _Maps, finish_maps, iter_fused_tiles, plan_tile
from ..prefetch import prefetch
from ..stack import FocalStack
from ..tiling import auto_tile_side, memory_budget
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
TILE_OVERLAP = 32

ProgressFn = Callable[[int, int, str], None]


def normalise_stack(x: np.ndarray | torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Scale by the whole stack's robust range, so 12-bit data in a 16-bit file looks like 8-bit data
    did in training, and every slice keeps its brightness relative to the others."""
    x = torch.as_tensor(x)
    return ((x - lo) / max(hi - lo, 1e-6)).clamp_(0, 1)


def focus_block(stack: FocalStack, t: int, channel: int | None, window: tuple[slice, slice]) -> np.ndarray:
    """(N, h, w) float32 focus images of one window, read slice by slice with full (t, z, y, x) keys.

    Unlike ``FocalStack.focus_stack`` this never indexes ``data[t]`` alone, which would load a whole
    time point of a zarr-backed stack.
    """
    first = stack.focus_window(0, t, channel, window)
    out = np.empty((stack.n_slices, *first.shape), dtype=np.float32)
    out[0] = first
    for z in range(1, stack.n_slices):
        out[z] = stack.focus_window(z, t, channel, window)
    return out


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
        NHWC weights and activations (faster convolutions on tensor cores). Default: with ``half``
        on CUDA.
    compile
        ``torch.compile`` the network (tiles are one fixed size, so it compiles once per run
        shape). Off by default: it pays only for long runs on a GPU.
    prefetch
        Read (and on CUDA, upload) the next tile while the current one computes.
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
    ) -> None:
        self.spec = get_spec(name)
        self.name = name
        self.device = device
        self.model = load_model(name, weights, device)
        self.tile = tile
        self.readout = readout or getattr(self.model, "stackmff_readout", None) or self.spec.readout
        if self.readout not in ("softargmax", "argmax"):
            raise StackMFFError(f"readout must be 'softargmax' or 'argmax', got {self.readout!r}.")
        self.compat = compat
        cuda = device.type == "cuda"
        self.half = cuda if half is None else bool(half)
        self.channels_last = (cuda and self.half) if channels_last is None else bool(channels_last)
        self.compile = bool(compile)
        self.prefetch = bool(prefetch)
        if self.channels_last:
            # Same values, other layout; the cached model is shared, which is harmless.
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = _compiled_model(self.model) if self.compile else self.model

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, h, w) normalised focus images -> (N, h, w) logits (padding handled here)."""
        # The input needs no channels_last copy: the network sees it as (N, 1, H, W), where both
        # layouts are the same; the weights' layout carries channels_last through the network.
        xp, h, w = pad_to_multiple(x[None].to(self.device, non_blocking=True))
        with torch.autocast(self.device.type, dtype=autocast_dtype(self.device), enabled=self.half):
            if self.device.type == "cuda":
                with torch.backends.cudnn.flags(enabled=True, benchmark=True):
                    out = self._forward(xp)
            else:
                out = self._forward(xp)
        return out[0, :, :h, :w].float()

    def engine(self, stack: FocalStack, t: int = 0, *, channel: int | None = None,
               denoise: bool = True) -> "ModelEngine":
        """The tile engine for one time point (normalisation range measured once, globally)."""
        return ModelEngine(self, stack, t, channel=channel, denoise=denoise)

    def maps(
        self,
        stack: FocalStack,
        t: int = 0,
        *,
        channel: int | None = None,
        denoise: bool = True,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> _Maps:
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
        return _Maps(focus=focus, index=index, confidence=conf)

    def _official_maps(self, stack: FocalStack, t: int, channel: int | None) -> _Maps:
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
        return _Maps(focus=focus, index=index, confidence=conf)


class ModelEngine:
    """A network on tiles of one time point: the tile engine :func:`core.fusion.fuse` drives.

    With :meth:`schedule` called first, tile inputs are produced one ahead in a background
    thread: read from disk, reduced to focus images, normalised, and on CUDA pinned and copied
    to the GPU on a side stream, so the copy overlaps the previous tile's compute.
    """

    def __init__(self, runner: ModelRunner, stack: FocalStack, t: int, *, channel: int | None,
                 denoise: bool) -> None:
        self.runner, self.stack, self.t, self.channel, self.denoise = runner, stack, t, channel, denoise
        self.single_tile = runner.compat
        self.overlap = 0 if runner.compat else TILE_OVERLAP
        self.min_overlap = 0 if runner.compat else 16
        self.lo, self.hi = (0.0, 1.0) if runner.compat else stack_range(stack, t, channel)
        dev = runner.device
        self._copy_stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self._ahead: Iterator[tuple[tuple[slice, slice], torch.Tensor, Any]] | None = None

    def bytes_per_pixel(self) -> float:
        return BYTES_PER_VOXEL * self.stack.n_slices

    # ---------------------------------------------------------------- input pipeline
    def _load(self, window: tuple[slice, slice]) -> tuple[tuple[slice, slice], torch.Tensor, Any]:
        x = normalise_stack(focus_block(self.stack, self.t, self.channel, window), self.lo, self.hi)
        if self._copy_stream is None:
            return window, x, None
        dev = self.runner.device
        if self.runner.half:
            x = x.half()  # autocast casts it for the first conv anyway: half the bytes over PCIe
        x = x.pin_memory()
        with torch.cuda.stream(self._copy_stream):
            xg = x.to(dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        return window, xg, done

    def schedule(self, windows: Sequence[tuple[slice, slice]]) -> None:
        """Start reading ``windows`` one ahead of :meth:`maps` (which must then follow that order)."""
        if self.runner.prefetch and not self.single_tile and len(windows) > 1:
            self.close()
            self._ahead = prefetch((self._load(w) for w in windows), depth=1)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()  # type: ignore[attr-defined]
            self._ahead = None

    def _input(self, window: tuple[slice, slice]) -> torch.Tensor:
        if self._ahead is not None:
            got, x, done = next(self._ahead)
            if got != window:
                raise RuntimeError("tiles requested out of the scheduled order")
        else:
            _, x, done = self._load(window)
        if done is not None:
            stream = torch.cuda.current_stream(self.runner.device)
            stream.wait_event(done)
            x.record_stream(stream)  # the allocator must not reuse it while compute reads it
        return x

    # ---------------------------------------------------------------- compute
    def maps(self, window: tuple[slice, slice], progress: ProgressFn | None,
             cancel: threading.Event | None) -> _Maps:
        if cancel is not None and cancel.is_set():
            raise FusionCancelled()
        r = self.runner
        if self.single_tile:
            out = r._official_maps(self.stack, self.t, self.channel)
            if progress is not None:
                progress(1, 1, f"{r.name}: whole image")
            return out
        x = self._input(window)
        focus, conf = readout(r.logits(x), r.readout)
        if progress is not None:
            progress(1, 1, f"{r.name}: tile")
        # Where the network is unsure (flat areas), take the focus of confident neighbours, as the
        # classical path does; then remove isolated outliers.
        return finish_maps(focus, conf, self.stack.n_slices, window=MODEL_FILL_WINDOW,
                           fill_threshold=MODEL_FILL_THRESHOLD, denoise=self.denoise)
