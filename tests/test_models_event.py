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
    from napari_stackmff.core.events.read import EVENT_DTYPE

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
    from napari_stackmff.core.training.loop import TrainConfig, train

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
    from napari_stackmff.core.events.frames import simulate_events
    from napari_stackmff.core.fusion.metrics import psnr

    s = make_synth(seed=51, n=6, size=96)
    frames = simulate_events(s.slices)
    r = fuse(s.slices, method="eventstackmff", events=frames, device="cpu")
    v2 = fuse(s.slices, method="stackmff-v2", device="cpu")
    assert psnr(r.all_in_focus, s.aif) > psnr(v2.all_in_focus, s.aif) - 0.5


@pytest.mark.slow  # issue 24: ~2 min; clean fraction of image stacks: test_synth
def test_clean_fraction_renders_that_share_of_event_stacks_without_sensor_noise() -> None:
    """--clean-fraction for the event model: some pool stacks are exactly the noise-free render, the others not."""
    from napari_stackmff.core.training.data import EventPool, render_event_item

    pool = EventPool(np.random.default_rng(0), 32, (3, 4), pool=8, refresh_every=100, clean_fraction=0.5)
    clean = [np.array_equal(item[0], render_event_item([pool.seed, i + 1], 32, pool.dense, noise=False)[0])
             for i, item in enumerate(pool.items)]
    assert 0 < sum(clean) < len(clean)
    noisy = EventPool(np.random.default_rng(0), 32, (3, 4), pool=2, refresh_every=100)
    assert not np.array_equal(noisy.items[0][0], render_event_item([noisy.seed, 1], 32, noisy.dense, noise=False)[0])


@pytest.mark.slow  # issue 24: ~20 s; render workers for image stacks: tests/test_realism.py
def test_render_workers_feed_the_event_pool_with_what_the_loop_would_render() -> None:
    """--render-workers for the event model (a GPU must not wait on the event simulator): the workers' first
    renders are the in-loop ones (same seeds: the same events, the same frames to float rounding, as a worker
    has one thread and the loop's process may sum in another order), and later renders are swapped in as they
    finish."""
    import time

    from napari_stackmff.core.training.data import EventPool

    loop = EventPool(np.random.default_rng(3), 32, (3, 4), pool=2, refresh_every=1, clean_fraction=0.5)
    pool = EventPool(np.random.default_rng(3), 32, (3, 4), pool=2, refresh_every=1, clean_fraction=0.5, workers=1)
    try:
        for (frames, *rest), (frames_w, *rest_w) in zip(loop.items, pool.items):
            np.testing.assert_allclose(frames_w, frames, atol=1e-4)  # 2.4e-5 measured with 2 threads
            assert all(np.array_equal(x, y) for x, y in zip(rest, rest_w))
        for _ in range(200):
            batch = pool.batch(2, 24)
            if pool.swapped:
                break
            time.sleep(0.05)
        assert pool.swapped >= 1 and batch.events.shape == batch.images.shape
    finally:
        pool.close()


def test_focus_prior_log_energy_peaks_at_the_sharp_slice(make_synth) -> None:
    """The prior's vote alone (the wavelet measure's log energy) names the in-focus slice on textured
    pixels of a noise-free stack, and is 0 at each pixel's best slice (it only ever lowers the others)."""
    from napari_stackmff.core.training import synth
    from napari_stackmff.core.models.event import FocusPrior

    s = make_synth(seed=52, n=6, size=96, noise=False)
    x = torch.from_numpy(s.slices.astype(np.float32) / 255.0)[None]
    lf = FocusPrior.log_energy(x)[0]
    assert lf.shape == x.shape[1:] and torch.all(lf <= 0) and torch.all(lf.amax(0) == 0)
    mask = synth.texture_mask(s.aif.astype(np.float32) / 255.0, quantile=0.4)
    truth = np.interp(s.depth, s.focus_positions, np.arange(6))
    assert (np.abs(lf.argmax(0).numpy() - truth)[mask] <= 1).mean() > 0.9


def test_focus_prior_signal_to_noise_tells_texture_from_noise(make_synth) -> None:
    """The gate's noise cue: the best slice's energy over the noise floor is high on textured pixels and
    near zero where the slices hold only noise (a flat field at 20 photons), where the measure's vote is
    noise and the gate must be able to turn it down."""
    from napari_stackmff.core.training import synth
    from napari_stackmff.core.models.event import FocusPrior

    s = make_synth(seed=52, n=6, size=96)
    x = torch.from_numpy(s.slices.astype(np.float32) / 255.0)[None]
    snr = FocusPrior.signal_to_noise(x, FocusPrior.raw_log_energy(x))[0].numpy()
    textured = np.median(snr[synth.texture_mask(s.aif.astype(np.float32) / 255.0, quantile=0.4)])
    flat = torch.from_numpy(np.random.default_rng(0).poisson(10.0, (1, 6, 96, 96)).astype(np.float32) / 20.0)
    noise = np.median(FocusPrior.signal_to_noise(flat, FocusPrior.raw_log_energy(flat)).numpy())
    assert textured > 2.0 > 1.0 > noise, (textured, noise)  # 3.1 and 0.5 measured


def _mean_prior_weight(model: EventStackMFF, photons: float | None) -> float:
    from napari_stackmff.core.models.event import event_scale
    from napari_stackmff.core.training.data import render_event_item

    out = []
    for i in range(3):
        img, ev, *_ = render_event_item([99100, i], 96, 8, noise=photons is not None, photons=(photons or 30.0,))
        x, e = torch.from_numpy(img)[None], event_scale(torch.from_numpy(ev))[None]
        prior, model.prior = model.prior, None
        try:
            with torch.no_grad():
                logits = model(x, e)  # the network's own vote, before the prior
        finally:
            model.prior = prior
        raw = prior.raw_log_energy(x)
        with torch.no_grad():
            w = prior.weight(logits, raw - raw.amax(1, keepdim=True), e, prior.signal_to_noise(x, raw))
        out.append(float(w.mean()))
    return float(np.mean(out))


def test_shipped_gate_trusts_the_measure_less_on_noisy_stacks() -> None:
    """The shipped gate weighs the wavelet measure's vote less where the frames are noisy (10 photons), where
    the measure follows the noise and falls behind V2, than on noise-free stacks, where it is exact: 1.4 against
    2.6 measured. The gate shipped before the noise cue did the opposite (2.6 against 2.2)."""
    from napari_stackmff.core.models.checkpoint import load_state_dict

    model = EventStackMFF()
    load_state_dict(SHIPPED, model, model_name="eventstackmff")
    noisy, clean = _mean_prior_weight(model.eval(), 10.0), _mean_prior_weight(model, None)
    assert noisy < 0.75 * clean, (noisy, clean)


def test_a_three_cue_gate_loads_and_votes_as_before(tmp_path) -> None:
    """Event weights saved before the gate's noise cue (three cues) load through the shared loader, and the
    model gives the same logits as the model they were saved from."""
    from napari_stackmff.core.models.checkpoint import load_state_dict

    torch.manual_seed(0)
    old = EventStackMFF()
    with torch.no_grad():
        for p in old.prior.gate.parameters():
            p.normal_(0, 0.3)
        old.prior.gate[0].weight[:, 3:].zero_()  # what a three-cue gate is, in today's layout
    state = old.state_dict()
    state["prior.gate.0.weight"] = state["prior.gate.0.weight"][:, :3].clone()
    path = tmp_path / "three_cues.pt"
    torch.save({"model": "eventstackmff", "state_dict": state}, path)
    new = EventStackMFF()
    load_state_dict(path, new, model_name="eventstackmff")
    x, ev = torch.rand(1, 4, 64, 64), torch.randn(1, 4, 64, 64) * 0.3
    with torch.no_grad():
        assert torch.equal(new.eval()(x, ev), old.eval()(x, ev))
    assert new.prior.gate[0].weight.shape[1] == 4


def _noise_free_psnr(weights: Path, seeds: range) -> float:
    from napari_stackmff.core.fusion.metrics import psnr
    from napari_stackmff.core.training.data import render_event_item

    out = []
    for i in seeds:
        img, ev, _depth, _f, aif = render_event_item([88500, i], 96, 8, noise=False)
        out.append(psnr(fuse(img, method="eventstackmff", weights=str(weights), events=ev, device="cpu").all_in_focus,
                        aif))
    return float(np.mean(out))


@pytest.mark.slow  # issue 24: ~100 s; the prior itself: test_focus_prior_log_energy_peaks_at_the_sharp_slice
def test_focus_prior_adds_sharpness_on_noise_free_stacks_and_old_weights_load_without_it(tmp_path) -> None:
    """The same trained event weights with and without the focus prior: with it, noise-free stacks (where
    the wavelet measure is exact and the network picks off-by-one slices on smooth depth) fuse sharper.
    Weights saved before the prior existed load as the "no-prior" variant."""
    from napari_stackmff.core.models.registry import load_model

    state = read_state_dict(SHIPPED)
    model = EventStackMFF()
    model.adopt(state)  # the prior at its start (weight 1) when the shipped weights predate it
    with_prior, without = tmp_path / "with.pt", tmp_path / "without.pt"
    torch.save({"model": "eventstackmff", "state_dict": model.state_dict(), "readout": "argmax"}, with_prior)
    torch.save({"model": "eventstackmff", "state_dict": {k: v for k, v in state.items() if not k.startswith("prior.")},
                "readout": "argmax"}, without)
    assert load_model("eventstackmff", without).prior is None
    assert load_model("eventstackmff", with_prior).prior is not None
    assert _noise_free_psnr(with_prior, range(3)) > _noise_free_psnr(without, range(3)) + 0.5  # 1.5-2.0 measured


@pytest.mark.slow  # issue 24: ~90 s; event training: test_a_few_training_steps_on_image_and_event_stacks
def test_training_the_prior_alone_leaves_the_trained_network_untouched(tmp_path) -> None:
    """--train-only prior from weights without the prior: only the prior's gate moves."""
    from napari_stackmff.core.training.loop import TrainConfig, train

    old = {k: v for k, v in read_state_dict(SHIPPED).items() if not k.startswith("prior.")}
    start = tmp_path / "old.pt"
    torch.save({"model": "eventstackmff", "state_dict": old}, start)
    cfg = TrainConfig(model="eventstackmff", objective="hybrid", epochs=1, steps_per_epoch=2, batch_size=2, crop=32,
                      n_range=(3, 5), val_stacks=1, pool_size=2, device="cpu", init_weights=str(start), lr=1e-2,
                      train_only="prior", checkpoint=str(tmp_path / "p.pt"))
    state = read_state_dict(train(cfg).checkpoint)
    assert all(torch.equal(state[k], v) for k, v in old.items())
    assert not torch.equal(state["prior.gate.2.bias"], torch.tensor([0.5413]))
    with pytest.raises(StackMFFError, match="no part 'nothing'"):
        train(TrainConfig(**{**cfg.__dict__, "train_only": "nothing"}))


@pytest.mark.slow  # issue 24: ~40 s; the cross-fade of tiles it relies on: tests/test_models_v2_tiles.py
def test_focus_prior_tiles_agree_with_the_whole_image(tmp_path, make_synth) -> None:
    """The prior's measure reaches ~20 px; the tile margin covers it: tiled and whole runs agree and the
    cross-fade leaves no step at tile boundaries (bounds as tests/test_models_v2_tiles.py)."""
    from napari_stackmff.core.events.frames import simulate_events
    from test_models_v2_tiles import _boundary_steps

    model = EventStackMFF()
    model.adopt(read_state_dict(SHIPPED))
    path = tmp_path / "prior.pt"
    torch.save({"model": "eventstackmff", "state_dict": model.state_dict(), "readout": "argmax"}, path)
    s = make_synth(seed=11, n=6, size=256)
    frames = simulate_events(s.slices)
    whole = fuse(s.slices, method="eventstackmff", weights=str(path), events=frames, device="cpu")
    tiled = fuse(s.slices, method="eventstackmff", weights=str(path), events=frames, device="cpu", tile=128)
    assert tiled.timings["tiles"] == 16
    assert np.abs(tiled.focus_map - whole.focus_map).mean() < 0.3
    at, other = _boundary_steps(tiled.focus_map)
    assert at < 2 * other, (at, other)
