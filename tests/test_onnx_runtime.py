"""The networks on ONNX Runtime (issue 29, item 1): the same slice choices as torch, tiled or whole, and one
clear line when it cannot run as asked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_stackmff.core import fuse
from napari_stackmff.core.errors import StackMFFError
from napari_stackmff.core.models import onnx_runtime

needs_ort = pytest.mark.skipif(not onnx_runtime.available(), reason="onnxruntime/onnx not installed (the onnx extra)")
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def _agree(a, b) -> float:
    return float(np.mean(np.round(a.focus_map) == np.round(b.focus_map)))


@needs_ort
@pytest.mark.parametrize("method", ["stackmff-v2", "stackmff-v3"])
def test_onnxruntime_picks_the_slices_torch_picks(method, make_synth) -> None:
    """Whole image and tiled (V3 tiled: its image context gathered by torch, the transformer on ONNX Runtime):
    the same slice on >= 99.9% of pixels, the same focus error against the known focus."""
    from napari_stackmff.core.fusion.metrics import focus_error

    s = make_synth(seed=61, n=7, size=160)
    for tile in (None, 96):
        ref = fuse(s.slices, method=method, device="cpu", tile=tile)
        ort = fuse(s.slices, method=method, device="cpu", tile=tile, runtime="onnxruntime")
        assert _agree(ref, ort) >= 0.999, (tile, _agree(ref, ort))
        assert np.array_equal(ort.all_in_focus.shape, s.slices.shape[1:])
        e_ref, e_ort = focus_error(ref.focus_map, s.focus_index), focus_error(ort.focus_map, s.focus_index)
        assert abs(e_ref["within1"] - e_ort["within1"]) < 0.002, (e_ref, e_ort)
        assert e_ort["within1"] > 0.5, e_ort  # it found the focus, not only torch's mistakes


@needs_ort
@pytest.mark.skipif(not (WEIGHTS / "eventstackmff.pt").exists(), reason="no EventStackMFF weights shipped")
def test_event_model_on_onnxruntime_with_its_focus_prior(make_synth) -> None:
    """The event model's frames, cross-modal attention and ConvGRU on ONNX Runtime, its prior on torch."""
    from napari_stackmff.core.events.frames import simulate_events

    s = make_synth(seed=62, n=6, size=128)
    frames = simulate_events(s.slices)
    ref = fuse(s.slices, method="eventstackmff", events=frames, device="cpu")
    ort = fuse(s.slices, method="eventstackmff", events=frames, device="cpu", runtime="onnxruntime")
    assert _agree(ref, ort) >= 0.999


@needs_ort
def test_export_leaves_the_shared_model_in_inference_mode() -> None:
    """The exporter restores modes recursively: a wrapper left in training mode once switched V3's drop-path
    on for every later torch run of the same (cached) model."""
    from napari_stackmff.core.models.registry import load_model

    model = load_model("stackmff-v3", None, "cpu")
    onnx_runtime.ort_forward(model)
    assert not any(m.training for m in model.modules())
    x = torch.rand(1, 5, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


@needs_ort
def test_cli_runtime_flag_fuses_and_records_it(tmp_path: Path, make_synth) -> None:
    import tifffile

    from napari_stackmff.cli import main

    s = make_synth(seed=63, n=5, size=96)
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, np.asarray(s.slices))
    assert main(["-q", "fuse", str(src), "-o", str(tmp_path / "out"), "--method", "stackmff-v2", "--device", "cpu",
                 "--runtime", "onnxruntime", "--align", "off"]) == 0
    record = json.loads(next((tmp_path / "out").glob("*_fusion.json")).read_text())
    assert "onnxruntime" in json.dumps(record)


def test_runtime_refusals_are_one_line() -> None:
    x = np.random.default_rng(0).random((4, 64, 64), np.float32)
    with pytest.raises(StackMFFError, match="runtime"):  # a classical method has no runtime to pick
        fuse(x, method="wavelet", runtime="onnxruntime")
    with pytest.raises(StackMFFError, match="runtime must be one of"):
        onnx_runtime.check_runtime("tensorrt", torch.device("cpu"), half=False, compile=False)
    if onnx_runtime.available():
        with pytest.raises(StackMFFError, match="runs on the CPU"):
            onnx_runtime.check_runtime("onnxruntime", torch.device("cuda"), half=True, compile=False)
        with pytest.raises(StackMFFError, match="fp32"):
            onnx_runtime.check_runtime("onnxruntime", torch.device("cpu"), half=True, compile=False)


def test_missing_onnxruntime_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    with pytest.raises(StackMFFError, match=r"pip install 'napari-stackmff\[onnx\]'"):
        fuse(np.random.default_rng(0).random((4, 64, 64), np.float32), method="stackmff-v2", device="cpu",
             runtime="onnxruntime")
