"""Classical focus measures, written on torch so they run on a GPU when one is there.

Each measure maps a batch of focus images (B, 1, H, W) to a per-pixel sharpness (B, 1, H, W),
already averaged over a window so that the argmax over slices is stable. They are the fast
baselines against which the networks are judged.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..defaults import CLASSICAL_METHODS, DEFAULT_WINDOW
from ..errors import StackMFFError


def _pad(x: torch.Tensor, r: int, mode: str = "reflect") -> torch.Tensor:
    if r <= 0:
        return x
    h, w = x.shape[-2:]
    if mode == "reflect" and (r >= h or r >= w):
        mode = "replicate"
    return F.pad(x, (r, r, r, r), mode=mode)


def _running_mean_last(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of k consecutive values along the last axis via a running sum: O(1) per pixel.

    The sum is accumulated in float64 so a long row of values does not eat the precision that
    E[x²] - E[x]² needs in flat, low-contrast regions.
    """
    c = F.pad(torch.cumsum(x, -1, dtype=torch.float64), (1, 0))
    return ((c[..., k:] - c[..., :-k]) * (1.0 / k)).to(x.dtype)


_pool: ThreadPoolExecutor | None = None


#: Per calling thread: threads for the scipy bands while :func:`bands_take_threads` has lent them torch's.
_band_threads = threading.local()


def _threads() -> int:
    n = getattr(_band_threads, "n", None)
    return max(1, min(n or torch.get_num_threads(), os.cpu_count() or 1))


_omp: Any = None  # torch's OpenMP runtime (ctypes), False when there is none to find


def _openmp() -> Any:
    """The OpenMP runtime torch runs on (its own libgomp), or None when there is none to find."""
    global _omp
    if _omp is None:
        _omp = False
        try:
            import ctypes
            import re

            with open("/proc/self/maps") as fh:
                libs = sorted(set(re.findall(r"\S*lib(?:gomp|iomp5|omp)[^/\s]*\.so[.\d]*", fh.read())))
            for path in libs:
                lib = ctypes.CDLL(path)
                if hasattr(lib, "omp_set_num_threads") and hasattr(lib, "omp_get_max_threads"):
                    _omp = lib
                    break
        except OSError:
            pass
    return _omp or None


@contextmanager
def bands_take_threads(device: torch.device) -> Iterator[None]:
    """While a classical measure streams on the CPU, this thread's torch work runs on one OpenMP thread and
    the box filter's scipy bands get the threads instead.

    The stream's heavy work is scipy's (it releases the GIL: two bands run on two cores); between its
    calls come small torch steps, and torch's idle OpenMP workers spin for a while after each one, on
    the cores the bands need. Measured (64 x 1024² uint16, variance, 2 cores, interleaved): see
    benchmarks/RESULTS.md, issue 15. Only this thread's OpenMP setting changes (``omp_set_num_threads``
    is per thread); ``torch.set_num_threads`` is not used: it also sets process-wide state, after which
    networks fusing in Dask worker threads summed differently (tests/test_scale_batch.py).
    """
    omp = _openmp() if device.type == "cpu" else None
    if omp is None:
        yield
        return
    saved = int(omp.omp_get_max_threads())
    _band_threads.n = saved
    omp.omp_set_num_threads(1)
    try:
        yield
    finally:
        omp.omp_set_num_threads(saved)
        _band_threads.n = None


#: Images of at least this many pixels take :func:`_window_mean_cols` for the box's column pass, smaller
#: ones scipy's: the strided column walk costs little while an image fits the caches (493 x 740 float32,
#: 1 thread: scipy 4.1 ms, the sums 4.5 ms), and 1.9-2.8x the sums' time from 1080 x 1920 up.
WINDOW_SUM_MIN_PIXELS = 1 << 20


def _scipy_box(a: np.ndarray, k: int) -> np.ndarray:
    """k×k box mean: scipy's running mean along rows, then down the columns (:func:`_window_mean_cols` on
    big images, :data:`WINDOW_SUM_MIN_PIXELS`), each split into bands run on torch's thread count (or the
    threads :func:`bands_take_threads` lent them).

    scipy and numpy release the GIL inside, so bands run truly in parallel; every row (then column) is
    filtered whole, so the result is identical to one call on the full image.
    """
    from scipy.ndimage import uniform_filter1d

    a = np.ascontiguousarray(a)
    tmp, out = np.empty_like(a), np.empty_like(a)
    h, w = a.shape[-2:]
    n = 1 if h * w < 65536 else _threads()

    def bands(size: int) -> list[tuple[int, int]]:
        return [(i * size // n, (i + 1) * size // n) for i in range(n)]

    def each(run: Callable[[tuple[int, int]], Any], spans: list[tuple[int, int]]) -> None:
        if len(spans) == 1:
            run(spans[0])
        else:
            list(band_pool().map(run, spans))

    # scipy "mirror" (d c b | a b c d) is torch's "reflect" (and numpy.pad's).
    each(lambda r: uniform_filter1d(a[..., r[0]:r[1], :], k, axis=-1, mode="mirror", output=tmp[..., r[0]:r[1], :]),
         bands(h))
    if h * w < WINDOW_SUM_MIN_PIXELS:
        each(lambda c: uniform_filter1d(tmp[..., c[0]:c[1]], k, axis=-2, mode="mirror", output=out[..., c[0]:c[1]]),
             bands(w))
        return out
    padded = _pad_rows(tmp, k // 2)
    del tmp
    # bands of whole rows (a band of columns made the sums strided: 0.5-0.9x scipy's time on 2 threads)
    each(lambda r: _window_mean_cols(padded[..., r[0]:r[1] + k - 1, :], k, out[..., r[0]:r[1], :]), bands(h))
    return out


def _pad_rows(a: np.ndarray, r: int) -> np.ndarray:
    """``a`` with ``r`` rows mirrored above and below (scipy's "mirror", numpy's "reflect")."""
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(r, r), (0, 0)], mode="reflect")


def _window_mean_cols(s: np.ndarray, k: int, out: np.ndarray) -> np.ndarray:
    """``out[..., i, :]`` = the mean of rows i .. i + k - 1 of ``s`` (rows padded by k//2 on both sides by the
    caller: :func:`_pad_rows`), as whole-row sums of shifted views: the k rows summed by doubling (rows 1, 2,
    4, ... apart), about log2(k) passes over contiguous memory.

    Why not scipy's ``uniform_filter1d(axis=-2)``: it walks each column of a C-ordered array as a strided
    line, 3-6x the time of these sums (1536 x 2048 float32, 1 thread: 46 vs 16 ms at k = 9, 46 vs 13 ms at
    k = 33; 2048-float rows are its worst case) and 4-6x its own row pass; it was 1.2 of the 3.3 s of
    pcb_depthmap's default fusion, profiled. Each output is the same fixed sum of its k inputs wherever the
    window lies (scipy's running sum depends on where the line starts), so tiles agree with the whole image
    exactly; against scipy the means differ by float32 rounding (1.2e-7 relative).
    """
    h = out.shape[-2]
    length, offset, first, left = 1, 0, True, k
    while left:
        if left & 1:  # this power of two's partial sums, starting where the last one ended
            if first:
                np.copyto(out, s[..., offset:offset + h, :])
                first = False
            else:
                out += s[..., offset:offset + h, :]
            offset += length
        left >>= 1
        if left:  # sums of 2 x length consecutive rows
            s = s[..., :-length, :] + s[..., length:, :]
            length *= 2
    out *= np.float32(1.0 / k) if out.dtype == np.float32 else 1.0 / k
    return out


def band_pool() -> ThreadPoolExecutor:
    """The process's pool for bands of one image run on several cores at once: scipy's filters and torch's
    ``grid_sample`` (core.fusion.align's warps) release the GIL. Callers submit at most as many tasks as
    the threads they may use."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="stackmff-band")
    return _pool


def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a size×size window (reflect borders), as two 1-D running sums: O(1) per pixel,
    whatever the window. On the CPU scipy's uniform filter does exactly this in one tight C pass
    per axis (about 3× faster than torch's avg_pool2d at size 9), so we hand it the same memory."""
    if size <= 1:
        return x
    r = size // 2
    k = 2 * r + 1
    h, w = x.shape[-2:]
    if x.device.type == "cpu" and not x.requires_grad and x.dtype == torch.float32 and r < min(h, w):
        return torch.from_numpy(_scipy_box(x.detach().numpy(), k))
    x = _running_mean_last(_pad(x, r), k)
    return _running_mean_last(x.transpose(-1, -2), k).transpose(-1, -2)


def gaussian_radius(sigma: float) -> int:
    """The blur kernel is cut at 3 sigma: its support is finite, so tiles can cover it exactly."""
    return max(1, int(3 * sigma + 0.5))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Near-Gaussian blur of an (H, W) map, or of every map of a (B, 1, H, W) batch: three box
    filters of radius r/3 (r = 3 sigma).

    Three boxes of width 2r/3+1 have the variance of the Gaussian and exactly its 3-sigma
    support (so tiles still cover it), at O(1) per pixel instead of O(sigma): the fill's wide
    blur was the single most expensive step of classical fusion on 2k images.
    """
    rb = max(1, gaussian_radius(sigma) // 3)
    y = x[None, None] if x.dim() == 2 else x
    for _ in range(3):
        y = box_mean(y.contiguous(), 2 * rb + 1)
    return y[0, 0] if x.dim() == 2 else y


def _conv3(x: torch.Tensor, kernel: list[list[float]], dilation: int = 1) -> torch.Tensor:
    k = torch.tensor(kernel, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    return F.conv2d(_pad(x, dilation), k, dilation=dilation)


def variance(x: torch.Tensor, window: int) -> torch.Tensor:
    """Local variance: contrast of the texture around each pixel."""
    m = box_mean(x, window)
    v = box_mean(x * x, window)
    return torch.addcmul(v, m, m, value=-1.0, out=v).clamp_min_(0)  # in place: E[x²] - E[x]²


def laplacian(x: torch.Tensor, window: int) -> torch.Tensor:
    """Energy of the Laplacian: responds to fine detail, the first thing defocus removes.

    A 3×3 binomial pre-smoothing (a small Laplacian-of-Gaussian) keeps pixel noise, which the
    bare Laplacian amplifies most, from outvoting real detail in dim 16-bit data.
    """
    x = _conv3(x, [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]])
    lap = _conv3(x, [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    return box_mean(lap * lap, window)


def tenengrad(x: torch.Tensor, window: int) -> torch.Tensor:
    """Tenengrad: energy of the Sobel gradient."""
    gx = _conv3(x, [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gy = _conv3(x, [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    return box_mean(gx * gx + gy * gy, window)


def wavelet(x: torch.Tensor, window: int, levels: int = 3) -> torch.Tensor:
    """Multi-scale detail energy from an undecimated (à trous) B3-spline wavelet transform.

    Fine scales decide where there is fine texture; coarser scales keep a vote in regions whose
    texture is coarse, which single-scale measures misjudge.
    """
    energy = torch.zeros_like(x)
    smooth = x
    for level in range(levels):
        s = _b3_smooth(smooth, 2**level)
        detail = torch.sub(smooth, s)
        energy.addcmul_(detail, detail)
        del detail
        smooth = s
    return box_mean(energy, window)


#: The B3-spline taps (1 4 6 4 1) / 16.
_B3 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _b3_smooth(x: torch.Tensor, d: int) -> torch.Tensor:
    """Separable B3 smoothing with taps ``d`` apart (reflect borders), as five shifted multiply-adds per
    axis: 2-3.5x faster than ``conv2d`` on 1-channel maps on the CPU (which unfolds the map five times),
    the same values to 2e-7 (summation order)."""
    h, w = x.shape[-2:]
    p = _pad(x, 2 * d)
    rows = p[..., :, 0:w] * _B3[0]
    for k in range(1, 5):
        rows.add_(p[..., :, k * d:k * d + w], alpha=_B3[k])
    del p
    out = rows[..., 0:h, :] * _B3[0]
    for k in range(1, 5):
        out.add_(rows[..., k * d:k * d + h, :], alpha=_B3[k])
    return out


MEASURES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "variance": variance,
    "laplacian": laplacian,
    "tenengrad": tenengrad,
    "wavelet": wavelet,
}


def focus_measure(x: torch.Tensor, method: str, window: int = DEFAULT_WINDOW) -> torch.Tensor:
    """Sharpness of each pixel of each slice: (B, H, W) or (B, 1, H, W) in, same shape out."""
    try:
        fn = MEASURES[method]
    except KeyError:
        raise StackMFFError(
            f"unknown focus measure {method!r}; choose one of {', '.join(CLASSICAL_METHODS)}."
        ) from None
    if window < 1:
        raise StackMFFError(f"window must be a positive odd number of pixels, got {window}.")
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(1)
    out = fn(x, window | 1)
    return out.squeeze(1) if squeeze else out
