"""Readers (slice folders, multi-page / ImageJ / OME TIFF) and writers (save_result, atomic writes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_stackmff import FocalStack, fuse, load_stack, save_result
from napari_stackmff.core import io as sio
from napari_stackmff.core.io import write as io_write
from napari_stackmff.core.errors import StackMFFError


def _labelled_slices(n: int, shape=(40, 48), dtype=np.uint8, rgb: bool = False, seed: int = 0) -> np.ndarray:
    """Slices whose top-left 4×4 block holds the slice number (so order is checkable) on random texture."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    full = (n, *shape, 3) if rgb else (n, *shape)
    data = rng.integers(0, top + 1, full, dtype=np.int64).astype(dtype)
    for i in range(n):
        data[i, :4, :4] = (i + 1) * (7 if dtype == np.uint8 else 3001)
    return data


def _slice_number(img: np.ndarray, dtype) -> int:
    v = int(np.asarray(img)[0, 0].ravel()[0])
    return v // (7 if dtype == np.uint8 else 3001)


# ---------------------------------------------------------------------------------- folders
@pytest.mark.parametrize(
    "dtype,rgb", [(np.uint8, False), (np.uint8, True), (np.uint16, False)], ids=["gray8", "rgb8", "gray16"]
)
def test_png_folder_round_trip_in_natural_order(tmp_path, write_png_slices, dtype, rgb):
    data = _labelled_slices(12, dtype=dtype, rgb=rgb)
    folder = tmp_path / "stack"
    # Write in a scrambled order so creation order cannot stand in for the sort.
    order = [9, 1, 11, 0, 5, 10, 2, 7, 3, 8, 4, 6]
    write_png_slices(folder, data[order], names=[f"{i + 1}.png" for i in order])
    stack = load_stack(folder)
    assert stack.dtype == np.dtype(dtype)
    assert stack.n_slices == 12
    assert stack.axes == ("ZYXC" if rgb else "ZYX")
    assert stack.rgb == rgb
    assert stack.z_positions is None and stack.z_step is None
    assert [Path(p).name for p in stack.metadata["files"]] == [f"{i}.png" for i in range(1, 13)]
    assert [_slice_number(stack.data[z], dtype) for z in range(12)] == list(range(1, 13))
    np.testing.assert_array_equal(stack.data, data)


def test_natural_sort_key():
    names = ["10.png", "2.png", "1.png", "slice_11.png", "slice_2.png", "Slice_3.png"]
    ordered = [p.name for p in sorted((Path(n) for n in names), key=sio.natural_key)]
    assert ordered == ["1.png", "2.png", "10.png", "slice_2.png", "Slice_3.png", "slice_11.png"]


def test_non_image_file_is_ignored_with_a_warning(tmp_path, write_png_slices):
    data = _labelled_slices(5)
    write_png_slices(tmp_path / "stack", data)
    (tmp_path / "stack" / "notes.txt").write_text("exposure 10 ms")
    (tmp_path / "stack" / ".DS_Store").write_bytes(b"\0\0")  # hidden: silently skipped
    with pytest.warns(UserWarning, match="notes.txt") as record:
        stack = load_stack(tmp_path / "stack")
    assert not any(".DS_Store" in str(w.message) for w in record)
    assert stack.n_slices == 5
    np.testing.assert_array_equal(stack.data, data)


def test_z_step_argument_gives_positions_for_plain_files(tmp_path, write_png_slices):
    write_png_slices(tmp_path / "s", _labelled_slices(6))
    stack = load_stack(tmp_path / "s", z_step=0.25, unit="um")
    np.testing.assert_allclose(stack.z_positions, np.arange(6) * 0.25)
    assert stack.z_step == pytest.approx(0.25) and stack.unit == "um"


# ---------------------------------------------------------------------------------- TIFF
def test_multipage_tiff(tmp_path):
    data = _labelled_slices(7, dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    stack = load_stack(path)
    assert stack.axes == "ZYX" and stack.dtype == np.uint16
    np.testing.assert_array_equal(stack.data, data)
    assert stack.z_positions is None
    assert stack.metadata["files"] == [str(path)]


def test_folder_with_one_multipage_tiff_reads_the_tiff(tmp_path):
    data = _labelled_slices(6)
    (tmp_path / "d").mkdir()
    tifffile.imwrite(tmp_path / "d" / "stack.tif", data, photometric="minisblack")
    np.testing.assert_array_equal(load_stack(tmp_path / "d").data, data)


def test_rgb_tiff_stack(tmp_path):
    data = _labelled_slices(5, rgb=True)
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    stack = load_stack(tmp_path / "rgb.tif")
    assert stack.axes == "ZYXC" and stack.rgb
    np.testing.assert_array_equal(stack.data, data)


def test_imagej_hyperstack_tzyx(tmp_path):
    data = np.random.default_rng(1).integers(0, 60000, (2, 5, 32, 40)).astype(np.uint16)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX", "spacing": 0.5, "unit": "micron"})
    stack = load_stack(path)
    assert stack.axes == "TZYX" and stack.n_times == 2 and stack.n_slices == 5
    np.testing.assert_allclose(stack.z_positions, [0, 0.5, 1.0, 1.5, 2.0])
    assert stack.z_step == pytest.approx(0.5)
    assert stack.unit == "um"
    np.testing.assert_array_equal(stack.data, data)
    result = fuse(stack, method="variance", device="cpu")
    assert result.all_in_focus.shape == (2, 32, 40) and result.all_in_focus.dtype == np.uint16
    assert result.height_map.shape == (2, 32, 40)
    np.testing.assert_allclose(result.height_map, result.focus_map * 0.5, atol=1e-5)


def test_imagej_hyperstack_zcyx_keeps_channels(tmp_path):
    data = np.random.default_rng(2).integers(0, 60000, (5, 2, 32, 40)).astype(np.uint16)
    path = tmp_path / "ijc.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX", "spacing": 0.5, "unit": "micron"})
    stack = load_stack(path)
    assert stack.axes == "ZYXC" and stack.n_channels == 2 and not stack.rgb
    assert stack.z_step == pytest.approx(0.5) and stack.unit == "um"
    np.testing.assert_array_equal(stack.data, np.moveaxis(data, 1, -1))
    result = fuse(stack, method="variance", device="cpu", channel=1)
    assert result.all_in_focus.shape == (32, 40, 2)


def test_ome_tiff_physical_size_z(tmp_path):
    data = _labelled_slices(6, dtype=np.uint16)
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.75, "PhysicalSizeX": 0.2,
                                           "PhysicalSizeY": 0.2})
    stack = load_stack(path)
    assert stack.axes == "ZYX"
    assert stack.z_step == pytest.approx(0.75)
    np.testing.assert_allclose(stack.z_positions, np.arange(6) * 0.75)
    assert stack.unit == "um"
    assert stack.pixel_size == pytest.approx((0.2, 0.2))
    np.testing.assert_array_equal(stack.data, data)


def test_float32_tiff(tmp_path):
    data = np.random.default_rng(3).random((6, 32, 40)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="minisblack")
    stack = load_stack(tmp_path / "f.tif")
    assert stack.dtype == np.float32
    np.testing.assert_array_equal(stack.data, data)
    result = fuse(stack, method="laplacian", device="cpu")
    assert result.all_in_focus.dtype == np.float32
    assert np.isin(result.all_in_focus, data).all()


def test_write_stack_round_trip(tmp_path, make_synth):
    s = make_synth(1, 10, 128, "natural", "objects", "uint16")
    stack = FocalStack(np.asarray(s.slices), z_positions=np.arange(10) * 2.0, unit="um", pixel_size=(0.3, 0.3))
    path = sio.write_stack(tmp_path / "st.ome.tif", stack)
    back = load_stack(path)
    np.testing.assert_array_equal(back.data, s.slices)
    np.testing.assert_allclose(back.z_positions, stack.z_positions)
    assert back.unit == "um" and back.pixel_size == pytest.approx((0.3, 0.3))


# ---------------------------------------------------------------------------------- writing
def _no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*") if "~stackmff-tmp~" in p.name or p.name == ".stackmff.lock"]
    assert leftovers == []


@pytest.mark.parametrize("kind", ["gray16", "rgb8"])
def test_save_result_writes_everything(tmp_path, make_synth, kind):
    rgb = kind == "rgb8"
    s = make_synth(4 if rgb else 1, 6 if rgb else 10, 96 if rgb else 128, "natural", "objects",
                   "uint8" if rgb else "uint16", rgb)
    result = fuse(s.slices, method="tenengrad", device="cpu", z_step=0.5)
    out = tmp_path / "out"
    written = save_result(result, out, "scene", extra_info={"note": "test"})
    expected = sio.result_paths(out, "scene")
    assert set(written) == set(expected) - {"edits"}  # height map included: z_step was given; not retouched
    for key, path in written.items():
        assert path == expected[key] and path.is_file() and path.stat().st_size > 0
    _no_temp_files(out)

    aif = tifffile.imread(written["all_in_focus"])
    assert aif.dtype == result.all_in_focus.dtype
    np.testing.assert_array_equal(aif, result.all_in_focus)
    fm = tifffile.imread(written["focus_map"])
    assert fm.dtype == np.float32
    np.testing.assert_array_equal(fm, result.focus_map)
    hm = tifffile.imread(written["height_map"])
    assert hm.dtype == np.float32
    np.testing.assert_array_equal(hm, result.height_map)
    conf = tifffile.imread(written["confidence"])
    assert conf.dtype == np.float32
    np.testing.assert_array_equal(conf, result.confidence)

    with Image.open(written["all_in_focus_png"]) as im:
        assert im.mode == ("RGB" if rgb else "L") and im.size == (s.slices.shape[2], s.slices.shape[1])
        png = np.asarray(im)
    assert png.dtype == np.uint8
    if rgb:
        np.testing.assert_array_equal(png, result.all_in_focus)  # 8-bit stays as is
    else:
        assert png.max() > 200 and png.min() < 50  # 16-bit stretched to the 8-bit range
    with Image.open(written["focus_map_png"]) as im:
        assert im.mode == "RGB" and np.asarray(im).dtype == np.uint8

    info = json.loads(written["info"].read_text())
    assert info["method"] == "tenengrad" and info["n_slices"] == result.n_slices
    assert info["dtype"] == str(result.all_in_focus.dtype)
    assert info["z_step"] == pytest.approx(0.5)
    assert info["note"] == "test"
    assert set(info["outputs"].values()) == {p.name for k, p in written.items() if k != "info"}

    # The OME metadata carries the z step.
    with tifffile.TiffFile(written["all_in_focus"]) as tif:
        assert tif.is_ome and 'PhysicalSizeZ="0.5"' in tif.ome_metadata


def test_save_result_without_z_has_no_height_map(tmp_path, make_synth):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    written = save_result(fuse(s.slices, method="variance", device="cpu"), tmp_path, "x")
    assert "height_map" not in written
    assert not sio.result_paths(tmp_path, "x")["height_map"].exists()


def test_save_result_time_series(tmp_path, make_synth):
    a = make_synth(10, 6, 96, "natural", "objects", "uint16")
    b = make_synth(11, 6, 96, "tissue", "plane", "uint16")
    result = fuse(np.stack([a.slices, b.slices]), method="variance", device="cpu", axes="TZYX")
    written = save_result(result, tmp_path, "ts")
    np.testing.assert_array_equal(tifffile.imread(written["all_in_focus"]), result.all_in_focus)
    np.testing.assert_array_equal(tifffile.imread(written["focus_map"]), result.focus_map)
    with Image.open(written["all_in_focus_png"]) as im:
        assert im.size == (96, 96) and im.mode == "L"


def test_atomic_write_failure_leaves_target_unchanged(tmp_path):
    target = tmp_path / "result.tif"
    target.write_bytes(b"previous good result")

    def failing_writer(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"half a fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(sio.OutputError, match="result.tif: cannot write here .the disk is full.*unchanged"):
        sio.atomic_write(target, failing_writer)
    assert target.read_bytes() == b"previous good result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.tif"]

    # And a failure while creating a new file leaves nothing at all.
    with pytest.raises(KeyboardInterrupt):
        sio.atomic_write(tmp_path / "new.png", lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.tif"]


def test_atomic_write_success_replaces_target(tmp_path):
    target = tmp_path / "sub" / "a.json"
    sio.atomic_write(target, lambda tmp: tmp.write_text("v1"))
    sio.atomic_write(target, lambda tmp: tmp.write_text("v2"))
    assert target.read_text() == "v2"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_save_result_failure_midway_keeps_previous_outputs_whole(tmp_path, make_synth, monkeypatch):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    r = fuse(s.slices, method="variance", device="cpu")
    written = save_result(r, tmp_path, "x")
    before = {k: p.read_bytes() for k, p in written.items()}

    def broken_png(path, img):
        def _write(tmp):
            tmp.write_bytes(b"\x89PNG partial")
            raise OSError(28, "No space left on device")
        return sio.atomic_write(path, _write)

    monkeypatch.setattr(io_write, "write_png", broken_png)  # where save_result looks it up
    with pytest.raises(sio.OutputError, match="disk is full.*Nothing in .* was changed"):
        save_result(r, tmp_path, "x", overwrite=True)
    assert {k: p.read_bytes() for k, p in written.items()} == before  # the whole old set, not only the PNG
    _no_temp_files(tmp_path)


def test_read_errors_are_stackmff_errors(tmp_path):
    p = tmp_path / "s.tif"
    p.write_bytes(b"II*\0garbage that is not a tiff")
    with pytest.raises(StackMFFError, match="s.tif"):
        load_stack(p)


def test_save_result_single_timepoint_series(tmp_path):
    """A (T=1, Z, Y, X) series keeps its T axis; the previews must still be 2-D images."""
    data = np.random.default_rng(0).integers(0, 255, (1, 5, 32, 40)).astype(np.uint8)
    result = fuse(data, method="variance", device="cpu", axes="TZYX")
    assert result.all_in_focus.shape == (1, 32, 40)
    written = save_result(result, tmp_path, "t1")
    np.testing.assert_array_equal(tifffile.imread(written["all_in_focus"]).reshape(1, 32, 40), result.all_in_focus)
    with Image.open(written["all_in_focus_png"]) as im:
        assert im.size == (40, 32)
    with Image.open(written["focus_map_png"]) as im:  # the map, and its colour bar on the right
        assert im.size[1] == 32 and im.size[0] > 40


@pytest.mark.parametrize("channels", [2, 5])
def test_save_result_multichannel(tmp_path, channels):
    data = np.random.default_rng(0).integers(0, 60000, (5, 32, 40, channels)).astype(np.uint16)
    result = fuse(FocalStack(data, axes="ZYXC"), method="variance", device="cpu", channel=0)
    written = save_result(result, tmp_path, "mc")
    with tifffile.TiffFile(written["all_in_focus"]) as tif:
        assert tif.series[0].axes == "CYX"  # OME layout: channels before YX
        back = tif.asarray()
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(np.moveaxis(back, 0, -1), result.all_in_focus)
    with Image.open(written["all_in_focus_png"]) as im:
        assert im.size == (40, 32) and np.asarray(im).dtype == np.uint8
