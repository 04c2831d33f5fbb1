"""Issue 26: the classical decision must not make defocus-halo rings or noise speckle on a brightfield stack.

A synthetic brightfield stack (a dark textured object on a bright field, all at one depth; the defocused
slices spread the dark edge ~15 px into the field; sensor noise): the flat field looks the same in every
slice, so the right answer there is the in-focus slice or one whose blurred edge does not reach it.
The legacy decision (best/mean confidence, one fill scale; still the default) picks, in each ring of background, the slice
whose blurred edge passes there: measured 64-67 % of the band 3-25 px outside the object more than two
slices from the truth, focus-map mean error 2.4-2.6 slices (seeds 0-2). ``decision="halo"``: 0 % and 0.06.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_stackmff.core.tiles import decision
from napari_stackmff.core import fuse
from napari_stackmff.core.training.synth import render_stack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_seams import two_specimens  # noqa: E402  (the two-specimen stack the seam benchmark renders)


def brightfield_stack(seed: int, size: int = 160, n: int = 10):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    obj = ((yy - size / 2) / (size * 0.28)) ** 2 + ((xx - size / 2) / (size * 0.2)) ** 2 < 1
    tex = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    aif = np.where(obj, 0.18 + 0.06 * tex / tex.std(), 0.9).astype(np.float32)
    f = np.linspace(0, 1, n)
    depth = np.full((size, size), f[2], np.float32)  # in focus at slice 2; slice 9 blurs by ~15 px
    return render_stack(aif, depth, f, max_radius=20, rng=rng, read_noise=0.01), obj


def _scores(seed: int, halo: bool) -> tuple[float, float]:
    stack, obj = brightfield_stack(seed)
    focus = np.asarray(fuse(stack.slices, method="wavelet", device="cpu",
                            decision="halo" if halo else "legacy").focus_map)
    dist = ndi.distance_transform_edt(~obj)
    band = (dist > 3) & (dist < 25)  # the bright field next to the object: where the rings were
    ring = float(np.mean(np.abs(np.round(focus) - stack.focus_index)[band] > 2))
    return ring, float(np.abs(focus - stack.focus_index).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_brightfield_no_rings_against_known_focus(seed: int) -> None:
    ring, err = _scores(seed, True)
    assert ring < 0.05, f"{ring:.1%} of the field beside the object picks a slice > 2 from focus (rings)"
    assert err < 0.5, f"focus-map mean error {err:.2f} slices"


def test_legacy_decision_makes_the_rings() -> None:
    """The stack really is the failing case: the legacy decision rings on it (so the test above means something)."""
    ring, err = _scores(0, False)
    assert ring > 0.3 and err > 1.5, (ring, err)


def test_halo_decision_is_exact_across_tiles_and_refuses_unknown_names() -> None:
    """The halo vote and the fill are finite filters: tiles with their margin equal the untiled result;
    a tile asked for below that margin still fuses (the vote approximate near tile borders); a wrong name is
    one line."""
    from napari_stackmff.core.errors import StackMFFError

    stack, _ = brightfield_stack(3, size=320)
    whole = fuse(stack.slices, method="wavelet", device="cpu", decision="halo")
    small = fuse(stack.slices, method="wavelet", device="cpu", decision="halo", tile=192)
    assert small.timings["tiles"] > 1
    assert np.mean(small.index == whole.index) > 0.95
    with pytest.raises(StackMFFError, match="decision must be one of auto, legacy, halo"):
        fuse(stack.slices, method="wavelet", decision="rings")
    with pytest.raises(StackMFFError, match="does not take 'decision'"):
        fuse(stack.slices, method="stackmff-v2", decision="halo")


def test_auto_takes_halo_on_a_bright_field_and_glow_elsewhere() -> None:
    """The default ("auto") is the halo decision where the background is a bright field, and the glow decision
    on a dark ground, both recorded. On fluorescence-like cells of very different brightness the glow decision
    keeps dim cells in their own slice, as the legacy decision does, where the halo vote forced moves them to
    a brighter neighbour's (within ±1 of the known focus, seeds 0-2: glow 0.89-0.92, legacy 0.90-0.92, the halo
    vote 0.54-0.74; checked here on seed 0)."""
    from napari_stackmff.core.fusion.metrics import focus_error
    from napari_stackmff.core.training import synth as synth_mod

    bf, obj = brightfield_stack(1)
    r = fuse(bf.slices, method="wavelet", device="cpu")
    assert r.decision == "halo"
    dist = ndi.distance_transform_edt(~obj)
    band = (dist > 3) & (dist < 25)
    assert np.mean(np.abs(np.round(r.focus_map) - bf.focus_index)[band] > 2) < 0.05
    cells = synth_mod.make_sample("cells", n=8, size=128, seed=0)
    assert decision.bright_field_share(cells.slices[4]) < 0.1
    assert decision.resolve_decision("halo", cells.slices[4]) == decision.Decision(decision.HALO_HI)  # forced
    assert decision.resolve_decision("auto", cells.slices[4]).name == "glow"
    assert decision.resolve_decision("legacy", cells.slices[4]) == decision.LEGACY
    mask = synth_mod.texture_mask(cells.aif, quantile=0.5)
    within = {}
    for name in ("auto", "legacy", "halo"):
        r = fuse(cells.slices, method="wavelet", device="cpu", decision=name)
        within[r.decision] = focus_error(r.focus_map, cells.focus_index, mask)["within1"]
    assert within["glow"] >= within["legacy"] - 0.01 and within["glow"] > 0.85, within
    assert within["halo"] < within["legacy"] - 0.1, within  # the scene really is the halo vote's failing case
    assert fuse(cells.slices, method="stackmff-v2", device="cpu").decision is None  # networks: not theirs


def glyph_stack(seed: int, size: int = 200, n: int = 10):
    """Bright textured glyphs (a ring and a bar) on a dark, faintly grained ground, all in focus at slice 2:
    defocused, the glyphs spread a glow ramp over the ground (a PCB's silkscreen, a bright cell on a dark
    field), whose detail beats the ground's faint grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    obj = ((r > size * 0.12) & (r < size * 0.2)) | ((np.abs(xx - size / 2) < size * 0.04)
                                                     & (np.abs(yy - size * 0.3) < size * 0.2))
    grain = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    tex = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    aif = np.where(obj, 0.85 + 0.04 * tex / tex.std(), 0.08 + 0.01 * grain / grain.std()).astype(np.float32)
    f = np.linspace(0, 1, n)
    return render_stack(aif, np.full((size, size), f[2], np.float32), f, max_radius=20, rng=rng,
                        read_noise=0.01), obj


def _glyph_scores(seed: int, name: str) -> tuple[float, float, str]:
    stack, obj = glyph_stack(seed)
    r = fuse(stack.slices, method="wavelet", device="cpu", decision=name)
    focus = np.asarray(r.focus_map)
    band = (ndi.distance_transform_edt(~obj) > 3) & (ndi.distance_transform_edt(~obj) < 30)
    ring = float(np.mean(np.abs(np.round(focus) - stack.focus_index)[band] > 2))
    return ring, float(np.abs(focus - stack.focus_index).mean()), r.decision


@pytest.mark.parametrize("seed", [0, 1])
def test_no_glow_rings_round_bright_glyphs_on_a_dark_ground(seed: int) -> None:
    """The default on a dark ground (the glow decision) keeps the ground beside the glyphs in the glyphs'
    slice: measured 4-6% of the band 3-30 px outside them more than two slices from the truth, mean focus
    error 0.31-0.41 slices (seeds 0-3); the legacy decision, the default before: 40-43% and ~1.0 (checked)."""
    ring, err, name = _glyph_scores(seed, "auto")
    assert name == "glow"
    assert ring < 0.12 and err < 0.6, (ring, err)
    ring, err, _ = _glyph_scores(seed, "legacy")
    assert ring > 0.3 and err > 0.8, (ring, err)


def test_glow_decision_is_exact_across_tiles_and_on_the_device_engine() -> None:
    """The glow decision's gates are finite filters inside the tile margin: tiles equal the whole image; and the
    device-resident engine (run on the CPU here), which folds slices in chunks, keeps the same state."""
    import torch

    from conftest import assert_same_decisions, focus_scores

    from napari_stackmff.core.fusion.classical_engine import ClassicalEngine, classical_support
    from napari_stackmff.core.fusion.device_engine import DeviceClassicalEngine
    from napari_stackmff.core.io.stack import as_focal_stack

    stack, _ = glyph_stack(2, size=320)
    slices = np.concatenate([stack.slices, stack.slices[..., ::-1]], axis=2)  # 320 x 640
    glow = decision.resolve_decision("glow", slices[5])
    assert glow.name == "glow"
    m = classical_support("wavelet", 9, halo=glow)
    assert m >= classical_support("wavelet", 9, halo=decision.Decision(decision.HALO_HI))
    fs = as_focal_stack(slices)
    cpu = torch.device("cpu")
    kw = dict(channel=None, window=9, denoise=True, halo=glow)
    whole = ClassicalEngine(fs, 0, "wavelet", cpu, **kw).maps((slice(0, 320), slice(0, 640)), None, None)
    assert whole.flat is not None and whole.flat.any()  # the vote decided somewhere
    part = ClassicalEngine(fs, 0, "wavelet", cpu, **kw).maps((slice(0, 320), slice(0, 600)), None, None)
    inner = slice(0, 600 - m)
    assert 600 - m > 100
    np.testing.assert_array_equal(part.index[:, inner].numpy(), whole.index[:, inner].numpy())
    dev = DeviceClassicalEngine(fs, 0, "wavelet", cpu, chunk=3, **kw).maps((slice(0, 320), slice(0, 640)), None, None)
    assert_same_decisions(whole.focus.numpy(), dev.focus.numpy(), focus_scores(slices, "wavelet", window=9))
    # an image no wider than the gate's box: the box pads by replication (torch's path, as on a GPU)
    tiny = fuse(slices[:, 100:109, 100:109], method="wavelet", device="cpu", decision="glow")
    assert tiny.decision == "glow" and tiny.all_in_focus.shape == (9, 9)
def thick_specimen_stack(seed: int, size: int = 480, n: int = 10, focus: int = 2, step: float = 20.0):
    """A thick dark specimen on a bright field: out of focus its outline lies inside the sharp one (``step``
    px per slice from focus: 20 as slice 7 of the pseudoscorpion's leg lies ~100 px inside at full size, 5
    as slices 4-5 lie 3-6 px inside at 768 px), blurred a little. The dark body's own texture is faint, so
    inside the outline the nearest detail is that ramp."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    obj = ((yy - size / 2) / (size * 0.38)) ** 2 + ((xx - size / 2) / (size * 0.3)) ** 2 < 1
    depth_in = ndi.distance_transform_edt(obj)
    tex = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    tex /= tex.std()
    slices = []
    for j in range(n):
        k = abs(j - focus)
        sharp = np.where(depth_in > step * k, 0.15 + 0.005 * tex, 0.9)
        img = ndi.gaussian_filter(sharp, 1.0 + 1.5 * k) if k else sharp
        slices.append(img + 0.003 * rng.standard_normal(img.shape))
    return np.clip(np.stack(slices), 0, 1).astype(np.float32), depth_in


def _thick_errors(seed: int) -> float:
    stack, depth_in = thick_specimen_stack(seed)
    focus = np.round(np.asarray(fuse(stack, method="wavelet", device="cpu", decision="halo").focus_map))
    band = (depth_in >= 40) & (depth_in < 130)
    return float(np.mean(np.abs(focus - 2)[band] > 2))


def test_thick_specimen_body_keeps_the_sharp_outline_slice(monkeypatch) -> None:
    """40-130 px inside the sharp outline the body must not take the slices whose own (inner) outline passes
    there: 0% wrong at HALO_RADIUS 128; the radius 64 used before leaves ~19% (checked here, so the stack
    really is the failing case)."""
    assert _thick_errors(0) < 0.01
    monkeypatch.setattr(decision, "HALO_RADIUS", 64)
    monkeypatch.setattr(decision, "VOTE_SIGMA", 32.0)
    assert _thick_errors(0) > 0.1


def _knee_errors(seed: int) -> float:
    stack, depth_in = thick_specimen_stack(seed, size=320, step=5.0)
    focus = np.round(np.asarray(fuse(stack, method="wavelet", device="cpu", decision="halo").focus_map))
    band = (depth_in >= 2) & (depth_in < 20)
    return float(np.mean(np.abs(focus - 2)[band] > 1))


def test_no_thin_lines_just_inside_a_thick_specimens_outline(monkeypatch) -> None:
    """2-20 px inside the sharp outline, where the slices 1-2 off focus have the knee of their own (inner,
    softer) edge, the body keeps the sharp outline's slice: 0% more than one slice off with the bright
    field's threshold (0.3, for a thick dark specimen); the 0.1 used before left ~12% there (the thin curved
    lines inside the pseudoscorpion's leg). A sparse object on a bright field, and any stack off one, keep
    0.1 (on dark text on white, 0.3 moved weak strokes to a stronger neighbour's slice)."""
    assert decision.resolve_decision("halo", thick_specimen_stack(0, size=320, step=5.0)[0][5]).hi == 0.3
    assert decision.resolve_decision("auto", brightfield_stack(0)[0].slices[5]) == decision.Decision(decision.HALO_HI)
    assert _knee_errors(0) < 0.01
    monkeypatch.setattr(decision, "HALO_HI_BRIGHT", decision.HALO_HI)
    assert _knee_errors(0) > 0.05


def _field_scores(seed: int) -> tuple[float, float]:
    """(PSNR dB of the fused field between the discs against the truth, mean luma step where the slice changes)."""
    stack, between = two_specimens(seed)
    r = fuse(stack.slices, method="wavelet", device="cpu")
    assert r.decision == "halo"
    out = r.all_in_focus.astype(np.float64)
    err = (out - stack.aif)[between]
    psnr = 10 * np.log10(255.0 ** 2 / max(float(np.mean(err ** 2)), 1e-12))
    m = (np.diff(r.index, axis=1) != 0) & between[:, 1:] & between[:, :-1]
    step = float(np.abs(np.diff(out, axis=1))[m].mean()) if m.any() else 0.0
    return psnr, step


def test_field_beside_a_faint_specimen_takes_its_slice_not_a_stronger_neighbours(monkeypatch) -> None:
    """Between a strong and a faint specimen at other depths, the field right beside the faint one is clean
    only in the faint one's slice. The wide vote gave it the strong one's slice, with the faint one's shadow
    in it: PSNR ~29 dB against the truth there and a ~35 grey-level step where the slice changes (checked
    here). The near vote and the flat cross-fade: > 40 dB and < 3."""
    from napari_stackmff.core.tiles import blend

    psnr, step = _field_scores(0)
    assert psnr > 40 and step < 3, (psnr, step)
    monkeypatch.setattr(decision, "NEAR_SIGMA", 0.0)
    monkeypatch.setattr(blend, "SEAM_SIGMA", 0.0)
    psnr, step = _field_scores(0)
    assert psnr < 32 and step > 15, (psnr, step)


def test_flat_cross_fade_only_near_a_change_of_slice_and_exact_across_tiles() -> None:
    """The cross-fade touches only flat pixels within reach of a change of slice (everything else is its
    slice's own pixel, as before), mixes values only from slices present there, and a tile with the
    margin ``seam_reach`` gives the pixels of the whole window."""
    from napari_stackmff.core.io.stack import as_focal_stack
    from napari_stackmff.core.tiles.blend import seam_fade_window, seam_reach
    from napari_stackmff.core.tiles.pipeline import gather_window

    rng = np.random.default_rng(0)
    h, w, n = 150, 230, 4
    yy, xx = np.mgrid[:h, :w]
    index = np.where(xx < 80 + 20 * np.sin(yy / 15), 1, 3).astype(np.int64)
    index[60:90, 150:190] = 2  # a patch of detail (not flat) with its own slice
    flat = np.ones((h, w), bool)
    flat[60:90, 150:190] = False
    slices = np.stack([np.full((h, w), 40.0 * (z + 1)) + rng.normal(0, 2, (h, w)) for z in range(n)])
    stack = as_focal_stack(np.clip(slices, 0, 255).astype(np.uint8))
    whole = (slice(0, h), slice(0, w))
    hard = gather_window(stack, index, 0, whole)
    out = seam_fade_window(stack, index, flat, 0, whole, whole, hard)
    changed = out != hard
    dist = ndi.distance_transform_edt(np.diff(index, axis=1, prepend=index[:, :1]) == 0)
    assert changed.any() and not changed[~flat].any()
    assert dist[changed].max() <= seam_reach()
    lo, hi = stack.data[[1, 3]].min(0), stack.data[[1, 3]].max(0)
    near_seam = changed & (np.abs(xx - 80) < 40)
    assert np.all((out[near_seam] >= lo[near_seam]) & (out[near_seam] <= hi[near_seam]))
    m = seam_reach()
    for x0 in (0, 57, 113):  # tiles of the write window [x0, x0 + 60), read with the margin
        ra, rb = max(0, x0 - m), min(w, x0 + 60 + m)
        read = (slice(0, h), slice(ra, rb))
        crop = (slice(0, h), slice(x0 - ra, min(w, x0 + 60) - ra))
        part = seam_fade_window(stack, index[:, ra:rb], flat[:, ra:rb], 0, read, crop, hard[:, x0:x0 + 60])
        np.testing.assert_array_equal(part, out[:, x0:x0 + 60])


def test_exact_blend_copies_every_pixel_on_a_bright_field_too() -> None:
    """``blend="exact"`` (for measurements): no cross-fade, every pixel its slice's, the same focus maps as the
    default, and the result says which blend it is."""
    stack, _ = two_specimens(1)
    hard = fuse(stack.slices, method="wavelet", device="cpu")
    exact = fuse(stack.slices, method="wavelet", device="cpu", blend="exact")
    assert (hard.blend, exact.blend) == ("hard", "exact")
    np.testing.assert_array_equal(exact.index, hard.index)
    np.testing.assert_array_equal(exact.all_in_focus, np.take_along_axis(stack.slices, exact.index[None], 0)[0])
    assert (hard.all_in_focus != exact.all_in_focus).mean() > 0.01


def test_halo_vote_on_a_window_equals_the_whole_image_inside_its_margin() -> None:
    """The votes are summed on blocks of the image's own grid: a window that starts off the grid (as the last
    tile of a row does), given its origin, decides its inner part as the whole image does."""
    import torch

    rng = np.random.default_rng(0)
    h, w, n = 200, 1300, 6
    idx = np.clip(ndi.zoom(rng.integers(0, n, (10, 65)), 20, order=0)[:h, :w], 0, n - 1).astype(np.int32)
    best = (ndi.gaussian_filter(rng.random((h, w)), 3) ** 6 * (1 + 100 * (rng.random((h, w)) > 0.999))).astype(np.float32)
    full = decision.halo_vote(torch.from_numpy(best), torch.from_numpy(idx), n, 0.1)
    m = decision.decision_radius(9)
    a, b = 37, 1300  # a window from column 37: not on the 8 px grid
    part = decision.halo_vote(torch.from_numpy(best[:, a:b].copy()), torch.from_numpy(idx[:, a:b].copy()), n, 0.1,
                              origin=(0, a))
    inner = slice(m, None)
    np.testing.assert_array_equal(part[0][:, inner].numpy(), full[0][:, a:b][:, inner].numpy())
    np.testing.assert_allclose(part[2][:, inner].numpy(), full[2][:, a:b][:, inner].numpy(), rtol=1e-5, atol=1e-7)


def test_votes_argmax_in_row_bands_equals_all_at_once_and_the_full_size_argmax(monkeypatch) -> None:
    """The halo vote's winner per pixel, its edge work done in bands of rows (a bounded peak of memory on a busy
    tile), is the same as in one piece; and it is the argmax of every slice's votes brought back at full size."""
    import torch

    gen = torch.Generator().manual_seed(0)
    # 6 slices' votes on 4-px blocks, smooth as the blurred votes are (the winner changes every few blocks)
    votes = torch.nn.functional.avg_pool2d(torch.rand(6, 1, 24, 34, generator=gen), 5, stride=1)[:, 0]
    slot = votes.max(dim=0).indices
    shape, offset, f = (75, 113), (3, 5), 4  # ceil((75 + 3) / 4) = 20, ceil((113 + 5) / 4) = 30 blocks
    got = {}
    for band in (1 << 30, 113, 500):  # all at once, one row, four rows per band
        monkeypatch.setattr(decision, "ARGMAX_BAND_PIXELS", band)
        got[band] = decision._bilinear_argmax(votes, slot, shape, offset, f)
    assert torch.equal(got[1 << 30], got[113]) and torch.equal(got[1 << 30], got[500])
    full = torch.stack([decision.block_up(v, f, offset, shape) for v in votes]).argmax(dim=0)
    assert (got[500] == full).float().mean() >= 0.98  # 99.1% here: only the four blocks' winners compete
    assert (got[500] != decision.block_up(slot.float(), f, offset, shape).round().int()).any()  # not the blocks' own
