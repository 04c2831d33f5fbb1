"""Where StackMFF-V3's time goes, and what running its cross-slice part at a coarser grid changes (issue 29).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_v3_stride.py --weights W.pt [--strides 1 2 4] [STACK ...]

The same weights (any stride; a stride-1 file for the issue's question) are run at each cross-slice stride
without retraining, on a central crop (at most 512 x 640) of each real stack (default: the pseudoscorpion and
the keyboard sweep, from ../shared/data). Prints seconds for the encoder + decoder and for the rest (head
and transformer on the cross-slice grid, logits upsampled), and the share of pixels whose argmax equals
stride 1's (exactly and within one slice).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_stackmff.core import load_stack  # noqa: E402
from napari_stackmff.core.models.checkpoint import read_state_dict  # noqa: E402
from napari_stackmff.core.models.registry import _v3_variant  # noqa: E402
from napari_stackmff.core.models.v3 import NARROW_WIDTHS, WIDTHS, StackMFFV3  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT = [DATA / "real_stacks" / "pseudoscorpion_rpi_microscope", DATA / "keyboard_sweep"]


def crop(folder: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = np.asarray(load_stack(folder).data).astype(np.float32)
    if a.ndim == 4:
        a = a.mean(-1)
    _, h, w = a.shape
    ch, cw = min(h, 512) // 32 * 32, min(w, 640) // 32 * 32
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    a = a[:, y0:y0 + ch, x0:x0 + cw]
    return torch.from_numpy((a - a.min()) / (a.max() - a.min() + 1e-6))[None]


def timed(model: StackMFFV3, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Logits, seconds of encoder + decoder, seconds of the rest (the model's own banded inference)."""
    t0 = time.perf_counter()
    q = torch.cat([model.decoder.quarter(f) for f in model.encode(x)])
    t1 = time.perf_counter()
    logits = model(x)  # the whole forward again; its rest = total minus the encoder part just measured
    t2 = time.perf_counter()
    del q
    return logits, t1 - t0, (t2 - t1) - (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stacks", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--strides", nargs="*", type=int, default=[1, 2, 4])
    args = ap.parse_args()
    state = read_state_dict(args.weights)
    widths = NARROW_WIDTHS if (_v3_variant(state) or "").startswith("narrow") else WIDTHS
    print(f"weights {args.weights.name}, threads {torch.get_num_threads()}\n")
    print("| stack | stride | encoder+decoder s | rest s | total s | same argmax as stride 1 | within 1 |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.stacks:
        x = crop(folder)
        ref = None
        for stride in args.strides:
            model = StackMFFV3(widths, stride)
            model.adopt(state)
            model.eval()
            with torch.inference_mode():
                logits, enc, rest = timed(model, x)
            idx = logits.argmax(1)[0].numpy()
            ref = idx if ref is None else ref
            print(f"| {folder.name} {x.shape[1]} x {x.shape[2]} x {x.shape[3]} | {stride} | {enc:.2f} | {rest:.2f} | "
                  f"{enc + rest:.2f} | {np.mean(idx == ref):.4f} | {np.mean(np.abs(idx - ref) <= 1):.4f} |", flush=True)


if __name__ == "__main__":
    main()
