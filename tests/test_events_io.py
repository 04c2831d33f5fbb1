"""Event recordings (core/events.py): every format reads into one structured array, the EVT3 decoding
equals its reference exactly, binning puts each event in its slice with its sign, and every bad input
is one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_stackmff.core.events.read import EVENT_DTYPE, EventError, read_events, read_slice_times, sensor_size_of
from napari_stackmff.core.events.frames import bin_events

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "events"
EVT3 = SHARED / "expelliarmus" / "tests" / "sample-files"


def _events(n: int = 200, w: int = 40, h: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 10_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n)
    return ev


@pytest.mark.skipif(not (EVT3 / "evt3_sample.raw").exists(), reason="../shared/data/events absent")
def test_evt3_decodes_exactly_to_the_reference() -> None:
    pytest.importorskip("expelliarmus")
    ev = read_events(EVT3 / "evt3_sample.raw")
    ref = np.load(EVT3 / "evt3_sample.npy")
    assert ev.dtype == ref.dtype and np.array_equal(ev, ref)
    assert sensor_size_of(EVT3 / "evt3_sample.raw", ev) == (1280, 720)


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/events absent")
@pytest.mark.parametrize("name, size", [("faery/tests/data/dvs.es", (320, 240)),
                                        ("tonic/test/test_data/sample.aedat4", (320, 240)),
                                        ("expelliarmus/tests/sample-files/evt2_sample.raw", None)])
def test_real_recordings_of_every_library_format(name: str, size) -> None:
    pytest.importorskip("faery")
    pytest.importorskip("expelliarmus")
    ev = read_events(SHARED / name)
    assert ev.dtype == EVENT_DTYPE and len(ev) > 100_000 and np.all(np.diff(ev["t"]) >= 0)
    assert set(np.unique(ev["p"])) == {0, 1}
    w, h = sensor_size_of(SHARED / name, ev)
    if size is not None:
        assert (w, h) == size
    frames = bin_events(ev, 8, (h, w))
    assert frames.shape == (8, h, w) and np.abs(frames).sum() > 0


def test_numpy_csv_and_hdf5_files_read_back_the_same_events(tmp_path: Path) -> None:
    ev = _events()
    np.save(tmp_path / "a.npy", ev)
    np.savez(tmp_path / "b.npz", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
    np.savetxt(tmp_path / "c.csv", np.stack([ev[k] for k in "txyp"], 1), delimiter=",", fmt="%d", header="t,x,y,p",
               comments="")
    np.savetxt(tmp_path / "d.txt", np.stack([ev[k] for k in "txyp"], 1), fmt="%d")
    for name in ("a.npy", "b.npz", "c.csv", "d.txt"):
        np.testing.assert_array_equal(read_events(tmp_path / name), ev)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "e.h5", "w") as f:
        g = f.create_group("events")
        for k in "txyp":
            g[k] = ev[k]
    np.testing.assert_array_equal(read_events(tmp_path / "e.h5"), ev)


def test_binning_counts_each_event_once_with_its_sign() -> None:
    ev = np.zeros(4, EVENT_DTYPE)
    ev["t"] = [0, 10, 20, 30]
    ev["x"], ev["y"], ev["p"] = [1, 1, 2, 1], [0, 0, 0, 0], [1, 0, 1, 1]
    frames = bin_events(ev, 2, (1, 3))  # even split of 0..30: 0, 10 | 20, 30
    np.testing.assert_array_equal(frames, [[[0, 0, 0]], [[0, 1, 1]]])
    by_time = bin_events(ev, 2, (1, 3), slice_times=[5, 25])  # midpoint 15
    np.testing.assert_array_equal(by_time, frames)
    edges = bin_events(ev, 2, (1, 3), slice_times=[0, 5, 40])  # N + 1 edges: t=0 alone in the first
    np.testing.assert_array_equal(edges, [[[0, 1, 0]], [[0, 0, 1]]])


def test_bad_recordings_are_one_line(tmp_path: Path, monkeypatch) -> None:
    ev = _events(w=40, h=30)
    cases = [
        (lambda: bin_events(ev, 4, (30, 40), slice_times=[0, 5, 5, 9]), "must increase strictly"),
        (lambda: bin_events(ev, 4, (30, 40), slice_times=[1e9, 2e9, 3e9, 4e9]), "no events in the sweep window"),
        (lambda: bin_events(ev, 4, (20, 20)), "outside the 20x20 image"),
        (lambda: bin_events(ev, 4, (30, 40), slice_times=[1, 2]), "2 slice times for 4 slices"),
        (lambda: bin_events(ev[:0], 4, (30, 40)), "no events"),
    ]
    np.save(tmp_path / "big.npy", ev)
    cases.append((lambda: read_events(tmp_path / "big.npy", sensor_size=(20, 20)), "outside the 20x20 sensor"))
    (tmp_path / "x.mp4").write_bytes(b"\0")
    cases.append((lambda: read_events(tmp_path / "x.mp4"), "unknown event format .mp4"))
    (tmp_path / "bad.csv").write_text("t,x\n1,2\n")
    cases.append((lambda: read_events(tmp_path / "bad.csv"), "an event table has t, x, y, p"))
    (tmp_path / "times.csv").write_text("t\n10\n5\n")
    cases.append((lambda: bin_events(ev, 2, (30, 40), read_slice_times(tmp_path / "times.csv")), "must increase"))
    for call, match in cases:
        with pytest.raises(EventError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    import sys

    monkeypatch.setitem(sys.modules, "faery", None)  # as if the optional reader were not installed
    (tmp_path / "r.es").write_bytes(b"\0")
    with pytest.raises(EventError, match=r"needs the 'faery' package; pip install 'napari-stackmff\[events\]'"):
        read_events(tmp_path / "r.es")


def test_cli_events_info_bin_and_simulate(tmp_path: Path, capsys) -> None:
    import tifffile

    from napari_stackmff.cli import main
    from napari_stackmff.core.training.synth import make_sample

    ev = _events(n=500, w=40, h=30)
    np.save(tmp_path / "rec.npy", ev)
    assert main(["events", "info", str(tmp_path / "rec.npy")]) == 0
    assert "500 events" in capsys.readouterr().out
    (tmp_path / "times.csv").write_text("t\n" + "\n".join(str(v) for v in (1000, 4000, 7000, 9000)))
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "4", "--slice-times",
                 str(tmp_path / "times.csv"), "-o", str(tmp_path / "frames.tif")]) == 0
    frames = tifffile.imread(tmp_path / "frames.tif")
    np.testing.assert_array_equal(frames, bin_events(ev, 4, (30, 40), [1000, 4000, 7000, 9000]))
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "4", "-o", str(tmp_path / "frames.tif")]) == 2
    assert "already exists" in capsys.readouterr().err
    stack = make_sample("cells", n=5, size=48, dtype="uint8").slices
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    assert main(["events", "simulate", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "sim.tif")]) == 0
    sim = tifffile.imread(tmp_path / "sim.tif")
    assert sim.shape == (5, 48, 48) and np.abs(sim).sum() > 0


def test_simulated_events_follow_brightness_changes() -> None:
    """A slice sequence that brightens one half: positive events there, (almost) none in the still half."""
    from napari_stackmff.core.events.frames import simulate_events

    stack = np.full((4, 32, 32), 40, np.uint8)
    stack[2:, :, 16:] = 200  # the right half brightens between slices 1 and 2
    ev = simulate_events(stack, noise_rate=0.0)
    assert ev[:, :, 16:].sum() > 32 * 16 and (ev[:, :, 16:] >= 0).all()
    assert np.abs(ev[:, :, :16]).sum() == 0
    assert ev.shape == (4, 32, 32)


def test_event_frames_for_a_stack_from_any_source(tmp_path: Path) -> None:
    import tifffile

    from napari_stackmff.cli import main
    from napari_stackmff.core.events.frames import load_events

    ev = _events(n=300, w=40, h=30)
    np.save(tmp_path / "rec.npy", ev)
    frames = load_events(tmp_path / "rec.npy", 5, (30, 40))
    np.testing.assert_array_equal(frames, bin_events(ev, 5, (30, 40)))
    tifffile.imwrite(tmp_path / "frames.tif", frames)
    np.testing.assert_array_equal(load_events(tmp_path / "frames.tif", 5, (30, 40)), frames)
    with pytest.raises(EventError, match=r"event frames of shape \(5, 30, 40\) for a stack of 6 slices"):
        load_events(frames, 6, (30, 40))
    stack = np.random.default_rng(0).integers(0, 255, (5, 30, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    code = main(["-q", "fuse", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "o"), "--method", "wavelet",
                 "--events", str(tmp_path / "rec.npy")])
    assert code == 2  # no classical method reads events: refused, not ignored
