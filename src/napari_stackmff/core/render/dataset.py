"""Physical stacks written as a dataset in the seed layout (``stackmff synth --physical KIND``).

Same layout as :func:`napari_stackmff.core.training.synth.write_dataset`, so training reads it as it reads
the seed data: ``stacks/<scene>/1.png...`` (16-bit fluorescence as TIFF), ``depth_maps/<scene>.png`` (the true
focus as a fraction of the stack, 0 = first slice, 65535 = last), ``aif/<scene>.png``; plus
``valid/<scene>.png`` (pixels with signal to judge focus by). Stacks render in worker processes.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StackMFFError

#: "brightfield-ca": brightfield through an objective with axial chromatic aberration (micro.render_micro's
#: ``chromatic``, :data:`CHROMATIC_DOF`): the coloured fringes of defocused edges a cheap microscope shows.
PHYSICAL_KINDS = ("macro", "fluorescence", "brightfield", "brightfield-ca")
#: Focus offset (depths of field) of red beyond green, and of blue before it, in "brightfield-ca": the focal
#: planes are 0.25-0.7 depths of field apart, so red and blue are sharpest 1.4-4 slices apart, as the
#: pseudoscorpion's cyan and orange fringes swap sides across a few slices.
CHROMATIC_DOF = 0.5


def render_physical(kind: str, seed: int, size: int, n_slices: int) -> Any:
    """One stack of ``kind`` (the renderers' common fields: slices, aif, focus_index, valid)."""
    if kind == "macro":
        from .macro import render_macro

        return render_macro(seed, size=size, n_slices=n_slices)
    if kind in ("fluorescence", "brightfield", "brightfield-ca"):
        from .micro import render_micro

        return render_micro(kind.removesuffix("-ca"), seed, size=size, n_slices=n_slices,
                            chromatic=CHROMATIC_DOF if kind == "brightfield-ca" else 0.0)
    raise StackMFFError(f"--physical must be one of {', '.join(PHYSICAL_KINDS)}, got {kind!r}.")


def training_focus(focus_index: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The focus label a network learns from: the truth where there is signal, and where there is none (dark
    background, an empty bright field) the nearest pixel's with signal. The dominant layer of an empty pixel
    is arbitrary (a far cell's faint tail, or the first layer), and learning it teaches noise."""
    from scipy import ndimage as ndi

    if valid.all() or not valid.any():
        return focus_index
    _, (iy, ix) = ndi.distance_transform_edt(~valid, return_indices=True)
    return focus_index[iy, ix]


def _write_one(args: tuple[str, int, int, int, str, str]) -> str:
    from ..io.write import write_png, write_tiff

    kind, seed, size, n, out, name = args
    s = render_physical(kind, seed, size, n)
    root = Path(out)
    for j, sl in enumerate(s.slices, start=1):
        if sl.dtype == np.uint16:
            write_tiff(root / "stacks" / name / f"{j}.tif", sl)
        else:
            write_png(root / "stacks" / name / f"{j}.png", sl)
    rel = np.clip(training_focus(s.focus_index, s.valid) / max(len(s.slices) - 1, 1), 0, 1)
    write_png(root / "depth_maps" / f"{name}.png", (rel * 65535 + 0.5).astype(np.uint16))
    (write_tiff if s.aif.dtype == np.uint16 else write_png)(root / "aif" / f"{name}.{'tif' if s.aif.dtype == np.uint16 else 'png'}", s.aif)
    write_png(root / "valid" / f"{name}.png", s.valid.astype(np.uint8) * 255)
    return name


def write_physical_dataset(outdir: str | Path, kind: str, count: int, *, seed: int = 0, size: int = 160,
                           n_slices: int = 8, workers: int | None = None) -> Path:
    """``count`` stacks of ``kind`` (seeds ``seed`` .. ``seed + count - 1``), rendered in ``workers`` processes."""
    if kind not in PHYSICAL_KINDS:
        raise StackMFFError(f"--physical must be one of {', '.join(PHYSICAL_KINDS)}, got {kind!r}.")
    out = Path(outdir)
    jobs = [(kind, seed + i, size, n_slices, str(out), f"{kind}{seed + i:05d}") for i in range(count)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        for j in jobs:
            _write_one(j)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs))
    return out
