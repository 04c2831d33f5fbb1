"""napari readers: focal stacks (slice folders, multi-page/OME TIFF) and event-frame folders.

``get_*_reader(path)`` must be cheap and must say no (return None) to any file that is not a
stack, so napari's own reader keeps handling ordinary single images; a folder that is not a stack
is accepted and explained in one line instead (see ``get_stack_reader``). The two readers never
accept the same folder: a folder of red/blue event previews goes to the event reader only.
A folder's slices are chosen as in ``core.io.list_slice_files`` (its naming pattern: a
reference ``expected.jpg`` among ``pcb_001.jpg...`` is left out, with a warning naming it); to
choose the slices yourself, open the files as a list (``viewer.open(files, stack=True,
plugin="napari-stackmff")``): they are read in natural order.
Reading itself is ``core.io``; errors a user can fix are shown as one line, not a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._layerdata import LayerDataTuple, event_layer_data, stack_layer_data
from .core.errors import StackMFFError

ReaderFunction = Callable[[Any], list]
_TIFF = (".tif", ".tiff")
_STACK_AXES = ("Z", "I", "Q", "T")  # tifffile's letters for a page axis that can hold the slices


# ---------------------------------------------------------------------------------- dispatch
def _single_path(path: Any) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return Path(os.fspath(path))
    except TypeError:
        return None


def _image_files(folder: Path) -> list[Path]:
    from .core.io.read import list_slice_files

    try:
        return list_slice_files(folder, warn=False)
    except (StackMFFError, OSError):
        return []


def tiff_is_stack(path: Path) -> bool:
    """True for a TIFF holding several z-slices (or pages); False for one 2-D (RGB) image."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            sizes = dict(zip(series.axes.upper(), series.shape))
    except Exception:
        return False
    return any(sizes.get(a, 1) >= 2 for a in _STACK_AXES)


def looks_like_event_frame(img: np.ndarray) -> bool:
    """An event preview: one flat background (white or black) plus pure red and blue dots.

    Photos and micrographs have many colours, so demanding that nearly all pixels be background,
    red or blue separates the two without reading more than one file.
    """
    if img.ndim != 3 or img.shape[-1] not in (3, 4) or img.dtype != np.uint8:
        return False
    rgb = img[..., :3].astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = rgb.max(-1) - rgb.min(-1)
    light = (rgb.min(-1) > 200) & (spread < 30)
    dark = (rgb.max(-1) < 40) & (spread < 30)
    background = light if light.mean() >= dark.mean() else dark
    red = (r - np.maximum(g, b)) > 100
    blue = (b - np.maximum(r, g)) > 100
    polar = float(red.mean() + blue.mean())
    return background.mean() > 0.5 and polar > 1e-4 and background.mean() + polar > 0.98


def is_event_folder(folder: Path, files: list[Path] | None = None) -> bool:
    """A folder of at least two images whose first one is an event preview."""
    files = _image_files(folder) if files is None else files
    if len(files) < 2 or files[0].suffix.lower() not in (".png", ".bmp", ".gif"):
        return False
    try:
        from PIL import Image

        with Image.open(files[0]) as im:
            return looks_like_event_frame(np.asarray(im.convert("RGB")))
    except Exception:
        return False


# ---------------------------------------------------------------------------------- readers
def _slice_list(path: Any) -> list[Path] | None:
    """Two or more single-image files of one type the user picked (napari's "open as stack"),
    else None; a list holding a multi-page TIFF is several stacks, not one."""
    from .core.io.read import IMAGE_SUFFIXES

    if not isinstance(path, (list, tuple)) or len(path) < 2:
        return None
    try:
        files = [Path(os.fspath(p)) for p in path]
    except TypeError:
        return None
    if len({f.suffix.lower() for f in files}) != 1 or files[0].suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if not all(f.is_file() for f in files) or (files[0].suffix.lower() in _TIFF and any(map(tiff_is_stack, files))):
        return None
    return files


def get_stack_reader(path: Any) -> ReaderFunction | None:
    """Accept a slice folder (>= 2 images), a multi-page TIFF or a list of slice files; decline other
    files, and folders of event frames (the event reader's).

    Any other folder is accepted too, to be explained rather than refused: napari offers its own
    reader beside ours for every folder and asks which to use, so a folder reaches us only when the
    user chose us, and a refusal would show napari's generic "refused the file". Reading it shows the
    core's one-line reason instead (``…/slice_1.png: a focal stack needs at least 2 slices, only one
    image was given.``), as the CLI does, and adds no layer.
    """
    if _slice_list(path) is not None:
        return read_stack
    p = _single_path(path)
    if p is None:
        return None
    if p.is_dir():
        files = _image_files(p)
        if is_event_folder(p, files) or paired_folders(p):
            return None
        return read_stack
    if p.suffix.lower() in _TIFF and p.is_file() and tiff_is_stack(p):
        return read_stack
    return None


def read_stack(path: Any) -> list[LayerDataTuple | tuple]:
    """One image layer per stack, with z step / pixel size as scale when the files carry them."""
    from .core.io.read import load_stack, natural_key

    picked = _slice_list(path)
    try:
        stack = load_stack(sorted(picked, key=natural_key) if picked else _single_path(path))
    except StackMFFError as exc:
        _show_error(str(exc))
        return [(None,)]  # napari's "nothing to add" sentinel: no traceback dialog
    return [stack_layer_data(stack)]


def paired_folders(folder: Path) -> tuple[Path, Path] | None:
    """(images, events) subfolders of an image+event recording (the EventStackMFF layout)."""
    images, events = folder / "images", folder / "events"
    if images.is_dir() and events.is_dir() and is_event_folder(events):
        return images, events
    return None


def get_event_reader(path: Any) -> ReaderFunction | None:
    """Accept a folder of red/blue event frames (red = positive, blue = negative), or a folder
    holding ``images/`` and ``events/`` side by side (then both are opened)."""
    p = _single_path(path)
    if p is None or not p.is_dir():
        return None
    if not (is_event_folder(p) or paired_folders(p)):
        return None
    return read_events


def read_events(path: Any) -> list[LayerDataTuple | tuple]:
    """Signed event counts (Z, Y, X) as one layer named after the folder (plus the image stack
    when given the parent of ``images/`` and ``events/``)."""
    from .core.events.frames import read_event_frames
    from .core.io.read import load_stack

    p = _single_path(path)
    pair = paired_folders(p)
    try:
        if pair is None:
            name = f"{p.parent.name} events" if p.name.lower() == "events" and p.parent.name else p.name
            return [event_layer_data(read_event_frames(p), name, source=str(p))]
        stack = load_stack(pair[0])
        frames = read_event_frames(pair[1])
    except StackMFFError as exc:
        _show_error(str(exc))
        return [(None,)]
    image = stack_layer_data(stack, name=p.name)
    return [image, event_layer_data(frames, f"{p.name} events", source=str(pair[1]), scale=image[1]["scale"][-3:])]


def _show_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:  # pragma: no cover - no napari: let the caller see it
        raise StackMFFError(message) from None


#: Frames an event recording is binned into when no slice times are found beside it.
DEFAULT_EVENT_SLICES = 16
RECORDING_PATTERNS = ("*.raw", "*.dat", "*.aedat4", "*.es")


def sweep_times(recording: Path) -> Path | None:
    """The slice-times CSV beside a recording: ``<name>_slice_times.csv`` or ``slice_times.csv``."""
    for candidate in (recording.with_name(recording.stem + "_slice_times.csv"), recording.with_name("slice_times.csv")):
        if candidate.is_file():
            return candidate
    return None


def get_recording_reader(path: Any) -> ReaderFunction | None:
    """Accept a raw event recording (Prophesee .raw/.dat, AEDAT4, .es)."""
    p = _single_path(path)
    if p is None or not p.is_file() or p.suffix.lower() not in tuple(q[1:] for q in RECORDING_PATTERNS):
        return None
    return read_recording


def read_recording(path: Any) -> list[LayerDataTuple | tuple]:
    """A recording binned into one signed event frame per slice of the sweep: by the slice times of a
    ``<name>_slice_times.csv`` (or ``slice_times.csv``) beside it, else evenly into
    :data:`DEFAULT_EVENT_SLICES` frames (said in a notification, and in the layer's metadata)."""
    from .core import events as ev_io

    p = _single_path(path)
    try:
        ev = ev_io.read_events(p)
        w, h = ev_io.sensor_size_of(p, ev)
        times_file = sweep_times(p)
        times = ev_io.read_slice_times(times_file) if times_file else None
        n = len(times) if times is not None else DEFAULT_EVENT_SLICES
        frames = ev_io.bin_events(ev, n, (h, w), times, source=str(p))
    except StackMFFError as exc:
        _show_error(str(exc))
        return [(None,)]
    data, kwargs, kind = event_layer_data(frames, f"{p.stem} events", source=str(p))
    kwargs["metadata"]["stackmff"]["binning"] = (f"by {times_file.name}" if times_file else
                                                 f"evenly into {n} frames (no slice times beside the file)")
    if times_file is None:
        try:
            from napari.utils.notifications import show_info

            show_info(f"{p.name}: binned evenly into {n} frames; put the sweep's slice times in "
                      f"{p.stem}_slice_times.csv beside it to bin by slice.")
        except Exception:  # pragma: no cover - no napari
            pass
    return [(data, kwargs, kind)]
