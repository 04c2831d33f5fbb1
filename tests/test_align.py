"""Slice alignment (core/align.py): moved slices are registered to sub-pixel accuracy, an
unregistrable stack is fused unaligned with a warning, and the transforms reach the outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_align import in_reference_frame, moved_stack  # noqa: E402

from napari_stackmff.cli import main  # noqa: E402
from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.errors import StackMFFError  # noqa: E402
from napari_stackmff.core.fusion.metrics import psnr  # noqa: E402

INNER = (slice(24, -24), slice(24, -24))


def _grid_error(est: np.ndarray, true: list[np.ndarray], size: int) -> float:
    yy, xx = np.mgrid[24:size - 24:16, 24:size - 24:16]
    g = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    return float(np.mean([np.linalg.norm((e @ g - m @ g)[:2], axis=0).mean() for e, m in zip(est, true)]))


@pytest.mark.parametrize("h, w", [(96, 96), (75, 90), (81, 75)])
def test_batched_phase_correlation_agrees_with_scikit_image(h: int, w: int) -> None:
    """The batched sub-pixel shifts (half-spectrum upsampled DFT, odd and even sides) are scikit-image's
    ``phase_cross_correlation`` (upsample 20) to within one 1/20-px step, and near the true shifts."""
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    from napari_stackmff.core.fusion.align import _band, _shifts

    rng = np.random.default_rng(7)
    big = ndimage.gaussian_filter(rng.random((h + 40, w + 40)), 1.5)
    true = rng.uniform(-6, 6, (8, 2))
    refs = np.stack([_band(big[20:20 + h, 20:20 + w])] * 8)
    movs = np.stack([_band(ndimage.shift(big, t, order=3)[20:20 + h, 20:20 + w]) for t in true])
    got = _shifts(refs, movs)
    ref = np.array([-phase_cross_correlation(r, m, upsample_factor=20, normalization=None)[0]
                    for r, m in zip(refs, movs)])
    assert np.abs(got - ref).max() <= 0.05 + 1e-9
    assert np.abs(got - true).max() < 0.25  # patches lose their borders' overlap: a small bias, not a wrong peak


@pytest.mark.parametrize("scene, seed", [("cells", 100), pytest.param("natural", 101, marks=pytest.mark.slow)])
def test_similarity_registers_shift_rotation_and_breathing(scene: str, seed: int) -> None:
    s, moved, mats = moved_stack(seed, 192, scene)
    plain = fuse(moved, method="wavelet")
    r = fuse(moved, method="wavelet", align=True)
    rec = r.alignment[0]
    assert rec["aligned"] and rec["motion"] == "similarity" and rec["reference"] == 4
    assert _grid_error(np.asarray(rec["matrices"]), mats, 192) < 0.3
    crop = rec["crop"]
    assert 0.75 < crop["share"] < 1 and r.all_in_focus.shape == (crop["y"][1] - crop["y"][0], crop["x"][1] - crop["x"][0])
    aligned = in_reference_frame(r, s.aif.shape)
    assert psnr(aligned[INNER], s.aif[INNER]) > psnr(plain.all_in_focus[INNER], s.aif[INNER]) + 5


def test_unmoved_stack_stays_put_and_bad_settings_are_one_line() -> None:
    s, _, _ = moved_stack(102, 128, "text")
    r = fuse(s.slices, method="variance", align="translation")
    assert max(abs(v) for xy in r.alignment[0]["shift_px"] for v in xy) < 0.3
    with pytest.raises(StackMFFError, match="align must be one of"):
        fuse(s.slices, method="variance", align="affine")


def test_periodic_texture_is_fused_unaligned_with_a_warning() -> None:
    """Phase correlation can lock one period off on a grating; chained and direct registrations then
    disagree and the stack is fused as it was, never silently wrong."""
    yy, xx = np.mgrid[0:160, 0:160]
    grating = (127 + 100 * np.sin(xx / 3.0) * np.sin(yy / 3.0)).astype(np.uint8)
    rng = np.random.default_rng(0)
    stack = np.stack([np.roll(grating, int(rng.integers(-12, 12)), axis=1) for _ in range(6)])
    with pytest.warns(UserWarning, match="fused unaligned"):
        r = fuse(stack, method="variance", align="similarity")
    assert r.alignment[0]["aligned"] is False and "repetitive texture" in r.alignment[0]["why"]


@pytest.mark.slow  # issue 24: the CLI door: test_cli_align_writes_the_aligned_stack_and_refuses_to_overwrite
def test_cli_writes_the_transforms_also_for_a_memory_mapped_stack(tmp_path: Path, capsys) -> None:
    _, moved, _ = moved_stack(100, 192, "cells")
    src = tmp_path / "m.tif"
    tifffile.imwrite(src, moved, photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["-q", "fuse", str(src), "-o", str(tmp_path / "o"), "--method", "variance", "--align",
                 "similarity"]) == 0
    info = json.loads((tmp_path / "o" / "m_fusion.json").read_text())
    assert info["alignment"][0]["aligned"] and len(info["alignment"][0]["matrices"]) == 8
    # --lazy on memory-maps this file: slices are read one at a time to be warped, so it aligns too.
    assert main(["-q", "fuse", str(src), "-o", str(tmp_path / "o2"), "--method", "variance", "--align",
                 "translation", "--lazy", "on"]) == 0
    assert json.loads((tmp_path / "o2" / "m_fusion.json").read_text())["alignment"][0]["motion"] == "translation"


class _Recorded:
    """An on-disk-like array that records how many pixels each read returns."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = np.asarray(self.data[key])
        self.reads.append(out.size)
        return out


def test_lazy_stack_is_aligned_window_by_window(tmp_path: Path) -> None:
    """A lazy stack is never warped whole: the alignment is estimated from one slice at a time and
    each tile reads only the source region of its window; the result matches the in-memory one."""
    from napari_stackmff.core.fusion.align import AlignedArray
    from napari_stackmff.core.io.stack import FocalStack

    _, moved, _ = moved_stack(103, 256, "cells")
    # the legacy decision: tiles of 192 px are below the glow decision's margin (~400 px), which then
    # decides approximately near tile borders (tests/test_decision.py); here the warps are what is tested
    eager = fuse(moved, method="variance", align="similarity", decision="legacy")
    lazy_data = _Recorded(moved)
    lazy = fuse(FocalStack(lazy_data), method="variance", align="similarity", tile=192, decision="legacy")
    assert lazy.timings["tiles"] > 1
    assert lazy.alignment[0]["crop"] == eager.alignment[0]["crop"]
    diff = np.abs(lazy.all_in_focus.astype(int) - eager.all_in_focus.astype(int))
    # Windows are resampled from float32 coordinates relative to the window read (torch's grid_sample), so
    # a warped window agrees with the whole-slice warp to +-1 grey level (on 4e-5 of the pixels here); that
    # can tip a focus decision that is a tie (5 of 57,120 fused pixels). Exact before issue 24 (scipy).
    assert (diff > 1).mean() < 1e-3 and diff.mean() < 0.01
    from napari_stackmff.core.fusion.align import align_stack

    st_e, _ = align_stack(FocalStack(moved), "similarity")
    st_l, _ = align_stack(FocalStack(_Recorded(moved)), "similarity")
    window = (slice(None), slice(10, 150), slice(20, 170))
    assert np.abs(np.asarray(st_l.data[window]).astype(int) - np.asarray(st_e.data)[window].astype(int)).max() <= 1
    slice_px = moved.shape[1] * moved.shape[2]
    assert max(lazy_data.reads) <= slice_px  # never more than one slice at a time
    assert sum(r < 0.7 * slice_px for r in lazy_data.reads) > moved.shape[0]  # windows, not whole slices
    st, _ = align_stack(FocalStack(_Recorded(moved)), "translation")
    assert isinstance(st.data, AlignedArray)
    assert st.data[3, 10:20, 5:9].shape == (10, 4) and st.data[2].shape == st.data.shape[1:]


def test_crop_box_is_the_rectangle_every_slice_covers() -> None:
    """Two slices 40 px apart share the top-left 88 px square: under the 50% that align_stack accepts."""
    from napari_stackmff.core.fusion.align import MIN_VALID_SHARE, crop_box, similarity_matrix

    c = (63.5, 63.5)
    mats = [np.eye(3), similarity_matrix(1.0, 0.0, np.array([40.0, 40.0]), c)]
    y0, y1, x0, x1 = crop_box([np.stack(mats)], (128, 128))
    assert (y1 - y0) * (x1 - x0) / 128**2 < MIN_VALID_SHARE
    assert (y0, x0) == (0, 0) and 86 <= y1 <= 89 and 86 <= x1 <= 89


def test_cli_align_writes_the_aligned_stack_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    from napari_stackmff.core import load_stack

    s, moved, _ = moved_stack(104, 192, "natural")
    src = tmp_path / "m.tif"
    tifffile.imwrite(src, moved, photometric="minisblack", metadata={"axes": "ZYX"})
    assert main(["-q", "align", str(src), "-o", str(tmp_path / "al")]) == 0
    out = capsys.readouterr().out
    assert "similarity onto slice 4" in out and "kept" in out
    info = json.loads((tmp_path / "al" / "m_alignment.json").read_text())
    crop = info["alignment"][0]["crop"]
    aligned = load_stack(tmp_path / "al" / "m_aligned.ome.tif")
    assert aligned.shape == (8, crop["y"][1] - crop["y"][0], crop["x"][1] - crop["x"][0])
    # The aligned stack fuses as well as aligning inside fuse does, and re-aligning it finds ~nothing.
    a = fuse(aligned, method="wavelet")
    b = fuse(moved, method="wavelet", align=True)
    assert psnr(a.all_in_focus, b.all_in_focus) > 40
    again = fuse(aligned, method="wavelet", align="similarity").alignment[0]
    assert max(abs(v) for xy in again["shift_px"] for v in xy) < 0.6  # the residual of a 0.2-px registration
    assert max(abs(v - 1) for v in again["scale"]) < 0.003
    assert main(["-q", "align", str(src), "-o", str(tmp_path / "al")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_time_series_of_rgb_slices_aligns_each_time_point_with_one_crop() -> None:
    s, moved, mats = moved_stack(106 + 1, 160, "cells")
    rgb = np.stack([moved, moved[:, :, ::-1] // 2 + 60, 255 - moved], -1)  # three different channels
    series = np.stack([rgb, rgb[:, ::-1]])  # t=1: the same scene flipped
    r = fuse(series, method="wavelet", align="similarity", blend="soft", axes="TZYXC")
    assert len(r.alignment) == 2 and all(rec["aligned"] for rec in r.alignment)
    assert r.alignment[0]["crop"] == r.alignment[1]["crop"]  # one crop for the whole series
    assert r.all_in_focus.shape[0] == 2 and r.all_in_focus.shape[-1] == 3 and r.all_in_focus.dtype == np.uint8
    single = fuse(rgb, method="wavelet", align="similarity", blend="soft")
    crop0 = single.alignment[0]["crop"]
    assert crop0["share"] >= r.alignment[0]["crop"]["share"]
    np.testing.assert_allclose(np.asarray(r.alignment[0]["matrices"]), np.asarray(single.alignment[0]["matrices"]))


def _drifting(slices: np.ndarray, shift: tuple[float, float], zoom: float) -> tuple[np.ndarray, float]:
    """``slices`` moved as a stack that drifts and breathes: slice z shifted by (z - mid) * ``shift`` (dy, dx) px
    and zoomed by (z - mid) * ``zoom`` about the centre. Returns the slices and the largest corner move (px)."""
    from napari_stackmff.core.fusion.align import similarity_matrix, warp_slice

    n, h, w = slices.shape
    mid, c = n // 2, ((w - 1) / 2, (h - 1) / 2)
    mats = [similarity_matrix(1 + zoom * (z - mid), 0.0, np.array(shift) * (z - mid), c) for z in range(n)]
    corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], float)
    move = max(float(np.max(np.hypot(*(m @ corners - corners)[:2]))) for m in mats)
    # warp_slice samples at matrix @ p: a slice whose content sits at T(p) is the original sampled at T^-1.
    return np.stack([warp_slice(s, np.linalg.inv(m)) for s, m in zip(slices, mats)]), move


def test_auto_aligns_a_drifting_breathing_stack_and_leaves_a_still_one_exactly() -> None:
    """align="auto": the probe reads a still stack as still and fuses it exactly as align=None does; the same
    stack drifting 0.8 px and breathing 0.4% per slice is read as moving (within 25% of the truth),
    aligned with similarity, and fuses far closer to the truth than unaligned."""
    from napari_stackmff.core.fusion.align import AUTO_MOVE_PX

    s, _, _ = moved_stack(105, 192, "cells")  # s.slices: captured unmoved
    plain = fuse(s.slices, method="wavelet")
    auto = fuse(s.slices, method="wavelet", align="auto")
    np.testing.assert_array_equal(auto.all_in_focus, plain.all_in_focus)
    np.testing.assert_array_equal(auto.focus_map, plain.focus_map)
    rec = auto.alignment[0]
    assert rec["aligned"] is False and rec["motion"] is None and "crop" not in rec
    assert not rec["auto"]["moves"] and rec["auto"]["max_px"] < AUTO_MOVE_PX / 2
    assert rec["auto"]["slices"] == [0, 2, 4, 5, 7]

    moving, true_move = _drifting(s.slices, (0.8, 0.5), 0.004)
    r = fuse(moving, method="wavelet", align="auto")
    rec = r.alignment[0]
    assert rec["auto"]["moves"] and rec["aligned"] and rec["motion"] == "similarity"
    assert abs(rec["auto"]["max_px"] - true_move) < 0.25 * true_move, (rec["auto"]["max_px"], true_move)
    unaligned = fuse(moving, method="wavelet")
    crop = rec["crop"]
    box = (slice(crop["y"][0] + 8, crop["y"][1] - 8), slice(crop["x"][0] + 8, crop["x"][1] - 8))
    aligned = in_reference_frame(r, s.aif.shape)
    assert psnr(aligned[box], s.aif[box]) > psnr(unaligned.all_in_focus[box], s.aif[box]) + 3


def test_auto_leaves_slices_of_different_scenes_alone() -> None:
    """Slices that do not correlate once registered (a confocal z-stack shows other nuclei in every slice;
    here five unrelated scenes) are not one scene moved: auto measures no motion and does not align."""
    from napari_stackmff.core.training import synth

    rng = np.random.default_rng(3)
    stack = np.stack([synth.random_stack(rng, size=160, n=2, rgb=False, noise=False, dtype="uint8").slices[0]
                      for _ in range(5)])
    r = fuse(stack, method="variance", align="auto")
    pr = r.alignment[0]["auto"]
    assert not pr["moves"] and len(pr["unmeasured"]) == 4 and r.alignment[0]["aligned"] is False
    assert r.all_in_focus.shape == stack.shape[1:]


def test_cli_auto_by_default_one_line_and_a_bare_align_is_similarity(tmp_path: Path, capsys) -> None:
    from napari_stackmff.cli import build_parser

    parse = lambda *a: build_parser().parse_args(["fuse", "in", "-o", "out", *a]).align  # noqa: E731
    assert (parse(), parse("--align"), parse("--align", "translation"), parse("--align", "off")) == \
        ("auto", "similarity", "translation", "off")
    assert build_parser().parse_args(["batch", "root", "-o", "out", "--align"]).align == "similarity"
    s, _, _ = moved_stack(105, 192, "cells")
    moving, _ = _drifting(s.slices, (0.8, 0.5), 0.004)
    for name, data in (("still", s.slices), ("moving", moving)):
        tifffile.imwrite(tmp_path / f"{name}.tif", data, photometric="minisblack", metadata={"axes": "ZYX"})

    def run(name: str, *extra: str) -> tuple[list[str], dict]:
        out = tmp_path / f"o_{name}_{len(extra)}"
        assert main(["-q", "fuse", str(tmp_path / f"{name}.tif"), "-o", str(out), "--method", "variance", *extra]) == 0
        lines = [ln for ln in capsys.readouterr().out.splitlines() if "align" in ln]
        return lines, json.loads((out / f"{name}_fusion.json").read_text())

    lines, info = run("still")
    assert len(lines) == 1 and lines[0].startswith("  align auto: slices move up to ") and \
        lines[0].endswith("-> not aligned"), lines
    assert info["alignment"][0]["auto"]["moves"] is False and info["alignment"][0]["aligned"] is False
    lines, info = run("moving")
    assert len(lines) == 1 and "-> aligned (similarity onto slice 4" in lines[0], lines
    assert info["alignment"][0]["aligned"] and "crop" in info["alignment"][0]
    lines, info = run("moving", "--align")  # bare: similarity, no probe
    assert len(lines) == 1 and lines[0].startswith("  aligned: similarity onto slice 4"), lines
    assert "auto" not in info["alignment"][0]
    lines, info = run("moving", "--align", "off")
    assert lines == [] and "alignment" not in info


def test_consistent_run_is_the_longest_stretch_without_a_failed_triple() -> None:
    from napari_stackmff.core.fusion.align import consistent_run

    assert consistent_run(14, []) == (0, 13)
    assert consistent_run(14, [2, 8, 9]) == (1, 7)  # the pseudoscorpion's failed triples (0-2, 6-8, 7-9)
    assert consistent_run(6, [2, 3, 4, 5]) == (0, 1)  # every triple fails: runs of two, too short to align
    assert consistent_run(9, [8]) == (0, 7)


def test_slices_that_do_not_register_are_left_out_and_said(monkeypatch) -> None:
    """A partial alignment (some slices register together, the rest do not) fuses the ones that do, on one
    grid, leaves the others out of the fusion, and says which and why (issue 26 item 4)."""
    from napari_stackmff.core.fusion import align as align_mod

    _, moved, _ = moved_stack(3, 128, "cells")
    stack = np.stack(moved)
    real = align_mod.estimate

    def partial(images, motion="similarity", reference=None):
        al = real(images, motion, reference)
        al.left_out = {6: "does not register consistently with slices 0-5 (test)",
                       7: "does not register consistently with slices 0-5 (test)"}
        al.matrices[6:] = np.eye(3)
        return al

    monkeypatch.setattr(align_mod, "estimate", partial)
    with pytest.warns(UserWarning, match=r"left out of the fusion: slices 6, 7: does not register"):
        r = fuse(stack, method="variance", align="similarity")
    assert r.alignment[0]["aligned"] and set(r.alignment[0]["left_out"]) == {"6", "7"}
    assert not np.isin(r.index, [6, 7]).any()
    assert r.excluded and set(r.excluded[0]) == {"6", "7"}
    assert "slices 6-7 left out: does not register" in align_mod.summary(r.alignment)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_stacks" / "pseudoscorpion_rpi_microscope"


@pytest.mark.slow  # 30 s: the real stack at full size
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_pseudoscorpion_registers_the_slices_that_can_be_registered() -> None:
    """Focused down and back up by hand, with a leg that moves: slices 1-7 register together; 0 and 10-13 are
    left out with what was measured, not the whole stack fused unaligned (issue 26 item 4). Slices 8-9 are so
    far out of focus that whether they agree within 1 px depends on the patch size (left out with 86-px
    patches on the 384-px copy, kept with 81 px; the fused images look alike): either is right here."""
    import re

    from napari_stackmff.core import load_stack
    from napari_stackmff.core.fusion.align import estimate

    files = sorted(SHARED.glob("*.png"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    s = load_stack(files)
    al = estimate((s.focus_image(z) for z in range(s.n_slices)), "similarity")
    assert al.distrust is None
    assert {0, 10, 11, 12, 13} <= set(al.left_out) <= {0, 8, 9, 10, 11, 12, 13}
    assert not set(al.left_out) & set(range(1, 8))
    assert "disagree across slices 0-2" in al.left_out[0] and "the scene moved" in al.left_out[0]
    scales = [float(np.sqrt(np.linalg.det(m[:2, :2]))) for m in al.matrices[1:8]]
    assert 0.95 < min(scales) and max(scales) < 1.05  # focus breathing, not a wild fit


def test_a_static_stack_never_loses_slices_to_a_partial_alignment() -> None:
    """Defocus alone can make the two routes disagree a little on a tiny crop (1.3-1.4 px here): that is not
    motion, so no slice is left out; the stack is fused whole and unaligned, saying why."""
    from napari_stackmff.core.training.synth import make_sample

    s = make_sample("cells", n=10, size=128, seed=7)
    rgb = np.stack([s.slices[:, :64, :64] // 257] * 3, axis=-1).astype(np.uint8)
    with pytest.warns(UserWarning, match="too little to tell motion from defocus"):
        r = fuse(rgb, method="variance", align="auto")
    assert r.all_in_focus.shape == (64, 64, 3) and not r.excluded


@pytest.mark.parametrize("dtype, channels", [("uint8", 3), ("uint16", 0), ("float32", 0)])
@pytest.mark.parametrize("homography", [False, True])
def test_fast_warp_is_the_exact_warp(dtype, channels, homography, monkeypatch) -> None:
    """The slices a fusion reads are warped by OpenCV when it is installed: the same cubic convolution and
    edges as the torch path, for a window with an offset (a crop), within a grey level (its sub-pixel
    positions are on a 1/32-px grid). Without OpenCV the fast path is the torch path itself."""
    pytest.importorskip("cv2")
    from scipy import ndimage as ndi

    from napari_stackmff.core.fusion import align
    from napari_stackmff.core.fusion.align import similarity_matrix, warp_window

    rng = np.random.default_rng(5)
    shape = (120, 160) + ((channels,) if channels else ())
    top = {"uint8": 255, "uint16": 65535, "float32": 1.0}[dtype]
    img = (ndi.gaussian_filter(rng.random(shape), (2, 2, 0)[:len(shape)]) * 4 - 1.5).clip(0, 1) * top
    img = img.astype(dtype)
    m = similarity_matrix(1.03, 2.0, np.array([4.3, -2.6]), (80, 60))
    if homography:
        m = m.copy()
        m[2, :2] = (1e-4, -5e-5)
    read = lambda a, b: img[a, b]  # noqa: E731
    exact = warp_window(read, m, (120, 160), slice(10, 110), slice(5, 150), (3, 4))
    fast = warp_window(read, m, (120, 160), slice(10, 110), slice(5, 150), (3, 4), fast=True)
    assert fast.shape == exact.shape and fast.dtype == exact.dtype
    diff = np.abs(fast.astype(np.float64) - exact.astype(np.float64))
    assert diff.max() <= (1 if dtype == "uint8" else 0.004 * top), diff.max()
    assert diff.mean() <= 0.001 * top
    monkeypatch.setattr(align, "_cv2", lambda: None)
    np.testing.assert_array_equal(warp_window(read, m, (120, 160), slice(10, 110), slice(5, 150), (3, 4), fast=True),
                                  exact)
