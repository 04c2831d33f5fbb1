"""Shared helpers for the headless-core tests: synthetic stacks with known truth, slice folders."""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # tests also run without PYTHONPATH=src
    sys.path.insert(0, str(SRC))

from napari_stackmff.core.training import synth  # noqa: E402

#: The default run (the README's test command) leaves out tests marked ``slow`` so it stays within minutes on
#: two cores; ``--run-slow`` or STACKMFF_TESTS=all (what CI sets) runs everything.
RUN_ALL_ENV = "STACKMFF_TESTS"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help=f"also run the tests marked slow (same as {RUN_ALL_ENV}=all)")


def run_slow(config) -> bool:
    """--run-slow, STACKMFF_TESTS=all, or a marker expression naming slow (``-m slow``)."""
    return (bool(config.getoption("--run-slow")) or "slow" in (config.getoption("markexpr", "") or "")
            or os.environ.get(RUN_ALL_ENV, "").strip().lower() in ("all", "slow"))


def pytest_collection_modifyitems(config, items):
    if run_slow(config):
        return
    skip = pytest.mark.skip(reason=f"slow: run with --run-slow or {RUN_ALL_ENV}=all (CI runs them)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def pytest_report_header(config):
    return "slow tests: " + ("run" if run_slow(config) else f"skipped (--run-slow or {RUN_ALL_ENV}=all runs them)")


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


# ----------------------------------------------------------------- comparing two engines' focus decisions
#: Top-two focus scores closer than this (relative) are a tie for the argmax: float rounding of another
#: arithmetic order (batched convolutions, torch vs numpy luma) may pick either slice.
TIE_REL_MARGIN = 1e-4
#: Focus maps of two engines agree to this (slice units); a pixel whose focus lies this close to a
#: half-integer is a tie for the rounding that picks its slice (4.499993 vs 4.500024 were seen).
TIE_FOCUS_TOL = 1e-3


def focus_scores(slices: np.ndarray, method: str, *, window: int, axes: str | None = None, channel: int | None = None,
                 exclude=()) -> np.ndarray:
    """(Z', [T,] Y, X) focus scores of the whole image, slices in ``exclude`` left out: the argmax the
    engines decide on, measured once here to know where that decision is a near-tie."""
    import torch

    from napari_stackmff.core.tiles import classical
    from napari_stackmff.core.io.stack import as_focal_stack

    stack = as_focal_stack(slices, axes=axes)
    keep = [z for z in range(stack.n_slices) if z not in set(exclude)]
    per_t = []
    for t in range(stack.n_times if stack.has_time else 1):
        imgs = np.stack([stack.focus_window(z, t, channel) for z in keep])
        per_t.append(classical.focus_measure(torch.from_numpy(imgs)[:, None], method, window)[:, 0].numpy())
    return np.stack(per_t, axis=1) if stack.has_time else per_t[0]


def decision_ties(ref_focus: np.ndarray, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rounding ties, argmax ties) of a reference focus map (float, slice units).

    Rounding: focus within TIE_FOCUS_TOL of a half-integer (its index is round(focus)). Argmax: the best
    and second-best scores within TIE_REL_MARGIN (relative) and not on neighbouring slices (neighbours
    give the same sub-slice peak either way), grown by one pixel for the 3×3 median of the focus map.
    """
    ref_focus = np.asarray(ref_focus, np.float64)
    rounding = np.abs(ref_focus - np.floor(ref_focus) - 0.5) < TIE_FOCUS_TOL
    argmax = np.zeros(ref_focus.shape, bool)
    if scores is not None:
        order = np.argsort(scores, axis=0, kind="stable")
        first, second = order[-1], order[-2]
        s1 = np.take_along_axis(scores, first[None], 0)[0]
        s2 = np.take_along_axis(scores, second[None], 0)[0]
        near = (s1 - s2) <= TIE_REL_MARGIN * np.maximum(np.abs(s1), 1e-30)
        argmax = near & (np.abs(first - second) > 1)
        if argmax.any():  # one pixel around (the median), in the last two axes
            from scipy.ndimage import binary_dilation

            struct = np.zeros((3,) * argmax.ndim, bool)
            struct[(1,) * (argmax.ndim - 2) + (slice(None), slice(None))] = True
            argmax = binary_dilation(argmax, struct)
    return rounding, argmax


def assert_same_decisions(ref_focus: np.ndarray, got_focus: np.ndarray, scores: np.ndarray | None = None, *,
                          max_ties: float = 0.01) -> np.ndarray:
    """What two engines that measure focus in another float order promise each other: the same slice
    (``round(focus)``) wherever the decision is not a near-tie, focus maps equal to TIE_FOCUS_TOL except
    at argmax ties, and only a few pixels (all of them ties) where they differ. ``scores``: the focus
    scores (``focus_scores``) to find the argmax ties. Returns the mask of pixels with the same slice.
    """
    ref_focus, got_focus = np.asarray(ref_focus), np.asarray(got_focus)
    assert ref_focus.shape == got_focus.shape
    rounding, argmax = decision_ties(ref_focus, scores)
    ties = rounding | argmax
    assert ties.mean() <= max_ties, f"{ties.mean():.2%} of pixels are ties: the comparison would say too little"
    ref_idx, got_idx = np.rint(ref_focus), np.rint(got_focus)
    differ = ref_idx != got_idx
    assert not (differ & ~ties).any(), (
        f"{int((differ & ~ties).sum())} pixels took another slice where the decision is no tie, e.g. focus "
        f"{ref_focus[differ & ~ties][:5]} vs {got_focus[differ & ~ties][:5]}")
    assert differ.sum() <= max(2, 0.001 * differ.size), f"{int(differ.sum())} tie pixels took another slice"
    err = np.abs(got_focus.astype(np.float64) - ref_focus)
    assert err[~argmax].max(initial=0) < TIE_FOCUS_TOL, f"focus maps differ by {err[~argmax].max():.2e}"
    return ~differ
