"""StackMFF-V2: structure, reproduction of the published outputs, and checkpoint error handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_stackmff.core.errors import WeightsError
from napari_stackmff.core.models.checkpoint import load_state_dict
from napari_stackmff.core.models.v2 import StackMFFV2, official_postprocess, strip_module_prefix

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REF = SHARED / "reference" / "stackmff_v2_official"
CKPT = REF / "model.pth"
OFFICIAL_PARAMS = 51_524


def _need_reference() -> None:
    if not CKPT.is_file():
        pytest.skip(f"official reference not available at {REF}")


class _Foo:
    """An arbitrary class: pickling an instance of it must be refused by the safe loader."""

    def __init__(self) -> None:
        self.x = 1


@pytest.fixture(scope="module")
def official_model() -> StackMFFV2:
    _need_reference()
    model = StackMFFV2().eval()
    load_state_dict(CKPT, model, model_name="stackmff_v2")
    return model


def test_parameter_count_matches_official() -> None:
    assert sum(p.numel() for p in StackMFFV2().parameters()) == OFFICIAL_PARAMS


def test_official_checkpoint_loads_strict() -> None:
    _need_reference()
    raw = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    state = strip_module_prefix(raw)
    assert sum(v.numel() for v in state.values()) == OFFICIAL_PARAMS
    result = StackMFFV2().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_reproduces_official_outputs(official_model: StackMFFV2) -> None:
    x = torch.from_numpy(np.load(REF / "gray_input.npy")).float()[None]  # (1, 7, 384, 512)
    with torch.no_grad():
        logits = official_model(x)
    assert logits.shape == x.shape
    depth, index = official_postprocess(logits)
    official_depth = np.load(REF / "official_depth.npy")
    official_index = np.load(REF / "official_index.npy")
    err = float(np.abs(depth[0].numpy() - official_depth).max())
    agree = float((index[0].numpy() == official_index).mean())
    print(f"max |depth - official| = {err:.3g}, index agreement = {100 * agree:.4f}%")
    assert err <= 1e-4
    assert agree >= 0.999
    assert index.dtype == torch.long and depth.shape == index.shape == (1, 384, 512)


@pytest.mark.parametrize(("n", "h", "w"), [(2, 32, 64), pytest.param(3, 64, 32, marks=pytest.mark.slow),
                                             pytest.param(5, 96, 64, marks=pytest.mark.slow)])
def test_any_n_and_shape(n: int, h: int, w: int) -> None:
    torch.manual_seed(0)
    model = StackMFFV2()
    x = torch.rand(2, n, h, w)
    logits = model(x)
    assert logits.shape == (2, n, h, w)
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_rejects_sizes_not_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        StackMFFV2()(torch.rand(1, 3, 48, 64))


def test_postprocess_min_max_and_index() -> None:
    logits = torch.randn(2, 4, 8, 8)
    depth, index = official_postprocess(logits)
    assert depth.shape == index.shape == (2, 8, 8)
    assert float(depth.min()) == 0.0 and float(depth.max()) == 1.0  # batch-wide stretch
    assert int(index.min()) >= 0 and int(index.max()) <= 3
    depth, index = official_postprocess(torch.zeros(1, 3, 4, 4))  # constant: no NaN
    assert torch.isfinite(depth).all() and (index == 0).all()


def test_loads_our_training_checkpoint_format(tmp_path: Path) -> None:
    src = StackMFFV2()
    path = tmp_path / "ours.pth"
    torch.save({"model": "stackmff_v2", "state_dict": src.state_dict(), "meta": {"epoch": 1}}, path)
    dst = StackMFFV2()
    load_state_dict(path, dst, model_name="stackmff_v2")
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(WeightsError) as info:
        load_state_dict(path, StackMFFV2(), model_name="stackmff_v2")
    msg = str(info.value)
    assert path.name in msg
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nowhere.pth", "not found")


def test_truncated_checkpoint(tmp_path: Path) -> None:
    full = tmp_path / "full.pth"
    torch.save(StackMFFV2().state_dict(), full)
    data = full.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    _expect_error(truncated, "truncated")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    _expect_error(path, "not a torch checkpoint")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_different_model(tmp_path: Path) -> None:
    path = tmp_path / "linear.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    msg = _expect_error(path, "does not match", "mismatching keys")
    assert "e.g." in msg


def test_different_model_named(tmp_path: Path) -> None:
    path = tmp_path / "v3.pth"
    torch.save({"model": "stackmff_v3", "state_dict": nn.Linear(3, 2).state_dict()}, path)
    _expect_error(path, "stackmff_v3")


def test_shape_mismatch(tmp_path: Path) -> None:
    state = StackMFFV2().state_dict()
    state["feature_extraction.final.weight"] = torch.zeros(4, 8, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    _expect_error(path, "1 mismatching keys", "feature_extraction.final.weight")


def test_arbitrary_object_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"payload": _Foo()}, path)
    _expect_error(path, "refused for safety")
