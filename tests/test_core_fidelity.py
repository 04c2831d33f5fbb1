"""What fuse() hands back: pixels copied untouched, map types/ranges, height maps, cancel, no GUI imports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_stackmff import FocalStack, FusionResult, fuse, load_stack
from napari_stackmff.core.defaults import CLASSICAL_METHODS
from napari_stackmff.core.tiles.pipeline import FusionCancelled

SRC = Path(__file__).resolve().parents[1] / "src"


def _expected_aif(slices: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Independent gather: out[y, x] = slices[index[y, x], y, x]."""
    yy, xx = np.indices(index.shape)
    return slices[index, yy, xx]


def _check_maps(result: FusionResult, n: int, shape: tuple[int, int]) -> None:
    assert result.focus_map.dtype == np.float32 and result.focus_map.shape == shape
    assert result.confidence.dtype == np.float32 and result.confidence.shape == shape
    assert np.isfinite(result.focus_map).all() and np.isfinite(result.confidence).all()
    assert result.focus_map.min() >= 0 and result.focus_map.max() <= n - 1
    assert result.confidence.min() >= 0 and result.confidence.max() <= 1
    assert result.confidence.max() > 0.2  # textured stack: some pixels are clearly decided
    assert result.n_slices == n
    np.testing.assert_array_equal(result.index, np.clip(np.rint(result.focus_map), 0, n - 1))
    assert len(np.unique(result.index)) > 2  # the geometry spans several slices


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_rgb_uint8_pixels_come_from_the_indexed_slice(make_synth, method):
    s = make_synth(4, 6, 96, "natural", "objects", "uint8", rgb=True)
    assert s.slices.shape == (6, 96, 96, 3)
    result = fuse(s.slices, method=method, device="cpu")
    assert result.all_in_focus.dtype == np.uint8
    assert result.all_in_focus.shape == (96, 96, 3)
    _check_maps(result, 6, (96, 96))
    np.testing.assert_array_equal(result.all_in_focus, _expected_aif(s.slices, result.index))
    assert result.height_map is None and result.z_step is None


def test_uint16_gray_pixels_come_from_the_indexed_slice(make_synth):
    s = make_synth(1, 10, 128, "natural", "objects", "uint16")
    result = fuse(s.slices, method="wavelet", device="cpu")
    assert result.all_in_focus.dtype == np.uint16 and result.all_in_focus.shape == (128, 128)
    _check_maps(result, 10, (128, 128))
    np.testing.assert_array_equal(result.all_in_focus, _expected_aif(s.slices, result.index))
    # Real 16-bit data survives (values above 255, never rescaled).
    assert result.all_in_focus.max() > 255
    assert result.height_map is None


def test_fused_image_is_closer_to_truth_than_any_slice(make_synth):
    from napari_stackmff.core.fusion.metrics import psnr

    s = make_synth(2, 8, 128, "tissue", "objects", "uint8", noise=False)
    aif = fuse(s.slices, method="tenengrad", device="cpu").all_in_focus
    best_slice = max(psnr(sl, s.aif) for sl in s.slices)
    assert psnr(aif, s.aif) > best_slice + 3


def test_float_input_kept_as_float(make_synth):
    s = make_synth(1, 10, 128, "natural", "objects", "uint16")
    data = s.slices.astype(np.float32) / 65535.0
    result = fuse(data, method="variance", device="cpu")
    assert result.all_in_focus.dtype == np.float32
    np.testing.assert_array_equal(result.all_in_focus, _expected_aif(data, result.index))


def test_height_map_from_z_step(make_synth):
    s = make_synth(3, 12, 128, "tissue", "plane", "uint16")
    result = fuse(s.slices, method="laplacian", device="cpu", z_step=0.5)
    assert result.z_step == pytest.approx(0.5)
    assert result.height_map is not None
    assert result.height_map.dtype == np.float32 and result.height_map.shape == (128, 128)
    np.testing.assert_allclose(result.height_map, result.focus_map * 0.5, rtol=0, atol=1e-5)
    # Without z information there is no height map.
    assert fuse(s.slices, method="laplacian", device="cpu").height_map is None


def test_height_map_interpolates_uneven_positions(make_synth):
    s = make_synth(3, 12, 128, "tissue", "plane", "uint16")
    z = np.array([0, 1, 2, 4, 6, 9, 12, 16, 20, 25, 30, 36], dtype=float)  # uneven steps, µm
    stack = FocalStack(np.asarray(s.slices), z_positions=z, unit="um")
    result = fuse(stack, method="laplacian", device="cpu")
    assert result.unit == "um"
    np.testing.assert_allclose(result.height_map, np.interp(result.focus_map, np.arange(12), z), atol=1e-4)
    # Where the focus map is a whole slice, the height is exactly that slice's position.
    idx = result.index
    whole = result.focus_map == idx
    assert whole.any()
    np.testing.assert_allclose(result.height_map[whole], z[idx[whole]], atol=1e-4)


def test_fuse_accepts_folder_and_file_list(tmp_path, make_synth, write_png_slices):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    paths = write_png_slices(tmp_path / "stack", s.slices)
    from_array = fuse(np.asarray(s.slices), method="variance", device="cpu")
    from_folder = fuse(tmp_path / "stack", method="variance", device="cpu")
    from_list = fuse([str(p) for p in paths], method="variance", device="cpu")
    for r in (from_folder, from_list):
        np.testing.assert_array_equal(r.all_in_focus, from_array.all_in_focus)
        np.testing.assert_array_equal(r.focus_map, from_array.focus_map)


def test_progress_reports_every_slice(make_synth):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    calls = []
    fuse(s.slices, method="variance", device="cpu", progress=lambda d, t, m: calls.append((d, t)))
    assert calls == [(i, 8) for i in range(1, 9)]


@pytest.mark.parametrize("method", ["variance", "wavelet"])
def test_cancel_from_progress_callback(make_synth, method):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    cancel = threading.Event()
    calls = []

    def progress(done, total, message):
        calls.append(done)
        if len(calls) == 2:
            cancel.set()

    with pytest.raises(FusionCancelled):
        fuse(s.slices, method=method, device="cpu", progress=progress, cancel=cancel)
    assert calls == [1, 2]  # stopped before measuring the third slice


def test_cancel_already_set_raises_before_work(make_synth):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    cancel = threading.Event()
    cancel.set()
    calls = []
    with pytest.raises(FusionCancelled):
        fuse(s.slices, method="variance", device="cpu", progress=lambda *a: calls.append(a), cancel=cancel)
    assert calls == []


def _run_python(code: str) -> dict[str, str]:
    """Run ``code`` in a fresh interpreter on the code under test; its ``KEY:value`` lines as a dict."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)


def test_core_import_pulls_in_no_gui():
    code = (
        "import sys\n"
        "import napari_stackmff, napari_stackmff.core, napari_stackmff.cli\n"
        "from napari_stackmff import fuse, load_stack, FocalStack, FusionResult\n"
        "import napari_stackmff.core.batch, napari_stackmff.core.io, napari_stackmff.core.synth\n"
        "gui = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in gui)\n"
        "print('GUI:' + ','.join(bad))\n"
        "print('CORE:' + napari_stackmff.core.__file__)\n"
    )
    lines = _run_python(code)
    assert Path(lines["CORE"]).resolve().is_relative_to(SRC.resolve())  # really the code under test
    assert lines["GUI"] == "", f"importing the core pulled in GUI modules: {lines['GUI']}"


def test_load_stack_passes_focal_stack_through(make_synth):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    stack = FocalStack(np.asarray(s.slices))
    assert load_stack(stack) is stack


class _LazyArray:
    """Array-like that is not a numpy array (like zarr/dask): shape, dtype and slicing only."""

    def __init__(self, data: np.ndarray):
        self._data = data
        self.shape, self.dtype = data.shape, data.dtype
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return self._data[key]


def test_lazy_array_gives_same_result_as_numpy(make_synth):
    s = make_synth(4, 6, 96, "natural", "objects", "uint8", rgb=True)
    lazy = _LazyArray(np.asarray(s.slices))
    r_lazy = fuse(FocalStack(lazy, axes="ZYXC", rgb=True), method="tenengrad", device="cpu")
    r_np = fuse(np.asarray(s.slices), method="tenengrad", device="cpu")
    assert lazy.reads > 0
    np.testing.assert_array_equal(r_lazy.all_in_focus, r_np.all_in_focus)
    np.testing.assert_array_equal(r_lazy.focus_map, r_np.focus_map)


def test_z_step_does_not_stick_to_the_callers_stack(make_synth):
    s = make_synth(0, 8, 128, "natural", "plane", "uint8")
    stack = FocalStack(np.asarray(s.slices))
    r1 = fuse(stack, method="variance", device="cpu", z_step=0.5)
    r2 = fuse(stack, method="variance", device="cpu", z_step=2.0)
    assert stack.z_positions is None  # the caller's stack is left as it was
    assert r1.z_step == pytest.approx(0.5) and r2.z_step == pytest.approx(2.0)
    np.testing.assert_allclose(r2.height_map, 4 * r1.height_map, atol=1e-5)
    # Positions the stack already has win over z_step.
    known = FocalStack(np.asarray(s.slices), z_positions=np.arange(8) * 3.0, unit="um")
    assert fuse(known, method="variance", device="cpu", z_step=0.5).z_step == pytest.approx(3.0)


def test_cli_help_and_package_import_do_not_import_torch():
    """`stackmff --help` (and napari finding our readers) must not pay for torch: it answers at once."""
    code = (
        "import sys, contextlib, io\n"
        "import napari_stackmff, napari_stackmff.cli\n"
        "for argv in (['--help'], ['fuse', '--help'], ['batch', '--help'], ['train', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        napari_stackmff.cli.main(argv)\n"
        "    assert 'usage: stackmff' in out.getvalue(), argv\n"
        "print('HEAVY:' + ','.join(sorted(m for m in ('torch', 'scipy', 'skimage', 'napari') if m in sys.modules)))\n"
        "from napari_stackmff import fuse\n"
        "print('AFTER:' + str('torch' in sys.modules))\n"
    )
    lines = _run_python(code)
    assert lines["HEAVY"] == "", f"help imported {lines['HEAVY']}"
    assert lines["AFTER"] == "True"  # the public API still works, importing torch on first use
