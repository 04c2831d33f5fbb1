"""Which files of a folder make the stack: the dominant naming pattern, the include= override,
and the exact inputs recorded in ``<name>_fusion.json``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_stackmff import cli, fuse, load_stack
from napari_stackmff.core.training import synth
from napari_stackmff.core.errors import StackError
from napari_stackmff.core.io.read import list_slice_files, select_slices, slice_pattern
from napari_stackmff.core.io.records import result_paths

PCB = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcb_stack"


@pytest.fixture(autouse=True)
def _restore_warning_format(monkeypatch):
    """cli.main() installs its own one-line warning format; keep that from leaking into other tests."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


def _write_pcb_like(folder: Path, s: synth.SynthStack) -> list[Path]:
    """Slices ``pcb_001.jpg ...`` plus a misregistered reference ``expected.jpg`` (the AIF shifted
    by 7 px), as in the real pcb_stack; returns the slice paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sl in enumerate(s.slices, start=1):
        p = folder / f"pcb_{i:03d}.jpg"
        Image.fromarray(np.ascontiguousarray(sl)).save(p, quality=95)
        paths.append(p)
    Image.fromarray(np.roll(s.aif, 7, axis=1)).save(folder / "expected.jpg", quality=95)
    return paths


def _decoded(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in paths])


@pytest.fixture
def pcb_like(tmp_path, make_synth):
    s = make_synth(3, 6, 96, "natural", "objects", "uint8", rgb=True)
    folder = tmp_path / "pcb_like"
    return folder, _write_pcb_like(folder, s), s


# ---------------------------------------------------------------------------------- the pattern
@pytest.mark.parametrize("name,pattern", [
    ("pcb_003.jpg", ("pcb_", ".jpg")), ("3.png", ("", ".png")), ("DSC_0356.JPG", ("DSC_", ".jpg")),
    ("img_01_z.tif", ("img_", "_z.tif")), ("expected.jpg", None),
])
def test_slice_pattern(name, pattern):
    assert slice_pattern(Path(name)) == pattern


def test_largest_pattern_group_wins_and_the_rest_is_left_out():
    names = ["z_01.tif", "z_02.tif", "z_10.tif", "preview_1.png", "preview_2.png", "notes.png", "z_03.tif"]
    stack, left = select_slices([Path(n) for n in names])
    assert [p.name for p in stack] == ["z_01.tif", "z_02.tif", "z_03.tif", "z_10.tif"]
    assert [p.name for p in left] == ["notes.png", "preview_1.png", "preview_2.png"]


def test_plain_numbers_are_a_pattern(tmp_path, write_png_slices):
    data = np.random.default_rng(0).integers(0, 255, (5, 24, 24), dtype=np.uint8)
    write_png_slices(tmp_path / "s", data)  # 1.png ... 5.png
    Image.fromarray(data[0]).save(tmp_path / "s" / "reference.png")
    with pytest.warns(UserWarning, match=r"left out 1 other image: reference\.png"):
        stack = load_stack(tmp_path / "s")
    assert [Path(f).name for f in stack.metadata["files"]] == [f"{i}.png" for i in range(1, 6)]
    np.testing.assert_array_equal(stack.data, data)


def test_folder_without_numbers_reads_every_image_in_natural_order(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (3, 20, 22), dtype=np.uint8)
    folder = tmp_path / "named"
    folder.mkdir()
    for name, img in zip(["c.png", "a.png", "b.png"], data):
        Image.fromarray(img).save(folder / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out, so nothing to warn about
        stack = load_stack(folder)
    assert [Path(f).name for f in stack.metadata["files"]] == ["a.png", "b.png", "c.png"]
    np.testing.assert_array_equal(stack.data, data[[1, 2, 0]])


# ---------------------------------------------------------------------------------- pcb-like folder
def test_reference_image_is_left_out_by_name(pcb_like):
    folder, slices, s = pcb_like
    with pytest.warns(UserWarning) as record:
        stack = load_stack(folder)
    left = [str(w.message) for w in record if "left out" in str(w.message)]
    assert len(left) == 1 and "expected.jpg" in left[0] and "pcb_00" not in left[0].split("left out")[1]
    assert stack.metadata["files"] == [str(p) for p in slices]
    np.testing.assert_array_equal(stack.data, _decoded(slices))


def test_fusion_of_the_selected_slices_finds_the_true_focus(pcb_like):
    folder, _, s = pcb_like
    with pytest.warns(UserWarning, match="expected.jpg"):
        result = fuse(folder, method="variance", device="cpu")
    assert result.n_slices == len(s.slices)
    mask = synth.texture_mask(s.aif, quantile=0.5)
    assert (np.abs(result.focus_map - s.focus_index)[mask] <= 1).mean() > 0.9  # measured 0.978


def test_include_glob_overrides_the_pattern(pcb_like):
    folder, slices, _ = pcb_like
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the user chose: no warning about left-out files
        stack = load_stack(folder, include="*.JPG")  # globs ignore case, like the extensions
    assert [Path(f).name for f in stack.metadata["files"]] == ["expected.jpg"] + [p.name for p in slices]
    result = fuse(folder, method="variance", device="cpu", include="*.jpg")  # passed through to load_stack
    assert result.n_slices == len(slices) + 1


def test_include_list_keeps_the_given_order(pcb_like):
    folder, slices, _ = pcb_like
    names = [slices[2].name, slices[0].name, slices[1].name]
    stack = load_stack(folder, include=names)
    assert [Path(f).name for f in stack.metadata["files"]] == names
    np.testing.assert_array_equal(stack.data, _decoded([slices[2], slices[0], slices[1]]))


@pytest.mark.parametrize("include,fragment", [("*.png", "no image file matches include='*.png'"),
                                              (["pcb_001.jpg", "pcb_099.jpg"], "pcb_099.jpg: named in include")])
def test_include_that_finds_nothing_is_one_clear_error(pcb_like, include, fragment):
    folder, _, _ = pcb_like
    with pytest.raises(StackError, match=fragment.replace("*", r"\*").replace(".", r"\.")):
        load_stack(folder, include=include)


def test_include_on_a_file_is_refused(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(StackError, match=r"s\.tif: include .* not a folder"):
        load_stack(tmp_path / "s.tif", include="*.tif")


def test_cli_records_the_exact_inputs_and_honours_include(tmp_path, capsys, pcb_like):
    folder, slices, _ = pcb_like
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="expected.jpg"):
        code = cli.main(["-q", "fuse", str(folder), "-o", str(out), "--method", "variance", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    info = json.loads(result_paths(out, "pcb_like")["info"].read_text())
    assert info["inputs"] == [str(p.resolve()) for p in slices] and info["n_slices"] == len(slices)
    code = cli.main(["-q", "fuse", str(folder), "-o", str(tmp_path / "all"), "--method", "variance",
                     "--device", "cpu", "--include", "*.jpg"])
    assert code == 0
    info = json.loads(result_paths(tmp_path / "all", "pcb_like")["info"].read_text())
    assert [Path(p).name for p in info["inputs"]] == ["expected.jpg"] + [p.name for p in slices]


# ---------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not PCB.is_dir(), reason="shared data not present")
def test_real_pcb_stack_leaves_out_expected_jpg():
    with pytest.warns(UserWarning, match=r"left out 1 other image: expected\.jpg"):
        files = list_slice_files(PCB)
    assert [p.name for p in files] == [f"pcb_{i:03d}.jpg" for i in range(1, 8)]
