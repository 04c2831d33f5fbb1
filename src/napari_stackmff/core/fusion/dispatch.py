"""fuse(): every door (CLI, widgets, scripts) into the fusion core goes through here.

It checks the settings, loads the stack, builds a tile engine (classical here, networks from
``core/models/inference.py``) and assembles the tiles of :mod:`core.pipeline` into a
:class:`FusionResult`; :func:`napari_stackmff.core.writers.fuse_to_disk` streams them to OME-Zarr
or BigTIFF instead. The pipeline's public names are re-exported here for scripts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import StackMFFError
from ..io.preview import stack_display_range
from ..io.result import FusionResult
from ..io.stack import FocalStack, to_focus_image
from ..tiles import classical
from ..tiles.blend import SoftBlend, resolve_blend, soft_blend_for
from ..tiles.decision import resolve_decision
from ..tiles.pipeline import (
    ProgressFn,
    TileEngine,
    check_cancel,
    height_from_focus,
    iter_fused_tiles,
    plan_tile,
    sub_progress,
)
from ..tiles.tiling import count_tiles
from .checks import SAMPLE_PIXELS, SliceSurvey, survey_slices
from .classical_engine import ClassicalEngine


# ------------------------------------------------------------------------------------ fuse
def available_methods() -> list[str]:
    """Names accepted by ``fuse(method=...)``: "auto", the classical measures and the models."""
    from ..models import registry

    return ["auto", *classical.CLASSICAL_METHODS, *registry.model_names()]


def resolve_method(method: str) -> str:
    """"auto" -> the best method we ship (a trained model when its weights exist)."""
    from ..models import registry

    if method == "auto":
        return registry.best_shipped_model() or "wavelet"
    known = available_methods()
    if method not in known:
        raise StackMFFError(f"unknown method {method!r}; choose one of: {', '.join(known)}.")
    return method


#: Settings of fuse()/fuse_to_disk() that every method takes (the rest are per method, below).
COMMON_SETTINGS = ("channel", "z_step", "denoise", "tile", "memory_budget", "lazy", "include", "axes", "align",
                   "blend", "events", "slice_times", "progress", "cancel")


#: Device types whose classical fusion holds each tile's raw slices on the device (core/classical_device.py).
#: Not the CPU: there the streaming engine was faster (2.8-3.0 vs 3.7 s, benchmarks/RESULTS.md, issue 15).
DEVICE_RESIDENT = ("cuda",)


def model_options() -> tuple[str, ...]:
    """Extra keywords a network takes (``fuse(..., half=True)``): the runner's own settings."""
    import inspect

    from ..models.inference import ModelRunner

    skip = {"self", "name", "device", "weights", "tile"}  # given by fuse itself
    return tuple(p for p in inspect.signature(ModelRunner.__init__).parameters if p not in skip)


def check_options(method: str, options: dict[str, Any], *, window: int | None = None,
                  weights: str | None = None) -> None:
    """Refuse a setting the method would ignore: a typo in a script must not silently change nothing."""
    classical_method = method in classical.CLASSICAL_METHODS
    own = ("window", "decision") if classical_method else ("weights", *model_options())
    unused = [k for k in options if k not in own]
    if window is not None and not classical_method:
        unused.insert(0, "window")
    if weights is not None and classical_method:
        unused.insert(0, "weights")
    if unused:
        kind = "a classical method" if classical_method else "a model method"
        raise StackMFFError(f"method {method!r} ({kind}) does not take {', '.join(repr(k) for k in unused)}; "
                            f"it takes: {', '.join((*own, *COMMON_SETTINGS))}.")


@dataclass
class FusionPlan:
    """What a fusion run needs after its arguments are checked: shared by fuse() and fuse_to_disk()."""

    stack: FocalStack
    method: str
    device: torch.device
    make_engine: Callable[[int], TileEngine]
    alignment: list[dict] | None = None  # per time point, when align= was asked (core.align)
    blend: SoftBlend | None = None  # the soft blend's settings; None: hard selection (core.blend)
    fade: bool = True  # hard selection: cross-fade the halo decision's changes of slice in flat areas ("exact": off)
    excluded: list[dict[int, str]] | None = None  # per time point: slices left out and why (core.checks)
    decision: str | None = None  # the classical decision taken ("legacy", "halo", "glow"; decision.py); None: networks
    runtime: str | None = None  # networks: "torch" or "onnxruntime" (models.onnx_runtime); None: classical


def plan_blend(plan: FusionPlan) -> str:
    """The blend a plan fuses with, by name (resolve_blend's)."""
    return plan.blend.name if plan.blend is not None else "hard" if plan.fade else "exact"


def prepare(stack: Any, method: str = "auto", device: str | torch.device = "auto", *, channel: int | None = None,
            window: int | None = None, weights: str | None = None, z_step: float | None = None,
            denoise: bool = True, lazy: bool | str | None = None, include: Any = None, axes: str | None = None,
            align: bool | str | None = None, blend: str | None = None, events: Any = None,
            slice_times: Any = None, **options: Any) -> FusionPlan:
    """Load the stack, check the settings and build the per-time-point tile engine."""
    from ..io.read import load_stack

    method = resolve_method(method)
    blend = resolve_blend(blend)
    check_options(method, options, window=window, weights=weights)
    stack = load_stack(stack, z_step=z_step, lazy=lazy, include=include, axes=axes)
    if events is not None:
        import dataclasses

        from ..events.frames import load_events
        from ..models import registry

        if method not in registry.MODELS or not registry.get_spec(method).uses_events:
            users = [m for m in registry.model_names() if registry.get_spec(m).uses_events]
            raise StackMFFError(f"method {method!r} does not use event frames; "
                                f"{'event models: ' + ', '.join(users) if users else 'no event model is installed yet'}.")
        frames = load_events(events, stack.n_slices, stack.yx_shape, slice_times, stack.n_times)
        stack = dataclasses.replace(stack, events=frames)
    elif slice_times is not None:
        raise StackMFFError("slice_times bins a raw event recording: give it together with events=.")
    alignment = None
    if align:
        from .align import align_stack

        stack, alignment = align_stack(stack, align, source=stack.source or "the stack")
    dev = resolve_device(device)
    if channel is not None and not -stack.n_channels <= channel < stack.n_channels:
        raise StackMFFError(f"channel {channel} does not exist: the stack has {stack.n_channels} channel(s).")
    win = classical.DEFAULT_WINDOW if window is None else int(window)
    surveys: list[SliceSurvey] = []  # filled below, before any engine is made
    if method in classical.CLASSICAL_METHODS:
        h, w = stack.yx_shape
        if win < 1 or win % 2 == 0:
            raise StackMFFError(f"window must be a positive odd number of pixels, got {win}.")
        if win > min(h, w):  # a box wider than the image measures nothing local (and its padding is huge)
            raise StackMFFError(f"window {win} is larger than the {w}x{h} image; use at most "
                                f"{min(h, w) - (1 - min(h, w) % 2)} pixels (default {classical.DEFAULT_WINDOW}).")
        from .device_engine import DeviceClassicalEngine, device_dtype_supported

        engine_cls = DeviceClassicalEngine if dev.type in DEVICE_RESIDENT and device_dtype_supported(stack.dtype) \
            else ClassicalEngine

        sample = _middle_sample(stack)
        halo = resolve_decision(options.get("decision"), sample,
                                to_focus_image(sample, rgb=stack.rgb, channel=channel, dtype=stack.dtype))

        def make_engine(t: int) -> TileEngine:
            return engine_cls(stack, t, method, dev, channel=channel, window=win, denoise=denoise,
                              exclude=list(surveys[t].suspicious), halo=halo)
    else:
        from ..models.inference import ModelRunner

        runner = ModelRunner(method, dev, weights=weights, **options)

        def make_engine(t: int) -> TileEngine:
            # Networks also skip flat slices: a blank slice inside a sweep broke V2's slice-to-slice
            # recurrence (two blank slices took 17% of a synthetic stack's pixels).
            return runner.engine(stack, t, channel=channel, denoise=denoise,
                                 exclude=sorted({*surveys[t].suspicious, *surveys[t].flat}))
    # One look at every slice, after the settings and weights (their errors come first).
    surveys.extend(survey_slices(stack, t) for t in range(stack.n_times))
    for t, rec in enumerate(alignment or []):  # slices that do not register with the rest (fusion.align)
        surveys[t].suspicious.update({int(z): why for z, why in (rec.get("left_out") or {}).items()})
    refuse_blank(stack, surveys)
    excluded = exclusions(stack, surveys)
    soft = soft_blend_for(stack, channel, two_scale=blend == "two-scale") if blend in ("soft", "two-scale") else None
    return FusionPlan(stack=stack, method=method, device=dev, make_engine=make_engine, alignment=alignment,
                      blend=soft, fade=blend == "hard", excluded=excluded,
                      decision=halo.name if method in classical.CLASSICAL_METHODS else None,
                      runtime=None if method in classical.CLASSICAL_METHODS else runner.runtime)


def _middle_sample(stack: FocalStack, pixels: int = SAMPLE_PIXELS) -> np.ndarray:
    """The middle slice of the first time point, strided like the slice survey's reads (one cheap read,
    never more than a tile's worth from a lazy stack)."""
    h, w = stack.yx_shape
    step = max(1, int(np.ceil(np.sqrt(h * w / pixels))))
    return np.asarray(stack.read_sample(stack.n_slices // 2, 0, (slice(0, None, step), slice(0, None, step))))


def exclusions(stack: FocalStack, surveys: list[SliceSurvey]) -> list[dict[int, str]] | None:
    """Per time point, the slices left out of the fusion and why (over-exposed, another scene;
    :mod:`core.checks`), with a warning naming them; None when there are none."""
    import warnings

    found = [s.suspicious for s in surveys]
    if not any(found):
        return None
    for t, bad in enumerate(found):
        if bad:
            when = f" (t={t})" if stack.n_times > 1 else ""
            by_why: dict[str, list[int]] = {}
            for z, why in sorted(bad.items()):
                by_why.setdefault(why, []).append(z)
            what = "; ".join(f"slice{'s' if len(zs) > 1 else ''} {', '.join(map(str, zs))}: {why}"
                             for why, zs in by_why.items())
            warnings.warn(f"{stack.source or 'the stack'}{when}: left out of the fusion: {what}.", stacklevel=3)
    return found


def refuse_blank(stack: FocalStack, surveys: list[SliceSurvey]) -> None:
    """Refuse a stack in which every slice is one flat value (lens cap on, an empty file): there is no
    focus to find, and any result would be that value presented as a fusion. Some blank slices are fine."""
    if all(len(s.flat) == stack.n_slices for s in surveys):
        raise StackMFFError(f"{stack.source or 'the stack'}: every slice is blank (one flat value); there is "
                            "nothing in focus to fuse. Check the files (lens cap, exposure, an empty export).")


#: Share of the memory available now that fuse()'s result arrays may take: the rest is for the tiles
#: in flight, the height map and the caller's own copies.
RESULT_MEMORY_SHARE = 0.8


def result_bytes(stack: Any) -> int:
    """Bytes of fuse()'s result arrays: the all-in-focus image plus the float32 focus, confidence
    and height maps, for every time point."""
    h, w = stack.yx_shape
    per_pixel = np.dtype(stack.dtype).itemsize * stack.n_channels + 3 * 4
    return int(stack.n_times * h * w * per_pixel)


def check_result_fits(stack: Any) -> None:
    """Refuse up front, with the way out, a fusion whose results cannot fit in memory (a huge lazy or
    Dask input read tile by tile still returns whole images), instead of a MemoryError part way."""
    import psutil

    need, free = result_bytes(stack), psutil.virtual_memory().available
    if need > RESULT_MEMORY_SHARE * free:
        gib = 1024 ** 3
        raise StackMFFError(f"{stack.source or 'the stack'}: its results need {need / gib:.1f} GiB in memory, more "
                            f"than this machine has free ({free / gib:.1f} GiB); write them to disk tile by tile "
                            "instead: fuse_to_disk(...) or 'stackmff fuse --stream zarr|tiff'.")


def fuse(
    stack: Any,
    method: str = "auto",
    device: str | torch.device = "auto",
    *,
    channel: int | None = None,
    window: int | None = None,
    weights: str | None = None,
    z_step: float | None = None,
    denoise: bool = True,
    tile: int | None = None,
    memory_budget: int | None = None,
    lazy: bool | str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> FusionResult:
    """Fuse a focal stack into one all-in-focus image and a focus map.

    Parameters
    ----------
    stack
        (Z, Y, X) or (Z, Y, X, C) array, a :class:`FocalStack`, a folder of slices, a TIFF, or a
        list of image files. Lazy array-likes (memmap, zarr, dask, napari lazy layers) are read
        one tile window at a time.
    method
        ``"auto"`` (best shipped model, else a classical measure), a classical measure
        (``"variance"``, ``"laplacian"``, ``"tenengrad"``, ``"wavelet"``) or a model name
        (see :func:`available_methods`).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda:1"``...
    channel
        Decide focus on this channel only (e.g. the nuclei channel); default: luma of RGB, or the
        mean of all channels.
    window
        Focus-measure window in pixels (classical methods); default 9.
    weights
        A checkpoint file for a model method (ours or the official release).
    z_step
        Slice spacing, when the files do not carry it, to get a height map in physical units.
    denoise
        Fill textureless areas from confident neighbours and median-filter the focus map.
    tile
        Tile side in pixels (all methods); default: the largest that fits ``memory_budget``.
        Classical results do not depend on it; model results agree to the tolerance in the docs.
    memory_budget
        Bytes of working memory for one tile; default 40% of free RAM (capped at 4 GiB), or of
        free GPU memory on a GPU.
    lazy
        For a TIFF path: read it lazily (memory-mapped or through zarr) instead of loading it;
        None (default) decides from the file (see :func:`napari_stackmff.core.io.load_stack`).
    progress
        ``progress(done, total, message)`` called as work proceeds.
    cancel
        A ``threading.Event``; when set, fuse stops soon with :class:`FusionCancelled`.
    include
        For a slice folder: which files are the slices (a glob or a list of names) instead of the
        folder's naming pattern.
    align
        Register the slices before fusing (drift, shake, focus breathing): ``"translation"``,
        ``"similarity"`` (scale, rotation, shift; ``True``) or ``"homography"``, each slice onto the
        middle one (:mod:`napari_stackmff.core.align`); the transforms are in ``result.alignment``.
        A stack that cannot be registered is fused unaligned with a warning. ``"auto"``: a quick probe
        (a few slices at 256 px, a fraction of the fusion's time) measures how far the slices move, and
        the stack is aligned (similarity) only when a slice corner moves more than 1 px; otherwise the
        result is exactly the unaligned one. ``result.alignment`` records what the probe found either
        way. The command line and the napari widget use ``"auto"`` by default. Here the default is
        None (no alignment, no probe): a script gets results on its input's pixel grid, of its shape,
        every pixel copied from an input slice (with ``blend="exact"``), whatever the data; an aligned
        result is resampled and cropped, which a pipeline must ask for. Camera focus brackets (macro
        rails, hand-focused microscopes) usually breathe: use ``align="auto"`` for them.
    blend
        ``"hard"`` (default): every output pixel is copied from the slice the focus map names, except
        that where the halo decision (bright fields) changes slice in the open field, flat pixels within
        ~20 px of the change are cross-faded (otherwise the field's shade in the two slices meets in a
        seam). ``"exact"``: every pixel copied from its slice, those too (pixel-faithful, for
        measurements). ``"soft"``: slices are mixed with edge-following weights (a guided filter of
        the selection, :mod:`napari_stackmff.core.blend`), which removes seams and most halos at depth
        edges; **not pixel-faithful** (values are mixes of slices). ``"two-scale"``: the soft blend's
        detail over base layers (31 px means) mixed by much wider weights, as guided-filter fusion
        (GFF) does, on this decision: the cleanest image (no rings, noise and JPEG grain averaged where
        the depth is locally even), at the cost of being further from any one slice (values can pass the
        slices' range at a pixel). The focus maps are the same for all four.
    axes
        For an array whose shape fits several readings, which one: ``"TZYX"`` (time series),
        ``"CZYX"`` / ``"ZYXC"`` (channels), ``"TCZYX"``, ``"TZYXC"``. Unneeded otherwise.
    options
        Model options: ``readout``, ``compat`` (the published inference), ``half`` (fp16/bf16
        autocast), ``channels_last``, ``compile`` (torch.compile), ``prefetch``, ``feather``
        (cross-fade neighbouring tiles, default on), ``autotune`` (cuDNN kernel search per shape; default
        from the tile count), ``border_pad`` (mirror margin at the image
        border, default 0), ``runtime`` (``"torch"``, default, or ``"onnxruntime"``: the CPU runtime of the
        ``onnx`` extra, the same slice choices; :mod:`napari_stackmff.core.models.onnx_runtime`). A setting the
        method does not use (``window`` for a model, ``weights`` or any option for a classical
        method, a misspelt name) is refused with a :class:`StackMFFError` naming it.
    """
    t0 = time.perf_counter()
    plan = prepare(stack, method, device, channel=channel, window=window, weights=weights, z_step=z_step,
                   denoise=denoise, lazy=lazy, **options)
    stack = plan.stack
    timings: dict[str, float] = {"load_s": time.perf_counter() - t0, "focus_s": 0.0, "gather_s": 0.0}
    n, T = stack.n_slices, stack.n_times
    h, w = stack.yx_shape
    check_result_fits(stack)
    aif = np.empty((T, h, w) + ((stack.n_channels,) if stack.has_channels else ()), dtype=stack.dtype)
    focus = np.empty((T, h, w), dtype=np.float32)
    conf = np.empty((T, h, w), dtype=np.float32)
    n_tiles = 1
    for t in range(T):
        check_cancel(cancel)
        sub = sub_progress(progress, t, T, f" (t={t})" if T > 1 else "")
        engine = plan.make_engine(t)
        side, overlap = plan_tile(stack, engine, plan.device, tile, memory_budget, blend=plan.blend)
        n_tiles = count_tiles(h, w, side, overlap)
        for out in iter_fused_tiles(stack, engine, t, side, overlap, progress=sub, cancel=cancel,
                                    timings=timings, blend=plan.blend, fade=plan.fade):
            aif[(t, *out.write)] = out.all_in_focus
            focus[(t, *out.write)] = out.focus
            conf[(t, *out.write)] = out.confidence
    if not stack.has_time:
        aif, focus, conf = aif[0], focus[0], conf[0]
    timings.update(total_s=time.perf_counter() - t0, tiles=float(n_tiles))
    return FusionResult(
        all_in_focus=aif,
        focus_map=focus,
        confidence=conf,
        method=plan.method,
        n_slices=n,
        height_map=height_from_focus(stack, focus),
        z_step=stack.z_step,
        unit=stack.unit,
        pixel_size=stack.pixel_size,
        timings=timings,
        z_positions=stack.z_positions,
        display_range=stack_display_range(stack),
        alignment=plan.alignment,
        blend=plan_blend(plan),
        excluded=[{str(z): why for z, why in d.items()} for d in plan.excluded] if plan.excluded else None,
        decision=plan.decision,
        runtime=plan.runtime,
    )
