"""Safe loading of model weights, with one-line errors a user can act on.

Checkpoints are read with ``torch.load(..., weights_only=True)`` so a weights file can never run
code. Accepted layouts: a bare state_dict, or a dict holding one under ``"state_dict"`` or
``"model"`` (our training checkpoints are ``{"model": name, "state_dict": ..., "meta": {...}}``).
A ``module.`` prefix (from DataParallel) is stripped. Every failure is a :class:`WeightsError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_stackmff.core.errors import WeightsError

__all__ = ["load_state_dict", "read_state_dict"]

_REDOWNLOAD = "download or copy the weights file again"


def _read(path: Path) -> Any:
    """torch.load with every low-level failure mapped to a one-line WeightsError."""
    if not path.exists():
        raise WeightsError(
            f"Weights file not found: {path} — check the path or download the weights."
        )
    if not path.is_file():
        raise WeightsError(
            f"Weights path is not a file: {path} — point to the .pth checkpoint file."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported global" in msg or "GLOBAL" in msg:
            raise WeightsError(
                f"Weights file {path} contains pickled Python objects that need arbitrary code to "
                "load; refused for safety — use a checkpoint that holds only tensors "
                "(torch.save(model.state_dict(), path))."
            ) from exc
        raise WeightsError(
            f"Weights file {path} is not a torch checkpoint the safe loader can read (plain pickle "
            f"or corrupt data); refused — {_REDOWNLOAD}, or re-save it with torch.save."
        ) from exc
    except OSError as exc:
        raise WeightsError(f"Weights file {path} cannot be read ({exc.strerror or exc}).") from exc
    except Exception as exc:  # zip/EOF/Key/Runtime errors from a truncated or foreign file
        kind = (
            "is empty"
            if path.stat().st_size == 0
            else "is not a torch checkpoint or is truncated/corrupt"
        )
        raise WeightsError(f"Weights file {path} {kind} — {_REDOWNLOAD}.") from exc


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Return (state_dict without 'module.' prefix, model name recorded in the file if any)."""
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"Weights file {path} holds a {type(obj).__name__}, not a state_dict — "
            "use a checkpoint saved from model.state_dict()."
        )
    recorded = obj.get("model") if isinstance(obj.get("model"), str) else None
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(
            f"Weights file {path} does not contain a state_dict of tensors — "
            "use a checkpoint saved from model.state_dict()."
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}, recorded


def read_state_dict(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (any accepted layout), e.g. to tell which size of a model it holds."""
    path = Path(path)
    return _extract_state_dict(_read(path), path)[0]


def load_state_dict(path: str | PathLike[str], model: nn.Module, *, model_name: str) -> dict[str, Any]:
    """Load the weights at ``path`` into ``model`` (strict), or raise a one-line WeightsError.

    The state_dict is checked against the model before anything is copied, so a mismatching file
    leaves the model untouched. Returns the checkpoint's plain metadata (e.g. the ``readout`` its
    training objective calls for); empty for a bare state_dict.
    """
    path = Path(path)
    raw = _read(path)
    state, recorded = _extract_state_dict(raw, path)
    meta = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, (str, int, float, bool))
            and k != "model"} if isinstance(raw, Mapping) and raw.get("state_dict") is not None else {}

    upgrade = getattr(model, "upgrade_state", None)  # a model that reads its older layouts says so
    if callable(upgrade):
        state = upgrade(state)
    expected = model.state_dict()
    problems: list[str] = []
    problems += [f"missing key '{k}'" for k in expected if k not in state]
    problems += [f"unexpected key '{k}'" for k in state if k not in expected]
    problems += [
        f"'{k}' has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        looks_like = (
            f"it was saved for model '{recorded}'"
            if recorded and recorded != model_name
            else "it looks like a checkpoint for a different model"
        )
        raise WeightsError(
            f"Weights file {path} does not match model '{model_name}': {looks_like} "
            f"({len(problems)} mismatching keys, e.g. {problems[0]}) — choose the weights "
            f"trained for '{model_name}' or pick the model these weights belong to."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied; keep it to one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"Weights file {path} could not be loaded into '{model_name}': {first}"
        ) from exc
    return meta
