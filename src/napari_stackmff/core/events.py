"""Event focal stacks: one signed event frame per focal slice.

An event camera fires where log intensity changes by a contrast threshold; during a focal sweep
that happens most where focus changes fastest, i.e. around each pixel's in-focus plane. We read
raw recordings (:func:`read_events`: Prophesee EVT2/EVT3 ``.raw`` and ``.dat`` through expelliarmus,
AEDAT4 and ``.es`` through faery, HDF5 through h5py, ``.npy``/``.npz`` and CSV/TXT with numpy), bin them
into one signed frame per slice (:func:`bin_events`), read red/blue event frames (the EventStackMFF
previews) and simulate them ESIM-style from a rendered sweep.

Events are one structured array, :data:`EVENT_DTYPE`: t (microseconds, int64), x, y (int16) and p
(uint8: 1 = positive/ON, 0 = negative/OFF), the layout of the decoded reference files of the readers'
own test suites.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import StackError, StackMFFError

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")], align=True)
#: Suffixes decoded by the libraries of the ``[events]`` extra: Prophesee files by expelliarmus (its EVT3
#: decoding equals the reference file its tests ship; faery 0.7's differs in ~9% of the timestamps of that
#: file), AEDAT4 and .es by faery; the rest are read here with numpy / h5py.
PROPHESEE_SUFFIXES = (".raw", ".dat")
FAERY_SUFFIXES = (".aedat4", ".es")
EVENT_SUFFIXES = (*PROPHESEE_SUFFIXES, *FAERY_SUFFIXES, ".h5", ".hdf5", ".npy", ".npz", ".csv", ".txt")
EXTRA = "pip install 'napari-stackmff[events]'"


class EventError(StackMFFError):
    """An event recording that cannot be used, said in one line naming the file."""


def _structured(t: Any, x: Any, y: Any, p: Any) -> np.ndarray:
    out = np.empty(len(t), EVENT_DTYPE)
    out["t"], out["x"], out["y"] = t, x, y
    out["p"] = np.asarray(p) > 0
    return out


def _need(module: str, path: Path) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EventError(f"{path}: reading {path.suffix} recordings needs the '{module}' package; {EXTRA}.") from None


def _read_faery(path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    faery = _need("faery", path)
    try:
        stream = faery.events_stream_from_file(path)
        size = tuple(int(v) for v in stream.dimensions())
        parts = [np.asarray(chunk) for chunk in stream]
    except Exception as exc:  # the decoder's own message, on one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EventError(f"{path}: not a readable {path.suffix} event recording ({first}).") from None
    if not parts:
        return np.empty(0, EVENT_DTYPE), size  # type: ignore[return-value]
    ev = np.concatenate(parts)
    names = ev.dtype.names or ()
    pol = ev["on"] if "on" in names else ev["p"]
    return _structured(ev["t"], ev["x"], ev["y"], pol), size  # type: ignore[return-value]


def _raw_header(path: Path) -> list[str]:
    """The '% ...' header lines of a Prophesee file."""
    lines = []
    with open(path, "rb") as f:
        while True:
            line = f.readline()
            if not line.startswith(b"%"):
                return lines
            lines.append(line[1:].decode("ascii", "replace").strip())
            if line.strip() == b"% end":
                return lines


def _prophesee_size(header: list[str]) -> tuple[int, int] | None:
    """(width, height) from a '% geometry WxH' or '% format EVT3;height=H;width=W' line, if any."""
    import re

    text = " ".join(header)
    m = re.search(r"geometry\s+(\d+)x(\d+)", text)
    if m:
        return int(m[1]), int(m[2])
    w, h = re.search(r"width=(\d+)", text), re.search(r"height=(\d+)", text)
    return (int(w[1]), int(h[1])) if w and h else None


def _read_prophesee(path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    expelliarmus = _need("expelliarmus", path)
    header = _raw_header(path)
    if path.suffix.lower() == ".dat":
        encoding = "dat"
    else:
        text = " ".join(header).lower()
        encoding = "evt3" if ("evt 3" in text or "evt3" in text) else "evt2" if ("evt 2" in text or "evt2" in text) \
            else None
        if encoding is None:
            raise EventError(f"{path}: a .raw file whose header names no EVT2 or EVT3 encoding; only those are read.")
    try:
        arr = expelliarmus.Wizard(encoding=encoding).read(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EventError(f"{path}: not a readable {encoding.upper()} recording ({first}).") from None
    return _structured(arr["t"], arr["x"], arr["y"], arr["p"]), _prophesee_size(header)


def _read_table(path: Path) -> np.ndarray:
    """CSV/TXT: columns t, x, y, p (a header line, commas or whitespace)."""
    text = path.read_text(errors="replace").splitlines()
    body = [ln for ln in text if ln.strip() and not ln.lstrip().startswith("#")]
    if body and not body[0].replace(",", " ").split()[0].lstrip("-").replace(".", "", 1).isdigit():
        body = body[1:]  # a header such as "t,x,y,p"
    try:
        arr = np.loadtxt(body, delimiter="," if body and "," in body[0] else None, ndmin=2)
    except ValueError as exc:
        raise EventError(f"{path}: not a table of events t, x, y, p ({str(exc).splitlines()[0][:100]}).") from None
    if arr.size and arr.shape[1] < 4:
        raise EventError(f"{path}: {arr.shape[1]} columns; an event table has t, x, y, p.")
    return _structured(*arr[:, :4].T) if arr.size else np.empty(0, EVENT_DTYPE)


def _from_array(arr: Any, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.names and {"t", "x", "y", "p"} <= set(arr.dtype.names):
        return _structured(arr["t"], arr["x"], arr["y"], arr["p"])
    if arr.ndim == 2 and arr.shape[1] >= 4:
        return _structured(*arr[:, :4].T)
    raise EventError(f"{path}: holds an array of shape {arr.shape} and fields {arr.dtype.names}; events need "
                     "fields t, x, y, p (or four columns in that order).")


def _read_hdf5(path: Path) -> np.ndarray:
    h5py = _need("h5py", path)
    with h5py.File(path, "r") as f:
        for group in (f, f.get("events"), f.get("CD/events")):
            if group is None:
                continue
            if isinstance(group, h5py.Dataset):
                return _from_array(group[()], path)
            if all(k in group for k in "txyp"):
                return _structured(group["t"][()], group["x"][()], group["y"][()], group["p"][()])
    raise EventError(f"{path}: no t, x, y, p datasets (at the root, in 'events' or 'CD/events').")


def read_events(path: str | Path, *, sensor_size: tuple[int, int] | None = None) -> np.ndarray:
    """The events of a recording as a structured array (:data:`EVENT_DTYPE`), sorted by time.

    ``sensor_size`` (width, height): refuse events outside it (by default, the size the file records,
    when it records one). Every problem is one :class:`EventError` line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise EventError(f"{path}: no such event recording.")
    suffix = path.suffix.lower()
    recorded = None
    if suffix in PROPHESEE_SUFFIXES:
        ev, recorded = _read_prophesee(path)
    elif suffix in FAERY_SUFFIXES:
        ev, recorded = _read_faery(path)
    elif suffix in (".h5", ".hdf5"):
        ev = _read_hdf5(path)
    elif suffix == ".npy":
        ev = _from_array(np.load(path, allow_pickle=False), path)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            ev = (_structured(z["t"], z["x"], z["y"], z["p"]) if all(k in z for k in "txyp")
                  else _from_array(z[z.files[0]], path))
    elif suffix in (".csv", ".txt"):
        ev = _read_table(path)
    else:
        raise EventError(f"{path}: unknown event format {suffix or '(no suffix)'}; known: {', '.join(EVENT_SUFFIXES)}.")
    if len(ev) and np.any(np.diff(ev["t"]) < 0):
        ev = ev[np.argsort(ev["t"], kind="stable")]
    size = sensor_size or recorded
    if size is not None and len(ev):
        w, h = size
        bad = (ev["x"] < 0) | (ev["y"] < 0) | (ev["x"] >= w) | (ev["y"] >= h)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EventError(f"{path}: {int(bad.sum())} events lie outside the {w}x{h} sensor (first: x {ev['x'][i]}, "
                             f"y {ev['y'][i]}).")
    return ev


def sensor_size_of(path: str | Path, events: np.ndarray | None = None) -> tuple[int, int]:
    """(width, height) the file records, else the smallest that holds its events."""
    path = Path(path)
    if path.suffix.lower() in FAERY_SUFFIXES:
        faery = _need("faery", path)
        return tuple(int(v) for v in faery.events_stream_from_file(path).dimensions())  # type: ignore[return-value]
    if path.suffix.lower() in PROPHESEE_SUFFIXES:
        size = _prophesee_size(_raw_header(path))
        if size is not None:
            return size
    ev = read_events(path) if events is None else events
    return (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1) if len(ev) else (0, 0)


def read_slice_times(path: str | Path) -> np.ndarray:
    """Slice timestamps (microseconds) from a CSV/TXT: one per line, or the first column; a header is skipped."""
    path = Path(path)
    if not path.is_file():
        raise EventError(f"{path}: no such slice-times file.")
    values = []
    for ln in path.read_text(errors="replace").splitlines():
        cell = ln.replace(",", " ").split()
        if not cell or cell[0].startswith("#"):
            continue
        try:
            values.append(float(cell[0]))
        except ValueError:
            if values:
                raise EventError(f"{path}: {cell[0]!r} is not a timestamp.") from None
    return np.asarray(values, np.float64)


def bin_events(events: np.ndarray, n_slices: int, shape: tuple[int, int],
               slice_times: Sequence[float] | np.ndarray | None = None, *, source: str = "the events") -> np.ndarray:
    """(N, H, W) float32 signed counts: events per focal slice, +1 for positive, -1 for negative.

    ``slice_times``: when each slice was taken (N values: each slice owns the events nearest its time,
    split at the midpoints, the first and last slices reaching half a step out) or the N + 1 bin edges.
    By default the recording's time span is cut into N equal parts. ``shape`` is (height, width).
    """
    h, w = shape
    if n_slices < 1:
        raise EventError(f"{source}: n_slices must be at least 1, got {n_slices}.")
    if len(events) == 0:
        raise EventError(f"{source}: the recording holds no events.")
    t = events["t"].astype(np.float64)
    if slice_times is None:
        edges = np.linspace(t[0], t[-1], n_slices + 1)
        edges[-1] = np.nextafter(edges[-1], np.inf)
    else:
        st = np.asarray(slice_times, np.float64).ravel()
        if np.any(np.diff(st) <= 0):
            raise EventError(f"{source}: slice times must increase strictly; they do not at position "
                             f"{int(np.flatnonzero(np.diff(st) <= 0)[0]) + 1}.")
        if len(st) == n_slices + 1:
            edges = st
        elif len(st) == n_slices:
            mid = (st[1:] + st[:-1]) / 2 if n_slices > 1 else np.empty(0)
            half = (st[1] - st[0]) / 2 if n_slices > 1 else 1.0
            lead, tail = (st[0] - half, st[-1] + ((st[-1] - st[-2]) / 2 if n_slices > 1 else 1.0))
            edges = np.concatenate([[lead], mid, [tail]])
        else:
            raise EventError(f"{source}: {len(st)} slice times for {n_slices} slices; give one per slice "
                             f"({n_slices}) or the bin edges ({n_slices + 1}).")
    inside = (t >= edges[0]) & (t < edges[-1])
    if not inside.any():
        raise EventError(f"{source}: no events in the sweep window {edges[0]:.0f}-{edges[-1]:.0f} us "
                         f"(the recording spans {t[0]:.0f}-{t[-1]:.0f} us).")
    ev = events[inside]
    x, y = ev["x"].astype(np.int64), ev["y"].astype(np.int64)
    if (x < 0).any() or (y < 0).any() or (x >= w).any() or (y >= h).any():
        raise EventError(f"{source}: events reach x {int(x.max())}, y {int(y.max())}, outside the {w}x{h} image "
                         "of the stack; the event sensor and the image must be the same size.")
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
    from .stack import as_focal_stack

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
    from .io import list_slice_files, read_image

    files = list_slice_files(folder)
    if len(files) < 2:
        raise StackError(f"{folder}: an event stack needs at least 2 event frames, found {len(files)}.")
    frames = [frame_to_signed(read_image(p)) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise StackError(f"{folder}: event frames have different sizes {sorted(shapes)}.")
    return np.stack(frames).astype(np.float32)


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
            frames = bin_events(read_events(path), n_slices, shape, times, source=str(path))
        source = str(path)
    else:
        frames, source = np.asarray(events, np.float32), "the event frames"
    expected = (n_slices, *shape) if n_times == 1 else (n_times, n_slices, *shape)
    if tuple(frames.shape) != expected:
        raise EventError(f"{source}: event frames of shape {tuple(frames.shape)} for a stack of {n_slices} slices of "
                         f"{shape[1]}x{shape[0]} (expected {expected}); one event frame per slice, same size.")
    return frames
