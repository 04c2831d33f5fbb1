"""Bad input gives a StackMFFError whose message names the file or argument and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_stackmff import FocalStack, StackMFFError, fuse, load_stack, save_result
from napari_stackmff.core.errors import OutputError, StackError
from napari_stackmff.core.io.read import input_files


def _slices(n=5, shape=(24, 32), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, (n, *shape), dtype=np.int64).astype(dtype)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StackError, match=r"empty.*no image files"):
        load_stack(tmp_path / "empty")


def test_folder_with_only_non_images(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("x")
    with pytest.warns(UserWarning, match="readme.txt"), pytest.raises(StackError, match="no image files"):
        fuse(tmp_path / "d", method="variance", device="cpu")


def test_single_slice_folder(tmp_path, write_png_slices):
    write_png_slices(tmp_path / "one", _slices(1))
    with pytest.raises(StackError, match=r"1\.png.*at least 2 slices"):
        load_stack(tmp_path / "one")


def test_single_slice_array():
    with pytest.raises(StackError, match="at least 2 slices, got 1"):
        fuse(_slices(1), method="variance", device="cpu")


def test_slices_of_different_shapes(tmp_path, write_png_slices):
    write_png_slices(tmp_path / "s", _slices(3))
    write_png_slices(tmp_path / "s", _slices(1, shape=(24, 30)), names=["4.png"])
    with pytest.raises(StackError, match=r"4\.png.*shape \(24, 30\) differs"):
        load_stack(tmp_path / "s")


def test_slices_of_different_dtypes(tmp_path, write_png_slices):
    write_png_slices(tmp_path / "s", _slices(3))
    write_png_slices(tmp_path / "s", _slices(1, dtype=np.uint16), names=["4.png"])
    with pytest.raises(StackError, match=r"4\.png.*uint16 differs.*uint8"):
        load_stack(tmp_path / "s")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_slice_is_named(tmp_path, write_png_slices, damage):
    paths = write_png_slices(tmp_path / "s", _slices(5, shape=(64, 64)))
    bad = paths[2]
    assert bad.name == "3.png"
    if damage == "garbage":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else:
        bad.write_bytes(b"")
    with pytest.raises(StackError) as info:
        fuse(tmp_path / "s", method="variance", device="cpu")
    msg = str(info.value)
    assert str(bad) in msg and "cannot read" in msg


def test_corrupt_tiff_is_named(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _slices(6, shape=(64, 64)), photometric="minisblack")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(StackError, match=r"stack\.tif"):
        fuse(path, method="variance", device="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_float_array(bad):
    data = np.random.default_rng(0).random((5, 24, 32)).astype(np.float32)
    data[2, 3, 4] = bad
    data[4, 0, 0] = bad
    with pytest.raises(StackError, match=r"2 pixel\(s\) are NaN or infinite"):
        fuse(data, method="variance", device="cpu")


def test_nan_in_float_tiff_names_the_file(tmp_path):
    data = np.random.default_rng(0).random((5, 24, 32)).astype(np.float32)
    data[1, 1, 1] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="minisblack")
    with pytest.raises(StackError, match=r"f\.tif.*NaN"):
        load_stack(tmp_path / "f.tif")


def test_2d_array_is_not_a_stack():
    with pytest.raises(StackError, match=r"single 2-D image \(24, 32\)"):
        fuse(_slices(1)[0], method="variance", device="cpu")


def test_single_png_path_is_not_a_stack(tmp_path, write_png_slices):
    paths = write_png_slices(tmp_path / "s", _slices(3))
    with pytest.raises(StackError, match=r"1\.png.*single \.png image is not a focal stack"):
        fuse(paths[0], method="variance", device="cpu")


def test_single_page_tiff_is_not_a_stack(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", _slices(1)[0])
    with pytest.raises(StackError, match=r"one\.tif.*single image"):
        load_stack(tmp_path / "one.tif")


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "no" / "such" / "stack"
    with pytest.raises(StackError, match="no such file or folder") as info:
        fuse(missing, method="variance", device="cpu")
    assert str(missing) in str(info.value)


def test_unsupported_file_type(tmp_path):
    (tmp_path / "stack.czi").write_bytes(b"\0" * 100)
    with pytest.raises(StackError, match=r"stack\.czi.*unsupported file type '\.czi'"):
        load_stack(tmp_path / "stack.czi")


def test_unknown_method():
    with pytest.raises(StackMFFError, match=r"unknown method 'sharpest'.*variance.*wavelet"):
        fuse(_slices(), method="sharpest", device="cpu")


@pytest.mark.parametrize("method,kwargs,named", [
    ("variance", {"nonsense_option": 3}, "nonsense_option"),  # a typo in a script
    ("wavelet", {"half": True}, "half"),  # a model option given to a classical method
    ("wavelet", {"weights": "w.pt"}, "weights"),
    ("stackmff-v2", {"nonsense_option": 3}, "nonsense_option"),  # used to be a TypeError from deep inside
    ("stackmff-v2", {"window": 15}, "window"),  # only classical measures have a window
    ("stackmff-v2", {"readuot": "argmax"}, "readuot"),
])
def test_option_a_method_does_not_use_is_refused_in_one_line(method, kwargs, named):
    calls = []
    with pytest.raises(StackMFFError) as err:
        fuse(_slices(4), method=method, device="cpu", progress=lambda *a: calls.append(a), **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and repr(named) in msg and method in msg
    takes = msg.split("it takes: ")[1]
    assert named not in takes.replace(".", "").split(", ")  # the list of what it takes does not hold it
    assert ("window" in takes) == (method != "stackmff-v2") and ("half" in takes) == (method == "stackmff-v2")
    assert calls == []  # refused before any work


def test_options_a_method_uses_are_accepted():
    assert fuse(_slices(4), method="variance", device="cpu", window=5).method == "variance"
    assert fuse(_slices(4), method="stackmff-v2", device="cpu", readout="softargmax", half=False).method == "stackmff-v2"


def test_device_that_does_not_exist():
    with pytest.raises(StackMFFError, match=r"device 'cuda:7' is not available.*cpu"):
        fuse(_slices(), method="variance", device="cuda:7")


def test_channel_that_does_not_exist():
    data = np.stack([_slices(), _slices(seed=1)], axis=-1)
    with pytest.raises(StackMFFError, match="channel 5 does not exist"):
        fuse(FocalStack(data, axes="ZYXC"), method="variance", device="cpu", channel=5)


def test_wrong_axes_and_z_positions():
    with pytest.raises(StackError, match="axes"):
        FocalStack(_slices(), axes="ZXY")
    with pytest.raises(StackError, match="3 z positions given for 5 slices"):
        FocalStack(_slices(), z_positions=[0, 1, 2])
    with pytest.raises(StackError, match="not supported"):
        FocalStack(_slices().astype(np.complex64))


def test_errors_are_value_errors():
    """Callers that only know the standard library can still catch them."""
    assert issubclass(StackMFFError, ValueError)
    for cls in (StackError, OutputError):
        assert issubclass(cls, StackMFFError)


# ---------------------------------------------------------------------------- unsafe outputs
def test_output_would_overwrite_input_file(tmp_path):
    # A TIFF stack whose name collides with an output name in the same folder.
    src = tmp_path / "scene_focus_map.tif"
    tifffile.imwrite(src, _slices(5), photometric="minisblack")
    original = src.read_bytes()
    stack = load_stack(src)
    result = fuse(stack, method="variance", device="cpu")
    with pytest.raises(OutputError, match="would overwrite an input file") as info:
        save_result(result, tmp_path, "scene", inputs=input_files(stack))
    assert "scene_focus_map.tif" in str(info.value)
    assert src.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["scene_focus_map.tif"]  # nothing written at all


def test_output_in_input_slice_folder(tmp_path, write_png_slices):
    folder = tmp_path / "slices"
    write_png_slices(folder, _slices(5))
    before = sorted(p.name for p in folder.iterdir())
    stack = load_stack(folder)
    result = fuse(stack, method="variance", device="cpu")
    with pytest.raises(OutputError, match="input slice folder") as info:
        save_result(result, folder, "fused", inputs=input_files(stack))
    assert str(folder) in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == before
    # A different folder is fine, and next to a single TIFF input is fine too.
    save_result(result, tmp_path / "out", "fused", inputs=input_files(stack))
    assert (tmp_path / "out" / "fused_all_in_focus.tif").is_file()
