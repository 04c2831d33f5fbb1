"""StackMFF-V2 on big images: no seam where tiles meet, the image border, the run-time estimate.

Bounds (measured with the shipped weights on make_synth stacks, 256 px, N = 6, 128-px tiles, 32-px
margin; benchmarks/bench_v2_tiles.py has the big-image figures):
* cross-faded tiles: the mean |focus step| across a tile boundary is within 2x the step between any
  two other neighbouring pixels (measured 0.8-1.4x on seeds 11-13); hard centre-crop stitching is
  above 3x (measured 3.8-4.3x): the seam the cross-fade removes.
* tiled vs untiled: mean |focus difference| < 0.3 slice (measured 0.12-0.15), and the tiles' focus
  error against the truth no worse than the untiled run's by more than 0.1 slice (measured 0.18-0.23
  tiled vs 0.21-0.24 untiled: tiles see less context, not wrong context).
* the outer 8 px: within ±1 slice of the truth as often as inside, to 5 points (measured 99.4-100%
  vs 98.5-99.6%).
"""

from __future__ import annotations

import re
import threading
from typing import Sequence

import numpy as np
import pytest
import torch

from napari_stackmff import cli
from napari_stackmff.core.tiles.pipeline import EstimateMessage, FocusMaps, iter_fused_tiles, sub_progress
from napari_stackmff.core.fusion.dispatch import fuse
from napari_stackmff.core.io.read import load_stack
from napari_stackmff.core.models.inference import TILE_OVERLAP, format_duration
from napari_stackmff.core.training.synth import texture_mask
from napari_stackmff.core.tiles.tiling import iter_tiles

from conftest import make_synth  # noqa: E402  (tests/ is on the path: pytest's rootdir conftest)

SIZE, TILE, N = 256, 128, 6


def _boundary_steps(focus: np.ndarray, side: int = TILE, overlap: int = TILE_OVERLAP) -> tuple[float, float]:
    """Mean |step| across tile boundaries (both axes) and between all other neighbouring pixels."""
    tiles = list(iter_tiles(*focus.shape, side, overlap))
    at, other = [], []
    for axis, bounds in ((1, {t.write[1].start for t in tiles}), (0, {t.write[0].start for t in tiles})):
        d = np.abs(np.diff(focus, axis=axis))
        d = d if axis == 1 else d.T
        cols = sorted(b - 1 for b in bounds if b > 0)
        mask = np.ones(d.shape[1], bool)
        mask[cols] = False
        at.append(d[:, cols].ravel())
        other.append(d[:, mask].ravel())
    return float(np.concatenate(at).mean()), float(np.concatenate(other).mean())


@pytest.fixture(scope="module")
def runs() -> dict:
    s = make_synth(seed=11, n=N, size=SIZE)
    data = np.ascontiguousarray(s.slices)
    return {"synth": s, "whole": fuse(data, "stackmff-v2", "cpu"),
            "hard": fuse(data, "stackmff-v2", "cpu", tile=TILE, feather=False),
            "feathered": fuse(data, "stackmff-v2", "cpu", tile=TILE)}


def test_feathered_tiles_leave_no_step_at_the_boundary(runs):
    assert runs["feathered"].timings["tiles"] == 16
    at, other = _boundary_steps(runs["feathered"].focus_map)
    hard_at, hard_other = _boundary_steps(runs["hard"].focus_map)
    assert at < 2 * other, (at, other)
    assert hard_at > 3 * hard_other, (hard_at, hard_other)  # the seam the cross-fade removes


def test_tiled_agrees_with_untiled_and_the_truth(runs):
    s, whole, tiled = runs["synth"], runs["whole"], runs["feathered"]
    assert np.abs(tiled.focus_map - whole.focus_map).mean() < 0.3
    tex = texture_mask(s.aif, quantile=0.5)
    err_tiled = np.abs(tiled.focus_map - s.focus_index)[tex].mean()
    err_whole = np.abs(whole.focus_map - s.focus_index)[tex].mean()
    assert err_tiled < err_whole + 0.1, (err_tiled, err_whole)
    # Blending moves the focus map, never the rule that each pixel is a real pixel of the slice it names.
    picked = np.take_along_axis(np.asarray(s.slices), tiled.index[None], 0)[0]
    np.testing.assert_array_equal(tiled.all_in_focus, picked)


def test_border_columns_keep_the_focus_of_the_truth(runs):
    """The outermost 8 px on every side find the truth about as often as the inside does."""
    s, res = runs["synth"], runs["feathered"]
    tex = texture_mask(s.aif, quantile=0.5)
    near = np.zeros(tex.shape, bool)
    near[:8] = near[-8:] = True
    near[:, :8] = near[:, -8:] = True
    ok = np.abs(res.focus_map - s.focus_index) <= 1
    assert ok[near & tex].mean() > ok[~near & tex].mean() - 0.05, (ok[near & tex].mean(), ok[~near & tex].mean())


class _OffsetEngine:
    """A fake network: the true map plus a different constant in every tile (what per-tile statistics do)."""

    overlap = min_overlap = TILE_OVERLAP
    single_tile = False
    estimate_s = None

    def __init__(self, truth: np.ndarray, offsets: bool, feather: int) -> None:
        self.truth, self.offsets, self.feather = truth, offsets, feather

    def bytes_per_pixel(self) -> float:
        return 1.0

    def schedule(self, windows: Sequence[tuple[slice, slice]]) -> None:
        pass

    def close(self) -> None:
        pass

    def maps(self, window, progress, cancel: threading.Event | None) -> FocusMaps:
        off = 0.3 * ((window[0].start // 7 + window[1].start // 5) % 4) if self.offsets else 0.0
        focus = torch.from_numpy(self.truth[window] + off)
        return FocusMaps(focus=focus, index=focus.round().long(), confidence=torch.ones_like(focus))


@pytest.mark.parametrize("offsets", [False, True])
def test_cross_fade_is_exact_where_tiles_agree_and_continuous_where_not(offsets):
    yy, xx = np.mgrid[:300, :420].astype(np.float32)
    truth = 2 + np.sin(yy / 40) + np.cos(xx / 55)  # smooth: steps of < 0.03 between neighbours
    stack = load_stack(np.zeros((6, 300, 420), np.uint8))  # truth spans slices 0-4
    out = np.full(truth.shape, np.nan, np.float32)
    for feather in (TILE_OVERLAP, 0):
        engine = _OffsetEngine(truth, offsets, feather)
        for tl in iter_fused_tiles(stack, engine, 0, TILE, TILE_OVERLAP):
            out[tl.write] = tl.focus
        assert not np.isnan(out).any()
        if not offsets:
            np.testing.assert_allclose(out, truth, atol=1e-5)
        elif feather:
            # A 0.3-0.9 slice jump spread over a 32-px raised cosine: < 0.05 per pixel.
            assert np.abs(np.diff(out, axis=0)).max() < 0.08 and np.abs(np.diff(out, axis=1)).max() < 0.08
        else:
            assert np.abs(np.diff(out, axis=1)).max() > 0.25  # hard stitching: the jump itself


def test_run_time_estimate_is_reported_through_progress():
    messages: list[tuple[int, int, str]] = []
    data = np.ascontiguousarray(make_synth(seed=12, n=4, size=192).slices)
    res = fuse(data, "stackmff-v2", "cpu", tile=TILE, progress=lambda d, t, m: messages.append((d, t, m)))
    estimates = [(d, t, m) for d, t, m in messages if isinstance(m, EstimateMessage)]
    assert len(estimates) == 1, messages
    done, total, msg = estimates[0]
    assert done == 1 and total == 9 and messages.index(estimates[0]) == 0  # after the first of 9 tiles
    assert re.fullmatch(r"stackmff-v2: about \d+ (s|min \d+ s) for 9 tiles \(tile 1/9\)", msg), msg
    assert msg.seconds > 0 and res.timings["estimate_s"] == msg.seconds


def test_single_tile_single_time_point_gets_no_estimate():
    res = fuse(np.ascontiguousarray(make_synth(seed=12, n=4, size=96).slices), "stackmff-v2", "cpu")
    assert res.timings["tiles"] == 1 and "estimate_s" not in res.timings


def test_estimate_keeps_its_seconds_through_progress_labels():
    got = []
    sub = sub_progress(lambda d, t, m: got.append(m), 0, 3, " (t=0)")
    sub = sub_progress(sub, 1, 4, " (tile 2/4)")
    sub(1, 1, EstimateMessage("stackmff-v2: about 12 s for 4 tiles", 12.0))
    assert got == ["stackmff-v2: about 12 s for 4 tiles (tile 2/4) (t=0)"] and got[0].seconds == 12.0


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 59.6, 200, 3900)] == ["4 s", "1 min 0 s", "3 min 20 s", "1 h 5 min"]


def test_cli_prints_the_estimate_on_its_own_line(tmp_path, capsys, monkeypatch):
    import tifffile

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.ascontiguousarray(make_synth(seed=12, n=4, size=192).slices), photometric="minisblack")
    monkeypatch.setattr(cli, "ESTIMATE_NOTICE_S", 0.0)  # a CPU test run is faster than the real threshold
    code = cli.main(["-q", "fuse", str(path), "-o", str(tmp_path / "out"), "--method", "stackmff-v2",
                     "--device", "cpu", "--tile", str(TILE)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert re.fullmatch(r"stackmff-v2: about \d+ s for 9 tiles \(tile 1/9\)", lines[0]), out
    assert lines[1].startswith("fused 4 slices")
