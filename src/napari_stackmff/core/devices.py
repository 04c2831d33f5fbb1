"""Which torch device to run on: "auto" means the fastest one present, never one that is not."""

from __future__ import annotations

import torch

from .errors import StackMFFError


def available_devices() -> list[str]:
    """Devices that exist on this machine, fastest first ("cpu" always last)."""
    out = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    out.append("cpu")
    return out


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto"/"cpu"/"cuda"/"cuda:1"/"mps" into a torch.device that exists, or say why not."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    if name == "cuda":
        name = "cuda:0"
    if name not in available_devices():
        raise StackMFFError(
            f"device {device!r} is not available here; choose one of: auto, {', '.join(available_devices())}."
        )
    return torch.device(name)
