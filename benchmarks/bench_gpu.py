"""StackMFF-V2 speed against the hardware: FLOPs per voxel, and achieved rate vs the two floors.

Run:  python benchmarks/bench_gpu.py [--side 1024] [--slices 32] [--weights PATH] [--compile]

1. FLOPs per voxel of V2 (torch.utils.flop_counter.FlopCounterMode; multiply-add = 2 FLOPs).
2. On a GPU: forward-pass throughput in fp32, fp16 autocast, fp16 + channels_last (+ torch.compile
   with --compile) against two floors for the same work:
     memory floor  = bytes that must move (fp32/fp16 input + fp32 logits) / memory bandwidth
                     (the bandwidth is measured here with a device-to-device copy),
     compute floor = FLOPs / peak rate (fp32 CUDA cores, or fp16 tensor cores for autocast),
   and end-to-end fuse() from a uint16 stack in host memory with and without the read-ahead that
   uploads the next tile on a side CUDA stream while the current one computes.
3. On the CPU (always): V2 throughput in fp32 and bf16 autocast, and whether bf16 changes the focus
   map (same index share, |focus difference|) with random-init weights and the official checkpoint.
Without a GPU, part 2 prints that it needs one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_stackmff.core.fusion import fuse  # noqa: E402
from napari_stackmff.core.models.v2 import StackMFFV2  # noqa: E402

OFFICIAL = ROOT.parent / "shared" / "reference" / "stackmff_v2_official" / "model.pth"

#: Datasheet peaks: (memory GB/s, fp32 TFLOP/s without tensor cores, dense fp16 tensor TFLOP/s).
PEAKS = {
    "H200": (4800, 67, 989),
    "H100 PCIe": (2000, 51, 756),
    "H100": (3350, 67, 989),
    "A100-SXM4-80GB": (2039, 19.5, 312),
    "A100": (1555, 19.5, 312),
    "L40S": (864, 91.6, 362),
    "L4": (300, 30.3, 121),
    "A10": (600, 31.2, 125),
    "T4": (320, 8.1, 65),
}


def flops_per_voxel(n: int = 8, side: int = 256) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = StackMFFV2().eval()
    x = torch.rand(1, n, side, side)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / x.numel()


def _time(fn, repeats: int = 3, cuda: bool = False) -> float:
    fn()  # warm-up (cudnn autotune, compile)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def _weights(tmp: Path) -> dict[str, str]:
    torch.manual_seed(0)
    path = tmp / "v2_random_init.pt"
    torch.save(StackMFFV2().state_dict(), path)
    out = {"random-init": str(path)}
    if OFFICIAL.exists():
        out["official"] = str(OFFICIAL)
    return out


def _stack(n: int, side: int, seed: int = 0) -> np.ndarray:
    from napari_stackmff.core.synth import random_stack

    s = random_stack(np.random.default_rng(seed), size=side, n=n, dtype="uint16", noise=True,
                     max_radius=(6.0, 12.0))
    return s.slices


# ----------------------------------------------------------------------------------- CPU
def cpu_part(weights: dict[str, str], fpv: float) -> None:
    data = _stack(8, 256)
    print("\n## CPU: V2 fp32 vs bf16 autocast (256x256x8 synthetic stack, whole image, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'weights':12s} {'fp32 MVox/s':>12s} {'bf16 MVox/s':>12s} {'GFLOP/s fp32':>13s} "
          f"{'same index':>11s} {'mean |dF|':>10s} {'max |dF|':>9s}")
    vox = data.size
    for name, w in weights.items():
        rf = [None]
        rb = [None]
        t32 = _time(lambda: rf.__setitem__(0, fuse(data, "stackmff-v2", "cpu", weights=w, half=False)), 2)
        t16 = _time(lambda: rb.__setitem__(0, fuse(data, "stackmff-v2", "cpu", weights=w, half=True)), 2)
        a, b = rf[0], rb[0]
        d = np.abs(a.focus_map - b.focus_map)
        print(f"{name:12s} {vox / t32 / 1e6:12.2f} {vox / t16 / 1e6:12.2f} {vox * fpv / t32 / 1e9:13.1f} "
              f"{100 * (a.index == b.index).mean():10.2f}% {d.mean():10.4f} {d.max():9.3f}")


# ----------------------------------------------------------------------------------- GPU
def _peaks(dev: torch.device) -> tuple[str, float | None, float | None, float | None]:
    name = torch.cuda.get_device_name(dev)
    for key, vals in PEAKS.items():
        if key in name:
            return name, *vals
    return name, None, None, None


def _measured_bandwidth(dev: torch.device) -> float:
    """GB/s of a large device-to-device copy (read + write counted)."""
    x = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    t = _time(lambda: y.copy_(x), 10, cuda=True)
    return 2 * x.numel() / t / 1e9


def gpu_part(weights: dict[str, str], fpv: float, side: int, n: int, compile_: bool) -> None:
    if not torch.cuda.is_available():
        print("\n## GPU: needs a CUDA GPU (none here); the FLOP count above and the CPU numbers still hold.")
        return
    from napari_stackmff.core.models.inference import ModelRunner

    dev = torch.device("cuda")
    name, bw_sheet, fp32_peak, fp16_peak = _peaks(dev)
    bw = _measured_bandwidth(dev)
    print(f"\n## GPU: {name}; copy bandwidth {bw:.0f} GB/s (datasheet {bw_sheet or '?'}), peaks fp32 "
          f"{fp32_peak or '?'} / fp16 tensor {fp16_peak or '?'} TFLOP/s")
    w = next(iter(weights.values()))
    x = torch.rand(n, side, side, device=dev)
    vox = x.numel()
    flops = fpv * vox
    configs = [("fp32", dict(half=False, channels_last=False)), ("fp16", dict(half=True, channels_last=False)),
               ("fp16+channels_last", dict(half=True, channels_last=True))]
    if compile_:
        configs.append(("fp16+cl+compile", dict(half=True, channels_last=True, compile=True)))
    print(f"forward only, {n}x{side}x{side} on the GPU, {fpv / 1e3:.1f} kFLOP/voxel")
    print(f"{'config':20s} {'ms':>8s} {'GVox/s':>8s} {'TFLOP/s':>8s} {'mem floor ms':>13s} {'FLOP floor ms':>14s} "
          f"{'x floor':>8s}")
    for label, kw in configs:
        runner = ModelRunner("stackmff-v2", dev, weights=w, **kw)
        t = _time(lambda: runner.logits(x), 5, cuda=True)
        in_bytes = vox * (2 if kw.get("half") else 4)
        mem_floor = (in_bytes + vox * 4) / (bw * 1e9)
        peak = fp16_peak if kw.get("half") else fp32_peak
        flop_floor = flops / (peak * 1e12) if peak else float("nan")
        floor = max(mem_floor, flop_floor if flop_floor == flop_floor else 0.0)
        print(f"{label:20s} {t * 1e3:8.2f} {vox / t / 1e9:8.3f} {flops / t / 1e12:8.2f} {mem_floor * 1e3:13.3f} "
              f"{flop_floor * 1e3:14.3f} {t / floor:8.1f}")
        from napari_stackmff.core.models import registry

        registry._cache.clear()
    host = (np.random.default_rng(0).random((n, 2 * side, 2 * side)) * 65535).astype(np.uint16)
    print(f"\nend to end fuse(), {n}x{2 * side}x{2 * side} uint16 in host memory, tile {side}, fp16+channels_last")
    for pf in (False, True):
        t = _time(lambda: fuse(host, "stackmff-v2", "cuda", weights=w, tile=side, prefetch=pf), 2, cuda=True)
        print(f"  read-ahead {'on ' if pf else 'off'}: {t:.3f} s, {host.size / t / 1e9:.3f} GVox/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=1024, help="GPU tile side for the forward-only timing")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    fpv = flops_per_voxel()
    print(f"## StackMFF-V2: {fpv:,.0f} FLOPs per voxel (pixel x slice), {fpv / 2:,.0f} multiply-adds; "
          f"{fpv * 2048 * 2048 * 32 / 1e12:.2f} TFLOP for a 2048x2048x32 stack")
    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights(Path(tmp))
        gpu_part(weights, fpv, args.side, args.slices, args.compile)
        cpu_part(weights, fpv)


if __name__ == "__main__":
    main()
