"""No-reference scores for real stacks (metrics.qabf over N sources, qabf_map, sharpness_scores).

Real stacks have no ground truth, so these scores are the only judge there; here they are checked on
rendered stacks whose truth is known: the true all-in-focus image must beat every single slice and
every blurred fusion, the N-source Q^AB/F must reduce to the published pair formula, and nothing may
depend on slice order or grow in memory with the number of slices.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_stackmff.core.fusion.metrics import DEEP_STACK_WEIGHT_POWER, qabf, qabf_map, sharpness_scores

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    sig = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return ndi.gaussian_filter(img.astype(np.float64), sig)


def _pair_qabf_textbook(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Xydeas & Petrović (2000), written out for two inputs as published, for gray float images:
    Q = sum(Q^AF w^A + Q^BF w^B) / sum(w^A + w^B), Sobel strength g and angle alpha, L = 1."""
    def grad(x):
        sx, sy = ndi.sobel(x, axis=1), ndi.sobel(x, axis=0)
        return np.sqrt(sx ** 2 + sy ** 2), np.arctan(sy / (sx + 1e-12))

    gF, aF = grad(f)
    total_q = np.zeros_like(gF)
    total_w = np.zeros_like(gF)
    for x in (a, b):
        g, al = grad(x)
        G = np.where(g > gF, gF / (g + 1e-12), g / (gF + 1e-12))
        A = 1 - np.abs(al - aF) / (np.pi / 2)
        Q = 0.9994 / (1 + np.exp(-15 * (G - 0.5))) * 0.9879 / (1 + np.exp(-22 * (A - 0.8)))
        total_q += Q * g
        total_w += g
    return float(total_q.sum() / total_w.sum())


def test_two_sources_give_the_published_pair_score(make_synth):
    s = make_synth(seed=2, n=6)
    a, b = s.slices[0].astype(np.float64), s.slices[-1].astype(np.float64)
    for fused in (s.aif.astype(np.float64), 0.5 * (a + b), _blur(s.aif, 1.0)):
        assert qabf(fused, [a, b]) == pytest.approx(_pair_qabf_textbook(fused, a, b), rel=1e-12)


def test_n_sources_pool_edge_weights_not_per_source_scores(make_synth):
    """The N-source score pools weights over sources (a source with strong edges counts more); a plain
    mean of per-source scores would give each source the same say."""
    s = make_synth(seed=4, n=8)
    src = s.slices[[0, 3, 7]]
    per_source = [qabf(s.aif, [x]) for x in src]
    weights = [float(np.hypot(ndi.sobel(x.astype(float), 1), ndi.sobel(x.astype(float), 0)).sum()) for x in src]
    pooled = float(np.dot(per_source, weights) / np.sum(weights))
    assert qabf(s.aif, src) == pytest.approx(pooled, rel=1e-12)
    assert abs(pooled - np.mean(per_source)) > 1e-3  # the two readings differ on this stack


@pytest.mark.parametrize("kw", [dict(seed=0), pytest.param(dict(seed=1, rgb=True), marks=pytest.mark.slow),
                                dict(seed=5, scene="cells", dtype="uint16")])
def test_truth_beats_every_slice_and_blurred_fusions(make_synth, kw):
    s = make_synth(**kw)
    blurred = {"truth blurred": _blur(s.aif, 1.5), "mean of slices": s.slices.astype(np.float64).mean(axis=0)}

    def scores(img):
        return {"qabf": qabf(img, s.slices), "qabf_deep": qabf(img, s.slices, DEEP_STACK_WEIGHT_POWER),
                "sharpness": sharpness_scores(img, s.slices)["sharpness"]}

    truth = scores(s.aif)
    for name, img in blurred.items():
        other = scores(img)
        for k in truth:
            assert truth[k] > other[k], (name, k, truth[k], other[k])
    for i, sl in enumerate(s.slices):
        other = scores(sl)
        for k in ("qabf_deep", "sharpness"):  # plain qabf (L = 1) may rank a slice above the truth: see its doc
            assert truth[k] > other[k], (i, k, truth[k], other[k])
    assert 0 <= min(truth.values()) and max(truth.values()) <= 1


def test_scores_do_not_depend_on_slice_order(make_synth):
    s = make_synth(seed=6, rgb=True)
    perm = np.random.default_rng(0).permutation(len(s.slices))
    fused = _blur(s.aif, 0.7)
    assert qabf(fused, s.slices[perm]) == pytest.approx(qabf(fused, s.slices), rel=1e-12)
    assert qabf(fused, s.slices[perm], 4) == pytest.approx(qabf(fused, s.slices, 4), rel=1e-12)
    np.testing.assert_allclose(qabf_map(fused, s.slices[perm]), qabf_map(fused, s.slices), rtol=1e-12, atol=1e-15)
    a, b = sharpness_scores(fused, s.slices[perm]), sharpness_scores(fused, s.slices)
    assert a == pytest.approx(b, rel=1e-12)


def test_sharpness_does_not_reward_noise_or_halos(make_synth):
    """Energy beyond the sharpest slice goes to ``excess``, not to ``sharpness``."""
    s = make_synth(seed=3)
    truth = s.aif.astype(np.float64)
    noisy = truth + np.random.default_rng(1).normal(0, 8, truth.shape)
    halo = truth + 1.5 * (truth - _blur(truth, 2.0))  # unsharp mask: overshoot rims along every edge
    base = sharpness_scores(truth, s.slices)
    for name, img in (("noise", noisy), ("halo", halo)):
        got = sharpness_scores(img, s.slices)
        gain_excess = got["excess"] - base["excess"]
        assert gain_excess > 0.5 * base["excess"], (name, got, base)
        # an uncapped energy ratio would gain as much as the excess; the capped one a small part of it
        assert got["sharpness"] - base["sharpness"] < 0.25 * gain_excess, (name, got, base)
    assert 0 <= base["sharpness"] <= 1 and base["excess"] >= 0


def test_scores_do_not_depend_on_intensity_scale(make_synth):
    s = make_synth(seed=7)
    fused = _blur(s.aif, 0.8)
    a = sharpness_scores(fused, s.slices)
    b = sharpness_scores(fused * 257.0, s.slices.astype(np.uint16) * 257)
    assert a == pytest.approx(b, rel=1e-9)
    assert qabf(fused / 255, s.slices / 255.0) == pytest.approx(qabf(fused, s.slices), rel=1e-6)


def test_qabf_map_shows_where_edges_are_lost(make_synth):
    s = make_synth(seed=8)
    half = s.aif.shape[1] // 2
    fused = s.aif.astype(np.float64)
    fused[:, half:] = _blur(s.aif, 2.0)[:, half:]  # right half loses its edges
    m = qabf_map(fused, s.slices)
    assert m.shape == s.aif.shape and m.min() >= 0 and m.max() <= 1
    band = slice(4, half - 4), slice(half + 4, -4)  # away from the border and the seam
    assert m[:, band[0]].mean() > m[:, band[1]].mean() + 0.05


def _peak_bytes(fn, slices) -> int:
    tracemalloc.start()
    try:
        fn(slices)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("score", [lambda f, it: qabf(f, it), lambda f, it: sharpness_scores(f, it)])
def test_memory_does_not_grow_with_the_number_of_slices(score):
    """Sources are read one at a time: 32 slices from a generator peak no higher than 4."""
    rng = np.random.default_rng(0)
    fused = rng.random((192, 160))

    def gen(n):
        for i in range(n):
            yield np.random.default_rng(i).integers(0, 255, (192, 160, 3), dtype=np.uint8)

    p4 = _peak_bytes(lambda g: score(fused, g), gen(4))
    p32 = _peak_bytes(lambda g: score(fused, g), gen(32))
    slice_f64 = fused.nbytes
    assert p32 < p4 + 2 * slice_f64, (p4, p32)  # an (N, H, W) float64 copy would add 28 slices' worth


@pytest.mark.skipif(not (DATA / "smoke" / "leaves").is_dir(), reason="../shared/data not present")
def test_real_stack_fusion_scores_above_its_slices():
    """On real optics (smoke/leaves, 6 slices, MIT), a classical fusion is sharper than any one slice."""
    from napari_stackmff.core import fuse, load_stack

    files = sorted((DATA / "smoke" / "leaves").glob("0*sm.png"))
    stack = load_stack(files)
    fused = fuse(stack, method="wavelet", device="cpu").all_in_focus
    src = np.asarray(stack.data)
    got = sharpness_scores(fused, src)["sharpness"]
    best_slice = max(sharpness_scores(x, src)["sharpness"] for x in src)
    assert got > best_slice
    assert qabf(fused, src, DEEP_STACK_WEIGHT_POWER) > max(qabf(x, src, DEEP_STACK_WEIGHT_POWER) for x in src)
