"""Clean-room PyTorch implementation of the StackMFF-V2 focus network.

Written from the published description of the method (see ``shared/MODELS.md``); the module
names mirror the published checkpoint so that its ``state_dict`` loads with ``strict=True``.

Data flow: every slice of a (B, N, H, W) stack goes through one shared 2D U-shaped network that
gives 8 features per pixel; a bidirectional ConvGRU then compares the slices along N and the max
over its 16 channels is the per-pixel focus logit of each slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StackMFFV2", "official_postprocess", "published_kernels", "strip_module_prefix"]

WIDTHS = (8, 16, 24, 32, 48, 64)
GN_GROUPS = 4
GRU_HIDDEN = 16


def _gelu(x: Tensor) -> Tensor:
    # The published network uses the exact (erf) GELU, not the tanh approximation.
    return F.gelu(x)


#: The inference-only kernels (``_pool2``, the in-place GRU step) on; ``published_kernels()`` turns them
#: off to time the network as the published code computes it (benchmarks/bench_scale.py).
_FAST = True


@contextmanager
def published_kernels() -> Iterator[None]:
    """Run V2 with the published layer sequence (``F.max_pool2d``, which also computes argmax indices)."""
    global _FAST
    saved, _FAST = _FAST, False
    try:
        yield
    finally:
        _FAST = saved


def _pool2(x: Tensor) -> Tensor:
    """2x2 max pooling. Without autograd it is the max of the four strided sub-grids: bit-identical to
    ``F.max_pool2d`` and 3.4x faster on the CPU (25 vs 86 ms for 15x8x384², which computes and drops
    the argmax indices). Training keeps ``F.max_pool2d`` (its gradient picks one of tied inputs)."""
    if not _FAST or (torch.is_grad_enabled() and x.requires_grad):
        return F.max_pool2d(x, 2)
    rows = torch.maximum(x[..., ::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., ::2], rows[..., 1::2])


def empty_like_layout(x: Tensor, channels: int) -> Tensor:
    """An empty (B, channels, H, W) tensor in ``x``'s memory layout.

    The GRU's zero state was NCHW while the features were channels_last, so each direction's first step
    ran NCHW; and ``torch.cat`` of the step's [x | h] cost more than copies into one buffer. Both together,
    bit-identical: the bare V2 forward 1.06-1.12x; ``fuse()``, under its heap reuse, within the noise
    (benchmarks/bench_ab.py, RESULTS.md session 20)."""
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    return torch.empty((x.shape[0], channels, *x.shape[2:]), dtype=x.dtype, device=x.device, memory_format=fmt)


def _up2(x: Tensor) -> Tensor:
    # align_corners=True is what the published decoder uses; it matters for exact reproduction.
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class InceptionDW(nn.Module):
    """Cheap large-receptive-field block: identity + depthwise 3x3, 1x11 and 11x1 branches.

    Only 3/8 of the channels are convolved, which keeps the network at ~51k parameters while
    the 11-tap strip kernels still see far enough to judge focus.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.channel_adj = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        gc = max(1, int(0.125 * out_ch))
        self.split = (out_ch - 3 * gc, gc, gc, gc)
        self.dwconv_hw = nn.Conv2d(gc, gc, 3, padding=1, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, 11), padding=(0, 5), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (11, 1), padding=(5, 0), groups=gc)

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_adj is not None:
            x = self.channel_adj(x)
        x_id, x_hw, x_w, x_h = torch.split(x, self.split, dim=1)
        return torch.cat(
            (x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1
        )


class SpatialAttention(nn.Module):
    """One 7x7 dilated conv shared by all skip levels: where in the image is detail."""

    def __init__(self) -> None:
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, padding=9, dilation=3))

    def forward(self, t: Tensor) -> Tensor:
        pooled = torch.cat((t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)), dim=1)
        return torch.sigmoid(self.shared_conv2d(pooled))


class ChannelAttention(nn.Module):
    """Channel weights for every level from the pooled descriptors of all levels together."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        total = sum(widths)
        self.get_all_att = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        for k, c in enumerate(widths, start=1):
            setattr(self, f"att{k}", nn.Linear(total, c))
        self.n_levels = len(widths)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)  # (B, 128)
        mixed = self.get_all_att(pooled.unsqueeze(1)).squeeze(1)
        return [
            torch.sigmoid(getattr(self, f"att{k}")(mixed))[:, :, None, None]
            for k in range(1, self.n_levels + 1)
        ]


class SkipBridge(nn.Module):
    """Spatial then channel attention on the skips t1..t5, both residual."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.catt = ChannelAttention(widths)
        self.satt = SpatialAttention()

    def forward(self, skips: list[Tensor]) -> list[Tensor]:
        u = [self.satt(t) * t for t in skips]
        v = [uk + tk for uk, tk in zip(u, skips)]
        a = self.catt(v)
        return [ak * vk + uk for ak, vk, uk in zip(a, v, u)]


class FeatureExtraction(nn.Module):
    """Per-slice U-net: (M, 1, H, W) -> (M, 8, H, W) features in [0, 1]."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        c = widths
        self.encoder1 = nn.Sequential(nn.Conv2d(1, c[0], 3, padding=1))
        for k in range(2, 7):
            setattr(self, f"encoder{k}", nn.Sequential(InceptionDW(c[k - 2], c[k - 1])))
        self.scab = SkipBridge(c[:5])
        for k in range(1, 6):  # decoder k maps c[6-k] -> c[5-k]
            setattr(self, f"decoder{k}", nn.Sequential(InceptionDW(c[6 - k], c[5 - k])))
        for k in range(1, 6):
            setattr(self, f"ebn{k}", nn.GroupNorm(GN_GROUPS, c[k - 1]))
            setattr(self, f"dbn{k}", nn.GroupNorm(GN_GROUPS, c[5 - k]))
        self.final = nn.Conv2d(c[0], c[0], 1)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        for k in range(1, 6):
            x = getattr(self, f"encoder{k}")(x)
            x = _gelu(_pool2(getattr(self, f"ebn{k}")(x)))
            skips.append(x)
        x = _gelu(self.encoder6(x))  # stage 6 reads the un-bridged t5, no norm
        skips = self.scab(skips)
        # Skips are consumed deepest first; pop() releases each one as soon as it is used.
        x = _gelu(self.dbn1(self.decoder1(x))) + skips.pop()
        for k in range(2, 6):
            x = _gelu(_up2(getattr(self, f"dbn{k}")(getattr(self, f"decoder{k}")(x)))) + skips.pop()
        return torch.sigmoid(_up2(self.final(x)))


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell: the hidden state carries focus evidence from slice to slice."""

    def __init__(self, in_ch: int, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv_gates = nn.Conv2d(in_ch + hidden, 2 * hidden, kernel, padding=kernel // 2)
        self.conv_can = nn.Conv2d(in_ch + hidden, hidden, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        if _FAST and not torch.is_grad_enabled():
            # Inference: activations and the blend h + u (c - h) in place, no temporaries; the same
            # decisions (benchmarks/RESULTS.md, issue 15, 2026-12-06). Not torch.lerp: with the strided
            # gate view in channels_last it took 7 ms a step, 4x the three in-place passes.
            c = x.shape[1]
            xh = empty_like_layout(x, c + self.hidden)  # [x | h], written in place of torch.cat
            xh[:, :c].copy_(x)
            xh[:, c:].copy_(h)
            gates = self.conv_gates(xh).sigmoid_()
            reset, update = gates[:, :self.hidden], gates[:, self.hidden:]
            xr = empty_like_layout(x, c + self.hidden)  # [x | reset * h]
            xr[:, :c].copy_(x)
            torch.mul(reset, h, out=xr[:, c:])
            # tanh(c) = 2 sigmoid(2c) - 1: torch's CPU tanh_ took 6.5 ms on a 16 x 384² NHWC map, this 2.4 ms
            # (max |difference| 1.8e-7); ~8% of V2's CPU time was tanh (torch profiler, 12 x 384², 2 threads).
            cand = self.conv_can(xr).mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
            return cand.sub_(h).mul_(update).add_(h)
        gates = torch.sigmoid(self.conv_gates(torch.cat((x, h), dim=1)))
        reset, update = torch.split(gates, self.hidden, dim=1)
        cand = torch.tanh(self.conv_can(torch.cat((x, reset * h), dim=1)))
        return (1 - update) * h + update * cand


class BiConvGRU(nn.Module):
    """One-layer bidirectional ConvGRU over the slice axis; outputs of both directions summed."""

    def __init__(self, in_ch: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.forward_cell_list = nn.ModuleList([ConvGRUCell(in_ch, hidden)])
        self.backward_cell_list = nn.ModuleList([ConvGRUCell(in_ch, hidden)])

    def forward(self, feats: Tensor) -> Tensor:
        """(B, N, C, H, W) -> logits (B, N, H, W): max over the hidden channels."""
        return self.run(feats, self.forward_cell_list[0], self.backward_cell_list[0], self.hidden)

    @staticmethod
    def run(feats: Tensor, fwd_cell: Callable[[Tensor, Tensor], Tensor], bwd_cell: Callable[[Tensor, Tensor], Tensor],
            hidden: int) -> Tensor:
        """The bidirectional loop with any cells ``cell(x, h) -> h`` (another runtime's: core/models/onnx_runtime.py)."""
        b, n, _, h, w = feats.shape
        state = empty_like_layout(feats[:, 0], hidden).zero_()
        fwd_states: list[Tensor] = []  # needed: output_n = forward_n + backward_n
        for i in range(n):
            state = fwd_cell(feats[:, i], state)
            fwd_states.append(state)
        logits: list[Tensor | None] = [None] * n
        state = empty_like_layout(feats[:, 0], hidden).zero_()
        for i in reversed(range(n)):
            state = bwd_cell(feats[:, i], state)
            logits[i] = (fwd_states[i] + state).amax(dim=1)
            fwd_states[i] = None  # type: ignore[call-overload]  # release as we go
        return torch.stack(logits, dim=1)  # type: ignore[arg-type]


class LayerInteraction(nn.Module):
    """Cross-slice module (name kept to match the published checkpoint keys)."""

    def __init__(self, in_ch: int = WIDTHS[0], hidden: int = GRU_HIDDEN) -> None:
        super().__init__()
        self.layer_interaction_depth = BiConvGRU(in_ch, hidden)

    def forward(self, feats: Tensor) -> Tensor:
        return self.layer_interaction_depth(feats)


class StackMFFV2(nn.Module):
    """StackMFF-V2: (B, N, H, W) grey slices in [0, 1] -> focus logits (B, N, H, W).

    N is free (N >= 2); H and W must be multiples of 32 (five 2x poolings) — the caller pads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.feature_extraction = FeatureExtraction()
        self.layer_interaction = LayerInteraction()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Published init: convs kaiming-normal (fan_out), Linear N(0, 1e-3), GRU orthogonal."""
        for m in self.feature_extraction.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1e-3)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.layer_interaction.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, slices: Tensor) -> Tensor:
        if slices.ndim != 4:
            raise ValueError(f"expected (B, N, H, W) slices, got shape {tuple(slices.shape)}")
        b, n, h, w = slices.shape
        if h % 32 or w % 32:
            raise ValueError(f"H and W must be multiples of 32 (pad first), got {h}x{w}")
        feats = self.feature_extraction(slices.reshape(b * n, 1, h, w))
        return self.layer_interaction(feats.view(b, n, -1, h, w))


def official_postprocess(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Published post-processing, reproduced as is: (B, N, H, W) logits -> (depth, index).

    softmax over N, soft-argmax with indices 1..N, then min-max over the WHOLE tensor (all
    batch items together), index = round(depth * (N - 1)). Note the min-max: it always
    stretches the result to the full [0, 1] even when the scene only spans part of the stack.
    """
    n = logits.shape[1]
    prob = torch.softmax(logits, dim=1)
    steps = torch.arange(1, n + 1, dtype=prob.dtype, device=prob.device).view(1, n, 1, 1)
    depth = (prob * steps).sum(dim=1)
    lo, hi = depth.min(), depth.max()
    # Published code divides by (max - min) unguarded (NaN on a constant map); we return 0 there.
    depth = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
    index = torch.clamp(torch.round(torch.clamp(depth * (n - 1), 0, n - 1)), 0, n - 1).long()
    return depth, index


def strip_module_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix that (Distributed)DataParallel adds to every key."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
