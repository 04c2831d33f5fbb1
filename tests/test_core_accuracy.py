"""Focus accuracy of the classical methods on synthetic stacks whose true focus is known.

Scenes: textured ("natural" = 1/f noise, "tissue"), on a tilted plane and on objects with
occlusion edges. Observed on these seeds (within ±1 slice on textured pixels): 0.97-1.00 for
every method. The dim, sparse "cells" scene is harder and is checked separately with the
levels the methods reach today, so a regression shows but an honest shortfall is not hidden.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_stackmff import FocalStack, fuse
from napari_stackmff.core.training import synth
from napari_stackmff.core.defaults import CLASSICAL_METHODS
from napari_stackmff.core.fusion.metrics import focus_error

CASES = [  # (seed, n, size, scene, depth, dtype, rgb)
    (0, 8, 128, "natural", "plane", "uint8", False),
    (1, 10, 128, "natural", "objects", "uint16", False),
    (2, 8, 128, "tissue", "objects", "uint8", False),
    (3, 12, 128, "tissue", "plane", "uint16", False),
    (4, 6, 96, "natural", "objects", "uint8", True),
]


def _ids(case):
    seed, n, size, scene, depth, dtype, rgb = case
    return f"{scene}-{depth}-n{n}-{dtype}{'-rgb' if rgb else ''}-s{seed}"


def salt_and_pepper(focus_map: np.ndarray) -> float:
    """Fraction of pixels more than one slice away from their 3×3 median."""
    return float((np.abs(focus_map - ndi.median_filter(focus_map, size=3, mode="nearest")) > 1).mean())


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_focus_map_matches_truth(make_synth, case, method):
    seed, n, size, scene, depth, dtype, rgb = case
    s = make_synth(seed, n, size, scene, depth, dtype, rgb)
    result = fuse(s.slices, method=method, device="cpu")
    mask = synth.texture_mask(s.aif, quantile=0.5)
    err = focus_error(result.focus_map, s.focus_index, mask)
    assert err["within1"] > 0.90, f"{method} on {_ids(case)}: {err}"
    assert err["mae"] < 0.6, f"{method} on {_ids(case)}: {err}"
    # No isolated wrong picks anywhere (flat areas included).
    assert salt_and_pepper(result.focus_map) < 0.02


def test_subslice_refinement_on_a_plane(make_synth):
    """A tilted plane sweeps continuously through the slices: the parabolic peak should beat rounding."""
    s = make_synth(3, 12, 128, "tissue", "plane", "uint16")
    mask = synth.texture_mask(s.aif, quantile=0.5)
    result = fuse(s.slices, method="tenengrad", device="cpu")
    err = focus_error(result.focus_map, s.focus_index, mask)
    assert err["within05"] > 0.95, err
    rounded = focus_error(np.rint(result.focus_map), s.focus_index, mask)
    assert err["mae"] < rounded["mae"], (err, rounded)
    assert not np.allclose(result.focus_map, np.rint(result.focus_map))


def test_reversed_stack_gives_reversed_map(make_synth):
    """Slice order matters: fusing the stack upside down mirrors the focus map."""
    s = make_synth(2, 8, 128, "tissue", "objects", "uint8")
    mask = synth.texture_mask(s.aif, quantile=0.5)
    fwd = fuse(s.slices, method="wavelet", device="cpu").focus_map
    rev = fuse(s.slices[::-1], method="wavelet", device="cpu").focus_map
    assert focus_error(rev, (s.slices.shape[0] - 1) - s.focus_index, mask)["within1"] > 0.9
    assert focus_error(fwd, s.focus_index, mask)["within1"] > 0.9
    assert focus_error(rev, s.focus_index, mask)["within1"] < 0.6


#: Within-±1 fractions observed on "cells" (8 slices, 128 px, seeds 0-2): variance 0.78-0.89,
#: laplacian 0.63-0.80, tenengrad 0.90-0.98, wavelet 0.89-0.98. Dim background with Poisson
#: noise: the noise-sensitive Laplacian suffers most. Floors sit a little under those.
CELLS_FLOOR = {"variance": 0.70, "laplacian": 0.55, "tenengrad": 0.85, "wavelet": 0.85}


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_cells_scene_regression_floor(make_synth, method):
    s = make_synth(0, 8, 128, "cells", "objects", "uint8")
    mask = synth.texture_mask(s.aif, quantile=0.5)
    err = focus_error(fuse(s.slices, method=method, device="cpu").focus_map, s.focus_index, mask)
    assert err["within1"] > CELLS_FLOOR[method], err


# ------------------------------------------------------------------------------- time series
def test_time_series_equals_per_timepoint_fusion(make_synth):
    a = make_synth(10, 6, 96, "natural", "objects", "uint16")
    b = make_synth(11, 6, 96, "tissue", "plane", "uint16")
    data = np.stack([a.slices, b.slices])  # (T=2, Z, Y, X)
    result = fuse(data, method="laplacian", device="cpu", axes="TZYX")
    assert result.all_in_focus.shape == (2, 96, 96)
    assert result.focus_map.shape == (2, 96, 96)
    assert result.confidence.shape == (2, 96, 96)
    assert result.n_times == 2
    assert result.all_in_focus.dtype == np.uint16
    for t, s in enumerate((a, b)):
        alone = fuse(s.slices, method="laplacian", device="cpu")
        np.testing.assert_array_equal(result.all_in_focus[t], alone.all_in_focus)
        np.testing.assert_array_equal(result.focus_map[t], alone.focus_map)
        np.testing.assert_array_equal(result.confidence[t], alone.confidence)
        mask = synth.texture_mask(s.aif, quantile=0.5)
        assert focus_error(result.focus_map[t], s.focus_index, mask)["within1"] > 0.9
    # The two time points have different geometry, so they must not be copies of each other.
    assert not np.array_equal(result.focus_map[0], result.focus_map[1])


# ------------------------------------------------------------------------------- channels
def test_channel_selects_the_focus_channel(make_synth):
    """Channel 1 carries the textured scene; channel 0 another scene focused in the opposite order."""
    s1 = make_synth(10, 6, 96, "natural", "objects", "uint16")
    s0 = make_synth(11, 6, 96, "tissue", "plane", "uint16")
    data = np.stack([s0.slices[::-1], s1.slices], axis=-1)  # (Z, Y, X, 2)
    stack = FocalStack(data, axes="ZYXC")
    n = data.shape[0]
    m1 = synth.texture_mask(s1.aif, quantile=0.5)
    m0 = synth.texture_mask(s0.aif, quantile=0.5)

    r1 = fuse(stack, method="wavelet", device="cpu", channel=1)
    assert focus_error(r1.focus_map, s1.focus_index, m1)["within1"] > 0.9
    assert r1.all_in_focus.shape == (96, 96, 2) and r1.all_in_focus.dtype == np.uint16
    # Both channels of an output pixel come from the same slice (the one channel 1 chose).
    np.testing.assert_array_equal(r1.all_in_focus, np.take_along_axis(data, r1.index[None, ..., None], 0)[0])

    r0 = fuse(stack, method="wavelet", device="cpu", channel=0)
    assert focus_error(r0.focus_map, (n - 1) - s0.focus_index, m0)["within1"] > 0.9
    assert focus_error(r0.focus_map, s1.focus_index, m1)["within1"] < 0.6


def test_channel_one_textured_channel_zero_flat(make_synth):
    """Only channel 1 has texture: with channel=1, focus follows channel 1's truth."""
    s = make_synth(2, 8, 128, "tissue", "objects", "uint8")
    flat = np.full_like(s.slices, 90)
    data = np.stack([flat, s.slices], axis=-1)
    mask = synth.texture_mask(s.aif, quantile=0.5)
    r = fuse(FocalStack(data, axes="ZYXC"), method="tenengrad", device="cpu", channel=1)
    assert focus_error(r.focus_map, s.focus_index, mask)["within1"] > 0.9
    np.testing.assert_array_equal(r.all_in_focus[..., 0], 90)


# ------------------------------------------------------------------------------- flat areas
@pytest.fixture(scope="module")
def half_flat_stack():
    """Tissue texture on the right half, a textureless grey left half (noise only, no focus cue)."""
    rng = np.random.default_rng(5)
    aif = synth.random_scene(rng, (128, 128), "tissue")
    depth = synth.random_depth(rng, (128, 128), "objects")
    aif[:, :64] = 0.4
    return synth.render_stack(aif, depth, synth.focus_positions(rng, 8, uniform=True), max_radius=1.2 * 7,
                              layers=16, peak_photons=2000.0, read_noise=0.003, rng=rng)


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_denoise_cleans_textureless_areas(half_flat_stack, method):
    """Observed speckle in the flat half (pixels > 1 slice from their 3×3 median): ~3-4% with
    denoise, 12-16% without; whole map 1.3-2.0% with denoise. Noise-only pixels still get a
    confidence of ~0.22 (> the 0.15 fill threshold), so the fill engages only partly there."""
    s = half_flat_stack
    den = fuse(s.slices, method=method, device="cpu")
    raw = fuse(s.slices, method=method, device="cpu", denoise=False)
    flat = (slice(None), slice(0, 60))
    assert salt_and_pepper(den.focus_map[flat]) * 2.5 < salt_and_pepper(raw.focus_map[flat])
    assert salt_and_pepper(den.focus_map) < 0.03
    # Textured pixels keep their own decisions.
    mask = synth.texture_mask(s.aif, quantile=0.5)
    assert focus_error(den.focus_map, s.focus_index, mask)["within1"] > 0.95
    assert den.confidence[flat].mean() < den.confidence[:, 70:].mean()
