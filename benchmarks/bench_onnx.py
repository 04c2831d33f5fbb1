"""Is ONNX Runtime or OpenVINO worth a CPU inference path for StackMFF-V2? (issue 29 item 1: choose by measurement)

Run:  pip install onnxruntime onnx [openvino] && python benchmarks/bench_onnx.py [--slices 12] [--side 384]

V2 is a per-slice feature extractor (batch = slices) and a bidirectional ConvGRU stepped once per slice in
each direction. Both parts are exported to ONNX with dynamic shapes (batch, height, width; the GRU loop
stays in Python, so any number of slices runs without re-export) and timed against torch (NCHW, and NHWC: the CPU default on AVX-512 and AVX2) on the same
inputs, same thread count, best of 3 after a warm-up. The end-to-end estimate is fe + 2·N cell steps.
OpenVINO (when installed) compiles the same ONNX files for its CPU plugin, fp32 (precision hint), with the
same thread count.
Random init: the time does not depend on the weights.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def best_of(fn, k: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    import onnxruntime as ort

    from napari_stackmff.core.models import v2 as V2

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--side", type=int, default=384)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    m = V2.StackMFFV2().eval()
    fe, cell = m.feature_extraction, m.layer_interaction.layer_interaction_depth.forward_cell_list[0]
    x = torch.rand(a.slices, 1, a.side, a.side)
    with torch.no_grad():
        feats = fe(x)
    h = torch.zeros(1, cell.hidden, a.side, a.side)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        V2._FAST = False  # plain ops for the exporter
        dyn = {0: "b", 2: "h", 3: "w"}
        torch.onnx.export(fe, (x,), f"{tmp}/fe.onnx", input_names=["x"], output_names=["f"],
                          dynamic_axes={"x": dyn, "f": dyn}, opset_version=17, dynamo=False)
        hw = {2: "h", 3: "w"}
        torch.onnx.export(cell, (feats[:1], h), f"{tmp}/cell.onnx", input_names=["x", "h"], output_names=["o"],
                          dynamic_axes={"x": hw, "h": hw, "o": hw}, opset_version=17, dynamo=False)
        V2._FAST = True
        s_fe = ort.InferenceSession(f"{tmp}/fe.onnx", so, providers=["CPUExecutionProvider"])
        s_cell = ort.InferenceSession(f"{tmp}/cell.onnx", so, providers=["CPUExecutionProvider"])
        try:
            import openvino as ov
        except ImportError:
            ov = None
        if ov is not None:
            core = ov.Core()
            cfg = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
            v_fe = core.compile_model(f"{tmp}/fe.onnx", "CPU", cfg)
            v_cell = core.compile_model(f"{tmp}/cell.onnx", "CPU", cfg)
    xn, fn, hn = x.numpy(), feats[:1].numpy(), h.numpy()
    with torch.no_grad():
        t_fe = best_of(lambda: fe(x))
        t_cell = best_of(lambda: cell(feats[:1], h))
        ref_fe, ref_cell = fe(x).numpy(), cell(feats[:1], h).numpy()
        # torch in channels_last, the default on AVX-512 and AVX2 CPUs (inference.CPU_CHANNELS_LAST)
        cl = torch.channels_last
        fe_cl, cell_cl = copy.deepcopy(fe).to(memory_format=cl), copy.deepcopy(cell).to(memory_format=cl)
        x_cl, f_cl, h_cl = x.to(memory_format=cl), feats[:1].to(memory_format=cl), h.to(memory_format=cl)
        t_fe_cl = best_of(lambda: fe_cl(x_cl))
        t_cell_cl = best_of(lambda: cell_cl(f_cl, h_cl))
    o_fe = best_of(lambda: s_fe.run(None, {"x": xn}))
    o_cell = best_of(lambda: s_cell.run(None, {"x": fn, "h": hn}))
    d_fe = float(np.abs(s_fe.run(None, {"x": xn})[0] - ref_fe).max())
    d_cell = float(np.abs(s_cell.run(None, {"x": fn, "h": hn})[0] - ref_cell).max())
    v = {}
    if ov is not None:
        v["fe"] = best_of(lambda: v_fe({"x": xn}))
        v["cell"] = best_of(lambda: v_cell({"x": fn, "h": hn}))
        v["d_fe"] = float(np.abs(v_fe({"x": xn})[0] - ref_fe).max())
        v["d_cell"] = float(np.abs(v_cell({"x": fn, "h": hn})[0] - ref_cell).max())
    n = a.slices
    print(f"V2 parts, {n} slices of {a.side}², {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}" + (f", openvino {ov.__version__}" if ov is not None else "") + "\n")
    ovh = " openvino s | torch / ov | max abs diff (ov) |" if v else ""
    print("| part | torch s | torch NHWC s | onnxruntime s | torch / ort | torch NHWC / ort | max abs diff |" + ovh
          + "\n|---|---|---|---|---|---|---|" + ("---|---|---|" if v else ""))

    def ovc(key: str, t: float, d: str) -> str:
        return f" {v[key]:.3f} | {t / v[key]:.2f}x | {d} |" if v else ""

    print(f"| feature extraction ({n} slices) | {t_fe:.3f} | {t_fe_cl:.3f} | {o_fe:.3f} | {t_fe / o_fe:.2f}x | "
          f"{t_fe_cl / o_fe:.2f}x | {d_fe:.1e} |" + ovc("fe", t_fe, f"{v.get('d_fe', 0):.1e}"))
    print(f"| one ConvGRU step | {t_cell:.3f} | {t_cell_cl:.3f} | {o_cell:.3f} | {t_cell / o_cell:.2f}x | "
          f"{t_cell_cl / o_cell:.2f}x | {d_cell:.1e} |" + ovc("cell", t_cell, f"{v.get('d_cell', 0):.1e}"))
    tt, tc, to = t_fe + 2 * n * t_cell, t_fe_cl + 2 * n * t_cell_cl, o_fe + 2 * n * o_cell
    if v:
        v["all"] = v["fe"] + 2 * n * v["cell"]
    print(f"| V2 estimate (fe + {2 * n} steps) | {tt:.2f} | {tc:.2f} | {to:.2f} | {tt / to:.2f}x | {tc / to:.2f}x | |"
          + ovc("all", tt, ""))


if __name__ == "__main__":
    main()
