"""The `stackmff` command end to end, in-process: fuse, batch (resume, overwrite, failures), demo."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_stackmff import cli
from napari_stackmff.core.training import synth
from napari_stackmff.core.io.records import result_paths

from conftest import summary_counts  # noqa: E402

OUTPUT_KEYS = ("all_in_focus", "all_in_focus_png", "focus_map", "focus_map_png", "confidence", "info")


@pytest.fixture(autouse=True)
def _restore_warning_format(monkeypatch):
    """cli.main() installs its own one-line warning format; keep that from leaking into other tests."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("stackmff: error:"), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, err)


@pytest.fixture
def batch_root(tmp_path, make_synth, write_png_slices):
    root = tmp_path / "root"
    write_png_slices(root / "sceneA", make_synth(0, 8, 128, "natural", "plane", "uint8").slices)
    write_png_slices(root / "sceneB", make_synth(2, 8, 128, "tissue", "objects", "uint8").slices)
    tifffile.imwrite(root / "c.tif", make_synth(10, 6, 96, "natural", "objects", "uint16").slices,
                     photometric="minisblack")
    return root


# ------------------------------------------------------------------------------------ fuse
def test_fuse_folder(tmp_path, capsys, make_synth, write_png_slices):
    s = make_synth(2, 8, 128, "tissue", "objects", "uint8")
    write_png_slices(tmp_path / "stackA", s.slices)
    out = tmp_path / "results"
    code, stdout, err = _run(capsys, "fuse", tmp_path / "stackA", "-o", out, "--method", "laplacian",
                             "--device", "cpu", "--z-step", "0.5")
    assert code == 0, err
    assert "Traceback" not in err
    paths = result_paths(out, "stackA")
    for key in (*OUTPUT_KEYS, "height_map"):
        assert paths[key].is_file(), key
        assert str(paths[key]) in stdout
    assert "laplacian" in stdout and "8 slices" in stdout
    info = json.loads(paths["info"].read_text())
    assert info["method"] == "laplacian" and info["z_step"] == pytest.approx(0.5)
    # The written result is a real fusion, not a copy of one slice.
    fm = tifffile.imread(paths["focus_map"])
    mask = synth.texture_mask(s.aif, quantile=0.5)
    assert (np.abs(fm - s.focus_index)[mask] <= 1).mean() > 0.9
    aif = tifffile.imread(paths["all_in_focus"])
    assert aif.dtype == np.uint8 and aif.shape == s.aif.shape
    assert not any(".part" in p.name for p in out.iterdir())


def test_fuse_tiff_named_after_file(tmp_path, capsys, make_synth):
    s = make_synth(10, 6, 96, "natural", "objects", "uint16")
    tifffile.imwrite(tmp_path / "z.ome.tif", s.slices, metadata={"axes": "ZYX", "PhysicalSizeZ": 1.5})
    code, _, err = _run(capsys, "fuse", tmp_path / "z.ome.tif", "-o", tmp_path / "o", "--method", "wavelet")
    assert code == 0, err
    hm = tifffile.imread(result_paths(tmp_path / "o", "z")["height_map"])
    fm = tifffile.imread(result_paths(tmp_path / "o", "z")["focus_map"])
    np.testing.assert_allclose(hm, fm * 1.5, atol=1e-4)


@pytest.mark.parametrize("case", ["missing", "corrupt", "single_png", "method", "device", "into_input"])
def test_fuse_bad_input_is_one_line_exit_2(tmp_path, capsys, write_png_slices, case):
    rng = np.random.default_rng(0)
    folder = tmp_path / "slices"
    paths = write_png_slices(folder, rng.integers(0, 255, (5, 32, 32), dtype=np.uint8))
    args = [folder, "-o", tmp_path / "out"]
    expect = []
    if case == "missing":
        args[0] = tmp_path / "nope"
        expect = [str(tmp_path / "nope"), "no such file"]
    elif case == "corrupt":
        paths[2].write_bytes(b"this is not a png")
        expect = ["3.png", "cannot read"]
    elif case == "single_png":
        args[0] = paths[0]
        expect = ["1.png", "not a focal stack"]
    elif case == "method":
        args += ["--method", "sharpest"]
        expect = ["unknown method 'sharpest'"]
    elif case == "device":
        args += ["--method", "variance", "--device", "cuda:7"]
        expect = ["cuda:7"]
    else:
        args = [folder, "-o", folder, "--method", "variance"]
        expect = ["input slice folder"]
    code, _, err = _run(capsys, "fuse", *args)
    assert code == 2
    _assert_one_error_line(err, *expect)
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in sorted(paths)]


# ------------------------------------------------------------------------------------ batch
def test_batch_resume_touch_and_overwrite(tmp_path, capsys, batch_root):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "batch", batch_root, "-o", out, "--method", "variance")
    assert code == 0, err
    assert summary_counts(stdout) == (3, 0, 0)
    for name in ("sceneA", "sceneB", "c"):
        for key in OUTPUT_KEYS:
            assert result_paths(out, name)[key].is_file(), (name, key)
    aif_c = result_paths(out, "c")["all_in_focus"]
    assert tifffile.imread(aif_c).dtype == np.uint16
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # Re-run: everything is skipped, nothing rewritten.
    code, stdout, _ = _run(capsys, "batch", batch_root, "-o", out, "--method", "variance")
    assert code == 0
    assert summary_counts(stdout) == (0, 3, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # Different settings are a different job: redone.
    code, stdout, _ = _run(capsys, "batch", batch_root, "-o", out, "--method", "tenengrad")
    assert summary_counts(stdout) == (3, 0, 0)
    code, stdout, _ = _run(capsys, "batch", batch_root, "-o", out, "--method", "tenengrad")
    assert summary_counts(stdout) == (0, 3, 0)

    # Touch one slice of sceneB: only sceneB is fused again.
    slice2 = batch_root / "sceneB" / "2.png"
    st = slice2.stat()
    os.utime(slice2, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    before = {n: result_paths(out, n)["info"].stat().st_mtime_ns for n in ("sceneA", "sceneB", "c")}
    code, stdout, _ = _run(capsys, "batch", batch_root, "-o", out, "--method", "tenengrad")
    assert code == 0
    assert summary_counts(stdout) == (1, 2, 0)
    after = {n: result_paths(out, n)["info"].stat().st_mtime_ns for n in ("sceneA", "sceneB", "c")}
    assert after["sceneA"] == before["sceneA"] and after["c"] == before["c"]
    assert after["sceneB"] != before["sceneB"]

    # A deleted output makes that stack redo.
    result_paths(out, "c")["focus_map_png"].unlink()
    code, stdout, _ = _run(capsys, "batch", batch_root, "-o", out, "--method", "tenengrad")
    assert summary_counts(stdout) == (1, 2, 0)
    assert result_paths(out, "c")["focus_map_png"].is_file()

    # --overwrite redoes all.
    code, stdout, _ = _run(capsys, "batch", batch_root, "-o", out, "--method", "tenengrad", "--overwrite")
    assert code == 0
    assert summary_counts(stdout) == (3, 0, 0)
    assert not any(".part" in p.name for p in out.iterdir())


def test_batch_with_a_corrupt_stack(tmp_path, capsys, batch_root):
    (batch_root / "sceneB" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "batch", batch_root, "-o", out, "--method", "variance")
    assert code == 1
    assert "Traceback" not in err and "Traceback" not in stdout
    assert summary_counts(stdout) == (2, 0, 1)
    failed = [line for line in stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "sceneB" in failed[0] and "3.png" in failed[0]
    for name in ("sceneA", "c"):
        for key in OUTPUT_KEYS:
            assert result_paths(out, name)[key].is_file()
    assert not any(p.name.startswith("sceneB") for p in out.iterdir())
    # After a fix, only the broken one is redone.
    (batch_root / "sceneB" / "3.png").unlink()
    code, stdout, _ = _run(capsys, "batch", batch_root, "-o", out, "--method", "variance")
    assert code == 0 and summary_counts(stdout) == (1, 2, 0)


def test_batch_output_inside_root_is_not_taken_for_a_stack(tmp_path, capsys, batch_root):
    out = batch_root / "results"
    code, stdout, err = _run(capsys, "batch", batch_root, "-o", out, "--method", "variance")
    assert code == 0, stdout + err
    assert summary_counts(stdout) == (3, 0, 0)
    code, stdout, err = _run(capsys, "batch", batch_root, "-o", out, "--method", "variance")
    assert code == 0, stdout + err
    assert summary_counts(stdout) == (0, 3, 0)


def test_batch_on_empty_or_missing_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "batch", tmp_path / "empty", "-o", tmp_path / "out")
    assert code == 2
    _assert_one_error_line(err, "found no stacks")
    code, _, err = _run(capsys, "batch", tmp_path / "missing", "-o", tmp_path / "out")
    assert code == 2
    _assert_one_error_line(err, "not a folder")


# ------------------------------------------------------------------------------------ demo
def test_demo(tmp_path, capsys, monkeypatch):
    # The bundled sample is 256 px; a smaller one keeps this test quick, the code path is the same.
    real = synth.make_sample
    monkeypatch.setattr(synth, "make_sample", lambda kind="cells", **kw: real(kind, **{**kw, "size": 96}))
    out = tmp_path / "demo"
    code, stdout, err = _run(capsys, "demo", "-o", out)
    assert code == 0, err
    printed = [Path(tok) for tok in re.findall(r"(/\S+)", stdout)]
    printed = [p for p in printed if p.suffix in (".tif", ".png", ".json")]
    assert len(printed) >= 7
    for p in printed:
        assert p.is_file(), p
    assert (out / "sample_stack.ome.tif").is_file()
    m = re.search(r"within ±1 slice of the truth on ([\d.]+)%", stdout)
    assert m and float(m[1]) > 50, stdout
