"""Event frames: one signed frame per focal slice.

An event camera fires where log intensity changes by a contrast threshold; during a focal sweep
that happens most where focus changes fastest, i.e. around each pixel's in-focus plane. Recordings
(:mod:`.read`) are binned into one signed frame per slice (:func:`bin_events`); red/blue event frames
(the EventStackMFF previews) are read back; frames are simulated ESIM-style from a rendered sweep;
:func:`load_events` turns whatever the user gave into frames that match the stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StackError
from .read import (
    BIN_BYTES_PER_EVENT,
    FRAMES_ADVICE,
    SMALL_EXTENT,
    EventError,
    _Budget,
    _read_recording,
    read_slice_times,
)


def bin_edges(events: np.ndarray, n_slices: int, slice_times: Sequence[float] | np.ndarray | None = None, *,
              source: str = "the events") -> np.ndarray:
    """The N + 1 time edges (us) of the slices' bins: from ``slice_times`` (see :func:`bin_events`), else the
    recording's time span cut into N equal parts."""
    if n_slices < 1:
        raise EventError(f"{source}: n_slices must be at least 1, got {n_slices}.")
    if len(events) == 0:
        raise EventError(f"{source}: the recording holds no events.")
    if slice_times is None:
        edges = np.linspace(float(events["t"][0]), float(events["t"][-1]), n_slices + 1)
        edges[-1] = np.nextafter(edges[-1], np.inf)
        return edges
    st = np.asarray(slice_times, np.float64).ravel()
    if not np.isfinite(st).all():
        raise EventError(f"{source}: slice time {int(np.flatnonzero(~np.isfinite(st))[0]) + 1} is "
                         f"{st[~np.isfinite(st)][0]}; each slice needs a finite time in microseconds.")
    if np.any(np.diff(st) <= 0):
        raise EventError(f"{source}: slice times must increase strictly; they do not at position "
                         f"{int(np.flatnonzero(np.diff(st) <= 0)[0]) + 1}.")
    if len(st) == n_slices + 1:
        return st
    if len(st) != n_slices:
        raise EventError(f"{source}: {len(st)} slice times for {n_slices} slices; give one per slice "
                         f"({n_slices}) or the bin edges ({n_slices + 1}).")
    mid = (st[1:] + st[:-1]) / 2 if n_slices > 1 else np.empty(0)
    half = (st[1] - st[0]) / 2 if n_slices > 1 else 1.0
    lead, tail = (st[0] - half, st[-1] + ((st[-1] - st[-2]) / 2 if n_slices > 1 else 1.0))
    return np.concatenate([[lead], mid, [tail]])


def bin_events(events: np.ndarray, n_slices: int, shape: tuple[int, int],
               slice_times: Sequence[float] | np.ndarray | None = None, *, source: str = "the events",
               offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(N, H, W) float32 signed counts: events per focal slice, +1 for positive, -1 for negative.

    ``slice_times``: when each slice was taken (N values: each slice owns the events nearest its time,
    split at the midpoints, the first and last slices reaching half a step out) or the N + 1 bin edges.
    By default the recording's time span is cut into N equal parts. ``shape`` is (height, width);
    ``offset`` (x, y) is where the sensor's pixel (0, 0) lies in the frames (a smaller sensor placed in a
    larger image). The frames' memory is checked before they are made.
    """
    h, w = shape
    edges = bin_edges(events, n_slices, slice_times, source=source)
    _Budget(source, FRAMES_ADVICE).check(4.0 * n_slices * h * w + BIN_BYTES_PER_EVENT * len(events),
                                         f"{n_slices} frames of {w}x{h} from {len(events):,} events")
    t = events["t"]
    inside = (t >= edges[0]) & (t < edges[-1])
    if not inside.any():
        raise EventError(f"{source}: no events in the sweep window {edges[0]:.0f}-{edges[-1]:.0f} us "
                         f"(the recording spans {int(t[0])}-{int(t[-1])} us).")
    ev = events[inside]
    x, y = ev["x"].astype(np.int64) + int(offset[0]), ev["y"].astype(np.int64) + int(offset[1])
    bad = (x < 0) | (y < 0) | (x >= w) | (y >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        shifted = f" after the offset {offset[0]},{offset[1]}" if tuple(offset) != (0, 0) else ""
        raise EventError(f"{source}: {int(bad.sum()):,} events fall outside the {w}x{h} image of the stack (first: "
                         f"x {int(x[i])}, y {int(y[i])}{shifted}); the event sensor and the image must be the same "
                         "size, or say where the sensor lies in the image (stackmff events bin --offset).")
    z = np.clip(np.searchsorted(edges, ev["t"].astype(np.float64), side="right") - 1, 0, n_slices - 1)
    sign = np.where(ev["p"] > 0, 1.0, -1.0).astype(np.float32)
    out = np.zeros(n_slices * h * w, np.float32)
    np.add.at(out, (z * h + y) * w + x, sign)
    return out.reshape(n_slices, h, w)


def simulate_events(stack: Any, *, substeps: int = 8, threshold: float = 0.2, threshold_jitter: float = 0.03,
                    refractory: int = 1, noise_rate: float = 0.002, rng: np.random.Generator | None = None
                    ) -> np.ndarray:
    """ESIM-style event frames of any image stack (N, H, W[, C], any dtype) -> (N, H, W) float32.

    An approximation for user stacks: the sweep between two slices is taken as the linear blend of their
    log intensities at ``substeps`` positions (a real sweep passes through blur states no slice shows).
    A pixel fires each time its log intensity moves ``threshold`` (jittered per pixel by
    ``threshold_jitter``) from its last reference level, at most once per sub-step, and then stays
    silent for ``refractory`` sub-steps; ``noise_rate`` is the chance of a random event per pixel and
    slice. Sub-steps nearest slice j count for j (signed: + brighter, - darker). For rendered stacks,
    :func:`napari_stackmff.core.synth.simulate_events` renders the true intermediate blur instead.
    """
    from ..io.stack import as_focal_stack

    st = as_focal_stack(np.asarray(stack))
    n = st.n_slices
    rng = rng or np.random.default_rng(0)
    logi = np.log(np.stack([st.focus_image(z) for z in range(n)]).astype(np.float32) + 1e-3)
    h, w = logi.shape[1:]
    c = np.maximum(threshold + threshold_jitter * rng.standard_normal((h, w)).astype(np.float32), 0.05)
    ref = logi[0].copy()
    quiet = np.zeros((h, w), np.int32)  # sub-steps of refractory period left
    out = np.zeros((n, h, w), np.float32)
    for i in range(n - 1):
        for k in range(1, substeps + 1):
            a = k / substeps
            level = (1 - a) * logi[i] + a * logi[i + 1]
            diff = level - ref
            fire = (np.abs(diff) >= c) & (quiet == 0)
            sign = np.sign(diff) * fire
            ref += sign * c  # one event per sub-step: the reference moves one threshold
            out[i if a < 0.5 else i + 1] += sign
            quiet = np.where(fire, refractory, np.maximum(quiet - 1, 0))
    noise = rng.random(out.shape) < noise_rate
    out[noise] += rng.choice([-1.0, 1.0], size=int(noise.sum()))
    return out


def frame_to_signed(rgb: np.ndarray) -> np.ndarray:
    """Red/blue event frame -> signed polarity in [-1, 1] (R - B; white or black background -> 0)."""
    f = rgb.astype(np.float32)
    if f.ndim == 2:
        raise StackError("event frames must be colour images (red = positive, blue = negative polarity).")
    scale = 255.0 if rgb.dtype == np.uint8 else (65535.0 if rgb.dtype == np.uint16 else 1.0)
    return np.clip((f[..., 0] - f[..., 2]) / scale, -1, 1)


def read_event_frames(folder: str | Path) -> np.ndarray:
    """A folder of red/blue event frames (natural order) -> (Z, Y, X) float32 signed counts."""
    from ..io.read import list_slice_files, read_image

    files = list_slice_files(folder)
    if len(files) < 2:
        raise StackError(f"{folder}: an event stack needs at least 2 event frames, found {len(files)}.")
    frames = [frame_to_signed(read_image(p)) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise StackError(f"{folder}: event frames have different sizes {sorted(shapes)}.")
    return np.stack(frames).astype(np.float32)


def check_sensor_fits(path: Path, events: np.ndarray, declared: tuple[int, int] | None, n_slices: int,
                      shape: tuple[int, int]) -> None:
    """Refuse a recording from a sensor of another size than the stack's images: its events would land in
    one corner (or outside). Judged by the size the file declares, else by the events' extent when it is
    clearly smaller (:data:`SMALL_EXTENT`); says how to place a smaller sensor in the image."""
    h, w = shape
    if declared is not None:
        sw, sh = declared
        if (sw, sh) == (w, h):
            return
        what = f"a recording of a {sw}x{sh} sensor"
    elif len(events):
        sw, sh = int(events["x"].max()) + 1, int(events["y"].max()) + 1
        if sw > SMALL_EXTENT * w or sh > SMALL_EXTENT * h:
            return
        what = f"a recording whose events all lie within {sw}x{sh} pixels"
    else:
        return
    if sw <= w and sh <= h:
        how = (f"place it in the image yourself: stackmff events bin {path} --slices {n_slices} --size {w}x{h} "
               f"--offset X,Y -o frames.tif (X,Y: where the sensor's first pixel lies), then --events frames.tif")
    else:
        how = (f"bin it at its own size (stackmff events bin {path} --slices {n_slices} -o frames.tif), crop the "
               f"frames to the stack's field of view ({w}x{h}) and pass them as --events")
    raise EventError(f"{path}: {what}, but the stack's images are {w}x{h}; event frames must match the images pixel "
                     f"for pixel: use the recording of this stack's sweep, or {how}.")


def load_events(events: Any, n_slices: int, shape: tuple[int, int], slice_times: Any = None,
                n_times: int = 1) -> np.ndarray:
    """Event frames for a stack of ``n_slices`` slices of ``shape`` (height, width), from whatever the user
    has: an array of frames ((N, H, W) or (T, N, H, W)), a folder of red/blue event frames, a TIFF of
    frames, or a raw recording (binned by ``slice_times``: values, or a CSV; else evenly)."""
    if isinstance(events, (str, Path)):
        path = Path(events)
        if path.is_dir():
            frames = read_event_frames(path)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            frames = tifffile.imread(path).astype(np.float32)
        else:
            times = read_slice_times(slice_times) if isinstance(slice_times, (str, Path)) else slice_times
            ev, declared = _read_recording(path)
            check_sensor_fits(path, ev, declared, n_slices, shape)
            frames = bin_events(ev, n_slices, shape, times, source=str(path))
        source = str(path)
    else:
        frames, source = np.asarray(events, np.float32), "the event frames"
    expected = (n_slices, *shape) if n_times == 1 else (n_times, n_slices, *shape)
    if tuple(frames.shape) != expected:
        raise EventError(f"{source}: event frames of shape {tuple(frames.shape)} for a stack of {n_slices} slices of "
                         f"{shape[1]}x{shape[0]} (expected {expected}); one event frame per slice, same size.")
    return frames
