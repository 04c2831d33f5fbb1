"""Model registry: name -> network class, shipped weights, readout, and a model cache.

The CLI, the widgets and ``fuse()`` list and load models only through here, so a new network
becomes available everywhere by adding one entry.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import WeightsError
from .checkpoint import load_state_dict, read_state_dict


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the code needs to know about a focus network."""

    name: str
    build: Callable[..., nn.Module]  # build(variant=None): the default size, or one of ``variants``
    weights_file: str  # file name inside weights/
    readout: str  # default readout, "softargmax" (depth regression); a checkpoint may name its own
    uses_events: bool = False
    description: str = ""
    #: Order-free models (trained on shuffled slices) get focus maps that never average slice indices.
    order_free: bool = False
    #: Sizes other than the default, by name (``build(variant)``), and how to tell a weights file's size.
    variants: tuple[str, ...] = ()
    variant_of: Callable[[dict[str, torch.Tensor]], str | None] | None = None


def _build_v2(variant: str | None = None) -> nn.Module:
    from .v2 import StackMFFV2

    return StackMFFV2()


def _build_v3(variant: str | None = None) -> nn.Module:
    from .v3 import FAST_CROSS_STRIDE, NARROW_WIDTHS, WIDTHS, StackMFFV3

    if variant not in (None, "narrow", "fast", "narrow-fast"):
        raise ValueError(f"unknown StackMFF-V3 variant {variant!r}")
    stride = FAST_CROSS_STRIDE if variant and variant.endswith("fast") else 1
    return StackMFFV3(NARROW_WIDTHS if variant and variant.startswith("narrow") else WIDTHS, stride)


def _build_event(variant: str | None = None) -> nn.Module:
    from .event import EventStackMFF

    return EventStackMFF(prior=variant != "no-prior")


def _event_variant(state: dict[str, torch.Tensor]) -> str | None:
    """Weights trained before the focus prior existed load without it."""
    from .event import EventStackMFF

    return None if EventStackMFF.has_prior(state) else "no-prior"


def _v3_variant(state: dict[str, torch.Tensor]) -> str | None:
    """The narrow variant's stem has 8 channels, the published size's 16; a fast variant's weights carry
    their cross-slice stride."""
    from .v3 import NARROW_WIDTHS, StackMFFV3

    stem = state.get("encoder.stem.0.weight")
    narrow = stem is not None and stem.shape[0] == NARROW_WIDTHS[0]
    fast = StackMFFV3.stride_of(state) != 1
    return {(True, True): "narrow-fast", (True, False): "narrow", (False, True): "fast"}.get((narrow, fast))


MODELS: dict[str, ModelSpec] = {
    "stackmff-v2": ModelSpec(
        name="stackmff-v2",
        build=_build_v2,
        weights_file="stackmff_v2.pt",
        readout="softargmax",
        description="StackMFF-V2: focal-plane depth regression, 0.05M parameters.",
    ),
    "stackmff-v3": ModelSpec(
        name="stackmff-v3",
        build=_build_v3,
        weights_file="stackmff_v3.pt",
        readout="argmax",
        description="StackMFF-V3: order-free focus classification over the slices (2.7M parameters; the narrow "
                    "variant 0.7M; the fast variants attend across slices at half resolution).",
        order_free=True,
        variants=("narrow", "fast", "narrow-fast"),
        variant_of=_v3_variant,
    ),
    "eventstackmff": ModelSpec(
        name="eventstackmff",
        build=_build_event,
        weights_file="eventstackmff.pt",
        readout="argmax",
        uses_events=True,
        variants=("no-prior",),
        variant_of=_event_variant,
        description="EventStackMFF (lean): image + event focal stacks; StackMFF-V2 with an event stream and "
                    "a gated wavelet focus prior, 0.16M parameters. Needs events=.",
    ),
}

#: Models method="auto" may pick, best first. Being listed is not enough: "auto" takes a model only when
#: its shipped weights also carry the record of beating the best classical method on every real stack of
#: benchmarks/bench_real.py (:data:`REAL_RECORD`), not just on our synthetic ones, where every
#: model looks better than it is. StackMFF-V2's do not (weights/stackmff_v2.md), so "auto" stays
#: classical and V2 is one choice away (method="stackmff-v2"). V3 comes first but must also be recorded
#: as beating V2 on ordered stacks (``beats_models``), or V2 is tried next.
AUTO_ORDER: tuple[str, ...] = ("stackmff-v3", "stackmff-v2")
#: Key in a shipped checkpoint's ``meta``: ``{"beats_best_classical": bool, "sets": [...], ...}``, written
#: from bench_real's table when the weights are shipped.
REAL_RECORD = "real_benchmark"


def model_names() -> list[str]:
    return list(MODELS)


def weights_dir() -> Path:
    """Folder of shipped weights: inside the installed package, or the repo's weights/."""
    here = Path(__file__).resolve().parents[2]  # .../napari_stackmff
    packaged = here / "weights"
    if packaged.is_dir():
        return packaged
    return here.parents[1] / "weights"  # editable install: <repo>/src/napari_stackmff -> <repo>/weights


def shipped_weights(name: str) -> Path | None:
    spec = get_spec(name)
    path = weights_dir() / spec.weights_file
    return path if path.is_file() else None


def beats_classical_on_real(name: str) -> bool:
    """Whether the shipped weights of ``name`` are recorded as beating the best classical method on
    every real benchmark stack (their ``meta[REAL_RECORD]``)."""
    return bool(real_record(name).get("beats_best_classical"))


def real_record(name: str) -> dict:
    """The benchmark record in the shipped weights of ``name`` ({} when none or no weights)."""
    path = shipped_weights(name)
    return {} if path is None else _real_record(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _real_record(path: str, _mtime_ns: int) -> dict:
    """Read once per file version: "auto" is resolved on every fuse() call of a batch."""
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True).get("meta") or {}
    except Exception:  # unreadable weights are never the default; loading them by name says why
        return {}
    record = meta.get(REAL_RECORD)
    return dict(record) if isinstance(record, dict) else {}


def best_shipped_model() -> str | None:
    """The model "auto" uses: the first in AUTO_ORDER whose shipped weights beat classical fusion on
    real stacks and, on ordered stacks, every later model of AUTO_ORDER that has shipped weights
    (their record's ``beats_models``: V3 must beat V2 to be picked before it). None: classical."""
    for i, name in enumerate(AUTO_ORDER):
        record = real_record(name)
        later = [m for m in AUTO_ORDER[i + 1:] if shipped_weights(m) is not None]
        if record.get("beats_best_classical") and set(later) <= set(record.get("beats_models", [])):
            return name
    return None


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise WeightsError(f"unknown model {name!r}; known models: {', '.join(MODELS)}.") from None


_cache: dict[tuple, nn.Module] = {}
_cache_lock = threading.Lock()


def load_model(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu",
               channels_last: bool = False) -> nn.Module:
    """A ready (eval mode) network with our shipped weights or the given checkpoint, cached.

    The cache key includes the file's modification time, so re-training into the same file is
    picked up, while batch runs load a model once per process. It includes the weights' layout too:
    the layout of a conv's weights decides its output's, so a shared model must not change it.
    """
    spec = get_spec(name)
    path = Path(weights) if weights else shipped_weights(name)
    if path is None:
        raise WeightsError(
            f"no weights for {name!r}: none are shipped in {weights_dir()}. Train some with "
            f"`stackmff train --model {name}` or pass a checkpoint with --weights / weights=."
        )
    path = path.expanduser()
    mtime = path.stat().st_mtime if path.exists() else None
    key = (name, str(path.resolve()) if path.exists() else str(path), mtime, str(device), bool(channels_last))
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            variant = spec.variant_of(read_state_dict(path)) if spec.variant_of is not None else None
            model = spec.build(variant)
            meta = load_state_dict(path, model, model_name=name)
            model = model.to(device).eval()
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            # The readout the weights were trained for (a classification-trained checkpoint wants argmax).
            model.stackmff_readout = meta.get("readout") if meta.get("readout") in ("softargmax", "argmax") else None
            _cache.clear()  # one model at a time: they are small, but GPU memory is not free
            _cache[key] = model
    return model


# ---------------------------------------------------------------- weights users trained themselves
_user_weights: dict[str, tuple[str, Path]] = {}


def register_weights(path: str | Path, model: str, label: str | None = None) -> str:
    """Make a checkpoint (e.g. one just trained in the GUI) selectable by a label everywhere."""
    get_spec(model)
    path = Path(path)
    label = label or f"{model} ({path.name})"
    _user_weights[label] = (model, path)
    return label


def unregister_weights(label: str) -> None:
    """Forget a registered checkpoint (its file is left alone)."""
    _user_weights.pop(label, None)


def user_weights() -> dict[str, tuple[str, Path]]:
    """label -> (model name, checkpoint path) for every registered user checkpoint."""
    return dict(_user_weights)
