"""fuse(): every door (CLI, widgets, scripts) into the fusion core goes through here.

Data flows one way: stack -> focus images -> per-slice sharpness (classical) or logits (model)
-> index map (+ sub-slice refinement, confidence) -> gather the original pixels. Gathering means
every output pixel is a value that exists in some slice: 16-bit stays 16-bit, RGB stays RGB.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import classical
from .devices import resolve_device
from .errors import StackMFFError
from .stack import FocalStack

ProgressFn = Callable[[int, int, str], None]


class FusionCancelled(Exception):
    """Raised inside fuse() when the caller's cancel event is set."""


@dataclass
class FusionResult:
    """What fusion gives back.

    Attributes
    ----------
    all_in_focus
        (T?, Y, X, C?) with the input's dtype and channels; each pixel copied from one slice.
    focus_map
        float32 (T?, Y, X): the in-focus slice index, sub-slice where the method resolves it.
    confidence
        float32 (T?, Y, X) in [0, 1]: how clearly one slice wins at that pixel.
    height_map
        float32 focus position in physical units (``unit``) when the z positions are known, else None.
    """

    all_in_focus: np.ndarray
    focus_map: np.ndarray
    confidence: np.ndarray
    method: str
    n_slices: int
    height_map: np.ndarray | None = None
    z_step: float | None = None
    unit: str | None = None
    pixel_size: tuple[float, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_times(self) -> int:
        return self.focus_map.shape[0] if self.focus_map.ndim == 3 else 1

    @property
    def index(self) -> np.ndarray:
        """Integer slice index each output pixel was taken from."""
        return np.clip(np.rint(self.focus_map), 0, self.n_slices - 1).astype(np.intp)


@dataclass
class _Maps:
    """Per time point: focus map (sub-slice), integer index and confidence, all (H, W)."""

    focus: torch.Tensor
    index: torch.Tensor
    confidence: torch.Tensor


# ----------------------------------------------------------------------------------- helpers
def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise FusionCancelled()


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img))
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        t = t.to(device)
    return t


def median3(x: torch.Tensor) -> torch.Tensor:
    """3×3 median of an (H, W) map: removes isolated wrong picks without moving edges."""
    h, w = x.shape
    p = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")
    return p.unfold(2, 3, 1).unfold(3, 3, 1).reshape(h, w, 9).median(dim=-1).values


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (H, W) map with replicate borders."""
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[None, None], (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1))[0, 0]


def fill_low_confidence(focus: torch.Tensor, conf: torch.Tensor, threshold: float, sigma: float) -> torch.Tensor:
    """Where no slice clearly wins (flat, textureless areas) take the focus of confident neighbours.

    Normalised convolution: blur(conf·focus)/blur(conf), blended in as confidence drops below
    ``threshold``. Textured pixels keep their own decision; flat ones (which look the same in
    every slice anyway) stop producing salt-and-pepper in the focus map.
    """
    if threshold <= 0:
        return focus
    w = conf * conf
    num = gaussian_blur(w * focus, sigma)
    den = gaussian_blur(w, sigma)
    filled = torch.where(den > 1e-12, num / den.clamp_min(1e-12), focus)
    alpha = (conf / threshold).clamp(0, 1)
    return alpha * focus + (1 - alpha) * filled


# ------------------------------------------------------------------------- classical path
def classical_maps(
    focus_images: Callable[[int], np.ndarray],
    n: int,
    method: str,
    device: torch.device,
    *,
    window: int = classical.DEFAULT_WINDOW,
    fill_threshold: float = 0.25,
    denoise: bool = True,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> _Maps:
    """Streaming argmax over slices: memory is O(H·W), whatever the number of slices.

    Keeps the best score, its index and the scores of its two neighbours, so the sub-slice
    peak (a parabola through three points) comes without holding the (N, H, W) volume.
    """
    best = left = right = prev = total = None
    idx: torch.Tensor | None = None
    for z in range(n):
        _check_cancel(cancel)
        x = _to_tensor(focus_images(z), device)
        with torch.no_grad():
            f = classical.focus_measure(x[None, None], method, window)[0, 0]
        if best is None:
            best, idx = f.clone(), torch.zeros(f.shape, dtype=torch.long, device=device)
            left = torch.full_like(f, float("nan"))
            right = torch.full_like(f, float("nan"))
            total = f.clone()
        else:
            right = torch.where(idx == z - 1, f, right)
            new = f > best
            left = torch.where(new, prev, left)
            right = torch.where(new, torch.full_like(f, float("nan")), right)
            idx = torch.where(new, torch.full_like(idx, z), idx)
            best = torch.maximum(best, f)
            total += f
        prev = f
        if progress is not None:
            progress(z + 1, n, "measuring focus")
    assert best is not None and idx is not None
    # Sub-slice peak: vertex of the parabola through (z-1, z, z+1); none at the stack's ends.
    denom = left - 2 * best + right
    offset = 0.5 * (left - right) / torch.where(denom.abs() > 1e-20, denom, torch.ones_like(denom))
    offset = torch.nan_to_num(offset, nan=0.0).clamp(-0.5, 0.5)
    offset = torch.where(denom < 0, offset, torch.zeros_like(offset))
    focus = idx.to(best.dtype) + offset
    mean = total / n
    conf = ((1 - mean / best.clamp_min(1e-20)) * (n / (n - 1))).clamp(0, 1)
    conf = torch.where(best > 1e-12, conf, torch.zeros_like(conf))
    return finish_maps(focus, conf, n, window=window, fill_threshold=fill_threshold, denoise=denoise)


def finish_maps(
    focus: torch.Tensor, conf: torch.Tensor, n: int, *, window: int, fill_threshold: float, denoise: bool
) -> _Maps:
    """Shared clean-up of a raw focus map: low-confidence fill, 3×3 median, integer index."""
    if denoise:
        focus = fill_low_confidence(focus, conf, fill_threshold, sigma=2.0 * window)
        focus = median3(focus)
    focus = focus.clamp(0, n - 1)
    index = torch.round(focus).long().clamp(0, n - 1)
    return _Maps(focus=focus, index=index, confidence=conf)


# ---------------------------------------------------------------------------------- gather
def gather(stack: FocalStack, index: np.ndarray, t: int = 0) -> np.ndarray:
    """All-in-focus image: each pixel copied from the slice ``index`` names (dtype kept)."""
    data = stack.data[t] if stack.has_time else stack.data
    if isinstance(data, np.ndarray):
        idx = index[None, ..., None] if stack.has_channels else index[None]
        return np.take_along_axis(data, idx, axis=0)[0]
    # Lazy data (memmap/zarr/dask): one pass over the slices, O(H·W) memory.
    out = np.empty(data.shape[1:], dtype=stack.dtype)
    for z in range(stack.n_slices):
        mask = index == z
        if mask.any():
            out[mask] = np.asarray(data[z])[mask]
    return out


def height_from_focus(stack: FocalStack, focus: np.ndarray) -> np.ndarray | None:
    """Focus map (slice units) -> physical z, interpolating between (possibly uneven) positions."""
    if stack.z_positions is None:
        return None
    z = stack.z_positions
    return np.interp(focus, np.arange(len(z)), z).astype(np.float32)


# ------------------------------------------------------------------------------------ fuse
def available_methods() -> list[str]:
    """Names accepted by ``fuse(method=...)``: "auto", the classical measures and the models."""
    from .models import registry

    return ["auto", *classical.CLASSICAL_METHODS, *registry.model_names()]


def resolve_method(method: str) -> str:
    """"auto" -> the best method we ship (a trained model when its weights exist)."""
    from .models import registry

    if method == "auto":
        return registry.best_shipped_model() or "wavelet"
    known = available_methods()
    if method not in known:
        raise StackMFFError(f"unknown method {method!r}; choose one of: {', '.join(known)}.")
    return method


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
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> FusionResult:
    """Fuse a focal stack into one all-in-focus image and a focus map.

    Parameters
    ----------
    stack
        (Z, Y, X) or (Z, Y, X, C) array, a :class:`FocalStack`, a folder of slices, a TIFF, or a
        list of image files.
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
    progress
        ``progress(done, total, message)`` called as work proceeds.
    cancel
        A ``threading.Event``; when set, fuse stops soon with :class:`FusionCancelled`.
    """
    from .io import load_stack

    t0 = time.perf_counter()
    stack = load_stack(stack, z_step=z_step)
    method = resolve_method(method)
    dev = resolve_device(device)
    if channel is not None and not -stack.n_channels <= channel < stack.n_channels:
        raise StackMFFError(f"channel {channel} does not exist: the stack has {stack.n_channels} channel(s).")
    timings: dict[str, float] = {"load_s": time.perf_counter() - t0}
    n, T = stack.n_slices, stack.n_times
    win = classical.DEFAULT_WINDOW if window is None else int(window)
    if method in classical.CLASSICAL_METHODS:
        runner = None
    else:
        from .models.inference import ModelRunner

        runner = ModelRunner(method, dev, weights=weights, **options)

    aifs, focus, conf = [], [], []
    t_focus = t_gather = 0.0
    for t in range(T):
        _check_cancel(cancel)
        sub_progress = None
        if progress is not None:
            sub_progress = lambda d, tot, msg, t=t: progress(t * tot + d, T * tot, msg + (f" (t={t})" if T > 1 else ""))
        t1 = time.perf_counter()
        if runner is None:
            maps = classical_maps(lambda z, t=t: stack.focus_image(z, t, channel), n, method, dev, window=win,
                                  denoise=denoise, progress=sub_progress, cancel=cancel)
        else:
            maps = runner.maps(stack, t, channel=channel, denoise=denoise, progress=sub_progress, cancel=cancel)
        t2 = time.perf_counter()
        index = maps.index.cpu().numpy()
        aifs.append(gather(stack, index, t))
        focus.append(maps.focus.float().cpu().numpy())
        conf.append(maps.confidence.float().cpu().numpy())
        t_focus += t2 - t1
        t_gather += time.perf_counter() - t2
    stackit = (lambda xs: np.stack(xs)) if stack.has_time else (lambda xs: xs[0])
    focus_map = stackit(focus).astype(np.float32)
    timings.update(focus_s=t_focus, gather_s=t_gather, total_s=time.perf_counter() - t0)
    return FusionResult(
        all_in_focus=stackit(aifs),
        focus_map=focus_map,
        confidence=stackit(conf).astype(np.float32),
        method=method,
        n_slices=n,
        height_map=height_from_focus(stack, focus_map),
        z_step=stack.z_step,
        unit=stack.unit,
        pixel_size=stack.pixel_size,
        timings=timings,
    )


def fuse_many(stacks: Sequence[Any], **kwargs: Any) -> list[FusionResult]:
    """Convenience: fuse several stacks with the same settings."""
    return [fuse(s, **kwargs) for s in stacks]
