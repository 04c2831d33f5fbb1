"""StackMFF-V3 (core/models/v3.py): the published structure by its parameter count, any N and size,
the narrow variant loaded by shape, focus maps that never average slice numbers, untidy stacks
(shuffled, blank slices) handled, and the training data's disorder keeping the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_stackmff.core import fuse
from napari_stackmff.core.training import synth
from napari_stackmff.core.errors import StackMFFError
from napari_stackmff.core.models import registry
from napari_stackmff.core.models.inference import order_free_maps
from napari_stackmff.core.models.v3 import StackMFFV3, count_parameters


def test_published_structure_and_narrow_variant() -> None:
    full, narrow = StackMFFV3(), StackMFFV3.narrow()
    assert count_parameters(full) == 2_738_268  # the published network definition (MODELS.md)
    assert count_parameters(full.cross) == 6_560
    assert count_parameters(narrow) == 714_284
    narrow.eval()
    for n, (h, w) in ((2, (32, 64)), (7, (64, 32))):
        assert narrow(torch.rand(1, n, h, w)).shape == (1, n, h, w)


def test_registry_builds_the_size_a_weights_file_holds(tmp_path, make_synth) -> None:
    torch.manual_seed(0)
    path = tmp_path / "narrow.pt"
    torch.save({"model": "stackmff-v3", "state_dict": StackMFFV3.narrow().state_dict(), "readout": "argmax"}, path)
    model = registry.load_model("stackmff-v3", path)
    assert count_parameters(model) == 714_284
    s = make_synth(seed=40, n=5, size=64)
    r = fuse(s.slices, method="stackmff-v3", weights=str(path), device="cpu")
    assert r.all_in_focus.shape == s.slices.shape[1:] and r.focus_map.max() <= 4
    idx = r.index
    np.testing.assert_array_equal(r.all_in_focus, np.take_along_axis(s.slices, idx[None], 0)[0])


def test_fast_variant_attends_at_half_resolution_and_its_file_says_so(tmp_path) -> None:
    """A stride-2 model: its banded inference is its training forward (same numbers), the weights file
    builds the fast variant by name, and it can start from stride-1 weights of the same size."""
    torch.manual_seed(1)
    slow = StackMFFV3.narrow()
    fast = StackMFFV3.narrow(cross_stride=2)
    fast.adopt(slow.state_dict())
    theirs = fast.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in slow.state_dict().items())
    assert int(theirs["stride_marker"]) == 2
    fast.eval()
    fast.BAND_TOKENS = 3000  # several bands of rows
    x = torch.rand(1, 5, 96, 64)
    with torch.no_grad():
        banded = fast(x)
        direct = fast._to_full(fast._cross_logits(fast.features(x)), (96, 64))
        coarse = fast._cross_logits(fast.features(x))
    assert coarse.shape == (1, 5, 48, 32) and banded.shape == (1, 5, 96, 64)
    torch.testing.assert_close(banded, direct, atol=1e-5, rtol=0)
    path = tmp_path / "fast.pt"
    torch.save({"model": "stackmff-v3", "state_dict": fast.state_dict(), "readout": "argmax"}, path)
    loaded = registry.load_model("stackmff-v3", path)
    assert loaded.cross_stride == 2 and count_parameters(loaded) == 714_284
    assert registry.get_spec("stackmff-v3").variant_of(fast.state_dict()) == "narrow-fast"
    assert registry.get_spec("stackmff-v3").variant_of(slow.state_dict()) == "narrow"


def test_order_free_maps_never_average_slice_numbers() -> None:
    """Two regions won by slices 0 and 4 of a shuffled stack, with noisy low-confidence pixels between:
    the clean-up may move the border, but every pixel keeps a slice some pixel voted for (never 2)."""
    n, h, w = 5, 40, 40
    logits = torch.full((n, h, w), -4.0)
    logits[0, :, :20] = 4.0
    logits[4, :, 20:] = 4.0
    logits[:, :, 18:22] = torch.randn(n, h, 4) * 0.1  # undecided band
    maps = order_free_maps(logits, denoise=True)
    assert set(maps.index.unique().tolist()) <= {0, 4}
    assert (maps.index[:, :15] == 0).all() and (maps.index[:, 25:] == 4).all()
    assert torch.equal(torch.round(maps.focus).long(), maps.index)


def test_disorder_keeps_the_truth_with_the_slices(make_synth) -> None:
    s = make_synth(seed=41, n=6, size=48)
    label = np.rint(s.focus_index).astype(int)
    rng = np.random.default_rng(0)
    stack, lab, valid = synth.disorder(s.slices, label, rng, shuffle=True, n_invalid=2)
    assert len(stack) == 8 and valid.sum() == 6
    # The slice the new label points at is the slice the old label pointed at.
    np.testing.assert_array_equal(np.take_along_axis(stack, lab[None], 0)[0],
                                  np.take_along_axis(s.slices, label[None], 0)[0])
    assert valid[lab].all()
    for kind in synth.INVALID_KINDS:
        bad = synth.invalid_slice(kind, s.slices, rng, 255.0)
        assert bad.shape == s.slices.shape[1:] and bad.dtype == s.slices.dtype


@pytest.mark.parametrize("method", ["wavelet", "stackmff-v2"])
def test_blank_slices_fuse_and_an_all_blank_stack_is_one_line(make_synth, method) -> None:
    s = make_synth(seed=42, n=6, size=64)
    blank = np.full_like(s.slices[0], 3)
    stack = np.concatenate([s.slices[:3], blank[None], s.slices[3:], blank[None]])
    r = fuse(stack, method=method, device="cpu")
    chosen_blank = np.isin(r.index, [3, 7]).mean()
    assert chosen_blank < 0.02  # a blank slice never dominates
    with pytest.raises(StackMFFError, match="every slice is blank") as err:
        fuse(np.stack([blank] * 4), method=method, device="cpu")
    assert "\n" not in str(err.value)


SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "stackmff_v3.pt"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no V3 weights shipped")
def test_shipped_v3_weights_survive_a_shuffled_stack_with_invalid_slices() -> None:
    """Loaded by name (narrow, read from the file). On a held-out-style stack, shuffled with two invalid
    slices, they keep most of their ordered-stack quality, where V2 loses more."""
    from napari_stackmff.core.fusion.metrics import psnr

    rng = np.random.default_rng(4343)
    s = synth.random_stack(rng, size=96, n=8, rgb=False, scene="cells", depth="smooth", noise=True, dtype="uint8",
                           max_radius=(8.0, 8.0))
    label = np.rint(s.focus_index).astype(int)
    untidy, _, _ = synth.disorder(s.slices, label, rng, shuffle=True, n_invalid=2, kinds=("noise", "saturated"))
    v3_ordered = psnr(fuse(s.slices, method="stackmff-v3", device="cpu").all_in_focus, s.aif)
    v3_untidy = psnr(fuse(untidy, method="stackmff-v3", device="cpu").all_in_focus, s.aif)
    v2_untidy = psnr(fuse(untidy, method="stackmff-v2", device="cpu").all_in_focus, s.aif)
    assert v3_untidy > v3_ordered - 2.0
    assert v3_untidy > v2_untidy


@pytest.mark.parametrize("kind", ["saturated", "other_scene"])
def test_over_exposed_and_foreign_slices_are_left_out_with_a_warning(make_synth, tmp_path, kind) -> None:
    """They look sharp to every method; left out (named in a warning and in _fusion.json), they win nothing."""
    import json

    from napari_stackmff.core.io.write import save_result

    s = make_synth(seed=44, n=6, size=96)
    other = make_synth(seed=45, n=3, size=96, scene="cells").slices
    label = np.rint(s.focus_index).astype(int)
    untidy, _, valid = synth.disorder(s.slices, label, np.random.default_rng(3), shuffle=True, n_invalid=1,
                                      kinds=(kind,), other=other)
    bad = int(np.flatnonzero(~valid)[0])
    with pytest.warns(UserWarning, match=rf"left out of the fusion: slice {bad}"):
        r = fuse(untidy, method="tenengrad")
    assert not (r.index == bad).any()
    assert list(r.excluded[0]) == [str(bad)]
    info = json.loads(save_result(r, tmp_path, "u")["info"].read_text())
    assert str(bad) in info["excluded_slices"][0]
    clean = fuse(s.slices, method="tenengrad")
    assert clean.excluded is None
