"""Scale: CPU throughput and peak memory against stack size, streaming from disk, and batch throughput.

Run:  python benchmarks/bench_scale.py [--threads N] [--quick] [--huge] [--no-disk]

Every case runs in a fresh subprocess that makes (or opens) its input first, then measures:
  MVox/s      voxels (pixels x slices) per second of fuse() / fuse_to_disk(), reading included;
  peak MB     peak RSS beyond what the process held before fusing (the input, when it is in memory):
              VmHWM reset through /proc/self/clear_refs just before the call;
  anon MB     peak anonymous memory beyond the same point (sampled every 20 ms): the working memory
              alone, without the file pages a memory-mapped input adds to RSS (those are the input,
              and the kernel drops them under pressure).
Tables:
  1. in-memory stacks, N 8-128, 512^2 to 4096^2: wavelet and StackMFF-V2 (official checkpoint when
     ../shared/reference has it, else random init), tile size chosen from free memory;
  2. V2 our inference vs the official-compatible path (compat=True: whole image, resize, min-max);
  3. batch of 16 small stacks: sequential, process pool with 1 and 2 workers, Dask LocalCluster;
  4. from disk: a 2048x2048x200 uint16 TIFF (1.6 GB) read lazily (memory-mapped) and fused, and a
     4096x4096x8 TIFF streamed to OME-Zarr under a 256 MB tile budget (--huge: 20000x20000x10).
The TIFFs are written to a temporary folder page by page and deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OFFICIAL = ROOT.parent / "shared" / "reference" / "stackmff_v2_official" / "model.pth"


# ------------------------------------------------------------------------------ child side
def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Meter:
    """Peak RSS (kernel high-water mark, reset at start) and sampled peak anonymous memory."""

    def __enter__(self) -> "Meter":
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False
        self.rss0, self.anon0 = _status("VmRSS"), _status("RssAnon")
        self.anon_peak = self.anon0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.anon_peak = max(self.anon_peak, _status("RssAnon"))

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.anon_peak = max(self.anon_peak, _status("RssAnon"))
        self.peak_mb = _status("VmHWM") - self.rss0 if self.resettable else float("nan")
        self.anon_mb = self.anon_peak - self.anon0


def _weights(spec: dict) -> str | None:
    if spec.get("weights"):
        return spec["weights"]
    if spec.get("method") != "stackmff-v2":
        return None
    if OFFICIAL.exists():
        return str(OFFICIAL)
    import torch

    from napari_stackmff.core.models.v2 import StackMFFV2

    path = Path(tempfile.gettempdir()) / "bench_scale_v2_random.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(StackMFFV2().state_dict(), path)
    return str(path)


def _input(n: int, side: int, seed: int = 0):
    """A random-texture uint16 stack (the cost does not depend on content)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 65535, (n, side, side), dtype=np.uint16)


def _kernel_floor(side: int = 384, n: int = 12, repeats: int = 5) -> dict:
    """Seconds per voxel of V2's parts as this CPU's kernels run them (best of ``repeats``, channels_last, the
    official shapes): the ConvGRU's two convolutions per step and direction alone (99% of V2's FLOPs; the
    gate conv's own FLOP rate is returned too) and the feature U-net alone (our inference kernels)."""
    import torch
    import torch.nn.functional as F

    from napari_stackmff.core.models.v2 import FeatureExtraction
    from napari_stackmff.core.tiles.heap import heap_reuse

    cl = torch.channels_last

    def best(fn) -> float:
        fn()  # warm-up: oneDNN picks its kernel on the first call
        return min(timeit.repeat(fn, number=1, repeat=repeats))

    xh = torch.rand(1, 24, side, side).contiguous(memory_format=cl)
    wg, wc = (torch.rand(c, 24, 3, 3).contiguous(memory_format=cl) for c in (32, 16))
    unet = FeatureExtraction().eval().to(memory_format=cl)
    slices = torch.rand(n, 1, side, side)
    # Under heap reuse, as fusion runs them: otherwise each output (19 MB) is a fresh mmap, faulted in per call
    # (glibc stops adapting its mmap threshold once a run has set the trim threshold).
    with torch.inference_mode(), heap_reuse():
        t_gates = best(lambda: F.conv2d(xh, wg, None, padding=1))
        t_can = best(lambda: F.conv2d(xh, wc, None, padding=1))
        t_unet = best(lambda: unet(slices))
    px = side * side
    return {"gru_conv_spv": 2 * (t_gates + t_can) / px, "unet_spv": t_unet / (n * px),
            "gate_conv_gflops": 2 * 24 * 32 * 9 * px / t_gates / 1e9}


def child(spec: dict) -> dict:
    import numpy as np
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from napari_stackmff.core.fusion.dispatch import fuse
    from napari_stackmff.core.io.read import load_stack

    kind = spec["kind"]
    weights = _weights(spec)
    extra = {"weights": weights} if weights else {}
    warm = np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8)  # not blank: that is refused
    runtime = {"runtime": spec["runtime"]} if spec.get("runtime") else {}
    fuse(warm, spec.get("method", "wavelet"), "cpu", **extra, **runtime)  # warm-up, imports (an ONNX export)
    out: dict = {}
    if kind in ("memory", "compat"):
        data = _input(spec["n"], spec["side"])
        kw = {"compat": True} if kind == "compat" else {}
        with Meter() as m:
            r = fuse(data, spec["method"], "cpu", **extra, **kw)
        out.update(voxels=int(data.size), tiles=r.timings.get("tiles", 1))
    elif kind == "lazy":
        stack = load_stack(spec["path"], lazy=True)
        if spec.get("budget"):
            extra["memory_budget"] = spec["budget"]
        if spec.get("decision"):  # the classical decision (default: auto)
            extra["decision"] = spec["decision"]
        with Meter() as m:
            r = fuse(stack, spec["method"], "cpu", **extra)
        out.update(voxels=int(stack.n_slices * np.prod(stack.yx_shape)), tiles=r.timings.get("tiles", 1),
                   reader=stack.metadata.get("lazy"))
    elif kind == "stream":
        from napari_stackmff.core.batch.writers import fuse_to_disk

        with Meter() as m:
            r = fuse_to_disk(spec["path"], spec["out"], spec["method"], "cpu", lazy=True,
                             memory_budget=spec.get("budget"), overwrite=True, **extra)
        n = int(r.n_slices)
        out.update(voxels=int(n * np.prod(r.shape[-2:])), tiles=None, tile=r.tile)
    elif kind == "v2cpu":
        from napari_stackmff.core.models.v2 import published_kernels

        stacks = [np.load(f) if f.endswith(".npy") else load_stack(f).data for f in spec["files"]]
        kw = {"compat": True} if spec["compat"] else {}
        kw.update(runtime)
        if spec.get("nchw"):
            kw["channels_last"] = False  # the official code's layout
        ctx = published_kernels() if spec["published_kernels"] else contextlib.nullcontext()
        times, maps = [], []
        with ctx, Meter() as m:
            for s in stacks:
                best = float("inf")
                for _ in range(spec["repeats"]):
                    t0 = time.perf_counter()
                    r = fuse(s, spec["method"], "cpu", **extra, **kw)
                    best = min(best, time.perf_counter() - t0)
                times.append(best)
                maps.append((r.focus_map, r.index))
        np.save(spec["out"], np.concatenate([f.ravel() for f, _ in maps]))
        np.save(spec["out"].replace(".npy", "_index.npy"), np.concatenate([i.ravel() for _, i in maps]))
        out.update(times=times, voxels=[int(np.prod(s.shape[:3])) for s in stacks], anon_mb=m.anon_mb,
                   peak_mb=m.peak_mb)
    elif kind == "floor":
        from torch.utils.flop_counter import FlopCounterMode

        from napari_stackmff.core.models.v2 import StackMFFV2

        x = torch.rand(1, 12, 256, 256)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            StackMFFV2().eval()(x)
        a = torch.rand(2048, 2048)
        torch.mm(a, a)
        with Meter() as m:
            for _ in range(10):
                torch.mm(a, a)
        out.update(fpv=counter.get_total_flops() / x.numel(), gflops=10 * 2 * 2048**3 / m.seconds / 1e9)
        out.update(_kernel_floor())
        return out | {"seconds": m.seconds}
    elif kind == "batch":
        from napari_stackmff.core.io.discover import discover_stacks
        from napari_stackmff.core.batch.jobs import run_batch
        from napari_stackmff.core.batch.distributed import run_batch_parallel

        jobs = discover_stacks(spec["root"])
        settings = {"method": spec["method"], "device": "cpu", **extra}
        outdir = Path(spec["out"])
        shutil.rmtree(outdir, ignore_errors=True)
        with Meter() as m:
            if spec["runner"] == "sequential":
                s = run_batch(jobs, outdir, **settings)
            elif spec["runner"] == "dask":
                s = run_batch_parallel(jobs, outdir, workers=spec["workers"], address="local", quiet=True,
                                       threads=spec.get("threads"), **settings)
            else:
                s = run_batch_parallel(jobs, outdir, workers=spec["workers"], quiet=True,
                                       threads=spec.get("threads"), **settings)
        out.update(stacks=len(s.done), failed=len(s.failed))
    else:
        raise ValueError(kind)
    out.update(seconds=m.seconds, peak_mb=m.peak_mb, anon_mb=m.anon_mb, threads=torch.get_num_threads())
    return out


# ----------------------------------------------------------------------------- parent side
def run_case(spec: dict, timeout: float = 1800, env: dict | None = None) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    if res.returncode:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt(r: dict, key: str, fmt: str) -> str:
    v = r.get(key)
    return format(v, fmt) if isinstance(v, (int, float)) and v == v else "—"


def write_tiff(path: Path, n: int, side: int) -> None:
    """A random-texture uint16 stack written page by page (never all in memory)."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(1)

    def pages():
        for z in range(n):
            yield rng.integers(0, 65535, (side, side), dtype=np.uint16)

    tifffile.imwrite(path, pages(), shape=(n, side, side), dtype=np.uint16, photometric="minisblack",
                     metadata={"axes": "ZYX"}, bigtiff=n * side * side * 2 > 2**31)


def write_batch(root: Path, count: int = 16, n: int = 8, side: int = 256) -> None:
    import numpy as np
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for i in range(count):
        tifffile.imwrite(root / f"s{i:02d}.tif", rng.integers(0, 255, (n, side, side), dtype=np.uint8),
                         photometric="minisblack")


def table_memory(threads: int | None, quick: bool) -> list[dict]:
    grid = [("wavelet", n, s) for s, ns in ((512, (8, 32, 128)), (2048, (8, 32)), (4096, (8,))) for n in ns]
    grid += [("stackmff-v2", n, s) for s, ns in ((512, (8, 32, 128)), (1024, (8,)), (2048, (8,))) for n in ns]
    if quick:
        grid = [g for g in grid if g[1] * g[2] ** 2 <= 32 * 512**2]
    rows = []
    print("\n## 1. In-memory stacks (tile from free memory)")
    print(f"{'method':12s} {'N':>4s} {'size':>10s} {'MVox':>8s} {'tiles':>6s} {'seconds':>8s} {'MVox/s':>8s} "
          f"{'peak MB':>8s} {'anon MB':>8s}")
    for method, n, side in grid:
        r = run_case({"kind": "memory", "method": method, "n": n, "side": side, "threads": threads})
        r.update(method=method, n=n, side=side)
        rows.append(r)
        if "error" in r:
            print(f"{method:12s} {n:4d} {side:>5d}x{side:<4d} failed: {r['error']}")
            continue
        print(f"{method:12s} {n:4d} {side:>5d}x{side:<4d} {r['voxels'] / 1e6:8.1f} {_fmt(r, 'tiles', '.0f'):>6s} "
              f"{r['seconds']:8.2f} {r['voxels'] / r['seconds'] / 1e6:8.2f} {_fmt(r, 'peak_mb', '.0f'):>8s} "
              f"{_fmt(r, 'anon_mb', '.0f'):>8s}")
    return rows


def table_compat(threads: int | None, rows: list[dict]) -> None:
    print("\n## 2. StackMFF-V2: our inference vs the official-compatible path (same input, same output size)")
    print(f"{'size':>14s} {'ours MVox/s':>12s} {'ours peak MB':>13s} {'compat MVox/s':>14s} {'compat peak MB':>15s}")
    for n, side in ((8, 512), (8, 1024)):
        ours = next((r for r in rows if r["method"] == "stackmff-v2" and r["n"] == n and r["side"] == side
                     and "error" not in r), None)
        if ours is None:
            ours = run_case({"kind": "memory", "method": "stackmff-v2", "n": n, "side": side, "threads": threads})
        comp = run_case({"kind": "compat", "method": "stackmff-v2", "n": n, "side": side, "threads": threads})
        o = (f"{ours['voxels'] / ours['seconds'] / 1e6:12.2f} {ours['peak_mb']:13.0f}" if "error" not in ours
             else "failed")
        c = f"{comp['voxels'] / comp['seconds'] / 1e6:14.2f} {comp['peak_mb']:15.0f}" if "error" not in comp \
            else f"failed: {comp['error']}"
        print(f"{n:>4d}x{side}x{side:<5d} {o} {c}")


def v2_cpu_stacks(tmp: Path, count: int = 12, side: int = 384) -> list[str]:
    """The issue's comparison set: ``count`` synthetic uint8 stacks of side² x 6-24 slices (seeded)."""
    import numpy as np

    from napari_stackmff.core.training.synth import random_stack

    files = []
    for i in range(count):
        n = int(np.random.default_rng(500 + i).integers(6, 25))
        s = random_stack(np.random.default_rng(600 + i), size=side, n=n, dtype="uint8", noise=True)
        files.append(str(tmp / f"v2cpu_{i:02d}.npy"))
        np.save(files[-1], s.slices)
    return files


def table_v2_cpu(threads: int | None, tmp: Path, rounds: int = 2) -> None:
    """V2 against the published inference on the CPU, at equal output.

    Four configurations, each in its own process (the heap setting is per process), run in turn
    ``rounds`` times; each stack's time is its best over all runs:
      published   compat=True (whole image, resize, batch min-max), the published layer sequence
                  (F.max_pool2d, the GRU step as written), NCHW, glibc's default heap: the official
                  code's work, done as it does it;
      compat, pool  the same with our pooling kernel only (models/v2.py:_pool2): same output;
      compat fast the same inference with our kernels (pooling, in-place GRU step), heap reuse
                  (core/heap.py) and the CPU's default layout (channels_last on AVX-512): same
                  decisions up to float rounding (the column says how many);
      ours        our default inference (tiles, robust normalisation, sub-slice readout, fill): the product.
    Then three floors: every FLOP at the measured 2048² matmul rate; the ConvGRU's convolutions alone, timed as
    oneDNN runs them (99% of V2's FLOPs); and those plus the feature U-net alone, as our kernels run it.
    """
    import numpy as np

    files = v2_cpu_stacks(tmp)
    floor = run_case({"kind": "floor", "threads": threads})
    glibc = {"STACKMFF_HEAP_REUSE": "0"}
    configs = {"published": dict(compat=True, published_kernels=True, nchw=True, env=glibc),
               "compat, pool": dict(compat=True, published_kernels=False, nchw=True, env=glibc),
               "compat fast": dict(compat=True, published_kernels=False, env={}),
               "ours": dict(compat=False, published_kernels=False, env={})}
    from napari_stackmff.core.models import onnx_runtime

    if onnx_runtime.available():  # the optional runtime (issue 29 item 1), exported in the warm-up
        configs["ours, onnxrt"] = dict(compat=False, published_kernels=False, env={}, runtime="onnxruntime")
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, c in configs.items():
            spec = {"kind": "v2cpu", "method": "stackmff-v2", "files": files, "compat": c["compat"],
                    "published_kernels": c["published_kernels"], "nchw": c.get("nchw", False),
                    "repeats": 1, "threads": threads, "runtime": c.get("runtime"),
                    "out": str(tmp / f"maps_{label.replace(' ', '_').replace(',', '')}.npy")}
            r = run_case(spec, env=c["env"])
            if "error" in r:
                print(f"{label}: failed: {r['error']}")
                return
            best[label] = [min(a, b) for a, b in zip(best.get(label, r["times"]), r["times"])]
            vox = r["voxels"]
    ours_ort = None
    if "ours, onnxrt" in best:
        ours_ort = np.mean(np.load(tmp / "maps_ours_index.npy") == np.load(tmp / "maps_ours_onnxrt_index.npy"))
    ref = np.load(tmp / "maps_published.npy")
    fast = np.load(tmp / "maps_compat_fast.npy")  # labels: spaces to _, commas dropped
    same_index = np.mean(np.load(tmp / "maps_published_index.npy") == np.load(tmp / "maps_compat_fast_index.npy"))
    n_vox = sum(vox)
    print(f"\n## 2b. StackMFF-V2 on the CPU vs the published inference: {len(files)} stacks of 384² x 6-24 "
          f"({n_vox / 1e6:.1f} MVox), best of {rounds} interleaved rounds, threads {threads or 'default'}")
    print(f"{'config':14s} {'s/stack':>8s} {'MVox/s':>8s} {'x published':>12s} {'same index':>15s}")
    t_ref = sum(best["published"])
    for label, times in best.items():
        t = sum(times)
        same = {"published": "—", "compat, pool": "(as below)",
                "compat fast": f"{100 * same_index:.3f}%",
                "ours": "(other inference)",
                "ours, onnxrt": f"{100 * (ours_ort or 0):.3f}% as ours"}[label]
        print(f"{label:14s} {t / len(times):8.3f} {n_vox / t / 1e6:8.2f} {t_ref / t:12.2f} {same:>15s}")
    if "error" not in floor:
        t = n_vox * floor["fpv"] / (floor["gflops"] * 1e9)
        print(f"{'FLOP floor':14s} {t / len(files):8.3f} {n_vox / t / 1e6:8.2f} {t_ref / t:12.2f} {'':>15s}   "
              f"{floor['fpv'] / 1e3:.1f} kFLOP/voxel at the measured fp32 2048² matmul rate, "
              f"{floor['gflops']:.0f} GFLOP/s")
        t_gru = n_vox * floor["gru_conv_spv"]
        print(f"{'GRU convs':14s} {t_gru / len(files):8.3f} {n_vox / t_gru / 1e6:8.2f} {t_ref / t_gru:12.2f} "
              f"{'':>15s}   the ConvGRU's convolutions alone, as oneDNN runs them (channels_last; the gate conv "
              f"at {floor['gate_conv_gflops']:.0f} GFLOP/s)")
        t_parts = t_gru + n_vox * floor["unet_spv"]
        print(f"{'+ U-net':14s} {t_parts / len(files):8.3f} {n_vox / t_parts / 1e6:8.2f} {t_ref / t_parts:12.2f} "
              f"{'':>15s}   and the feature U-net alone: the least the kernels of this CPU do per stack")
    print(f"compat fast vs published: max |focus difference| {np.abs(fast - ref).max():.2e} slice, "
          f"{100 * np.mean(np.abs(fast - ref) < 1e-4):.3f}% of pixels within 1e-4")


REAL_V3 = ROOT.parent / "shared" / "data" / "real_stacks" / "pseudoscorpion_rpi_microscope"


def table_v3(threads: int | None, tmp: Path, baseline: str | None, real: bool, rounds: int = 1) -> None:
    """StackMFF-V3 against V2 (both our default inference) on the same stacks: the 12 synthetic stacks of
    table 2b and, with ``real``, the pseudoscorpion at full size (14 x 1944 x 2592 RGB). Each model runs in
    its own process per set, in turn; time is the sum over the set (best of ``rounds``), memory the
    peak anonymous memory of the process while fusing. ``baseline``: other V3 weights (e.g. the stride-1
    weights shipped before) as a third row."""
    sets = [("12 synthetic 384² x 6-24", v2_cpu_stacks(tmp))]
    if real and REAL_V3.exists():
        sets.append(("pseudoscorpion 14 x 1944 x 2592", [str(REAL_V3)]))
    rows = [("V2 (ours)", "stackmff-v2", None), ("V3 (shipped)", "stackmff-v3", None)]
    if baseline:
        rows.append((f"V3 ({Path(baseline).name})", "stackmff-v3", baseline))
    print(f"\n## 2c. StackMFF-V3 against V2, our default inference, threads {threads or 'default'}, "
          f"best of {rounds}")
    print(f"{'set':34s} {'model':28s} {'seconds':>8s} {'x V2':>6s} {'anon MB':>8s} {'x V2':>6s} {'same index':>10s}")
    for label, files in sets:
        best: dict[str, dict] = {}
        for _ in range(rounds):
            for i, (name, method, weights) in enumerate(rows):
                spec = {"kind": "v2cpu", "method": method, "files": files, "compat": False,
                        "published_kernels": False, "repeats": 1, "threads": threads, "weights": weights,
                        "out": str(tmp / f"v3maps_{i}.npy")}
                r = run_case(spec, timeout=7200)
                if "error" in r:
                    print(f"{label:34s} {name:28s} failed: {r['error']}")
                    return
                t = sum(r["times"])
                if name not in best or t < best[name]["t"]:
                    best[name] = {"t": t, "anon": r["anon_mb"]}
        import numpy as np

        idx = {i: np.load(tmp / f"v3maps_{i}_index.npy") for i in range(len(rows))}
        v2 = best["V2 (ours)"]
        for i, (name, _, _) in enumerate(rows):
            b = best[name]
            same = "—" if i < 2 else f"{100 * np.mean(idx[i] == idx[1]):.2f}%"
            print(f"{label:34s} {name:28s} {b['t']:8.1f} {b['t'] / v2['t']:6.2f} {b['anon']:8.0f} "
                  f"{b['anon'] / max(v2['anon'], 1):6.2f} {same:>10s}")


def table_batch(threads: int | None, tmp: Path, method: str) -> None:
    root = tmp / "batch_in"
    write_batch(root)
    print(f"\n## 3. Batch: 16 stacks of 8x256x256 uint8, {method} (process start-up included)")
    print(f"{'runner':28s} {'seconds':>8s} {'stacks/s':>9s}")
    for runner, workers in (("sequential", 1), ("pool", 1), ("pool", 2), ("dask", 2)):
        r = run_case({"kind": "batch", "runner": runner, "workers": workers, "root": str(root),
                      "out": str(tmp / f"batch_out_{runner}_{workers}"), "method": method, "threads": threads})
        label = runner if runner == "sequential" else f"{runner} ({workers} worker{'s' if workers > 1 else ''})"
        if "error" in r:
            print(f"{label:28s} failed: {r['error']}")
            continue
        print(f"{label:28s} {r['seconds']:8.2f} {r['stacks'] / r['seconds']:9.2f}")


def table_disk(threads: int | None, tmp: Path, huge: bool) -> None:
    print("\n## 4. From disk (input never loaded whole; wavelet)")
    print(f"{'case':44s} {'GB in':>6s} {'seconds':>8s} {'MVox/s':>8s} {'peak MB':>8s} {'anon MB':>8s}")
    cases = [("lazy TIFF 2048x2048x200 -> fuse()", 200, 2048, {"kind": "lazy"}),
             ("TIFF 4096x4096x8 -> OME-Zarr, 256 MB budget", 8, 4096, {"kind": "stream", "budget": 256 << 20})]
    if huge:
        cases.append(("TIFF 20000x20000x10 -> OME-Zarr (auto budget)", 10, 20000, {"kind": "stream"}))
    for label, n, side, spec in cases:
        path = tmp / f"stack_{n}x{side}.tif"
        write_tiff(path, n, side)
        r = run_case({**spec, "path": str(path), "out": str(tmp / "out.ome.zarr"), "method": "wavelet",
                      "threads": threads}, timeout=7200)
        path.unlink()
        shutil.rmtree(tmp / "out.ome.zarr", ignore_errors=True)
        gb = n * side * side * 2 / 1e9
        if "error" in r:
            print(f"{label:44s} {gb:6.2f} failed: {r['error']}")
            continue
        print(f"{label:44s} {gb:6.2f} {r['seconds']:8.1f} {r['voxels'] / r['seconds'] / 1e6:8.2f} "
              f"{r['peak_mb']:8.0f} {r['anon_mb']:8.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per case (default: torch's)")
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--huge", action="store_true", help="also stream a 20000x20000x10 stack (8 GB; long)")
    p.add_argument("--no-disk", action="store_true", help="skip table 4")
    p.add_argument("--v2-cpu", action="store_true", help="only table 2b (V2 vs the published inference)")
    p.add_argument("--v3", action="store_true", help="only table 2c (V3 vs V2)")
    p.add_argument("--v3-baseline", default=None, help="table 2c: other V3 weights as a third row")
    p.add_argument("--v3-real", action="store_true", help="table 2c: also the pseudoscorpion at full size")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import torch

    t0 = time.perf_counter()
    print(f"# bench_scale: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads or 'default'}, "
          f"V2 weights: {'official' if OFFICIAL.exists() else 'random init'}")
    if args.v3:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            table_v3(args.threads, Path(tmp), args.v3_baseline, args.v3_real)
        print(f"\n(total {time.perf_counter() - t0:.0f} s)")
        return
    if args.v2_cpu:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            table_v2_cpu(args.threads, Path(tmp))
        print(f"\n(total {time.perf_counter() - t0:.0f} s)")
        return
    rows = table_memory(args.threads, args.quick)
    table_compat(args.threads, rows)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        table_v2_cpu(args.threads, Path(tmp))
        table_batch(args.threads, Path(tmp), "stackmff-v2")
        if not args.no_disk and not args.quick:
            table_disk(args.threads, Path(tmp), args.huge)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
