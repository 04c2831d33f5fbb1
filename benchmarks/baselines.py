"""Peer fusions for the benchmarks only (issue 26), never dependencies of the package.

* :func:`best_slice`: the single slice a user would keep: the one with the best score against all slices
  (the benchmark passes its own score, the |grad|^4-weighted Q^AB/F).
* :func:`gff`: guided-filter fusion, written from the paper (S. Li, X. Kang, J. Hu, "Image Fusion With
  Guided Filtering", IEEE TIP 22(7), 2013): two-scale split (31x31 mean), saliency |Laplacian| smoothed by
  a Gaussian (11x11, sigma 5), winner-take-all weight maps, refined by a guided filter with each source as
  guide (base: r 45, eps 0.3; detail: r 7, eps 1e-6), weighted sum. Not pixel-faithful.
* :func:`dtcwt_fusion`: dual-tree complex wavelet fusion (the ``dtcwt`` package): the coefficient of
  largest magnitude per subband position, the mean of the lowpass. Not pixel-faithful.
* :func:`enfuse`: Hugin's enfuse with its focus-stacking settings (contrast weight only, hard mask), when
  the ``enfuse`` binary is installed (Debian: ``apt-get install enfuse``; its LZW TIFF needs ``imagecodecs``).
* :func:`clesperanto`: clEsperanto's Sobel projection (``pyclesperanto``, an OpenCL device; on a CPU-only
  machine Debian's ``pocl-opencl-icd``): Sobel magnitude per slice, Gaussian-smoothed (sigma 5, the
  library's default), hard pick of the slice of the largest value. Gray stacks go through
  ``extended_depth_of_focus_sobel_projection`` itself; RGB stacks through the same three library steps on
  the luma (2-D Sobel per slice), the index then gathered from the colour slices (the library's projection is gray only).

All take (N, H, W[, C]) sources of any dtype and return the fused image in the sources' dtype.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _unit(sources: np.ndarray) -> tuple[np.ndarray, float]:
    """Float32 copy in [0, 1] and the scale back to the sources' range."""
    top = float(np.iinfo(sources.dtype).max) if sources.dtype.kind in "ui" else 1.0
    return sources.astype(np.float32) / top, top


def _back(img: np.ndarray, like: np.ndarray, top: float) -> np.ndarray:
    if like.dtype.kind in "ui":
        info = np.iinfo(like.dtype)
        return np.clip(np.rint(img * top), info.min, info.max).astype(like.dtype)
    return img.astype(like.dtype)


def _gray(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 2 else x @ LUMA


def best_slice(sources: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float]) -> tuple[np.ndarray, int]:
    """(the slice with the highest ``score(slice, sources)``, its index)."""
    scores = [score(s, sources) for s in sources]
    k = int(np.argmax(scores))
    return sources[k].copy(), k


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return ndi.uniform_filter(x, size=2 * r + 1, mode="reflect")


def guided_filter(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter, gray guide (H, W)."""
    mi, mp = _box(guide, r), _box(p, r)
    cov = _box(guide * p, r) - mi * mp
    var = _box(guide * guide, r) - mi * mi
    a = cov / (var + eps)
    b = mp - a * mi
    return _box(a, r) * guide + _box(b, r)


def gff_weights(sources: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GFF's hard saliency mask (H, W) and its guided-filtered base and detail weights (N, H, W), unnormalised."""
    x, _ = _unit(sources)
    g = np.stack([_gray(s) for s in x])  # (N, H, W)
    lap = np.stack([np.abs(ndi.laplace(s)) for s in g])
    sal = np.stack([ndi.gaussian_filter(s, 5, truncate=1.0) for s in lap])  # 11x11 window, sigma 5
    win = sal.argmax(0)
    wb = np.stack([guided_filter(g[k], (win == k).astype(np.float32), 45, 0.3) for k in range(len(g))])
    wd = np.stack([guided_filter(g[k], (win == k).astype(np.float32), 7, 1e-6) for k in range(len(g))])
    return win, wb, wd


def gff(sources: np.ndarray) -> np.ndarray:
    x, top = _unit(sources)
    _, wb, wd = gff_weights(sources)
    wb = np.clip(wb, 0, None)
    wd = np.clip(wd, 0, None)
    wb /= np.maximum(wb.sum(0), 1e-12)
    wd /= np.maximum(wd.sum(0), 1e-12)
    base = np.stack([ndi.uniform_filter(s, size=(31, 31) + (1,) * (s.ndim - 2), mode="reflect") for s in x])
    detail = x - base
    if x.ndim == 4:
        wb, wd = wb[..., None], wd[..., None]
    fused = (wb * base).sum(0) + (wd * detail).sum(0)
    return _back(np.clip(fused, 0, 1), sources, top)


def dtcwt_fusion(sources: np.ndarray, levels: int = 4) -> np.ndarray:
    if not hasattr(np, "asfarray"):  # dtcwt 0.14 still calls these (removed in numpy 2)
        np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype if np.dtype(dtype).kind in "fc" else np.float64)
        np.issubsctype = lambda a, b: np.issubdtype(np.dtype(a), b)
    import dtcwt

    x, top = _unit(sources)
    t = dtcwt.Transform2d()
    chans = [x] if x.ndim == 3 else [x[..., c] for c in range(x.shape[-1])]
    out = []
    for ch in chans:
        pyrs = [t.forward(s, nlevels=levels) for s in ch]
        low = np.mean([p.lowpass for p in pyrs], axis=0)
        highs = []
        for lev in range(levels):
            stack = np.stack([p.highpasses[lev] for p in pyrs])
            pick = np.abs(stack).argmax(0)
            highs.append(np.take_along_axis(stack, pick[None], 0)[0])
        out.append(t.inverse(dtcwt.Pyramid(low, tuple(highs)))[: ch.shape[1], : ch.shape[2]])
    fused = out[0] if x.ndim == 3 else np.stack(out, -1)
    return _back(np.clip(fused, 0, 1), sources, top)


def have_enfuse() -> bool:
    """enfuse on the PATH, and imagecodecs to read its output (it writes LZW TIFFs whatever ``--compression``
    says: Debian's enfuse 4.2 ignored ``--compression=none``)."""
    import importlib.util

    return shutil.which("enfuse") is not None and importlib.util.find_spec("imagecodecs") is not None


def enfuse(sources: np.ndarray) -> np.ndarray:
    """enfuse's focus-stacking recipe: contrast weight only, hard mask, 5-px contrast window."""
    import tifffile

    with tempfile.TemporaryDirectory() as td:
        names = []
        for i, s in enumerate(sources):
            p = Path(td) / f"s{i:03d}.tif"
            tifffile.imwrite(p, s)
            names.append(str(p))
        out = Path(td) / "fused.tif"
        subprocess.run(["enfuse", "--exposure-weight=0", "--saturation-weight=0", "--contrast-weight=1",
                        "--hard-mask", "--contrast-window-size=5", "-o", str(out), *names],
                       check=True, capture_output=True)
        fused = tifffile.imread(out)
    if fused.ndim == 3 and fused.shape[-1] == 4 and sources.ndim == 4 and sources.shape[-1] == 3:
        fused = fused[..., :3]  # enfuse adds an alpha channel
    if fused.ndim == 3 and sources.ndim == 3:
        fused = fused[..., 0]
    return fused.astype(sources.dtype)


def have_clesperanto() -> bool:
    try:
        import pyclesperanto as cle

        return bool(cle.list_available_devices())
    except Exception:  # no package, or no OpenCL driver
        return False


def clesperanto(sources: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """clEsperanto's extended-depth-of-focus Sobel projection (pixel-faithful: one slice per pixel)."""
    import pyclesperanto as cle

    if sources.ndim == 3:
        fused = cle.pull(cle.extended_depth_of_focus_sobel_projection(sources.astype(np.float32), sigma=sigma))
        return _back(fused, sources, 1.0) if sources.dtype.kind in "ui" else fused.astype(sources.dtype)
    gray = np.ascontiguousarray(_gray(sources.astype(np.float32)))
    sob = np.stack([cle.pull(cle.sobel(s)) for s in gray])  # per slice, as the projection does (checked equal)
    smooth = cle.gaussian_blur(sob, sigma_x=sigma, sigma_y=sigma, sigma_z=0)
    pick = np.rint(cle.pull(cle.z_position_of_maximum_z_projection(smooth))).astype(np.intp)
    return np.take_along_axis(sources, pick[None, ..., None], 0)[0]
