"""napari readers and sample data: the right layers, scale and metadata; decline non-stacks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
tifffile = pytest.importorskip("tifffile")

from napari_fixtures import SHARED_DATA, stackmff_plugin  # noqa: E402,F401
from PIL import Image  # noqa: E402

from napari_stackmff._reader import get_event_reader, get_stack_reader, looks_like_event_frame  # noqa: E402

pytestmark = pytest.mark.usefixtures("stackmff_plugin")

EVENT_DATA = SHARED_DATA / "event_focal_stack_zeromotion"


def _write_slices(folder, n=5, shape=(40, 50), rgb=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (*shape, 3) if rgb else shape, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"slice_{i + 1}.png")
    return folder


def _write_event_frames(folder, n=4, shape=(30, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        img = np.full((*shape, 3), 255, np.uint8)
        pos, neg = rng.random(shape) < 0.03, rng.random(shape) < 0.03
        img[pos] = (254, 0, 0)
        img[neg & ~pos] = (0, 0, 254)
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    return folder


def test_slice_folder(make_napari_viewer, stackmff_plugin, tmp_path):
    folder = _write_slices(tmp_path / "my_stack", n=5)
    assert get_stack_reader(str(folder)) is not None
    assert get_event_reader(str(folder)) is None  # photos are not event frames
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-stackmff")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "my_stack"
    assert layer.data.shape == (5, 40, 50) and layer.data.dtype == np.uint8
    meta = layer.metadata["stackmff"]
    assert meta["axes"] == "ZYX" and meta["z_positions"] is None and meta["source"] == str(folder)


def test_rgb_slice_folder(tmp_path):
    folder = _write_slices(tmp_path / "rgb", n=3, rgb=True)
    data, kwargs, kind = get_stack_reader(str(folder))(str(folder))[0]
    assert kind == "image" and kwargs["rgb"] is True and data.shape == (3, 40, 50, 3)
    assert kwargs["metadata"]["stackmff"]["axes"] == "ZYXC" and len(kwargs["scale"]) == 3


def test_imagej_tiff_with_spacing(make_napari_viewer, stackmff_plugin, tmp_path):
    path = tmp_path / "stack.tif"
    data = np.arange(6 * 20 * 30, dtype=np.uint16).reshape(6, 20, 30)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": 2.5, "unit": "um", "axes": "ZYX"})
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin="napari-stackmff")[0]
    assert layer.name == "stack"
    assert layer.data.shape == (6, 20, 30) and layer.data.dtype == np.uint16
    np.testing.assert_allclose(layer.scale, [2.5, 0.25, 0.25])
    assert [str(u) for u in layer.units] == ["micrometer"] * 3
    np.testing.assert_allclose(layer.metadata["stackmff"]["z_positions"], np.arange(6) * 2.5)


def test_multichannel_tiff_puts_channels_first(tmp_path):
    path = tmp_path / "two_channels.tif"
    data = np.zeros((4, 2, 16, 18), np.uint16)  # ImageJ order Z, C, Y, X
    data[:, 1] = 7
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    out, kwargs, _ = get_stack_reader(str(path))(str(path))[0]
    assert kwargs["metadata"]["stackmff"]["axes"] == "CZYX"
    assert out.shape == (2, 4, 16, 18) and (out[1] == 7).all() and kwargs["rgb"] is False


def test_single_images_are_left_to_other_readers(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((20, 30), np.uint16))
    tifffile.imwrite(tmp_path / "one_rgb.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "one.png")
    for p in ("one.tif", "one_rgb.tif", "one.png"):
        assert get_stack_reader(str(tmp_path / p)) is None, p
    assert get_stack_reader(str(tmp_path / "missing")) is None
    assert get_stack_reader([str(tmp_path / "one.tif"), str(tmp_path / "one.png")]) is None


def test_folder_that_is_no_stack_says_why(make_napari_viewer, stackmff_plugin, tmp_path):
    """A one-image (or image-less) folder opened with our plugin: the core's one-line reason, as the CLI
    prints it, in a napari notification; no layer, and not napari's generic "refused the file"."""
    from napari.utils.notifications import notification_manager

    from napari_stackmff.core.errors import StackMFFError
    from napari_stackmff.core.io.read import load_stack

    single = _write_slices(tmp_path / "single", n=1)
    (tmp_path / "empty").mkdir()
    viewer = make_napari_viewer()
    shown = []
    notification_manager.notification_ready.connect(shown.append)
    try:
        for folder in (single, tmp_path / "empty"):
            with pytest.raises(StackMFFError) as cli_says:  # what the CLI prints for the folder
                load_stack(folder)
            shown.clear()
            assert viewer.open(str(folder), plugin="napari-stackmff") == []  # no "refused the file" error
            messages = [str(n.message) for n in shown]
            assert messages == [str(cli_says.value)], messages
            assert "\n" not in messages[0]
            if folder == single:
                assert "at least 2 slices" in messages[0] and "slice_1.png" in messages[0], messages
    finally:
        notification_manager.notification_ready.disconnect(shown.append)
    assert len(viewer.layers) == 0
    # A folder of event frames is still declined here (the event reader takes it), photos still read.
    assert get_stack_reader(str(_write_event_frames(tmp_path / "ev", n=3))) is None
    assert get_stack_reader(str(_write_slices(tmp_path / "two", n=2))) is not None


def test_unreadable_stack_shows_one_line_instead_of_traceback(tmp_path, monkeypatch):
    folder = _write_slices(tmp_path / "mixed", n=2, shape=(10, 10))
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(folder / "slice_3.png")
    shown = []
    monkeypatch.setattr("napari_stackmff._reader._show_error", shown.append)
    assert get_stack_reader(str(folder))(str(folder)) == [(None,)]
    assert len(shown) == 1 and "slice_3.png" in shown[0] and "\n" not in shown[0]


def test_reference_image_is_left_out_and_a_picked_list_overrides(make_napari_viewer, stackmff_plugin, tmp_path):
    folder = _write_slices(tmp_path / "pcb", n=4)  # slice_1.png ... slice_4.png
    Image.fromarray(np.full((40, 50), 255, np.uint8)).save(folder / "expected.png")
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match=r"left out 1 other image: expected\.png"):
        (layer,) = viewer.open(str(folder), plugin="napari-stackmff")
    assert layer.data.shape == (4, 40, 50) and not (layer.data == 255).all(axis=(1, 2)).any()
    # Opening chosen files as a list is the override: exactly those, in natural order. (npe2 offers
    # us lists of TIFFs only, as the manifest claims no PNG/JPG: napari's own reader stacks those.)
    picked = [str(folder / n) for n in ("slice_3.png", "expected.png", "slice_1.png")]
    data, _, _ = get_stack_reader(picked)(picked)[0]
    assert data.shape == (3, 40, 50)
    assert (data[0] == 255).all() and not (data[1:] == 255).all(axis=(1, 2)).any()
    np.testing.assert_array_equal(data[1], np.asarray(Image.open(folder / "slice_1.png")))
    imgs = {"z_10.tif": data[2], "expected.tif": data[0], "z_9.tif": data[1]}  # slice_3, reference, slice_1
    for name, img in imgs.items():
        tifffile.imwrite(tmp_path / name, img, photometric="minisblack")
    (layer,) = viewer.open([str(tmp_path / n) for n in imgs], stack=True, plugin="napari-stackmff")
    np.testing.assert_array_equal(layer.data, data)  # natural order: expected, z_9, z_10


def test_event_folder_synthetic(make_napari_viewer, stackmff_plugin, tmp_path):
    pytest.importorskip("napari_stackmff.core.events")
    folder = _write_event_frames(tmp_path / "events", n=4)
    assert get_stack_reader(str(folder)) is None  # never read as an image stack
    viewer = make_napari_viewer()
    layer = viewer.open(str(folder), plugin="napari-stackmff")[0]
    assert layer.data.shape == (4, 30, 40) and layer.data.dtype == np.float32
    assert layer.data.max() > 0 and layer.data.min() < 0  # red positive, blue negative
    lo, hi = layer.contrast_limits
    assert lo == -hi and layer.metadata["stackmff"]["kind"] == "events"


@pytest.mark.skipif(not EVENT_DATA.is_dir(), reason="../shared/data is not present")
def test_event_folder_shared_data():
    pytest.importorskip("napari_stackmff.core.events")
    assert looks_like_event_frame(np.asarray(Image.open(EVENT_DATA / "events" / "00.png").convert("RGB")))
    assert not looks_like_event_frame(np.asarray(Image.open(EVENT_DATA / "images" / "00.png").convert("RGB")))
    data, kwargs, _ = get_event_reader(str(EVENT_DATA / "events"))(str(EVENT_DATA / "events"))[0]
    assert data.shape == (20, 518, 774) and kwargs["name"] == "event_focal_stack_zeromotion events"
    # The parent folder opens both the focal stack and its events, aligned.
    layers = get_event_reader(str(EVENT_DATA))(str(EVENT_DATA))
    assert [ld[0].shape for ld in layers] == [(20, 518, 774, 3), (20, 518, 774)]
    assert layers[0][1]["rgb"] is True


def test_sample_data(make_napari_viewer, stackmff_plugin):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-stackmff", "cells")
    (layer,) = layers
    assert layer.data.shape == (12, 256, 256) and layer.data.dtype == np.uint16
    np.testing.assert_allclose(layer.scale, [1.0, 0.2, 0.2])
    assert layer.metadata["stackmff"]["unit"] == "um"


def test_event_sample_data(make_napari_viewer, stackmff_plugin):
    pytest.importorskip("napari_stackmff.core.events")
    viewer = make_napari_viewer()
    image, events = viewer.open_sample("napari-stackmff", "events")
    assert image.data.shape == events.data.shape == (12, 256, 256)
    assert events.metadata["stackmff"]["kind"] == "events"
    np.testing.assert_allclose(events.scale, image.scale)


@pytest.mark.skipif(not (SHARED_DATA / "events").exists(), reason="../shared/data/events absent")
def test_event_recording_opens_binned_by_the_sweeps_slice_times(make_napari_viewer, tmp_path):
    """A raw recording opens as one event-frame layer: by the slice times beside it (N = their count),
    else evenly into the default count, which the layer's metadata says."""
    import shutil

    pytest.importorskip("faery")
    from napari_stackmff._reader import DEFAULT_EVENT_SLICES, get_recording_reader
    from napari_stackmff.core.events.frames import bin_events
    from napari_stackmff.core.events.read import read_events, read_slice_times

    rec = tmp_path / "dvs.es"
    shutil.copy(SHARED_DATA / "events" / "faery" / "tests" / "data" / "dvs.es", rec)
    assert get_recording_reader(str(rec)) is not None and get_stack_reader(str(rec)) is None
    viewer = make_napari_viewer()
    layer = viewer.open(str(rec), plugin="napari-stackmff")[0]
    assert layer.data.shape == (DEFAULT_EVENT_SLICES, 240, 320)
    assert "evenly" in layer.metadata["stackmff"]["binning"] and layer.metadata["stackmff"]["kind"] == "events"
    ev = read_events(rec)
    times = np.linspace(ev["t"][0], ev["t"][-1], 7)[1:-1].round()
    (tmp_path / "dvs_slice_times.csv").write_text("\n".join(str(int(t)) for t in times))
    layer = viewer.open(str(rec), plugin="napari-stackmff")[0]
    assert layer.data.shape == (5, 240, 320)
    np.testing.assert_array_equal(layer.data, bin_events(ev, 5, (240, 320),
                                                         read_slice_times(tmp_path / "dvs_slice_times.csv")))
