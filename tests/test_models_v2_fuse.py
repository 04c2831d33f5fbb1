"""StackMFF-V2 behind fuse(): the official checkpoint via --weights, compat mode, our inference, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_stackmff import FocalStack, fuse
from napari_stackmff.cli import main
from napari_stackmff.core.errors import WeightsError
from napari_stackmff.core.training.loop import TrainConfig, train

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "stackmff_v2_official"
needs_ref = pytest.mark.skipif(not (REF / "model.pth").exists(), reason="../shared/reference not present")


@needs_ref
def test_compat_mode_reproduces_published_index_through_fuse() -> None:
    gray = np.load(REF / "gray_input.npy")  # (7, 384, 512) float32 in [0, 1]
    official = np.load(REF / "official_index.npy")
    r = fuse(FocalStack(gray, axes="ZYX"), method="stackmff-v2", weights=str(REF / "model.pth"), compat=True,
             device="cpu")
    assert (r.index == official.reshape(r.index.shape)).mean() >= 0.999
    # Gathering from the published index reproduces the published fused image.
    fused = np.load(REF / "official_fused_gray.npy").reshape(r.all_in_focus.shape)
    assert np.abs(r.all_in_focus - fused).max() < 1e-6


@needs_ref
def test_official_weights_any_size_rgb_16bit_via_our_inference() -> None:
    """Reflect padding: any H, W; RGB and 16-bit select on luma and gather the original pixels."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65535, (3, 50, 70, 3), dtype=np.uint16)
    r = fuse(data, method="stackmff-v2", weights=str(REF / "model.pth"), device="cpu")
    assert r.all_in_focus.shape == (50, 70, 3) and r.all_in_focus.dtype == np.uint16
    picked = np.take_along_axis(data, r.index[None, ..., None], 0)[0]
    np.testing.assert_array_equal(r.all_in_focus, picked)
    assert r.focus_map.dtype == np.float32 and 0 <= r.focus_map.min() and r.focus_map.max() <= 2
    assert 0 <= r.confidence.min() and r.confidence.max() <= 1


def test_model_without_weights_says_how_to_get_them(tmp_path: Path, monkeypatch) -> None:
    from napari_stackmff.core.models import registry

    monkeypatch.setattr(registry, "weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match="--weights"):
        fuse(np.zeros((3, 32, 32), np.uint8), method="stackmff-v2", device="cpu")


def test_auto_picks_a_model_only_once_it_beats_classical_on_real_stacks(tmp_path: Path, monkeypatch) -> None:
    """Shipped weights alone do not make a network the default, nor does winning on synthetic stacks:
    "auto" takes a model of AUTO_ORDER only when its weights record wins on every real stack."""
    from napari_stackmff.core.fusion.dispatch import resolve_method
    from napari_stackmff.core.models import registry
    from napari_stackmff.core.models.v2 import StackMFFV2

    monkeypatch.setattr(registry, "weights_dir", lambda: tmp_path)
    path = tmp_path / "stackmff_v2.pt"
    synthetic_only = {"synthetic_psnr_gain_db": 1.6}
    torch.save({"model": "stackmff-v2", "state_dict": StackMFFV2().state_dict(), "meta": synthetic_only}, path)
    assert registry.shipped_weights("stackmff-v2") is not None
    monkeypatch.setattr(registry, "AUTO_ORDER", ("stackmff-v2",))
    assert resolve_method("auto") == "wavelet"
    record = {registry.REAL_RECORD: {"beats_best_classical": False, "sets": ["leaves"]}}
    torch.save({"model": "stackmff-v2", "state_dict": StackMFFV2().state_dict(), "meta": record}, path)
    assert resolve_method("auto") == "wavelet"
    record[registry.REAL_RECORD]["beats_best_classical"] = True
    torch.save({"model": "stackmff-v2", "state_dict": StackMFFV2().state_dict(), "meta": record}, path)
    assert resolve_method("auto") == "stackmff-v2"
    monkeypatch.setattr(registry, "AUTO_ORDER", ())
    assert resolve_method("auto") == "wavelet"
    # V3 comes first only when its record also says it beats V2 (on ordered stacks): else V2 is next.
    from napari_stackmff.core.models.v3 import StackMFFV3

    monkeypatch.setattr(registry, "AUTO_ORDER", ("stackmff-v3", "stackmff-v2"))
    v3 = {registry.REAL_RECORD: {"beats_best_classical": True, "beats_models": []}}
    torch.save({"model": "stackmff-v3", "state_dict": StackMFFV3.narrow().state_dict(), "meta": v3},
               tmp_path / "stackmff_v3.pt")
    registry._real_record.cache_clear()
    assert resolve_method("auto") == "stackmff-v2"
    v3[registry.REAL_RECORD]["beats_models"] = ["stackmff-v2"]
    torch.save({"model": "stackmff-v3", "state_dict": StackMFFV3.narrow().state_dict(), "meta": v3},
               tmp_path / "stackmff_v3.pt")
    registry._real_record.cache_clear()
    assert resolve_method("auto") == "stackmff-v3"


def test_auto_is_classical_with_the_weights_we_ship() -> None:
    """Ours do not beat classical fusion on every real stack (weights/stackmff_v2.md), so no user
    gets them by default."""
    from napari_stackmff.core.fusion.dispatch import resolve_method

    assert resolve_method("auto") == "wavelet"


SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "stackmff_v2.pt"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no V2 weights shipped")
def test_shipped_v2_weights_find_the_focus_of_a_synthetic_stack() -> None:
    """The weights we ship load by name (no path), and on a held-out-style stack they put most
    textured pixels within one slice of the truth."""
    from napari_stackmff.core.fusion.metrics import focus_error
    from napari_stackmff.core.training.synth import random_stack, texture_mask

    s = random_stack(np.random.default_rng(4242), size=96, n=8, scene="cells", depth="smooth", noise=True,
                     dtype="uint16", rgb=False, max_radius=(8.0, 8.0))
    r = fuse(s.slices, method="stackmff-v2", device="cpu")
    fe = focus_error(r.focus_map, s.focus_index, texture_mask(s.aif, quantile=0.5))
    assert fe["within1"] > 0.6, fe


def test_cli_weights_flag_rejects_a_non_checkpoint(tmp_path: Path, capsys) -> None:
    stack = tmp_path / "s.tif"
    import tifffile

    tifffile.imwrite(stack, np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    bad = tmp_path / "model.pth"
    bad.write_text("not a checkpoint")
    code = main(["-q", "fuse", str(stack), "-o", str(tmp_path / "out"), "--method", "stackmff-v2",
                 "--weights", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.pth" in err[0]


@pytest.mark.slow  # issue 24: ~1 min; training + resume: test_train_unsupervised.py::test_cli_trains_resumes_*
def test_short_training_run_learns_and_resumes(tmp_path: Path) -> None:
    """A few steps on synthetic data lower the loss, write best/last checkpoints, and resume continues."""
    torch.manual_seed(0)
    ckpt = tmp_path / "v2.pt"
    events = []
    cfg = TrainConfig(epochs=2, steps_per_epoch=6, batch_size=2, crop=64, n_range=(4, 6), val_stacks=2,
                      pool_size=3, checkpoint=str(ckpt), device="cpu", lr=3e-3)
    res = train(cfg, callback=events.append)
    kinds = [e.kind for e in events]
    assert kinds.count("batch") == 12 and kinds.count("epoch") == 2 and kinds[-1] == "done"
    assert "prepare" in kinds
    assert res.checkpoint.exists() and ckpt.exists() and len(res.history) == 2
    assert all(np.isfinite(e.loss) for e in events if e.kind == "batch")
    # Resume for one more epoch: history grows from 2 to 3, the epoch counter continues.
    cfg3 = TrainConfig(**{**cfg.__dict__, "epochs": 3, "resume": True})
    res3 = train(cfg3)
    assert [h["epoch"] for h in res3.history] == [0, 1, 2]
    # The trained checkpoint is usable by fuse().
    data = np.random.default_rng(1).integers(0, 255, (4, 40, 40), dtype=np.uint8)
    r = fuse(data, method="stackmff-v2", weights=str(res3.checkpoint), device="cpu")
    assert r.all_in_focus.shape == (40, 40)


@pytest.mark.slow  # issue 24: ~40 s each; hybrid read-out: test_hybrid_checkpoint_is_read_out_by_argmax
@pytest.mark.parametrize("objective", ["depth", "hybrid"])
def test_v2_objective_fits_a_fixed_batch(objective: str) -> None:
    """Each objective and the network's gradients work: loss drops on one batch, and the slices the
    argmax readout gathers land closer to the true focus."""
    from napari_stackmff.core.models.v2 import StackMFFV2
    from napari_stackmff.core.training.synth import random_stack
    from napari_stackmff.core.training.data import Batch, _to_unit
    from napari_stackmff.core.training.objectives import get_objective

    torch.manual_seed(0)
    s = random_stack(np.random.default_rng(3), size=64, n=5, scene="natural", depth="plane", noise=False,
                     max_radius=(6.0, 6.0))
    images, aif = _to_unit(s.slices, s.aif)
    batch = Batch(torch.from_numpy(images)[None], torch.from_numpy(s.focus_index)[None], torch.from_numpy(aif)[None])
    model = StackMFFV2()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def index_error() -> float:
        with torch.no_grad():
            return float((model(batch.images)[0].argmax(0).float() - batch.focus[0]).abs().mean())

    err0, losses = index_error(), []
    for _ in range(25):
        loss = get_objective(objective).loss(model(batch.images), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert index_error() < err0


def test_unknown_objective_is_a_clear_error(tmp_path: Path) -> None:
    from napari_stackmff.core.errors import StackMFFError

    with pytest.raises(StackMFFError, match="objective 'focal'.*depth, hybrid"):
        train(TrainConfig(objective="focal", checkpoint=str(tmp_path / "x.pt"), device="cpu"))


def test_hybrid_checkpoint_is_read_out_by_argmax(tmp_path: Path) -> None:
    """A checkpoint trained as classification names the argmax readout, and inference follows it
    (an explicit readout still wins); checkpoints without the field keep soft-argmax."""
    from napari_stackmff.core.models.inference import ModelRunner
    from napari_stackmff.core.models.v2 import StackMFFV2

    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=1, crop=32, n_range=(3, 4), val_stacks=1,
                      pool_size=2, checkpoint=str(tmp_path / "h.pt"), device="cpu", objective="hybrid")
    res = train(cfg)
    cpu = torch.device("cpu")
    assert torch.load(res.checkpoint, weights_only=True)["readout"] == "argmax"
    assert ModelRunner("stackmff-v2", cpu, weights=str(res.checkpoint)).readout == "argmax"
    assert ModelRunner("stackmff-v2", cpu, weights=str(res.checkpoint), readout="softargmax").readout == "softargmax"
    bare = tmp_path / "bare.pt"
    torch.save(StackMFFV2().state_dict(), bare)
    assert ModelRunner("stackmff-v2", cpu, weights=str(bare)).readout == "softargmax"


@pytest.mark.slow  # issue 24: ~30 s; Stop through train(stop=): test_napari_train.py::test_stop_keeps_a_checkpoint
def test_training_stop_event_keeps_checkpoint(tmp_path: Path) -> None:
    import threading

    stop = threading.Event()
    ckpt = tmp_path / "v2.pt"

    def cb(ev):
        if ev.kind == "batch" and ev.step == 2:
            stop.set()

    cfg = TrainConfig(epochs=5, steps_per_epoch=50, batch_size=1, crop=32, n_range=(3, 4), val_stacks=1,
                      pool_size=2, checkpoint=str(ckpt), device="cpu")
    res = train(cfg, callback=cb, stop=stop)
    assert res.stopped and len(res.history) == 1 and ckpt.exists()
