"""Lazy inputs (TIFF memmap/zarr, dask, zarr, any array-like) and outputs streamed tile by tile to disk."""

from __future__ import annotations

import json
import threading
import numpy as np
import pytest
import tifffile

from napari_stackmff.core.errors import OutputError
from napari_stackmff.core.tiles.pipeline import FusionCancelled
from napari_stackmff.core.fusion.dispatch import fuse
from napari_stackmff.core.io.read import load_stack
from napari_stackmff.core.io.stack import FocalStack
from napari_stackmff.core.batch.writers import fuse_to_disk


@pytest.fixture(scope="module")
def stack600() -> np.ndarray:
    from test_scale_tiling import _stack600

    return _stack600()


@pytest.fixture(scope="module")
def reference(stack600):
    return fuse(stack600, "wavelet", "cpu")


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.all_in_focus, b.all_in_focus)
    np.testing.assert_array_equal(a.focus_map, b.focus_map)
    np.testing.assert_array_equal(a.confidence, b.confidence)


class Recording:
    """Array-like that remembers the size of every read (proves nothing reads the whole image)."""

    def __init__(self, data: np.ndarray) -> None:
        self._data, self.shape, self.dtype = data, data.shape, data.dtype
        self.largest = 0
        self.lock = threading.Lock()

    def __getitem__(self, key):
        out = np.asarray(self._data[key])
        with self.lock:
            self.largest = max(self.largest, out.size)
        return out


# ------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("compression,kind", [(None, "memmap"), ("zlib", "Array")])
def test_lazy_tiff_fuses_like_loaded(tmp_path, stack600, reference, compression, kind):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack600, compression=compression, metadata={"axes": "ZYX"})
    lazy = load_stack(path, lazy=True)
    assert lazy.metadata["lazy"] == kind
    _same(fuse(lazy, "wavelet", "cpu", tile=256), reference)


def test_lazy_hyperstack_keeps_axes_and_metadata(tmp_path, make_synth):
    s = make_synth(1, 5, 96, "natural", "objects", "uint16")
    data = np.stack([s.slices, s.slices[::-1]])  # (T, Z, Y, X)
    tzcyx = np.stack([data, data // 2], axis=2)  # two fluorescence channels, ImageJ order
    path = tmp_path / "h.tif"
    tifffile.imwrite(path, tzcyx, imagej=True, metadata={"axes": "TZCYX", "spacing": 2.5, "unit": "micron"},
                     compression="zlib")
    eager, lazy = load_stack(path), load_stack(path, lazy=True)
    assert lazy.axes == eager.axes == "TZYXC" and lazy.shape == eager.shape
    assert lazy.z_step == pytest.approx(2.5) and lazy.unit == "um"
    np.testing.assert_array_equal(np.asarray(lazy.data[1, 2, 10:20, 5:9]), eager.data[1, 2, 10:20, 5:9])
    _same(fuse(lazy, "variance", "cpu", tile=128), fuse(eager, "variance", "cpu"))


def test_dask_zarr_and_array_like_inputs(tmp_path, stack600, reference):
    import dask.array as da
    import zarr

    d = da.from_array(stack600, chunks=(1, 200, 200))
    _same(fuse(FocalStack(d), "wavelet", "cpu", tile=256), reference)
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=stack600.shape, chunks=(1, 128, 128),
                        dtype=stack600.dtype)
    z[:] = stack600
    _same(fuse(FocalStack(z), "wavelet", "cpu", tile=256), reference)
    rec = Recording(stack600)
    _same(fuse(FocalStack(rec), "wavelet", "cpu", tile=256), reference)
    assert rec.largest <= 256 * 256  # one slice window at a time, never the whole image


def test_lazy_auto_follows_file_size(tmp_path, stack600, monkeypatch):
    from napari_stackmff.core.io import tiff as lazy_mod

    path = tmp_path / "s.tif"
    packed = tmp_path / "packed.tif"
    tifffile.imwrite(path, stack600[:4], photometric="minisblack")
    tifffile.imwrite(packed, stack600[:4], photometric="minisblack", compression="zlib")
    for default in ({}, {"lazy": None}):  # the default is None: decide from the file
        assert "lazy" not in load_stack(path, **default).metadata  # small: loaded
    monkeypatch.setattr(lazy_mod, "LAZY_MEMMAP_BYTES", 1000)
    assert load_stack(path).metadata["lazy"] == "memmap"  # mappable and "big": mapped, no copy
    assert "lazy" not in load_stack(packed).metadata  # compressed and small against free RAM: loaded
    assert "lazy" not in load_stack(path, lazy=False).metadata
    monkeypatch.setattr(lazy_mod, "LAZY_FRACTION", 1e-9)
    assert "lazy" in load_stack(packed).metadata  # big against free RAM: lazy whatever the storage


def test_fuse_path_default_reads_big_tiff_lazily_with_same_result(tmp_path, stack600, monkeypatch):
    from napari_stackmff.core.io import tiff as lazy_mod

    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack600, photometric="minisblack")
    eager = fuse(path, method="wavelet", device="cpu", lazy=False)
    monkeypatch.setattr(lazy_mod, "LAZY_MEMMAP_BYTES", 1000)
    seen = []
    real = lazy_mod.open_tiff_lazy
    monkeypatch.setattr(lazy_mod, "open_tiff_lazy", lambda *a, **k: seen.append(a) or real(*a, **k))
    auto = fuse(path, method="wavelet", device="cpu")
    assert seen, "fuse(path) did not read the big TIFF lazily by default"
    np.testing.assert_array_equal(auto.all_in_focus, eager.all_in_focus)
    np.testing.assert_array_equal(auto.focus_map, eager.focus_map)


@pytest.mark.parametrize("how", ["memmap", "zarr"])
def test_nan_in_lazy_float_tiff_fails_with_file_and_count(tmp_path, how):
    from napari_stackmff.core.errors import StackError

    rng = np.random.default_rng(0)
    data = rng.random((5, 300, 260), dtype=np.float32)
    data[3, 250:253, 10:12] = np.nan  # 6 bad pixels in the last tile row only
    data[3, 0, 0] = np.inf
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, photometric="minisblack", compression=None if how == "memmap" else "zlib")
    with pytest.raises(StackError, match=r"bad\.tif: \d+ pixel\(s\) are NaN or infinite in slice 3"):
        fuse(path, method="variance", device="cpu", lazy=how, tile=160)
    with pytest.raises(StackError, match=r"bad\.tif: 7 pixel\(s\) are NaN or infinite in slice 3"):
        fuse(path, method="variance", device="cpu", lazy=how)  # one tile: every bad pixel counted


# ----------------------------------------------------------------------------------- outputs
def test_fuse_to_zarr_streams_tiles_and_matches_fuse(tmp_path, stack600, reference):
    import zarr

    rec = Recording(stack600)
    out = tmp_path / "r.ome.zarr"
    res = fuse_to_disk(FocalStack(rec), out, "wavelet", "cpu", tile=256, z_step=1.5)
    assert rec.largest <= 256 * 256
    g = zarr.open_group(str(out), mode="r")
    attrs = json.loads((out / ".zattrs").read_text())  # zarr format 2, as OME-Zarr 0.4 wants
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and ms["datasets"][0]["path"] == "0"
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert "multiscales" in json.loads((out / "focus_map" / ".zattrs").read_text())
    assert g["0"].chunks == (256 - 2 * res.overlap,) * 2  # one chunk per tile
    np.testing.assert_array_equal(g["0"][:], reference.all_in_focus)
    np.testing.assert_array_equal(g["focus_map/0"][:], reference.focus_map)
    np.testing.assert_array_equal(g["confidence/0"][:], reference.confidence)
    np.testing.assert_allclose(g["height_map/0"][:], reference.focus_map * 1.5, rtol=1e-6)
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


def test_fuse_to_bigtiff_rgb_and_time(tmp_path, make_synth):
    s = make_synth(3, 5, 200, "natural", "objects", "uint8", rgb=True)
    stack = FocalStack(np.stack([s.slices, s.slices[::-1]]), axes="TZYXC", rgb=True)
    ref = fuse(stack, "tenengrad", "cpu")
    res = fuse_to_disk(stack, tmp_path / "r.tif", "tenengrad", "cpu", tile=192)
    assert set(res.outputs) == {"all_in_focus", "focus_map", "confidence"}  # no z positions: no height map
    with tifffile.TiffFile(res.outputs["all_in_focus"]) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].photometric == 2  # RGB
        np.testing.assert_array_equal(tif.asarray(), ref.all_in_focus)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "r_focus_map.tif"), ref.focus_map)
    # Fluorescence channels to zarr go channel-first, as OME-Zarr wants.
    import zarr

    two = FocalStack(np.stack([s.slices[..., 0], s.slices[..., 1]], -1), axes="ZYXC")
    fuse_to_disk(two, tmp_path / "c.zarr", "variance", "cpu", tile=192)
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert [a["name"] for a in g.attrs["multiscales"][0]["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(np.moveaxis(g["0"][:], 0, -1), fuse(two, "variance", "cpu").all_in_focus)


def test_fuse_to_disk_refuses_overwrite_and_cancel_leaves_nothing(tmp_path, stack600):
    out = tmp_path / "r.zarr"
    fuse_to_disk(stack600[:, :200, :200], out, "variance", "cpu")
    with pytest.raises(OutputError, match="already exists"):
        fuse_to_disk(stack600[:, :200, :200], out, "variance", "cpu")
    cancel = threading.Event()
    calls = []

    def progress(done, total, msg):
        calls.append(done)
        if len(calls) == 3:
            cancel.set()

    with pytest.raises(FusionCancelled):
        fuse_to_disk(stack600, tmp_path / "c.tif", "variance", "cpu", tile=256, progress=progress, cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def test_cli_lazy_stream(tmp_path, stack600):
    import zarr

    from napari_stackmff.cli import main

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, stack600)
    assert main(["-q", "fuse", str(path), "-o", str(tmp_path / "out"), "--method", "variance", "--lazy", "on",
                 "--stream", "zarr", "--tile", "256"]) == 0
    g = zarr.open_group(str(tmp_path / "out" / "big.ome.zarr"), mode="r")
    np.testing.assert_array_equal(g["0"][:], fuse(stack600, "variance", "cpu").all_in_focus)
