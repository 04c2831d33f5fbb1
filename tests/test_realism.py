"""Real-optics effects of the renderer (core/realism.py): each does what real lenses and cameras do,
keeps the truth in the middle slice's frame, and training can use them (also from worker processes)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_stackmff.core.training import synth
from napari_stackmff.core.errors import StackMFFError
from napari_stackmff.core.training.realism import EFFECTS, Realism, degrade
from napari_stackmff.core.training.data import SyntheticPool, render_pool_item


def _point_scene(size: int = 65) -> tuple[np.ndarray, np.ndarray]:
    aif = np.zeros((size, size), np.float32)
    aif[size // 2, size // 2] = 1.0
    return aif, np.zeros_like(aif)


@pytest.mark.parametrize("kind", ["disc", "gaussian", "rim"])
def test_psf_shapes_keep_energy_and_differ_at_the_rim(kind: str) -> None:
    aif, depth = _point_scene()
    s = synth.render_stack(aif, depth, [1.0], max_radius=10.0, layers=20, dtype=np.float32, psf=kind)  # r 9.75
    img = s.slices[0]
    assert img.sum() == pytest.approx(1.0, rel=0.02)  # a PSF moves light, it does not make or lose it
    c = 32
    centre, rim = img[c, c], img[c, c + 9]
    if kind == "disc":
        assert rim == pytest.approx(centre, rel=0.05)
    elif kind == "gaussian":
        assert rim < 0.5 * centre
    else:  # bright rim: spherical aberration's "soap bubble"
        assert rim > 2 * centre


def test_breathing_magnifies_the_ends_of_the_sweep_not_the_middle() -> None:
    yy, xx = np.mgrid[0:101, 0:101]
    ring = (np.abs(np.hypot(yy - 50, xx - 50) - 30) < 1.5).astype(np.float32)
    f = np.array([0.0, 0.5, 1.0], np.float32)
    out, jpeg = degrade(np.stack([ring] * 3), f, np.random.default_rng(0), Realism(breathing=1.0, max_breathing=0.2))
    assert not jpeg
    radius = [float((np.hypot(yy - 50, xx - 50) * s).sum() / s.sum()) for s in out]
    assert radius[1] == pytest.approx(30, abs=0.3)  # the middle slice is the truth's frame
    assert abs(radius[0] - 30) > 1 and abs(radius[2] - 30) > 1 and (radius[0] - 30) * (radius[2] - 30) < 0


def test_shift_moves_slices_but_not_the_middle_one() -> None:
    rng = np.random.default_rng(1)
    img = synth.random_scene(rng, (64, 64), "natural")
    f = np.linspace(0, 1, 5, dtype=np.float32)
    out, _ = degrade(np.stack([img] * 5), f, np.random.default_rng(2), Realism(shift=1.0, max_shift=1.5))
    diffs = [float(np.abs(s - img)[8:-8, 8:-8].mean()) for s in out]
    assert diffs[2] == 0 and max(diffs) > 0.005


def test_vignetting_darkens_corners_and_jpeg_stores_8_bit() -> None:
    rng = np.random.default_rng(3)
    aif = np.full((64, 64), 0.6, np.float32)
    s = synth.render_stack(aif, np.zeros_like(aif), [0.0, 1.0], max_radius=2.0, layers=2, dtype=np.uint16, rng=rng,
                           realism=Realism(vignetting=1.0, jpeg=1.0))
    assert s.slices.dtype == np.uint8  # a JPEG holds 8 bits whatever was asked
    img = s.slices[0].astype(np.float32)
    assert img[28:36, 28:36].mean() > img[:4, :4].mean() + 3


def test_every_effect_renders_and_bad_names_are_one_line() -> None:
    for name in ("none", *EFFECTS, "all"):
        s = synth.random_stack(np.random.default_rng(4), size=48, n=4, rgb=False, realism=Realism.only(name))
        assert s.slices.shape[:3] == (4, 48, 48) and np.isfinite(s.focus_index).all()
    with pytest.raises(StackMFFError, match="unknown realism effect 'blur'"):
        Realism.mix(["blur"])
    assert Realism.mix(["all"], 0.3).jpeg == 0.3


def test_render_workers_feed_the_pool_with_what_the_loop_would_render() -> None:
    args = (40, (3, 4), True, 0.0, Realism.mix(["psf", "shift"], 1.0))
    a, b = render_pool_item([7, 1], *args), render_pool_item([7, 1], *args)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # one seed, one stack: workers replay the loop
    pool = SyntheticPool(np.random.default_rng(0), 40, (3, 4), 3, 1, realism=args[-1], workers=1)
    try:
        assert len(pool.items) == 3
        for _ in range(200):  # queued renders are swapped in as they finish, never waited for
            batch = pool.batch(2, 32)
            if pool.swapped:
                break
            time.sleep(0.05)
        assert pool.swapped >= 1
        assert batch.images.shape[0] == 2 and batch.images.shape[1] in (3, 4) and batch.focus is not None
    finally:
        pool.close()
