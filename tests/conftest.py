"""Shared helpers for the headless-core tests: synthetic stacks with known truth, slice folders."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # tests also run without PYTHONPATH=src
    sys.path.insert(0, str(SRC))

from napari_stackmff.core import synth  # noqa: E402


@functools.lru_cache(maxsize=64)
def _render(seed: int, n: int, size: int, scene: str, depth: str, dtype: str, rgb: bool,
            noise: bool) -> synth.SynthStack:
    rng = np.random.default_rng(seed)
    aif = synth.random_scene(rng, (size, size), scene, rgb=rgb)
    d = synth.random_depth(rng, (size, size), depth)
    pos = synth.focus_positions(rng, n, uniform=True)
    s = synth.render_stack(aif, d, pos, max_radius=1.2 * (n - 1), layers=max(16, 2 * n), dtype=dtype,
                           peak_photons=2000.0 if noise else None, read_noise=0.003 if noise else 0.0, rng=rng)
    for a in (s.slices, s.aif, s.depth, s.focus_positions, s.focus_index):
        a.setflags(write=False)  # cached and shared between tests: nobody may modify it
    return s


def make_synth(seed: int = 0, n: int = 8, size: int = 128, scene: str = "natural", depth: str = "objects",
               dtype: str = "uint8", rgb: bool = False, noise: bool = True) -> synth.SynthStack:
    """A rendered focal stack with ground truth (uniform focus steps, ~1.2 px more blur per slice,
    mild Poisson-Gaussian noise). Cached: the arrays are read-only, copy before changing them."""
    return _render(int(seed), int(n), int(size), scene, depth, str(np.dtype(dtype)), bool(rgb), bool(noise))


@pytest.fixture(name="make_synth")
def make_synth_fixture():
    return make_synth


def write_png_slices(folder: Path, slices: np.ndarray, names: list[str] | None = None) -> list[Path]:
    """Write each slice as a PNG (1.png, 2.png, ... unless ``names``); returns the paths in slice order."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i}.png" for i in range(1, len(slices) + 1)]
    paths = []
    for name, sl in zip(names, slices):
        p = folder / name
        Image.fromarray(np.ascontiguousarray(sl)).save(p, format="PNG")
        paths.append(p)
    return paths


@pytest.fixture(name="write_png_slices")
def write_png_slices_fixture():
    return write_png_slices


def summary_counts(out: str) -> tuple[int, int, int]:
    """(fused, skipped, failed) from the summary line `stackmff batch` prints."""
    m = re.search(r"(\d+) fused, (\d+) skipped \(already done\), (\d+) failed", out)
    assert m, out
    return int(m[1]), int(m[2]), int(m[3])
