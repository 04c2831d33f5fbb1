"""Reading event recordings into one structured array, within a memory budget.

Prophesee EVT2/EVT3 ``.raw`` and ``.dat`` (expelliarmus), AEDAT4 and ``.es`` (faery), HDF5 (h5py),
``.npy``/``.npz`` and CSV/TXT (numpy). Sizes are checked before anything is allocated, and every
refusal is one line naming the file. Events are :data:`EVENT_DTYPE`: t (microseconds, int64),
x, y (int16) and p (uint8: 1 = ON, 0 = OFF), the layout of the readers' own decoded test files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StackMFFError

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")], align=True)
#: Largest pixel coordinate :data:`EVENT_DTYPE` holds (int16). Event sensors are at most a few thousand
#: pixels a side, so a larger coordinate or declared sensor is a damaged file: refused, never wrapped round.
MAX_COORD = int(np.iinfo(np.int16).max)
#: Share of the memory available when a read (or a binning) starts that the events and their frames may
#: take: the image stack, the model and napari need the rest.
MEMORY_FRACTION = 0.5
#: Reading keeps the decoded chunks and then joins them (or validates columns beside the result): two copies.
READ_COPIES = 2
#: Events decoded per step from Prophesee files (2**21 events, 32 MiB), so a recording too large for memory
#: is refused after one step, not after the decoder's single allocation for the whole file.
CHUNK_EVENTS = 1 << 21
#: A Prophesee header is a few hundred bytes of '% ...' lines; no more than this is read to find its end
#: (a headerless dump of 2 GB with no newline was once read whole as its "first line").
MAX_HEADER_BYTES = 1 << 16
#: Memory binning takes per event besides the frames: float64 times, int64 x/y/slice/flat index, a float32
#: sign, masks and the copy of the events inside the sweep window (about 61 bytes).
BIN_BYTES_PER_EVENT = 64
#: Memory a CSV/TXT event takes while parsed: four float64 columns plus the event itself.
TABLE_BYTES_PER_EVENT = 4 * 8 + 16
#: A recording without a declared sensor size whose events all lie within this share of the stack's width
#: and height (from the top-left corner) is from a smaller sensor: noise alone reaches a same-size sensor's edges.
SMALL_EXTENT = 0.5
#: Suffixes decoded by the libraries of the ``[events]`` extra: Prophesee files by expelliarmus (its EVT3
#: decoding equals the reference file its tests ship; faery 0.7's differs in ~9% of the timestamps of that
#: file), AEDAT4 and .es by faery; the rest are read here with numpy / h5py.
PROPHESEE_SUFFIXES = (".raw", ".dat")
FAERY_SUFFIXES = (".aedat4", ".es")
EVENT_SUFFIXES = (*PROPHESEE_SUFFIXES, *FAERY_SUFFIXES, ".h5", ".hdf5", ".npy", ".npz", ".csv", ".txt")
EXTRA = "pip install 'napari-stackmff[events]'"
READ_ADVICE = ("keep only the focal sweep in the recording (for Prophesee files, e.g. expelliarmus' Wizard.cut), "
               "or free memory")
FRAMES_ADVICE = "bin fewer slices or a smaller sensor size, or free memory"


class EventError(StackMFFError):
    """An event recording that cannot be used, said in one line naming the file."""


def available_memory() -> int:
    """Bytes of memory available now (psutil; MemAvailable on Linux). A function so tests can pretend."""
    import psutil

    return int(psutil.virtual_memory().available)


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class _Budget:
    """Memory one read or binning may take, fixed when it starts (reading itself lowers what is available),
    checked before each allocation so a recording too large is refused before it is read, not after."""

    def __init__(self, source: str, advice: str) -> None:
        self.source, self.advice = source, advice
        self.free = available_memory()
        self.limit = MEMORY_FRACTION * self.free

    def check(self, need: float, what: str) -> None:
        if need > self.limit:
            raise EventError(f"{self.source}: {what} need {_size(need)} of memory, more than the {_size(self.limit)} "
                             f"events may use (half of the {_size(self.free)} available); {self.advice}.")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def check_sensor_size(size: Sequence[int], source: str, declared_by: str = "") -> tuple[int, int]:
    """(width, height) if an event sensor can be that size (events keep 16-bit coordinates); ``declared_by``
    names what declared it ("the header"), when a file did."""
    w, h = (int(v) for v in size)
    if not (0 < w <= MAX_COORD + 1 and 0 < h <= MAX_COORD + 1):
        if declared_by:
            raise EventError(f"{source}: {declared_by} declares a {w}x{h} sensor, which no event camera has (pixel "
                             f"coordinates are kept as 0-{MAX_COORD}); the file is damaged: correct its size.")
        raise EventError(f"{source}: a {w}x{h} event sensor is not possible (pixel coordinates are kept as "
                         f"0-{MAX_COORD}); give the sensor's real size.")
    return w, h


def _numbers(values: Any, name: str, source: str) -> np.ndarray:
    """One column of events as a 1-D numeric array, or one line saying what it is instead."""
    a = np.asarray(values)
    if a.dtype.kind not in "biuf":
        what = "text or objects" if a.dtype.kind in "SUO" else "records" if a.dtype.kind == "V" else "not numbers"
        raise EventError(f"{source}: the {name} values are {what} ({a.dtype}); events are numbers: t (microseconds), "
                         "x, y (pixels) and p (polarity).")
    if a.ndim != 1:
        raise EventError(f"{source}: the {name} values have shape {a.shape}; one value per event is expected.")
    return a


def _structured(t: Any, x: Any, y: Any, p: Any, source: str) -> np.ndarray:
    """Events as :data:`EVENT_DTYPE`, refusing what would change on the way in: columns of unequal length,
    text, NaN or out-of-range timestamps, coordinates outside 0..MAX_COORD (int16 would wrap them)."""
    cols = {k: _numbers(v, k, source) for k, v in zip("txyp", (t, x, y, p))}
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise EventError(f"{source}: columns of different lengths ({', '.join(f'{k} {n:,}' for k, n in lengths.items())}"
                         "); every event needs its t, x, y and p: the file is damaged or was written wrongly.")
    t = cols["t"]
    if t.dtype.kind == "f":
        bad = ~(np.abs(t) < 2.0**63)  # NaN and inf too
    elif t.dtype.kind == "u" and t.dtype.itemsize == 8:
        bad = t > np.iinfo(np.int64).max
    else:
        bad = None
    if bad is not None and bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EventError(f"{source}: event {i:,} has timestamp {t[i]} ({int(bad.sum()):,} of {len(t):,} events); "
                         "timestamps are finite microseconds: the file is damaged or was written wrongly.")
    for k, axis in (("x", "column"), ("y", "row")):
        a = cols[k]
        bad = ~((a >= 0) & (a <= MAX_COORD))  # NaN too
        if a.dtype.kind == "f":
            bad |= a != np.floor(a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EventError(f"{source}: event {i:,} has {k} {a[i]}, not a pixel {axis} 0-{MAX_COORD} "
                             f"({int(bad.sum()):,} of {len(a):,} events); the file's {k} values are not pixel coordinates: "
                             "check how it was written.")
    if cols["p"].dtype.kind == "f" and not np.isfinite(cols["p"]).all():
        i = int(np.flatnonzero(~np.isfinite(cols["p"]))[0])
        raise EventError(f"{source}: event {i:,} has polarity {cols['p'][i]}; polarity is 1 (ON) or 0 / -1 (OFF).")
    out = np.empty(len(t), EVENT_DTYPE)
    out["t"], out["x"], out["y"] = t, cols["x"], cols["y"]
    out["p"] = cols["p"] > 0
    return out


def _need(module: str, path: Path) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EventError(f"{path}: reading {path.suffix} recordings needs the '{module}' package; {EXTRA}.") from None


def _read_faery(path: Path, budget: _Budget) -> tuple[np.ndarray, tuple[int, int] | None]:
    faery = _need("faery", path)
    parts, n = [], 0
    try:
        stream = faery.events_stream_from_file(path)
        size = tuple(int(v) for v in stream.dimensions())
        for chunk in stream:
            c = np.asarray(chunk)
            n += len(c)
            budget.check(READ_COPIES * n * EVENT_DTYPE.itemsize, f"its first {n:,} events (of more)")
            parts.append(_structured(c["t"], c["x"], c["y"], c["on"] if "on" in (c.dtype.names or ()) else c["p"],
                                     str(path)))
    except StackMFFError:
        raise
    except Exception as exc:  # the decoder's own message, on one line
        raise EventError(f"{path}: not a readable {path.suffix} event recording ({_first_line(exc)}).") from None
    ev = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)
    return ev, size  # type: ignore[return-value]


def _raw_header(path: Path) -> tuple[list[str], int]:
    """The '% ...' header lines of a Prophesee file and the offset its data start at (at most
    :data:`MAX_HEADER_BYTES` are read)."""
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    lines, at = [], 0
    while head.startswith(b"%", at):
        end = head.find(b"\n", at)
        if end < 0:
            if len(head) == MAX_HEADER_BYTES:
                raise EventError(f"{path}: a '%' header longer than {MAX_HEADER_BYTES:,} bytes; not a Prophesee "
                                 "recording, or a damaged one.")
            end = len(head) - 1  # a header-only file without a final newline
        line = head[at:end + 1].strip()
        lines.append(line[1:].decode("ascii", "replace").strip())
        at = end + 1
        if line == b"% end":
            break
    return lines, at


def _prophesee_size(header: list[str]) -> tuple[int, int] | None:
    """(width, height) from a '% geometry WxH' or '% format EVT3;height=H;width=W' line, if any."""
    import re

    text = " ".join(header)
    m = re.search(r"geometry\s+(\d+)x(\d+)", text)
    if m:
        return int(m[1]), int(m[2])
    w, h = re.search(r"width=(\d+)", text), re.search(r"height=(\d+)", text)
    return (int(w[1]), int(h[1])) if w and h else None


def _read_prophesee(path: Path, budget: _Budget) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Decoded in chunks: a size check from the file's length first where every event has one size (EVT2
    words, DAT records), then the running total against the budget (EVT3 packs a varying number per word)."""
    expelliarmus = _need("expelliarmus", path)
    header, at = _raw_header(path)
    body = path.stat().st_size - at
    if path.suffix.lower() == ".dat":
        if not header:
            raise EventError(f"{path}: no '% ...' header; not a Prophesee .dat recording.")
        encoding = "dat"
        with open(path, "rb") as f:
            f.seek(at)
            kind = f.read(2)  # event type, event size
        body = max(body - 2, 0)
        unit = kind[1] if len(kind) == 2 else 8
        if body and unit != 8:
            raise EventError(f"{path}: events of {unit} bytes; only Prophesee CD events (8 bytes) are read.")
    else:
        text = " ".join(header).lower()
        encoding = "evt3" if ("evt 3" in text or "evt3" in text) else "evt2" if ("evt 2" in text or "evt2" in text) \
            else ""
        if not encoding:
            raise EventError(f"{path}: a .raw file whose header names no EVT2 or EVT3 encoding; only those are read.")
        unit = 4 if encoding == "evt2" else 2
    size = _prophesee_size(header)
    if size is not None:
        check_sensor_size(size, str(path), "the header")
    if body % unit:
        raise EventError(f"{path}: {body:,} bytes of {encoding.upper()} data are not whole {unit}-byte "
                         f"{'records' if encoding == 'dat' else 'words'}: the file was cut short; copy or export it again.")
    if body == 0:
        return np.empty(0, EVENT_DTYPE), size
    if encoding != "evt3":
        budget.check(READ_COPIES * (body // unit) * EVENT_DTYPE.itemsize, f"up to {body // unit:,} events")
    parts, n = [], 0
    try:
        for chunk in expelliarmus.Wizard(encoding=encoding, fpath=str(path), chunk_size=CHUNK_EVENTS).read_chunk():
            n += len(chunk)
            budget.check(READ_COPIES * n * EVENT_DTYPE.itemsize, f"its first {n:,} events (of more)")
            if chunk.dtype == EVENT_DTYPE:
                chunk["p"] = chunk["p"] > 0  # 1 = ON, as _structured makes it (a damaged DAT gives 0-15)
            else:
                chunk = _structured(chunk["t"], chunk["x"], chunk["y"], chunk["p"], str(path))
            parts.append(chunk)
    except StackMFFError:
        raise
    except Exception as exc:
        raise EventError(f"{path}: not a readable {encoding.upper()} recording ({_first_line(exc)}).") from None
    if not parts:
        raise EventError(f"{path}: {body:,} bytes of data but no {encoding.upper()} event in them; the file is "
                         f"damaged or not {encoding.upper()}.")
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), size


def _read_table(path: Path, budget: _Budget) -> np.ndarray:
    """CSV/TXT: columns t, x, y, p (a header line, commas or whitespace), parsed as the file streams."""
    import warnings

    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES).decode("utf-8", "replace")
    lines = head.splitlines()
    if len(head) == MAX_HEADER_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut
    skip, first = 0, None
    for i, ln in enumerate(lines):
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        try:
            float(ln.replace(",", " ").split()[0])
        except ValueError:
            if skip:  # a second line of words: not a table of numbers
                break
            skip = i + 1  # a header such as "t,x,y,p"
            continue
        first = ln
        break
    if first is None and skip and any(ln.strip() and not ln.lstrip().startswith("#") for ln in lines[skip:]):
        raise EventError(f"{path}: not a table of events t, x, y, p (line {skip + 1} is not numbers).")
    if first is None:
        return np.empty(0, EVENT_DTYPE)
    ncols = len(first.replace(",", " ").split())
    if ncols < 4:
        raise EventError(f"{path}: {ncols} columns; an event table has t, x, y, p.")
    body = [ln for ln in lines[skip:] if ln.strip() and not ln.lstrip().startswith("#")]
    per_line = max(sum(len(ln) + 1 for ln in body) / max(len(body), 1), 8.0)
    n = int(path.stat().st_size / per_line)
    budget.check(TABLE_BYTES_PER_EVENT * n, f"about {n:,} events")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            arr = np.loadtxt(path, delimiter="," if "," in first else None, comments="#", skiprows=skip,
                             usecols=(0, 1, 2, 3), ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise EventError(f"{path}: not a table of events t, x, y, p ({_first_line(exc)[:100]}).") from None
    return _structured(*arr.T, source=str(path)) if arr.size else np.empty(0, EVENT_DTYPE)


def _from_array(arr: Any, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.names and {"t", "x", "y", "p"} <= set(arr.dtype.names):
        return _structured(arr["t"], arr["x"], arr["y"], arr["p"], source)
    if arr.ndim == 2 and arr.shape[1] >= 4:
        return _structured(*arr[:, :4].T, source=source)
    raise EventError(f"{source}: holds an array of shape {arr.shape} and fields {arr.dtype.names}; events need "
                     "fields t, x, y, p (or four columns in that order).")


def _npy_header(f: Any, source: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy stream, read from its header alone; Python objects are refused."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(f)
    except ValueError as exc:
        raise EventError(f"{source}: not a .npy array ({_first_line(exc)}).") from None
    if dtype.hasobject:
        raise EventError(f"{source}: holds Python objects (pickled data), which are never loaded; save the events as "
                         "numbers (fields t, x, y, p, or four columns).")
    return shape, dtype


def _events_in(shape: tuple[int, ...]) -> int:
    return int(shape[0]) if shape else 1


def _read_npy(path: Path, budget: _Budget) -> np.ndarray:
    with open(path, "rb") as f:
        shape, _ = _npy_header(f, str(path))
    n = _events_in(shape)
    budget.check(READ_COPIES * n * EVENT_DTYPE.itemsize, f"{n:,} events")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # read as the events are copied out
    except ValueError as exc:
        raise EventError(f"{path}: a damaged or truncated .npy file ({_first_line(exc)}).") from None
    return _from_array(arr, str(path))


def _read_npz(path: Path, budget: _Budget) -> np.ndarray:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise EventError(f"{path}: not a .npz archive (damaged, truncated or another kind of file).")
    with np.load(path, allow_pickle=False) as z:
        keys = list("txyp") if all(k in z.files for k in "txyp") else z.files[:1]
        if not keys:
            raise EventError(f"{path}: an empty .npz; events need arrays t, x, y, p.")
        names = set(z.zip.namelist())
        need, n = 0, 0
        for k in keys:
            with z.zip.open(k + ".npy" if k + ".npy" in names else k) as f:
                shape, dtype = _npy_header(f, f"{path} ({k})")
            need += int(np.prod(shape)) * dtype.itemsize
            n = max(n, _events_in(shape))
        budget.check(need + n * EVENT_DTYPE.itemsize, f"{n:,} events")
        if len(keys) == 4:
            return _structured(z["t"], z["x"], z["y"], z["p"], str(path))
        return _from_array(z[keys[0]], str(path))


def _read_hdf5(path: Path, budget: _Budget) -> np.ndarray:
    h5py = _need("h5py", path)
    with h5py.File(path, "r") as f:
        for group in (f, f.get("events"), f.get("CD/events")):
            if group is None:
                continue
            if isinstance(group, h5py.Dataset):
                n = _events_in(group.shape)
                budget.check(group.size * group.dtype.itemsize + READ_COPIES * n * EVENT_DTYPE.itemsize, f"{n:,} events")
                return _from_array(group[()], str(path))
            if all(k in group for k in "txyp"):
                cols = [group[k] for k in "txyp"]
                for k, c in zip("txyp", cols):
                    if not isinstance(c, h5py.Dataset):
                        raise EventError(f"{path}: '{c.name}' is a group, not a dataset of {k} values.")
                    _numbers(np.empty(0, c.dtype), f"{k}", str(path))  # text refused before it is read
                n = max(_events_in(c.shape) for c in cols)
                budget.check(sum(c.size * c.dtype.itemsize for c in cols) + READ_COPIES * n * EVENT_DTYPE.itemsize,
                             f"{n:,} events")
                return _structured(*(c[()] for c in cols), source=str(path))
    raise EventError(f"{path}: no t, x, y, p datasets (at the root, in 'events' or 'CD/events').")


def _read_recording(path: str | Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(events sorted by time, the sensor size the file declares or None); every problem one EventError line."""
    import zipfile
    import zlib

    path = Path(path)
    if not path.is_file():
        raise EventError(f"{path}: no such event recording.")
    suffix = path.suffix.lower()
    budget = _Budget(str(path), READ_ADVICE)
    recorded = None
    try:
        if suffix in PROPHESEE_SUFFIXES:
            ev, recorded = _read_prophesee(path, budget)
        elif suffix in FAERY_SUFFIXES:
            ev, recorded = _read_faery(path, budget)
            if recorded is not None:
                check_sensor_size(recorded, str(path), "the file")
        elif suffix in (".h5", ".hdf5"):
            ev = _read_hdf5(path, budget)
        elif suffix == ".npy":
            ev = _read_npy(path, budget)
        elif suffix == ".npz":
            ev = _read_npz(path, budget)
        elif suffix in (".csv", ".txt"):
            ev = _read_table(path, budget)
        else:
            raise EventError(f"{path}: unknown event format {suffix or '(no suffix)'}; known: "
                             f"{', '.join(EVENT_SUFFIXES)}.")
    except StackMFFError:
        raise
    except MemoryError:
        raise EventError(f"{path}: ran out of memory reading the recording; {READ_ADVICE}.") from None
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, zlib.error) as exc:
        raise EventError(f"{path}: not a readable {suffix} event recording ({_first_line(exc)}).") from None
    if len(ev) and np.any(np.diff(ev["t"]) < 0):
        ev = ev[np.argsort(ev["t"], kind="stable")]
    return ev, recorded


def read_events(path: str | Path, *, sensor_size: tuple[int, int] | None = None) -> np.ndarray:
    """The events of a recording as a structured array (:data:`EVENT_DTYPE`), sorted by time.

    ``sensor_size`` (width, height): refuse events outside it (by default, the size the file records,
    when it records one). Every problem is one :class:`EventError` line naming the file; memory is
    checked before each large allocation (:data:`MEMORY_FRACTION` of what is available).
    """
    ev, recorded = _read_recording(path)
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
        try:
            size = tuple(int(v) for v in faery.events_stream_from_file(path).dimensions())
        except Exception as exc:
            raise EventError(f"{path}: not a readable {path.suffix} event recording ({_first_line(exc)}).") from None
        return check_sensor_size(size, str(path), "the file")
    if path.suffix.lower() in PROPHESEE_SUFFIXES:
        size = _prophesee_size(_raw_header(path)[0])
        if size is not None:
            return check_sensor_size(size, str(path), "the header")
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
            continue
        if not np.isfinite(values[-1]):
            raise EventError(f"{path}: slice time {len(values)} is {cell[0]!r}; each slice needs a finite time "
                             "in microseconds.")
    return np.asarray(values, np.float64)
