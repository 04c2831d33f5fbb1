"""The synthetic focal-stack renderer: optics that behave like optics, and the dataset layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_stackmff.cli import main
from napari_stackmff.core.training import synth
from napari_stackmff.core.training.data import FolderData


def _disc_scene(size: int = 96, radius: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    inside = r < radius
    aif = np.where(inside, 0.9, 0.1).astype(np.float32)
    depth = np.where(inside, 1.0, 0.0).astype(np.float32)  # the bright disc is near, the background far
    return aif, depth, r


def test_occlusion_near_object_blur_spills_over_background_not_the_reverse() -> None:
    aif, depth, r = _disc_scene()
    s = synth.render_stack(aif, depth, [0.0, 1.0], max_radius=8.0, layers=8, dtype=np.float32)
    far_focused, near_focused = s.slices
    ring_in = (r > 16) & (r < 18)  # just inside the disc edge
    ring_out = (r > 22) & (r < 24)  # just outside
    # Focused on the near disc: its edge is sharp; the blurred background does not bleed onto it.
    assert abs(near_focused[ring_in].mean() - 0.9) < 0.02
    # Focused on the far background: the defocused near disc spreads over the background.
    assert far_focused[ring_out].mean() > 0.1 + 0.1
    # And the in-focus background far from the disc keeps its value.
    assert abs(far_focused[r > 40].mean() - 0.1) < 0.01


def test_blur_grows_with_distance_from_the_focal_plane() -> None:
    rng = np.random.default_rng(0)
    aif = synth.random_scene(rng, (96, 96), "natural")
    depth = np.full((96, 96), 0.5, np.float32)
    s = synth.render_stack(aif, depth, np.linspace(0, 1, 5), max_radius=10.0, layers=5, dtype=np.float32)
    sharpness = [float(np.var(np.diff(sl, axis=1))) for sl in s.slices]
    assert int(np.argmax(sharpness)) == 2  # the slice focused at depth 0.5
    assert sharpness[0] < sharpness[1] < sharpness[2] and sharpness[2] > sharpness[3] > sharpness[4]
    assert abs(sharpness[1] - sharpness[3]) < 0.05 * sharpness[1]  # equal defocus either side, equal blur
    np.testing.assert_allclose(s.focus_index, 2.0, atol=1e-5)


def test_poisson_gaussian_noise_and_bit_depth() -> None:
    aif = np.tile(np.linspace(0.05, 0.95, 64, dtype=np.float32), (64, 1))
    depth = np.zeros_like(aif)
    s = synth.render_stack(aif, depth, [0.0, 0.5], max_radius=0.0, layers=2, dtype=np.uint16, peak_photons=100.0,
                           rng=np.random.default_rng(1))
    img = s.slices[0].astype(np.float64) / 65535
    dark, bright = img[:, :8] - aif[:, :8], img[:, -8:] - aif[:, -8:]
    assert bright.var() > 3 * dark.var()  # shot noise grows with the signal
    assert s.slices.dtype == np.uint16 and s.aif.dtype == np.uint16


def test_random_stacks_cover_the_recipe() -> None:
    rng = np.random.default_rng(5)
    seen_n, dtypes, rgb = set(), set(), set()
    for _ in range(6):
        s = synth.random_stack(rng, size=48, n_range=(2, 32), max_radius=(2.0, 4.0))
        n = s.slices.shape[0]
        seen_n.add(n)
        dtypes.add(s.slices.dtype.name)
        rgb.add(s.slices.ndim == 4)
        assert 2 <= n <= 32 and np.all(np.diff(s.focus_positions) > 0)
        assert s.focus_index.min() >= 0 and s.focus_index.max() <= n - 1
    assert len(seen_n) > 2 and dtypes <= {"uint8", "uint16"}


def test_synth_cli_writes_seed_layout_that_training_reads(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert main(["-q", "synth", str(out), "--count", "2", "--size", "48", "--n-min", "3", "--n-max", "5"]) == 0
    scenes = sorted(p.name for p in (out / "stacks").iterdir())
    assert scenes == ["scene00000", "scene00001"]
    for sc in scenes:
        n = len([p for p in (out / "stacks" / sc).iterdir() if p.suffix in (".png", ".tif")])
        assert 3 <= n <= 5 and (out / "depth_maps" / f"{sc}.png").exists() and any((out / "aif").glob(f"{sc}.*"))
    data = FolderData(out, np.random.default_rng(0))
    x, y, aif = data.batch(2, 32)[:3]  # images, focus, all-in-focus (events: None here)
    assert x.shape[0] == 2 and x.shape[-2:] == (32, 32) and float(y.max()) <= x.shape[1] - 1
    # The all-in-focus truth comes along (for the hybrid objective), on the slices' scale.
    assert aif is not None and aif.shape == (2, 32, 32) and 0 <= float(aif.min()) <= float(aif.max()) <= 1


def test_clean_fraction_mixes_noise_free_stacks_into_training_and_validation(monkeypatch) -> None:
    """--clean-fraction renders that share of the synthetic stacks without sensor noise, so a model
    also learns well-exposed (near noise-free) data; 0 keeps them all noisy."""
    from napari_stackmff.core import training as train_mod

    seen: list[bool] = []
    real = synth.random_stack

    def spy(*args, **kwargs):
        seen.append(kwargs["noise"])
        return real(*args, **{**kwargs, "size": 16, "n": 3})

    monkeypatch.setattr(synth, "random_stack", spy)
    train_mod.validation_set(0, 30, 16, (3, 3), noise=True, clean_fraction=0.5)
    assert 5 < seen.count(False) < 25 and 5 < seen.count(True) < 25
    seen.clear()
    train_mod.SyntheticPool(np.random.default_rng(0), 16, (3, 3), 20, 1, noise=True, clean_fraction=0.0)
    assert seen == [True] * 20


def test_order_free_validation_is_as_untidy_as_the_training_stacks() -> None:
    """With an order-free model's rates, validation stacks are shuffled and get invalid slices as its
    training stacks do (else the best epoch is picked on tidy stacks alone); the truth follows the slices:
    gathering each stack at its label gives what the tidy stack gave at its own."""
    from napari_stackmff.core import training as train_mod

    tidy = train_mod.validation_set(3, 8, 48, (4, 6))
    untidy = train_mod.validation_set(3, 8, 48, (4, 6), shuffle=1.0, invalid=1.0)
    lengths = [len(s.slices) for _, s in untidy]
    assert all(len(b.slices) > len(a.slices) for (_, a), (_, b) in zip(tidy, untidy))  # invalid slices in
    assert sum(not np.array_equal(a.slices, b.slices[:len(a.slices)]) for (_, a), (_, b) in zip(tidy, untidy)) >= 6
    for (_, a), (sample, b) in zip(tidy, untidy):
        assert sample.images.shape[0] == len(b.slices) and sample.focus.max() < len(b.slices)
        def at(slices: np.ndarray, label: np.ndarray) -> np.ndarray:
            idx = np.rint(label).astype(int)[None]
            return np.take_along_axis(slices, idx[..., None] if slices.ndim == 4 else idx, 0)[0]

        before, after = at(a.slices, a.focus_index), at(b.slices, b.focus_index)
        np.testing.assert_array_equal(after, before)
    assert max(lengths) <= 6 + 3
    assert [len(s.slices) for _, s in train_mod.validation_set(3, 8, 48, (4, 6))] == [len(s.slices) for _, s in tidy]
