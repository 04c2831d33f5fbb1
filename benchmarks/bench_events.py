"""Event readers and binning: events per second for each format (issue 14).

Run:  python benchmarks/bench_events.py [--repeat 5]

For every recording in ../shared/data/events (Prophesee EVT2/EVT3 .raw through expelliarmus, AEDAT4 and
.es through faery) and the same events written by us as .npy, .npz, .h5 and .csv: events, seconds to read
(best of --repeat), million events per second, and binning into 16 slice frames. The EVT3 row also
checks the decoding against the reference .npy shipped with it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_stackmff.core.events.frames import bin_events  # noqa: E402
from napari_stackmff.core.events.read import read_events, sensor_size_of  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "events"
FILES = ["expelliarmus/tests/sample-files/evt3_sample.raw", "expelliarmus/tests/sample-files/evt2_sample.raw",
         "faery/tests/data/evt2.raw", "faery/tests/data/dvs.es", "tonic/test/test_data/sample.aedat4"]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print("| file | format | events | sensor | read s | Mev/s | bin 16 s | note |\n|---|---|---|---|---|---|---|---|")
    biggest = None
    for name in FILES:
        path = DATA / name
        if not path.exists():
            continue
        ev = read_events(path)
        w, h = sensor_size_of(path, ev)
        dt = best(lambda: read_events(path), args.repeat)
        db = best(lambda: bin_events(ev, 16, (h, w)), args.repeat)
        note = ""
        if path.name == "evt3_sample.raw":
            ref = np.load(path.with_name("evt3_sample.npy"))
            note = "equals reference" if np.array_equal(ev, ref) else "DIFFERS from reference"
        print(f"| {path.name} | {path.suffix} | {len(ev):,} | {w}x{h} | {dt:.3f} | {len(ev) / dt / 1e6:.1f} | {db:.3f} | "
              f"{note} |", flush=True)
        if biggest is None or len(ev) > len(biggest[1]):
            biggest = (path.name, ev, (w, h))
    if biggest is None:
        print("no recordings found in", DATA)
        return
    name, ev, (w, h) = biggest
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        np.save(t / "e.npy", ev)
        np.savez(t / "e.npz", t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
        np.savetxt(t / "e.csv", np.stack([ev[k] for k in "txyp"], 1), delimiter=",", fmt="%d", header="t,x,y,p",
                   comments="")
        written = ["e.npy", "e.npz", "e.csv"]
        try:
            import h5py

            with h5py.File(t / "e.h5", "w") as f:
                for k in "txyp":
                    f.create_dataset(f"events/{k}", data=ev[k])
            written.append("e.h5")
        except ImportError:
            pass
        for fname in written:
            dt = best(lambda: read_events(t / fname), max(1, args.repeat // 2))
            print(f"| {name} as {fname} | {Path(fname).suffix} | {len(ev):,} | {w}x{h} | {dt:.3f} | "
                  f"{len(ev) / dt / 1e6:.1f} | — | written by us |", flush=True)


if __name__ == "__main__":
    main()
