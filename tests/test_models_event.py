"""The lean EventStackMFF (core/models/event.py): it starts as exactly our StackMFF-V2, reads its events
through every door (array, frames, recording + slice times), refuses to run without them, and trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_stackmff.core import fuse
from napari_stackmff.core.errors import StackMFFError
from napari_stackmff.core.models.checkpoint import read_state_dict
from napari_stackmff.core.models.event import EventStackMFF

V2 = Path(__file__).resolve().parents[1] / "weights" / "stackmff_v2.pt"
pytestmark = pytest.mark.skipif(not V2.exists(), reason="no V2 weights shipped")


@pytest.fixture(scope="module")
def from_v2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "event_from_v2.pt"
    model = EventStackMFF.from_v2(read_state_dict(V2))
    torch.save({"model": "eventstackmff", "state_dict": model.state_dict(), "readout": "argmax"}, path)
    return path


def test_starts_as_v2_and_reads_events_from_any_door(from_v2, make_synth, tmp_path) -> None:
    from napari_stackmff.core.events import EVENT_DTYPE

    s = make_synth(seed=50, n=6, size=96)
    v2 = fuse(s.slices, method="stackmff-v2", device="cpu")
    frames = np.random.default_rng(0).normal(0, 2, s.slices.shape).astype(np.float32)
    ev = fuse(s.slices, method="eventstackmff", weights=str(from_v2), events=frames, device="cpu")
    assert (ev.index == v2.index).mean() > 0.999  # the event parts start closed: V2's decisions
    rec = np.zeros(500, EVENT_DTYPE)
    rng = np.random.default_rng(1)
    rec["t"], rec["x"], rec["y"], rec["p"] = (np.sort(rng.integers(0, 6000, 500)), rng.integers(0, 96, 500),
                                              rng.integers(0, 96, 500), rng.integers(0, 2, 500))
    np.save(tmp_path / "rec.npy", rec)
    (tmp_path / "times.csv").write_text("\n".join(str(t) for t in (500, 1500, 2500, 3500, 4500, 5500)))
    r = fuse(s.slices, method="eventstackmff", weights=str(from_v2), events=tmp_path / "rec.npy",
             slice_times=tmp_path / "times.csv", device="cpu")
    assert r.all_in_focus.shape == s.slices.shape[1:]
    with pytest.raises(StackMFFError, match="reads event frames with the slices: pass events="):
        fuse(s.slices, method="eventstackmff", weights=str(from_v2), device="cpu")


def test_a_few_training_steps_on_image_and_event_stacks(tmp_path) -> None:
    from napari_stackmff.core.train import TrainConfig, train

    cfg = TrainConfig(model="eventstackmff", objective="hybrid", epochs=1, steps_per_epoch=2, batch_size=2, crop=32,
                      n_range=(3, 5), val_stacks=1, pool_size=2, device="cpu", init_weights=str(V2),
                      checkpoint=str(tmp_path / "e.pt"))
    result = train(cfg)
    assert result.checkpoint.exists() and np.isfinite(result.history[-1]["loss"])
    state = read_state_dict(result.checkpoint)
    assert "cross.cross.in_proj_weight" in state and "v2.feature_extraction.encoder1.0.weight" in state


SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "eventstackmff.pt"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no EventStackMFF weights shipped")
def test_shipped_event_weights_fuse_with_simulated_events(make_synth) -> None:
    """Loaded by name; with the sweep's events, as good as V2 on the images alone (they start there)."""
    from napari_stackmff.core.events import simulate_events
    from napari_stackmff.core.metrics import psnr

    s = make_synth(seed=51, n=6, size=96)
    frames = simulate_events(s.slices)
    r = fuse(s.slices, method="eventstackmff", events=frames, device="cpu")
    v2 = fuse(s.slices, method="stackmff-v2", device="cpu")
    assert psnr(r.all_in_focus, s.aif) > psnr(v2.all_in_focus, s.aif) - 0.5


def test_clean_fraction_renders_that_share_of_event_stacks_without_sensor_noise() -> None:
    """--clean-fraction for the event model: some pool stacks are exactly the noise-free render, the others not."""
    from napari_stackmff.core.train import EventPool, render_event_item

    pool = EventPool(np.random.default_rng(0), 32, (3, 4), pool=8, refresh_every=100, clean_fraction=0.5)
    clean = [np.array_equal(item[0], render_event_item([pool.seed, i + 1], 32, pool.dense, noise=False)[0])
             for i, item in enumerate(pool.items)]
    assert 0 < sum(clean) < len(clean)
    noisy = EventPool(np.random.default_rng(0), 32, (3, 4), pool=2, refresh_every=100)
    assert not np.array_equal(noisy.items[0][0], render_event_item([noisy.seed, 1], 32, noisy.dense, noise=False)[0])


def test_render_workers_feed_the_event_pool_with_what_the_loop_would_render() -> None:
    """--render-workers for the event model (a GPU must not wait on the event simulator): the workers' first
    renders are exactly the in-loop ones (same seeds), and later renders are swapped in as they finish."""
    import time

    from napari_stackmff.core.train import EventPool

    loop = EventPool(np.random.default_rng(3), 32, (3, 4), pool=2, refresh_every=1, clean_fraction=0.5)
    pool = EventPool(np.random.default_rng(3), 32, (3, 4), pool=2, refresh_every=1, clean_fraction=0.5, workers=1)
    try:
        for a, b in zip(loop.items, pool.items):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        for _ in range(200):
            batch = pool.batch(2, 24)
            if pool.swapped:
                break
            time.sleep(0.05)
        assert pool.swapped >= 1 and batch.events.shape == batch.images.shape
    finally:
        pool.close()
