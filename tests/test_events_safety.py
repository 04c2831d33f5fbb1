"""Event input that must not hurt: recordings too large for memory are refused before they are read,
events commands never replace their input and write whole files, nothing is silently changed on the
way in (16-bit wrap, NaN times), damaged files are one line, a recording of another sensor size is
refused, and `events bin` says how many events it read and binned (issues 23 and 24)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_stackmff.cli import main
from napari_stackmff.core.events import read as events  # the module whose budget and chunk size the readers use
from napari_stackmff.core.events.read import EVENT_DTYPE, EventError, read_events, read_slice_times
from napari_stackmff.core.events.frames import bin_events, load_events

SRC = Path(__file__).resolve().parents[1] / "src"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "events"
DVS = SHARED / "faery" / "tests" / "data" / "dvs.es"
EVT3 = SHARED / "expelliarmus" / "tests" / "sample-files"
#: Address space of a child run: room for Python, numpy and the readers, none for a 2 GB recording read whole,
#: so a test of a refusal cannot take the machine's memory even where the refusal is missing.
CHILD_LIMIT = 1 << 30
#: What a refusal may allocate at most (numpy allocations, traced): the header, a chunk, no events.
SMALL = 64 << 20
GIB = 1 << 30

resource = pytest.importorskip("resource")  # RLIMIT_AS: Linux and macOS


def _events(n: int = 200, w: int = 40, h: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 10_000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n)
    return ev


def _evt2(path: Path, header: bytes, n: int = 100) -> Path:
    """A small real EVT2 file: one TIME_HIGH word, then n CD_ON events on a diagonal."""
    words = [0x8 << 28] + [(0x1 << 28) | ((i % 64) << 22) | ((i * 3) << 11) | (i * 2) for i in range(n)]
    path.write_bytes(header + np.array(words, "<u4").tobytes())
    return path


def _cli_in_child(args: list[str], available: int | None = None) -> tuple[int, str, int]:
    """Run `stackmff ARGS` in a child limited to CHILD_LIMIT of address space, with the available memory it
    sees set to ``available``: (exit code, stderr without the peak line, peak numpy bytes allocated)."""
    code = (
        "import resource, sys, tracemalloc\n"
        "from napari_stackmff.cli import main\n"
        "from napari_stackmff.core.events import read as events\n"
        "import expelliarmus, h5py\n"
        + (f"events.available_memory = lambda: {available}\n" if available else "")
        + f"resource.setrlimit(resource.RLIMIT_AS, ({CHILD_LIMIT}, {CHILD_LIMIT}))\n"
        "tracemalloc.start()\n"
        "try:\n"
        f"    code = main({args!r})\n"
        "finally:\n"
        "    print('peak', tracemalloc.get_traced_memory()[1], file=sys.stderr)\n"
        "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    lines = r.stderr.strip().splitlines()
    peak = int(lines[-1].split()[1]) if lines and lines[-1].startswith("peak ") else -1
    return r.returncode, "\n".join(lines[:-1] if peak >= 0 else lines), peak


def _one_line(err: str, path: Path | str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("WARNING: The timestamps")]  # expelliarmus' own
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"stackmff: error: {path}"), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------- issue 23.3: memory
def test_a_2gb_evt2_recording_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """2 GB of EVT2 words are up to 536,870,908 events (16 GiB read): refused from the file's size, with
    a few MiB allocated, when 4 GiB are available (it used to take 8.2 GB and end in ArrayMemoryError)."""
    pytest.importorskip("expelliarmus")
    rec = tmp_path / "big.raw"
    rec.write_bytes(b"% evt 2.0\n% end\n")
    os.truncate(rec, 2 * GIB)  # sparse: no disk used
    code, err, peak = _cli_in_child(["events", "info", str(rec)], available=4 * GIB)
    line = _one_line(err, rec)
    assert code == 2 and "up to 536,870,908 events need 16.0 GiB of memory" in line and "2.0 GiB" in line
    assert "focal sweep" in line and 0 <= peak < SMALL


def test_a_headerless_raw_is_not_read_whole_to_find_its_header(tmp_path: Path) -> None:
    """2 GB without a newline: the header search reads 64 KiB, not the whole file as one line (4.2 GB)."""
    pytest.importorskip("expelliarmus")
    rec = tmp_path / "dump.raw"
    rec.touch()
    os.truncate(rec, 2 * GIB)
    code, err, peak = _cli_in_child(["events", "info", str(rec)])
    assert code == 2 and "header names no EVT2 or EVT3 encoding" in _one_line(err, rec)
    assert 0 <= peak < SMALL


def test_sensor_size_and_frame_volume_are_checked_before_any_frame(tmp_path: Path) -> None:
    """A header declaring 200000x200000 (745 GiB of frames) is refused as damaged; a possible sensor whose
    frames do not fit (10 x 20000x20000, 14.9 GiB with 8 GiB available) is refused before allocating."""
    pytest.importorskip("expelliarmus")
    huge = _evt2(tmp_path / "huge.raw", b"% evt 2.0\n% geometry 200000x200000\n% end\n")
    code, err, peak = _cli_in_child(["events", "bin", str(huge), "--slices", "5", "-o", str(tmp_path / "h.tif")])
    assert code == 2 and "declares a 200000x200000 sensor" in _one_line(err, huge) and 0 <= peak < SMALL
    big = _evt2(tmp_path / "big.raw", b"% evt 2.0\n% geometry 20000x20000\n% end\n")
    code, err, peak = _cli_in_child(["events", "bin", str(big), "--slices", "10", "-o", str(tmp_path / "b.tif")],
                                    available=8 * GIB)
    line = _one_line(err, big)
    assert code == 2 and "10 frames of 20000x20000 from 100 events need 14.9 GiB of memory" in line, line
    assert "bin fewer slices" in line and 0 <= peak < SMALL and not (tmp_path / "b.tif").exists()
    code, err, _ = _cli_in_child(["events", "bin", str(big), "--slices", "2", "--size", "40000x30", "-o",
                                  str(tmp_path / "c.tif")])
    assert code == 2 and "--size 40000x30: a 40000x30 event sensor is not possible" in err


def test_a_npy_header_claiming_a_billion_events_is_refused_before_loading(tmp_path: Path) -> None:
    from numpy.lib import format as npy

    rec = tmp_path / "claims.npy"
    with open(rec, "wb") as f:
        npy.write_array_header_1_0(f, {"descr": npy.dtype_to_descr(EVENT_DTYPE), "fortran_order": False,
                                       "shape": (10**9,)})
        f.write(_events(10).tobytes())
    code, err, peak = _cli_in_child(["events", "info", str(rec)], available=8 * GIB)
    assert code == 2 and "1,000,000,000 events need 29.8 GiB of memory" in _one_line(err, rec)
    assert 0 <= peak < SMALL


def _h5(path: Path, **cols) -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for k, v in cols.items():
            f[k] = v
    return path


def test_every_reader_stops_at_the_memory_budget(tmp_path: Path, monkeypatch) -> None:
    """With 1 MiB available (half of it for events), each format is refused while or before it is read:
    by its header (.npy, .npz, .h5), its length (.csv), or the running total of decoded chunks (.raw EVT3, .es)."""
    monkeypatch.setattr(events, "available_memory", lambda: 1 << 20, raising=False)
    ev = _events(100_000)
    np.save(tmp_path / "a.npy", ev)
    np.savez(tmp_path / "a.npz", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
    _h5(tmp_path / "a.h5", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
    np.savetxt(tmp_path / "a.csv", np.stack([ev[k] for k in "txyp"], 1), delimiter=",", fmt="%d", header="t,x,y,p",
               comments="")
    files = [tmp_path / n for n in ("a.npy", "a.npz", "a.h5", "a.csv")]
    if (EVT3 / "evt3_sample.raw").exists() and DVS.exists():
        pytest.importorskip("expelliarmus")
        pytest.importorskip("faery")
        monkeypatch.setattr(events, "CHUNK_EVENTS", 10_000)
        files += [EVT3 / "evt3_sample.raw", DVS]
    for path in files:
        with pytest.raises(EventError, match=r"events(?: \(of more\))? need [\d.]+ MiB of memory, more than the 0.5 MiB"
                           ) as err:
            read_events(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_chunked_decoding_equals_the_whole_file(monkeypatch) -> None:
    """Prophesee files are decoded CHUNK_EVENTS at a time: the joined chunks equal the reference."""
    if not (EVT3 / "evt3_sample.raw").exists():
        pytest.skip("../shared/data/events absent")
    expelliarmus = pytest.importorskip("expelliarmus")
    monkeypatch.setattr(events, "CHUNK_EVENTS", 1000)
    np.testing.assert_array_equal(read_events(EVT3 / "evt3_sample.raw"), np.load(EVT3 / "evt3_sample.npy"))
    whole = expelliarmus.Wizard(encoding="evt2").read(str(EVT3 / "evt2_sample.raw"))
    ev = read_events(EVT3 / "evt2_sample.raw")
    np.testing.assert_array_equal(ev, whole[np.argsort(whole["t"], kind="stable")])


# -------------------------------------------------------------------------- issue 23.5: never the input
def test_events_bin_and_simulate_refuse_to_replace_their_input(tmp_path: Path, capsys) -> None:
    import tifffile

    np.save(tmp_path / "rec.npy", _events())
    (tmp_path / "times.csv").write_text("t\n1000\n4000\n7000\n9000\n")
    tifffile.imwrite(tmp_path / "stack.tif", np.random.default_rng(0).integers(0, 255, (4, 30, 40), np.uint8),
                     photometric="minisblack", metadata={"axes": "ZYX"})
    slices = tmp_path / "slices"
    slices.mkdir()
    for i in range(4):
        tifffile.imwrite(slices / f"s_{i}.tif", np.random.default_rng(i).integers(0, 255, (30, 40), np.uint8))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for args, target in [
        (["events", "bin", "rec.npy", "--slices", "4", "-o", "rec.npy", "--overwrite"], "rec.npy"),
        (["events", "bin", "rec.npy", "--slices", "4", "--slice-times", "times.csv", "-o", "times.csv",
          "--overwrite"], "times.csv"),
        (["events", "simulate", "stack.tif", "-o", "stack.tif", "--overwrite"], "stack.tif"),
        (["events", "simulate", "slices", "-o", "slices/s_0.tif", "--overwrite"], "slices/s_0.tif"),
        (["events", "simulate", "slices", "-o", "slices/events.tif"], "slices"),
    ]:
        args = [str(tmp_path / a) if a in ("rec.npy", "stack.tif", "times.csv", "slices") or "/" in a else a
                for a in args]
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"stackmff: error: {tmp_path / target}") and err.count("\n") == 1, err
        assert "overwrite an input" in err or "input slice folder" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_failed_events_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch) -> None:
    """The frames TIFF is written beside and renamed over (core.io.atomic_write): a disk full mid-write
    leaves the earlier file as it was and no partial file."""
    import errno

    import tifffile

    np.save(tmp_path / "rec.npy", _events())
    out = tmp_path / "frames.tif"
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "4", "-o", str(out)]) == 0
    old = out.read_bytes()

    def full(path, *a, **k):
        Path(path).write_bytes(b"II*\0 half a TIFF")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(tifffile, "imwrite", full)
    try:
        code = main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "3", "-o", str(out), "--overwrite"])
    except OSError:
        code = None
    assert code != 0 and out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.tif", "rec.npy"]


# ------------------------------------------------------------------------ issue 23.6: nothing silently changed
def test_coordinates_beyond_16_bits_are_refused_not_wrapped(tmp_path: Path, capsys) -> None:
    ev = _events()
    y = ev["y"].astype(np.int32)
    y[7] = 70000
    rec = _h5(tmp_path / "y70000.h5", t=ev["t"], x=ev["x"], y=y, p=ev["p"])
    with pytest.raises(EventError, match=r"y70000.h5: event 7 has y 70000, not a pixel row 0-32767 \(1 of 200"):
        read_events(rec)
    assert main(["events", "bin", str(rec), "--slices", "4", "-o", str(tmp_path / "f.tif")]) == 2
    assert "y 70000" in _one_line(capsys.readouterr().err, rec) and not (tmp_path / "f.tif").exists()
    x = np.arange(200, dtype=np.uint16) + 32700  # unsigned 16-bit, as faery decodes: still too large for int16
    with pytest.raises(EventError, match="event 68 has x 32768"):
        read_events(_h5(tmp_path / "x.h5", t=ev["t"], x=x, y=ev["y"], p=ev["p"]))


def test_nan_timestamps_are_refused(tmp_path: Path) -> None:
    ev = _events()
    t = ev["t"].astype(np.float64)
    t[5] = np.nan
    with pytest.raises(EventError, match=r"nan_t.h5: event 5 has timestamp nan"):
        read_events(_h5(tmp_path / "nan_t.h5", t=t, x=ev["x"], y=ev["y"], p=ev["p"]))
    (tmp_path / "nan.csv").write_text("t,x,y,p\n1,2,3,1\nnan,2,3,0\n5,1,1,1\n")
    with pytest.raises(EventError, match=r"nan.csv: event 1 has timestamp nan"):
        read_events(tmp_path / "nan.csv")


def test_nan_slice_times_are_refused_by_every_door(tmp_path: Path, capsys) -> None:
    import tifffile

    ev = _events(w=40, h=30)
    np.save(tmp_path / "rec.npy", ev)
    (tmp_path / "times.csv").write_text("t\n0\n2000\nnan\n7000\n10000\n")  # N + 1 edges, the ends finite
    with pytest.raises(EventError, match=r"times.csv: slice time 3 is 'nan'"):
        read_slice_times(tmp_path / "times.csv")
    with pytest.raises(EventError, match="slice time 3 is nan"):
        bin_events(ev, 4, (30, 40), slice_times=[0, 2000, np.nan, 7000, 10000])
    tifffile.imwrite(tmp_path / "stack.tif", np.random.default_rng(0).integers(0, 255, (4, 30, 40), np.uint8),
                     photometric="minisblack", metadata={"axes": "ZYX"})
    code = main(["-q", "fuse", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "out"), "--method", "eventstackmff",
                 "--events", str(tmp_path / "rec.npy"), "--slice-times", str(tmp_path / "times.csv")])
    assert code == 2 and "slice time 3 is 'nan'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_negative_coordinate_is_quoted_not_the_maximum(tmp_path: Path) -> None:
    ev = _events(w=40, h=30)
    ev["x"][3] = -7
    with pytest.raises(EventError, match=r"first: x -7, y \d+\)") as err:
        bin_events(ev, 4, (30, 40))
    assert "x 39" not in str(err.value)
    np.save(tmp_path / "neg.npy", ev)
    with pytest.raises(EventError, match=r"neg.npy: event 3 has x -7, not a pixel column"):
        read_events(tmp_path / "neg.npy")


# ----------------------------------------------------------------------------- issue 23.7: one line each
def _damaged(tmp_path: Path, kind: str) -> Path:
    rng = np.random.default_rng(3)
    ev = _events()
    good = tmp_path / "good.npy"
    np.save(good, ev)
    p = tmp_path / kind
    if kind == "random_evt2.raw":
        p.write_bytes(b"% evt 2.0\n% end\n" + rng.bytes(40_000))
    elif kind == "random_evt3.raw":
        p.write_bytes(b"% evt 3.0\n% end\n" + rng.bytes(40_000))
    elif kind == "truncated_evt2.raw":
        _evt2(p, b"% evt 2.0\n% end\n")
        p.write_bytes(p.read_bytes()[:-2])
    elif kind == "truncated.dat":
        p.write_bytes(b"% Data file containing Event2D events.\n% end\n" + bytes([0, 8]) + rng.bytes(8 * 100 + 3))
    elif kind in ("random.dat", "random.h5", "random.npy", "random.npz"):
        p.write_bytes(rng.bytes(5000))
    elif kind == "truncated.h5":
        full = _h5(tmp_path / "full.h5", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
        p.write_bytes(full.read_bytes()[:3000])
    elif kind == "text_t.h5":
        _h5(p, t=np.array([b"abc"] * 200), x=ev["x"], y=ev["y"], p=ev["p"])
    elif kind == "mismatched.h5":
        _h5(p, t=ev["t"], x=ev["x"][:100], y=ev["y"], p=ev["p"])
    elif kind == "mismatched.npz":
        np.savez(p, t=ev["t"], x=ev["x"][:50], y=ev["y"], p=ev["p"])
    elif kind == "truncated.npz":
        np.savez(tmp_path / "full.npz", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
        p.write_bytes((tmp_path / "full.npz").read_bytes()[:1500])
    elif kind == "object.npy":
        np.save(p, np.array([{"t": 1}], dtype=object), allow_pickle=True)
    elif kind == "truncated.npy":
        p.write_bytes(good.read_bytes()[:1000])
    return p


DAMAGED = {"random_evt2.raw": "no EVT2 event in them", "random_evt3.raw": "no EVT3 event in them",
           "truncated_evt2.raw": "not whole 4-byte words: the file was cut short",
           "truncated.dat": "not whole 8-byte records: the file was cut short",
           "random.dat": "not a Prophesee .dat recording", "random.h5": "not a readable .h5 event recording",
           "truncated.h5": "not a readable .h5 event recording", "text_t.h5": "the t values are text",
           "mismatched.h5": "columns of different lengths (t 200, x 100", "random.npy": "not a .npy array",
           "mismatched.npz": "columns of different lengths (t 200, x 50", "object.npy": "holds Python objects",
           "truncated.npy": "a damaged or truncated .npy file", "random.npz": "not a .npz archive",
           "truncated.npz": "not a .npz archive"}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_recording_is_one_line(tmp_path: Path, capsys, kind: str) -> None:
    if kind.endswith((".raw", ".dat")):
        pytest.importorskip("expelliarmus")
    if kind.endswith(".h5"):
        pytest.importorskip("h5py")
    path = _damaged(tmp_path, kind)
    assert main(["events", "info", str(path)]) == 2
    assert DAMAGED[kind] in _one_line(capsys.readouterr().err, path)


# ------------------------------------------------------------------------ issue 24.5: the sensor must fit
def test_a_recording_of_another_sensor_size_is_refused(tmp_path: Path, capsys) -> None:
    """dvs.es is a 320x240 sensor: for a 336x256 stack (and the 1521x1141 ring) its events covered one
    corner and fuse exited 0. Refused in one line that says how to place a smaller sensor."""
    import tifffile

    if not DVS.exists():
        pytest.skip("../shared/data/events absent")
    pytest.importorskip("faery")
    tifffile.imwrite(tmp_path / "stack.tif", np.random.default_rng(0).integers(0, 255, (6, 256, 336), np.uint8),
                     photometric="minisblack", metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    code = main(["-q", "fuse", str(tmp_path / "stack.tif"), "-o", str(out), "--method", "eventstackmff",
                 "--events", str(DVS)])
    line = _one_line(capsys.readouterr().err, DVS)
    assert code == 2 and "a recording of a 320x240 sensor, but the stack's images are 336x256" in line
    assert f"stackmff events bin {DVS} --slices 6 --size 336x256 --offset X,Y -o frames.tif" in line
    assert not out.exists() or not any(out.iterdir())
    ev = _events(500, w=20, h=15)  # no declared size: events only in the top-left 20x15 of 64x48
    np.save(tmp_path / "corner.npy", ev)
    with pytest.raises(EventError, match="events all lie within 20x15 pixels, but the stack's images are 64x48"):
        load_events(tmp_path / "corner.npy", 4, (48, 64))
    assert load_events(tmp_path / "corner.npy", 4, (24, 30)).shape == (4, 24, 30)  # over half of it: taken as its size


def test_the_offset_places_a_smaller_sensor_in_the_image(tmp_path: Path, capsys) -> None:
    import tifffile

    ev = _events(400, w=40, h=30)
    placed = bin_events(ev, 4, (50, 70), offset=(20, 10))
    np.testing.assert_array_equal(placed[:, 10:40, 20:60], bin_events(ev, 4, (30, 40)))
    assert np.abs(placed).sum() == np.abs(placed[:, 10:40, 20:60]).sum()
    np.save(tmp_path / "rec.npy", ev)
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "4", "--size", "70x50", "--offset", "20,10",
                 "-o", str(tmp_path / "f.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f.tif"), placed)
    capsys.readouterr()
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "4", "--size", "70x50", "--offset", "40,30",
                 "-o", str(tmp_path / "g.tif")]) == 2
    assert "fall outside the 70x50 image" in _one_line(capsys.readouterr().err, tmp_path / "rec.npy")
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "4", "--offset", "20",
                 "-o", str(tmp_path / "g.tif")]) == 2
    assert "--offset '20': give X,Y" in capsys.readouterr().err


# ---------------------------------------------------------------------------- issue 24.7: say both counts
def test_events_bin_says_events_read_binned_and_net(tmp_path: Path, capsys) -> None:
    ev = np.zeros(6, EVENT_DTYPE)
    ev["t"] = [0, 10, 20, 30, 40, 5000]  # the last outside the slice times' window
    ev["x"], ev["y"], ev["p"] = [1, 1, 2, 2, 2, 0], 0, [1, 0, 1, 1, 1, 1]  # at x 1 an ON and an OFF cancel
    np.save(tmp_path / "rec.npy", ev)
    (tmp_path / "times.csv").write_text("0\n30\n60\n")  # 2 slices, 3 edges
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "2", "--slice-times",
                 str(tmp_path / "times.csv"), "-o", str(tmp_path / "f.tif")]) == 0
    out = capsys.readouterr().out
    assert "6 events read, 5 of them in the sweep window binned; net count 3" in out, out


def test_events_commands_say_what_their_input_is(capsys) -> None:
    for command in ("info", "bin"):
        with pytest.raises(SystemExit):
            main(["events", command, "-h"])
        positional = capsys.readouterr().out.split("positional arguments:")[1].split("options:")[0]
        assert "the event recording: .raw (Prophesee EVT2/EVT3)" in " ".join(positional.split()), positional


def test_event_frames_are_not_written_under_another_format_s_name(tmp_path: Path, capsys) -> None:
    """`events bin -o x.npy` wrote a TIFF named .npy; now it says to name it .tif."""
    from napari_stackmff.cli import main

    rng = np.random.default_rng(0)
    n = 500
    np.save(tmp_path / "rec.npy", np.rec.fromarrays([np.sort(rng.integers(0, 10_000, n)), rng.integers(0, 40, n),
                                                      rng.integers(0, 30, n), rng.integers(0, 2, n)],
                                                     names="t,x,y,p"))
    assert main(["events", "bin", str(tmp_path / "rec.npy"), "--slices", "4", "-o", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name the output *.tif" in err[0] and not (tmp_path / "x.npy").exists()
