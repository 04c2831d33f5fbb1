"""Soft, edge-aware blending (core/blend.py): fewer halos than hard selection at occlusion edges,
values always a mix of the slices at that pixel, the same through tiles, disk streaming, time
series and parallel batches, for classical and model methods."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_halo import edge_band, halo_percent  # noqa: E402

from napari_stackmff.cli import main  # noqa: E402
from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.errors import StackMFFError  # noqa: E402
from napari_stackmff.core.fusion.metrics import psnr  # noqa: E402

INNER = (slice(16, -16), slice(16, -16))


@pytest.mark.parametrize("seed", [pytest.param(3, marks=pytest.mark.slow), 4])
def test_soft_blend_lowers_halos_at_occlusion_edges(make_synth, seed) -> None:
    s = make_synth(seed=seed, n=8, size=160, depth="objects")
    hard = fuse(s.slices, method="wavelet")
    soft = fuse(s.slices, method="wavelet", blend="soft")
    assert hard.blend == "hard" and soft.blend == "soft"
    np.testing.assert_array_equal(hard.focus_map, soft.focus_map)  # same decision, other pixels
    band = edge_band(s.focus_index)
    assert band[INNER].mean() > 0.05  # the stack really has depth edges
    assert halo_percent(soft.all_in_focus, s.aif, band) < 0.9 * halo_percent(hard.all_in_focus, s.aif, band)
    # ... without costing accuracy elsewhere (bench_halo.py: +0.28 dB mean on such mildly noisy stacks)
    assert psnr(soft.all_in_focus[INNER], s.aif[INNER]) > psnr(hard.all_in_focus[INNER], s.aif[INNER]) - 0.1


def test_hard_blend_is_pixel_faithful_and_soft_mixes_only_slices(make_synth) -> None:
    s = make_synth(seed=5, n=6, size=128, rgb=True, dtype="uint16")
    hard = fuse(s.slices, method="tenengrad", blend="hard")
    idx = hard.index
    np.testing.assert_array_equal(hard.all_in_focus, np.take_along_axis(s.slices, idx[None, ..., None], 0)[0])
    soft = fuse(s.slices, method="tenengrad", blend="soft")
    assert soft.all_in_focus.dtype == np.uint16 and soft.all_in_focus.shape == s.slices.shape[1:]
    lo, hi = s.slices.min(0).astype(int), s.slices.max(0).astype(int)
    a = soft.all_in_focus.astype(int)
    assert ((a >= lo - 1) & (a <= hi + 1)).all()  # a convex mix of the slices at that pixel (rounded)
    assert (a != hard.all_in_focus).mean() > 0.05  # and really not a copy


def test_identical_slices_blend_to_themselves() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (96, 96), dtype=np.uint8)
    out = fuse(np.stack([img] * 5), method="variance", blend="soft").all_in_focus
    np.testing.assert_array_equal(out, img)


def test_soft_blend_is_the_same_tiled_streamed_and_per_time_point(make_synth, tmp_path) -> None:
    from napari_stackmff.core.batch.writers import fuse_to_disk

    s = make_synth(seed=6, n=6, size=200)
    whole = fuse(s.slices, method="wavelet", blend="soft")
    tiled = fuse(s.slices, method="wavelet", blend="soft", tile=192)
    assert tiled.timings["tiles"] > 1
    assert np.abs(tiled.all_in_focus.astype(int) - whole.all_in_focus.astype(int)).max() <= 1
    disk = fuse_to_disk(s.slices, tmp_path / "s.tif", method="wavelet", blend="soft", tile=192)
    streamed = tifffile.imread(disk.outputs["all_in_focus"])
    assert np.abs(streamed.astype(int) - whole.all_in_focus.astype(int)).max() <= 1
    series = np.stack([s.slices, s.slices[:, ::-1]])
    ts = fuse(series, method="wavelet", blend="soft", axes="TZYX")
    np.testing.assert_array_equal(ts.all_in_focus[0], whole.all_in_focus)
    np.testing.assert_array_equal(ts.all_in_focus[1], whole.all_in_focus[::-1])


@pytest.mark.slow  # issue 24: a V2 run; soft blend of a classical selection: the tests above
def test_soft_blend_with_the_model(make_synth) -> None:
    s = make_synth(seed=7, n=6, size=128)
    hard = fuse(s.slices, method="stackmff-v2", device="cpu")
    soft = fuse(s.slices, method="stackmff-v2", device="cpu", blend="soft")
    np.testing.assert_array_equal(hard.focus_map, soft.focus_map)
    assert psnr(soft.all_in_focus[INNER], s.aif[INNER]) > psnr(hard.all_in_focus[INNER], s.aif[INNER]) - 0.2


def test_blend_through_cli_and_parallel_batch(make_synth, tmp_path, capsys) -> None:
    from napari_stackmff.core.io.discover import discover_stacks
    from napari_stackmff.core.batch.jobs import run_batch
    from napari_stackmff.core.batch.distributed import run_batch_parallel

    root = tmp_path / "in"
    root.mkdir()
    for i in range(2):
        tifffile.imwrite(root / f"s{i}.tif", make_synth(seed=10 + i, n=5, size=96).slices)
    assert main(["-q", "fuse", str(root / "s0.tif"), "-o", str(tmp_path / "one"), "--method", "wavelet",
                 "--blend", "soft"]) == 0
    info = json.loads((tmp_path / "one" / "s0_fusion.json").read_text())
    assert info["blend"] == "soft"
    jobs = discover_stacks(root)
    settings = {"method": "wavelet", "blend": "soft", "align": "similarity"}  # both options through both paths
    seq = run_batch(jobs, tmp_path / "seq", **settings)
    par = run_batch_parallel(jobs, tmp_path / "par", quiet=True, workers=2, **settings)
    assert len(seq.done) == len(par.done) == 2
    for i in range(2):
        a = tifffile.imread(tmp_path / "seq" / f"s{i}_all_in_focus.tif")
        b = tifffile.imread(tmp_path / "par" / f"s{i}_all_in_focus.tif")
        np.testing.assert_array_equal(a, b)
        info = json.loads((tmp_path / "par" / f"s{i}_fusion.json").read_text())
        assert info["blend"] == "soft" and info["alignment"][0]["motion"] == "similarity"
    one = tifffile.imread(tmp_path / "one" / "s0_all_in_focus.tif")
    assert one.shape == (96, 96)  # no alignment asked: not cropped


def test_unknown_blend_is_one_line() -> None:
    with pytest.raises(StackMFFError, match="blend must be one of hard, exact, soft"):
        fuse(np.zeros((3, 32, 32), np.uint8), method="variance", blend="smooth")


def _noisy_occlusion(seed: int, size: int = 160, n: int = 8):
    """bench_halo.py's noisy occlusion stacks: a near object's defocused rim spills over the background."""
    from napari_stackmff.core.training import synth

    rng = np.random.default_rng(seed)
    rgb = seed % 2 == 1
    return synth.random_stack(rng, size=size, n=n, rgb=rgb, depth="objects", noise=True,
                              dtype="uint16" if rgb else "uint8", max_radius=(6.0, 10.0))


@pytest.mark.parametrize("seed", [0, pytest.param(2, marks=pytest.mark.slow), 3])
def test_two_scale_blend_has_the_fewest_halos(seed) -> None:
    """Issue 26: the base layers mixed wide, the detail narrow near depth changes: the overshoot at depth
    edges (glow, dark rings) falls well below the hard and the soft results', with the same decision."""
    s = _noisy_occlusion(seed)
    hard = fuse(s.slices, method="wavelet")
    soft = fuse(s.slices, method="wavelet", blend="soft")
    two = fuse(s.slices, method="wavelet", blend="two-scale")
    assert two.blend == "two-scale" and two.all_in_focus.dtype == s.slices.dtype
    np.testing.assert_array_equal(two.focus_map, hard.focus_map)
    band = edge_band(s.focus_index)
    assert band[INNER].mean() > 0.05
    halo = {k: halo_percent(r.all_in_focus, s.aif, band) for k, r in (("hard", hard), ("soft", soft), ("two", two))}
    assert halo["two"] < 0.6 * halo["hard"] and halo["two"] < halo["soft"], halo
    # not free: further from any one slice (bench_halo.py: -0.9 to +0.5 dB against hard on these stacks)
    assert psnr(two.all_in_focus[INNER], s.aif[INNER]) > psnr(hard.all_in_focus[INNER], s.aif[INNER]) - 1.5


def test_two_scale_blend_is_the_same_tiled_and_per_time_point() -> None:
    s = _noisy_occlusion(5, size=480, n=4)
    whole = fuse(s.slices, method="wavelet", blend="two-scale")
    tiled = fuse(s.slices, method="wavelet", blend="two-scale", tile=448)  # its reach needs tiles >= 448 px
    assert tiled.timings["tiles"] > 1
    np.testing.assert_array_equal(tiled.focus_map, whole.focus_map)
    assert np.abs(tiled.all_in_focus.astype(int) - whole.all_in_focus.astype(int)).max() <= 1
    series = np.stack([s.slices, s.slices[:, ::-1]])
    ts = fuse(series, method="wavelet", blend="two-scale", axes="TZYX" if s.slices.ndim == 3 else "TZYXC")
    for got, want in ((ts.all_in_focus[0], whole.all_in_focus), (ts.all_in_focus[1], whole.all_in_focus[::-1])):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float32 sums: rounding only
