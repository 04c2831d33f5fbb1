"""Does the training loop keep the device busy? Rendering in the loop vs in worker processes.

Run:  python benchmarks/bench_train_loader.py [--device cuda] [--steps 60] [--workers 0 2 8] [--realism all]

Each row is one short supervised run from scratch on synthetic stacks (the slow part of the data is
rendering them) with ``render_workers`` = 0 (in the loop, as before), or that many processes. Reported:
batches per second and ``data wait``, the share of the training time the model sat idle waiting for
the next batch (0 = the device never waits); on CUDA also the GPU's own busy share sampled by
``torch.cuda.utilization`` (needs pynvml) while the loop ran. Rendering every batch
(``--refresh-every 1``) is the heavy case a GPU meets: it trains faster than one CPU core renders.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from napari_stackmff.core.training.loop import TrainConfig, train  # noqa: E402


def gpu_busy_sampler(device: str) -> tuple[threading.Event, list[float]]:
    """Sample the GPU's utilisation every 0.2 s until the event is set (nothing on a CPU)."""
    stop, samples = threading.Event(), []
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return stop, samples

    def loop() -> None:
        while not stop.is_set():
            try:
                samples.append(float(torch.cuda.utilization()))
            except Exception:  # pynvml missing: no samples, the data-wait share still tells
                return
            time.sleep(0.2)

    threading.Thread(target=loop, daemon=True).start()
    return stop, samples


def run(workers: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(epochs=1, steps_per_epoch=args.steps, batch_size=args.batch_size, crop=args.crop,
                          n_range=(4, 16), val_stacks=1, pool_size=args.pool, pool_refresh_every=args.refresh_every,
                          device=args.device, checkpoint=str(Path(tmp) / "b.pt"), render_workers=workers,
                          realism=args.realism, seed=0)
        stop, samples = gpu_busy_sampler(args.device)
        try:
            res = train(cfg)
        finally:
            stop.set()
    rec = res.history[-1]
    busy = sum(samples) / len(samples) if samples else float("nan")
    return {"workers": workers, "steps/s": rec["steps_per_s"], "data wait": rec["data_wait"], "gpu busy %": busy}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--refresh-every", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--realism", nargs="*", default=[])
    args = p.parse_args()
    rows = [run(w, args) for w in args.workers]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch_size} x {args.crop}², "
          f"a new stack rendered every {args.refresh_every} batch(es), {args.steps} steps\n")
    print("| render workers | batches/s | data wait | GPU busy % |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['steps/s']:.2f} | {r['data wait']:.0%} | "
              + ("—" if r["gpu busy %"] != r["gpu busy %"] else f"{r['gpu busy %']:.0f}") + " |")


if __name__ == "__main__":
    main()
