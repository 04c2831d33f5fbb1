"""Nothing lost to a name: every stack gets its own result names, results are never replaced
without --overwrite, and a replaced result set leaves no stale file behind (issue 11, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from conftest import make_synth, summary_counts, write_png_slices

from napari_stackmff.cli import main
from napari_stackmff.core.io.discover import survey
from napari_stackmff.core.io.records import stack_name


def _tif(path: Path, seed: int) -> Path:
    tifffile.imwrite(path, make_synth(seed, 4, 48, "natural", "plane", "uint8").slices,
                    photometric="minisblack", metadata={"axes": "ZYX"})
    return path


def test_names_keep_the_full_stem() -> None:
    assert stack_name("x/a.tif") == "a" and stack_name("x/a.v2.tif") == "a.v2"
    assert stack_name("x/a.ome.tif") == "a" and stack_name("x/cells.2024-01-05.OME.TIFF") == "cells.2024-01-05"
    assert stack_name("x/scene") == "scene" and stack_name("x/s.zarr") == "s"


def test_batch_gives_colliding_stacks_their_own_results(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir()
    _tif(root / "a.tif", 1)
    _tif(root / "a.v2.tif", 2)
    write_png_slices(root / "a", make_synth(3, 4, 48, "natural", "plane", "uint8").slices)
    jobs, _ = survey(root)
    assert sorted(j.name for j in jobs) == ["a", "a.v2", "a_tif"]
    assert main(["-q", "batch", str(root), "-o", str(out), "--method", "variance"]) == 0
    assert summary_counts(capsys.readouterr().out) == (3, 0, 0)
    sources = {json.loads((out / f"{n}_fusion.json").read_text())["source"] for n in ("a", "a.v2", "a_tif")}
    assert sources == {str(root / "a.tif"), str(root / "a.v2.tif"), str(root / "a")}
    # Stable: the next run finds every result and fuses nothing again.
    assert main(["-q", "batch", str(root), "-o", str(out), "--method", "variance"]) == 0
    assert summary_counts(capsys.readouterr().out) == (0, 3, 0)


def test_batch_never_replaces_another_stacks_results(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    for root in ("r1", "r2"):
        (tmp_path / root).mkdir()
        _tif(tmp_path / root / "scene.tif", 4 if root == "r1" else 5)
    assert main(["-q", "batch", str(tmp_path / "r1"), "-o", str(out), "--method", "variance"]) == 0
    before = (out / "scene_all_in_focus.tif").read_bytes()
    capsys.readouterr()
    assert main(["-q", "batch", str(tmp_path / "r2"), "-o", str(out), "--method", "variance"]) == 1
    captured = capsys.readouterr()
    assert summary_counts(captured.out) == (0, 0, 1) and "holds the results of" in captured.out + captured.err
    assert (out / "scene_all_in_focus.tif").read_bytes() == before
    assert main(["-q", "batch", str(tmp_path / "r2"), "-o", str(out), "--method", "variance", "--overwrite"]) == 0
    assert (out / "scene_all_in_focus.tif").read_bytes() != before


def test_fuse_refuses_to_overwrite_and_replaces_the_whole_set(tmp_path: Path, capsys) -> None:
    src, out = _tif(tmp_path / "s.tif", 6), tmp_path / "out"
    assert main(["-q", "fuse", str(src), "-o", str(out), "--method", "variance", "--z-step", "2"]) == 0
    assert (out / "s_height_map.tif").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    # Again, other settings, no --overwrite: one line, nothing touched.
    assert main(["-q", "fuse", str(src), "-o", str(out), "--method", "laplacian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exist" in err[0] and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # With --overwrite and no z-step: the new set replaces the old one, stale height map included.
    assert main(["-q", "fuse", str(src), "-o", str(out), "--method", "laplacian", "--overwrite"]) == 0
    info = json.loads((out / "s_fusion.json").read_text())
    assert info["method"] == "laplacian" and not (out / "s_height_map.tif").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*info["outputs"].values(), "s_fusion.json"])


def test_streamed_fuse_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    src, out = _tif(tmp_path / "s.tif", 7), tmp_path / "out"
    cmd = ["-q", "fuse", str(src), "-o", str(out), "--method", "variance", "--stream", "tiff"]
    assert main(cmd) == 0
    before = (out / "s_fused.tif").read_bytes()
    capsys.readouterr()
    assert main(cmd) == 2 and "already exists" in capsys.readouterr().err
    assert (out / "s_fused.tif").read_bytes() == before
    assert main([*cmd, "--overwrite"]) == 0


def test_batch_refuses_an_output_inside_a_stack_and_accepts_one_in_root(tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    for i, name in enumerate(("st01", "st02")):
        write_png_slices(root / name, make_synth(10 + i, 4, 48, "natural", "plane", "uint8").slices)
    slices = sorted(p.name for p in (root / "st01").iterdir())
    for out in (root / "st01", root / "st01" / "sub"):
        capsys.readouterr()
        assert main(["-q", "batch", str(root), "-o", str(out), "--method", "variance"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "st01" in err[0] and "holds slices" in err[0]
    assert sorted(p.name for p in (root / "st01").iterdir()) == slices  # nothing written into the stack
    for expected in ((2, 0, 0), (0, 2, 0)):  # a results folder in ROOT: both fused, then it is no stack
        assert main(["-q", "batch", str(root), "-o", str(root / "results"), "--method", "variance"]) == 0
        assert summary_counts(capsys.readouterr().out) == expected


def test_array_axes_are_read_only_when_one_reading_fits() -> None:
    """(8, 64, 64, 2) is 8 slices of two channels, not 8 time points of 64 64×2 "images"; arrays
    that fit several readings are refused with the readings listed, and axes= settles them."""
    import pytest

    from napari_stackmff.core import fuse
    from napari_stackmff.core.errors import StackError

    s = make_synth(12, 6, 64, "natural", "plane", "uint8")
    two = np.stack([s.slices, s.slices // 2], -1)  # (6, 64, 64, 2)
    r = fuse(two, method="variance", device="cpu")
    assert r.all_in_focus.shape == (64, 64, 2) and r.focus_map.shape == (64, 64)
    series = np.stack([s.slices, s.slices])  # (2, 6, 64, 64): two time points, or two channels?
    with pytest.raises(StackError) as err:
        fuse(series, method="variance", device="cpu")
    assert "TZYX (a time series) or CZYX (channels first)" in str(err.value) and "axes=" in str(err.value)
    assert fuse(series, method="variance", device="cpu", axes="TZYX").focus_map.shape == (2, 64, 64)
    by_channel = fuse(series, method="variance", device="cpu", axes="CZYX")
    assert by_channel.all_in_focus.shape == (64, 64, 2) and by_channel.focus_map.shape == (64, 64)
    with pytest.raises(StackError, match="files and stacks carry their own axes"):
        fuse(s.to_stack(), method="variance", axes="TZYX")
