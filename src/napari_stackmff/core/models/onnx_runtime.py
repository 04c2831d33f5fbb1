"""ONNX Runtime as the networks' CPU runtime (issue 29, item 1): optional, torch stays the default.

Why optional, and not the default: end to end on this project's 2-core AMD EPYC (AVX2) VM, 12 x 384²,
best of 5 (benchmarks/bench_runtime.py, RESULTS.md "issue 29, item 1"), ONNX Runtime runs V2 at 1.02x
torch's speed, V3 at 0.89x and the event model at 0.92x (torch runs them channels_last there); by parts,
earlier, V2 1.01-1.16x on two machines, OpenVINO 0.95x. Nothing like the 3x the issue hoped. It is here for
the CPUs where ONNX Runtime's kernels do better than oneDNN's and as the path to its other execution
providers; ``runtime="onnxruntime"`` (``stackmff fuse --runtime onnxruntime``, the widget's Runtime)
picks it, with ``pip install 'napari-stackmff[onnx]'``.

What runs where. The per-slice part of each network is exported with the frame count, height and width
free: V2's encoder-decoder; the event model's two encoders, cross-modal attention and decoder
(:meth:`EventStackMFF.frame_features`). Across slices, their ConvGRU is exported as one step (height and
width free), stepped here in Python, so any number of slices runs from one export. The event model's focus
prior (a classical measure and a small 4-cue gate) stays in torch.

StackMFF-V3 runs its cross-slice transformer (pixels and slices free; about half of V3's time at the
shipped stride 2, RESULTS.md issue 29 item 2) on ONNX Runtime and its per-slice encoder-decoder on torch:
the decoder's pyramid pools (2, 3 and 6 bins) have no ONNX op for free image sizes, and its image-wide
pools are gathered over the tiles of a big image (the image context), which a frozen graph could not take.

The exports are made in memory when a runner first needs them (seconds; nothing is written to disk) and
kept per model object. The same inputs give the same slice choices as torch (tests/test_onnx_runtime.py).
"""

from __future__ import annotations

import importlib.util
import io
import warnings
import weakref
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import StackMFFError
from .v2 import BiConvGRU, published_kernels
from .v3 import FEATURES, StackMFFV3

#: Runtimes a :class:`~napari_stackmff.core.models.inference.ModelRunner` can use.
RUNTIMES = ("torch", "onnxruntime")
#: ONNX opset of the exports: 17 has LayerNormalization as one op (V3, the event model's attention).
OPSET = 17

_CACHE: "weakref.WeakKeyDictionary[nn.Module, Callable[..., Tensor]]" = weakref.WeakKeyDictionary()


def available() -> bool:
    """Whether ONNX Runtime and onnx (torch's exporter needs it) are installed: the ``onnx`` extra."""
    # Looked up, not imported: the widget asks when it opens (importing both takes ~0.5 s); a broken
    # install still fails in one line, at export (ort_forward).
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def check_runtime(runtime: str, device: torch.device, *, half: bool, compile: bool) -> None:
    """One clear line for a runtime that cannot run as asked."""
    if runtime not in RUNTIMES:
        raise StackMFFError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
    if runtime == "torch":
        return
    if not available():
        raise StackMFFError("runtime='onnxruntime' needs ONNX Runtime and onnx: pip install 'napari-stackmff[onnx]' "
                            "(onnxruntime and onnx), or use the default runtime (torch).")
    if device.type != "cpu":
        raise StackMFFError(f"runtime='onnxruntime' runs on the CPU; got device {device}. On a GPU the torch "
                            "runtime is the fast one: leave runtime at its default.")
    if half or compile:
        raise StackMFFError("runtime='onnxruntime' runs in fp32 and is not torch.compile'd: drop half/compile.")


def _session(module: nn.Module, args: tuple[Tensor, ...], names: list[str], dynamic: dict[str, dict[int, str]],
             threads: int) -> Any:
    """Export ``module`` (in fp32, plain kernels) to an in-memory ONNX graph and open it."""
    import onnxruntime as ort

    buf = io.BytesIO()
    # The exporter restores the module's mode afterwards, recursively: a wrapper left in training mode (the
    # default of a new module) would put the shared model it wraps into training mode (drop-path on).
    module.eval()
    with published_kernels(), warnings.catch_warnings():  # plain ops for the exporter
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=names[:len(args)], output_names=names[len(args):],
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # its warnings (unused initialisers) are not the user's business
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


def _np(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


class _Frames(nn.Module):
    """The event model's per-frame part as a module of its own (the exporter traces ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        return self.model.frame_features(x, e)


class RecurrentOrt:
    """V2 or the event model on ONNX Runtime: per-frame features in one graph, the ConvGRU step in two
    (forward and backward cells), the bidirectional loop as :class:`~napari_stackmff.core.models.v2.BiConvGRU`."""

    def __init__(self, model: nn.Module, threads: int) -> None:
        self.events = bool(getattr(model, "uses_events", False))
        frames: nn.Module = _Frames(model) if self.events else model.feature_extraction
        gru = model.across if self.events else model.layer_interaction.layer_interaction_depth
        self.prior = getattr(model, "prior", None) if self.events else None
        self.hidden = gru.hidden
        s, hw = 64, {2: "h", 3: "w"}
        x = torch.rand(2, 1, s, s)
        frame_dyn = {0: "m", 2: "h", 3: "w"}
        if self.events:
            self.frames = _session(frames, (x, x - 0.5), ["x", "e", "f"],
                                   {"x": frame_dyn, "e": frame_dyn, "f": frame_dyn}, threads)
        else:
            self.frames = _session(frames, (x,), ["x", "f"], {"x": frame_dyn, "f": frame_dyn}, threads)
        with torch.no_grad():
            f = frames(x, x - 0.5) if self.events else frames(x)
        h = torch.zeros(1, self.hidden, s, s)
        cells = (gru.forward_cell_list[0], gru.backward_cell_list[0])
        self.cells = [_session(c, (f[:1], h), ["x", "h", "o"], {"x": hw, "h": hw, "o": hw}, threads) for c in cells]

    def __call__(self, slices: Tensor, events: Tensor | None = None) -> Tensor:
        b, n, h, w = slices.shape
        feed = {"x": _np(slices.reshape(b * n, 1, h, w))}
        if self.events:
            assert events is not None
            feed["e"] = _np(events.reshape(b * n, 1, h, w))
        feats = torch.from_numpy(self.frames.run(None, feed)[0]).view(b, n, -1, h, w)
        fwd, bwd = ((lambda x, state, c=c: torch.from_numpy(c.run(None, {"x": _np(x), "h": _np(state)})[0]))
                    for c in self.cells)
        out = BiConvGRU.run(feats, fwd, bwd, self.hidden)
        if self.prior is not None:
            out = self.prior(out, slices.float(), events.float())
        return out


class _CrossHead(nn.Module):
    """V3's cross-slice head as a module of its own (the exporter traces ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model.cross_head(tokens)


class V3Ort:
    """StackMFF-V3 with its cross-slice transformer on ONNX Runtime, in the chunks torch uses; the
    per-slice encoder-decoder stays in torch (its pyramid pools have no ONNX op for free sizes, and its
    image-wide pools are gathered over tiles: the image context works as on torch)."""

    def __init__(self, model: nn.Module, threads: int) -> None:
        self.model = model
        tokens = torch.rand(50, 3, FEATURES)
        dyn = {0: "p", 1: "n"}
        self.head = _session(_CrossHead(model), (tokens,), ["t", "o"], {"t": dyn, "o": dyn}, threads)

    def _head(self, tokens: Tensor) -> Tensor:
        return torch.from_numpy(self.head.run(None, {"t": _np(tokens)})[0]).to(tokens.dtype)

    def __call__(self, slices: Tensor) -> Tensor:
        return self.model(slices, head=self._head)


def ort_forward(model: nn.Module, threads: int | None = None) -> Callable[..., Tensor]:
    """The model's forward on ONNX Runtime (exported once per model object)."""
    fn = _CACHE.get(model)
    if fn is None:
        threads = threads or torch.get_num_threads()
        try:
            if isinstance(model, StackMFFV3):
                fn = V3Ort(model, threads)
            else:
                fn = RecurrentOrt(model, threads)
        except Exception as exc:  # an exporter or runtime failure is one line, not a deep traceback
            raise StackMFFError(f"could not export {type(model).__name__} to ONNX Runtime ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); use the default runtime (torch).") from exc
        _CACHE[model] = fn
    return fn
