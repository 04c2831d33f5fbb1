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
from bench_align import moved_stack  # noqa: E402

from napari_stackmff.cli import main  # noqa: E402
from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.errors import StackMFFError  # noqa: E402
from napari_stackmff.core.metrics import psnr  # noqa: E402

INNER = (slice(24, -24), slice(24, -24))


def _grid_error(est: np.ndarray, true: list[np.ndarray], size: int) -> float:
    yy, xx = np.mgrid[24:size - 24:16, 24:size - 24:16]
    g = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    return float(np.mean([np.linalg.norm((e @ g - m @ g)[:2], axis=0).mean() for e, m in zip(est, true)]))


@pytest.mark.parametrize("scene, seed", [("cells", 100), ("natural", 101)])
def test_similarity_registers_shift_rotation_and_breathing(scene: str, seed: int) -> None:
    s, moved, mats = moved_stack(seed, 192, scene)
    plain = fuse(moved, method="wavelet")
    r = fuse(moved, method="wavelet", align=True)
    rec = r.alignment[0]
    assert rec["aligned"] and rec["motion"] == "similarity" and rec["reference"] == 4
    assert _grid_error(np.asarray(rec["matrices"]), mats, 192) < 0.3
    assert psnr(r.all_in_focus[INNER], s.aif[INNER]) > psnr(plain.all_in_focus[INNER], s.aif[INNER]) + 5


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
    assert r.alignment[0]["aligned"] is False


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
