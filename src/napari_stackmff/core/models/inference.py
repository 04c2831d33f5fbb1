"""Running a focus network over a stack: normalise, tile, pad, forward, read out the focus.

Everything model-agnostic lives here once (the networks only map slices to logits): how the
input is scaled, how big images are cut into overlapping tiles, how the probability volume
becomes a sub-slice focus map and a confidence map.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from ..errors import StackMFFError
from ..fusion import FusionCancelled, _Maps, finish_maps
from ..stack import FocalStack
from ..tiling import count_tiles, iter_tiles
from .registry import get_spec, load_model

#: Rough peak bytes per pixel per slice of a V2 forward pass in float32 (measured, with margin).
BYTES_PER_VOXEL = 400
TILE_OVERLAP = 32


def normalise_stack(x: np.ndarray | torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Scale by the whole stack's robust range, so 12-bit data in a 16-bit file looks like 8-bit data
    did in training, and every slice keeps its brightness relative to the others."""
    x = torch.as_tensor(x)
    return ((x - lo) / max(hi - lo, 1e-6)).clamp_(0, 1)


def stack_range(stack: FocalStack, t: int, channel: int | None, samples: int = 2_000_000) -> tuple[float, float]:
    """0.05 and 99.95 percentiles of the focus images, from a strided sample (cheap on big stacks)."""
    h, w = stack.yx_shape
    step = max(1, int(math.sqrt(h * w * stack.n_slices / samples)))
    sample = stack.focus_stack(t, channel, window=(slice(None, None, step), slice(None, None, step)))
    lo, hi = np.percentile(sample, [0.05, 99.95])
    return float(lo), float(hi)


def auto_tile(n_slices: int, device: torch.device, budget_bytes: int | None = None) -> int:
    """Largest tile side (multiple of 32) whose forward pass fits the memory budget."""
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = int(free * 0.6)
        else:
            budget_bytes = min(int(psutil.virtual_memory().available * 0.4), 4 << 30)
    side = int(math.sqrt(budget_bytes / (BYTES_PER_VOXEL * max(n_slices, 1))))
    return max(128, min(4096, side // 32 * 32))


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad (B, N, H, W) on the bottom/right to a multiple (resizing would change pixels)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def readout(logits: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) logits -> (focus in slice units, confidence in [0, 1]).

    softargmax: the expectation of the slice index (what a depth-regression model is trained
    to output). argmax: the winning slice refined by the expectation over it and its neighbours.
    Confidence: how far the peak probability stands above a uniform guess.
    """
    n = logits.shape[0]
    prob = torch.softmax(logits.float(), dim=0)
    pmax, idx = prob.max(dim=0)
    steps = torch.arange(n, dtype=prob.dtype, device=prob.device).view(n, 1, 1)
    if mode == "softargmax":
        focus = (prob * steps).sum(dim=0)
    else:
        lo = (idx - 1).clamp(0, n - 1)
        hi = (idx + 1).clamp(0, n - 1)
        p_lo = prob.gather(0, lo[None])[0] * (lo != idx)
        p_hi = prob.gather(0, hi[None])[0] * (hi != idx)
        focus = (lo * p_lo + idx * pmax + hi * p_hi) / (p_lo + pmax + p_hi)
    conf = ((pmax - 1.0 / n) / (1.0 - 1.0 / n)).clamp(0, 1)
    return focus, conf


class ModelRunner:
    """Runs one focus network over stacks, tile by tile, on one device."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        *,
        weights: str | None = None,
        tile: int | None = None,
        readout: str | None = None,
        compat: bool = False,
        half: bool | None = None,
    ) -> None:
        self.spec = get_spec(name)
        self.name = name
        self.device = device
        self.model = load_model(name, weights, device)
        self.tile = tile
        self.readout = readout or self.spec.readout
        if self.readout not in ("softargmax", "argmax"):
            raise StackMFFError(f"readout must be 'softargmax' or 'argmax', got {self.readout!r}.")
        self.compat = compat
        self.half = (device.type == "cuda") if half is None else half

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, h, w) normalised focus images -> (N, h, w) logits (padding handled here)."""
        xp, h, w = pad_to_multiple(x[None].to(self.device))
        with torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16,
                            enabled=self.half):
            out = self.model(xp)
        return out[0, :, :h, :w].float()

    def maps(
        self,
        stack: FocalStack,
        t: int = 0,
        *,
        channel: int | None = None,
        denoise: bool = True,
        progress: Callable[[int, int, str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> _Maps:
        if self.compat:
            return self._official_maps(stack, t, channel)
        n = stack.n_slices
        h, w = stack.yx_shape
        lo, hi = stack_range(stack, t, channel)
        tile = self.tile or auto_tile(n, self.device)
        focus = torch.empty((h, w), dtype=torch.float32)
        conf = torch.empty((h, w), dtype=torch.float32)
        total = count_tiles(h, w, tile, TILE_OVERLAP)
        for i, tl in enumerate(iter_tiles(h, w, tile, TILE_OVERLAP)):
            if cancel is not None and cancel.is_set():
                raise FusionCancelled()
            x = normalise_stack(stack.focus_stack(t, channel, window=tl.read), lo, hi)
            f, c = readout(self.logits(x), self.readout)
            focus[tl.write] = f[tl.crop].cpu()
            conf[tl.write] = c[tl.crop].cpu()
            if progress is not None:
                progress(i + 1, total, f"{self.name}: tile")
        # Networks already judge focus in context; only remove isolated outliers.
        return finish_maps(focus, conf, n, window=1, fill_threshold=0.0, denoise=denoise)

    def _official_maps(self, stack: FocalStack, t: int, channel: int | None) -> _Maps:
        """The published inference: luma/255, bilinear resize to a multiple of 32, batch min-max.

        Kept to compare against (and to reproduce the published outputs), not for real use.
        """
        from .v2 import official_postprocess

        x = torch.from_numpy(stack.focus_stack(t, channel))
        n, h, w = x.shape
        h32, w32 = max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)
        with torch.no_grad():
            xi = x[None].to(self.device)
            if (h32, w32) != (h, w):
                xi = F.interpolate(xi, size=(h32, w32), mode="bilinear", align_corners=False)
            logits = self.model(xi)
            depth, _ = official_postprocess(logits)
            if (h32, w32) != (h, w):
                depth = F.interpolate(depth[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        depth = depth[0].cpu()
        focus = depth * (n - 1)
        index = torch.round(focus.clamp(0, n - 1)).long()
        prob = torch.softmax(logits[0].float(), 0).max(0).values.cpu()
        if prob.shape != (h, w):
            prob = F.interpolate(prob[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        conf = ((prob - 1 / n) / (1 - 1 / n)).clamp(0, 1)
        return _Maps(focus=focus, index=index, confidence=conf)
