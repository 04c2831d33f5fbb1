"""The unsupervised (Fusion2Void-style) objective: loss, gradients, learning focus without labels,
unlabelled data, resume, the CLI, and the published network sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_stackmff.cli import main
from napari_stackmff.core.fusion.dispatch import fuse
from napari_stackmff.core.models import fusion2void as f2v
from napari_stackmff.core.models.v2 import StackMFFV2
from napari_stackmff.core.training.synth import random_stack, texture_mask
from napari_stackmff.core.training.objectives import OBJECTIVES, get_objective
from napari_stackmff.core.training.loop import TrainConfig, train
from napari_stackmff.core.training.data import UnlabelledData, _to_unit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STEPS_FROM_SCRATCH = 150


def _tiny_stack(seed: int = 3, size: int = 64, n: int = 5):
    s = random_stack(np.random.default_rng(seed), size=size, n=n, scene="natural", depth="plane", noise=False,
                     max_radius=(6.0, 6.0))
    return s, torch.from_numpy(_to_unit(s.slices))[None]


def test_objective_table_matches_the_cli_choices() -> None:
    from napari_stackmff.core.defaults import TRAIN_OBJECTIVES

    assert tuple(OBJECTIVES) == TRAIN_OBJECTIVES
    assert get_objective("unsupervised").readout == "argmax"  # hard selection at inference


def test_drop_mask_drops_aligned_squares_at_the_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    m = f2v.drop_mask(64, 96, 96, 16, 0.3, generator=g)
    assert m.shape == (64, 1, 96, 96) and set(m.unique().tolist()) == {0.0, 1.0}
    assert 0.25 < float(m.mean()) < 0.35
    assert bool((m.flatten(1).sum(1) > 0).all())  # every stack has something to restore
    # Squares: a row never switches between dropped and kept more often than once per patch.
    switches = (m[..., 1:] != m[..., :-1]).sum(-1)
    assert int(switches.max()) <= 96 // 16 + 1
    assert float(f2v.drop_mask(8, 64, 64, 16, 0.0).flatten(1).sum(1).min()) > 0


def _fixed_loss(crit: f2v.Fusion2VoidLoss, model: torch.nn.Module, x: torch.Tensor) -> float:
    """The loss with the same masks and slice picks every time (they are random in training)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    crit.eval()
    with torch.no_grad():
        value = crit(model(x), x).item()
    crit.train()
    torch.random.set_rng_state(state)
    return value


def test_gradients_reach_the_focus_model_after_the_warm_up() -> None:
    """After the warm-up the focus model gets gradients through the soft fusion, during it only the
    inpainter does."""
    torch.manual_seed(0)
    _, x = _tiny_stack()
    model = StackMFFV2()
    crit = f2v.Fusion2VoidLoss(warmup=1, width=16, blocks=2)
    crit(model(x), x).backward()  # warm-up call: the focus model is left alone
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in crit.parameters())
    crit.zero_grad()
    crit(model(x), x).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.slow  # issue 24: 30 joint steps, ~2.5 min loaded; gradients and the CLI's training run stay fast
def test_loss_decreases_in_joint_training() -> None:
    """Joint training on one tiny stack lowers the loss."""
    torch.manual_seed(0)
    _, x = _tiny_stack()
    model = StackMFFV2()
    crit = f2v.Fusion2VoidLoss(warmup=1, width=16, blocks=2)
    for _ in range(2):  # the warm-up call and one more, as in the test above (same random draws after them)
        crit(model(x), x).backward()
    opt = torch.optim.Adam([*model.parameters(), *crit.parameters()], lr=2e-3)
    before = _fixed_loss(crit, model, x)
    for _ in range(30):
        loss = crit(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _fixed_loss(crit, model, x) < 0.8 * before


@pytest.mark.slow
def test_unsupervised_training_learns_focus_from_a_random_init() -> None:
    """No labels used: 150 steps on one small synthetic stack move V2's argmax from a random init
    toward the true focus (checked on textured pixels, where focus is decidable)."""
    torch.manual_seed(0)
    s, x = _tiny_stack(seed=5, size=64, n=6)
    tex = torch.from_numpy(texture_mask(s.aif, quantile=0.5))
    truth = torch.from_numpy(s.focus_index)
    model = StackMFFV2()
    crit = f2v.Fusion2VoidLoss(warmup=0, width=8, blocks=1)

    def error() -> float:  # mean distance, in slices, between the chosen slice and the true focus
        with torch.no_grad():
            return float((model(x)[0].argmax(0).float() - truth).abs()[tex].mean())

    start = error()
    opt = torch.optim.Adam([{"params": model.parameters()}, {"params": crit.parameters(), "lr": f2v.INPAINTER_LR}],
                           lr=3e-3)
    for step in range(STEPS_FROM_SCRATCH):
        flip = [3] if step % 2 else []  # a flip per step: some variety on one stack
        xi = x.flip(flip) if flip else x
        loss = crit(model(xi), xi)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = error()
    assert end < 0.5 * start, (start, end)


def test_entropy_term_pushes_toward_one_hot() -> None:
    """With only the entropy term, the per-pixel slice probabilities sharpen (soft fusion -> hard)."""
    torch.manual_seed(0)
    x = torch.rand(1, 4, 32, 32)
    logits = (0.1 * torch.randn(1, 4, 32, 32)).requires_grad_()
    crit = f2v.Fusion2VoidLoss(warmup=0, grad_weight=0.0, entropy_weight=1.0, width=8, blocks=1)
    opt = torch.optim.Adam([logits], lr=0.2)
    start = None
    for _ in range(20):
        crit(logits, x).backward()
        start = crit.last["entropy"] if start is None else start
        opt.step()
        opt.zero_grad()
    assert crit.last["entropy"] < 0.5 * start


def test_published_network_sizes() -> None:
    """The published inpainting (9 -> 6 channels) and pair fusion nets have their published sizes."""
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(f2v.Inpainter(in_ch=9, out_ch=6, sigmas=())) == 152_326
    assert count(f2v.PairFusionNet()) == 261_571
    net = f2v.PairFusionNet().eval()
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(net.fuse(a, b), net.fuse(b, a))  # symmetrised: the order does not matter


def _write_unlabelled(root: Path) -> Path:
    """A folder of unlabelled stacks: two multi-page TIFFs (N = 5 and N = 2) and a folder of PNG slices."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    s = random_stack(rng, size=80, n=5, scene="natural", depth="plane", noise=True, dtype="uint16", rgb=False)
    tifffile.imwrite(root / "a.tif", s.slices, photometric="minisblack")
    pair = random_stack(rng, size=(64, 96), n=2, scene="natural", depth="plane", dtype="uint8", rgb=True)
    tifffile.imwrite(root / "pair.tif", pair.slices, photometric="rgb")
    (root / "folder").mkdir()
    f = random_stack(rng, size=72, n=3, scene="natural", depth="plane", dtype="uint8", rgb=False)
    for i, sl in enumerate(f.slices, 1):
        Image.fromarray(sl).save(root / "folder" / f"{i}.png")
    return root


def test_a_folder_of_unlabelled_stacks_is_accepted(tmp_path: Path) -> None:
    root = _write_unlabelled(tmp_path / "data")
    data = UnlabelledData(root, np.random.default_rng(0), (2, 8), max_side=64)
    assert sorted(Path(n).name for n in data.names) == ["a.tif", "folder", "pair.tif"]
    shapes = sorted(x.shape for x in data.items)
    assert shapes == [(2, 43, 64), (3, 64, 64), (5, 64, 64)]  # downscaled to a longer side of 64
    assert all(0 <= x.min() and x.max() <= 1 for x in data.items)
    ns = set()
    for _ in range(20):
        b = data.batch(3, 64)
        assert b.focus is None and b.images.shape[0] == 3 and b.images.shape[-1] % 32 == 0
        ns.add(b.images.shape[1])
    assert 2 in ns and max(ns) <= 5  # pairs too; never more slices than a stack has
    # A single TIFF path and a folder of slices are stacks as well.
    assert len(UnlabelledData([root / "a.tif", root / "folder"], np.random.default_rng(0), (2, 4)).items) == 2


@pytest.mark.parametrize("bad, words", [
    ("missing", "no such file or folder"),
    ("image.png", "not a stack"),
    ("one.tif", "single image"),
    ("empty", "no image files"),
])
def test_bad_data_is_one_line(tmp_path: Path, capsys, bad: str, words: str) -> None:
    (tmp_path / "image.png").write_bytes(b"")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((40, 40), np.uint8))
    (tmp_path / "empty").mkdir()
    code = main(["-q", "train", "--objective", "unsupervised", "--data", str(tmp_path / bad), "--init-weights",
                 "none", "--checkpoint", str(tmp_path / "x.pt"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and bad in err[0] and words in err[0], err


def test_cli_trains_resumes_and_fuse_loads_the_checkpoint(tmp_path: Path, capsys) -> None:
    """`stackmff train --objective unsupervised` on a folder of TIFF stacks, from our shipped weights by
    default; --resume continues (the inpainter and its warm-up count included); fuse() loads the result."""
    root = _write_unlabelled(tmp_path / "data")
    ckpt = tmp_path / "u.pt"

    def run(epochs: int, checkpoint: Path, *extra: str) -> int:
        return main(["-q", "train", "--objective", "unsupervised", "--data", str(root), "--epochs", str(epochs),
                     "--steps", "2", "--batch-size", "1", "--crop", "32", "--val-stacks", "1",
                     "--checkpoint", str(checkpoint), "--device", "cpu", *extra])

    assert run(1, ckpt) == 0
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["init_weights"].endswith("stackmff_v2.pt")  # fine-tunes our weights by default
    assert int(state["objective_state"]["calls"]) == 2 and state["readout"] == "argmax"
    assert run(2, ckpt, "--resume", "--patience", "3") == 0
    state = torch.load(ckpt, weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [0, 1] and int(state["objective_state"]["calls"]) == 4
    assert state["config"]["patience"] == 3
    assert {"train_l1", "train_entropy"} <= set(state["history"][-1])
    best = ckpt.with_name("u.best.pt")
    assert torch.load(best, weights_only=True)["readout"] == "argmax"
    data = np.random.default_rng(1).integers(0, 255, (4, 40, 40), dtype=np.uint8)
    for w in (ckpt, best):
        assert fuse(data, method="stackmff-v2", weights=str(w), device="cpu").all_in_focus.shape == (40, 40)
    # A checkpoint of another objective cannot be resumed as unsupervised (it holds no inpainter).
    other = tmp_path / "h.pt"
    train(TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, crop=32, n_range=(3, 4), val_stacks=1,
                      pool_size=1, checkpoint=str(other), device="cpu"))
    capsys.readouterr()
    assert run(2, other, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "h.pt" in err[0] and "unsupervised" in err[0]


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data (real stacks)")
def test_real_slice_folder_loads_downscaled() -> None:
    with pytest.warns(UserWarning, match="left out"):  # stacked.png and depth.png are not slices
        data = UnlabelledData(SHARED / "smoke" / "leaves", np.random.default_rng(0), (3, 8), max_side=160)
    assert [x.shape for x in data.items] == [(6, 121, 160)]  # 637 x 480 -> 160 x 121


def test_in_memory_stacks_train_unsupervised_only(tmp_path: Path) -> None:
    """The training widget hands open layers to train() as FocalStacks: they are used as they are
    (named for the record), and only the label-free objective may use them."""
    from napari_stackmff.core.errors import StackMFFError

    s = random_stack(np.random.default_rng(8), size=48, n=4, noise=False)
    stack = s.to_stack()
    stack.source = "layer 'mine'"
    base = dict(epochs=1, steps_per_epoch=2, batch_size=1, crop=32, n_range=(2, 4), val_stacks=1, device="cpu",
                data=["layer:mine"], checkpoint=str(tmp_path / "m.pt"))
    with pytest.raises(StackMFFError, match="no labels"):
        train(TrainConfig(objective="hybrid", **base), stacks=[stack])
    res = train(TrainConfig(objective="unsupervised", **base), stacks=[stack])
    assert len(res.history) == 1 and res.checkpoint.is_file()
    assert torch.load(res.last_checkpoint, weights_only=True)["config"]["data"] == ["layer:mine"]
