"""StackMFF-V3: order-free focus classification (clean-room, from the facts in ../shared/MODELS.md).

Every slice goes alone through a shared 2-D encoder ("Pyramid Fusion MLP") and a UPerNet-style
decoder to 16 features per pixel; a small transformer then lets the N features of each pixel attend
to each other, with a rotary encoding of the slice index, and the max over channels gives one logit
per slice: (B, N, H, W) logits, trained as an N-way classification of the in-focus slice. Training
shuffles the slices (the label follows), so the network learns focus from what slices look like,
not from their order: out-of-order, blank or duplicated slices do not derail it.

Sizes: ``StackMFFV3()`` is the published size (widths 16-256, 2,738,268 parameters, of which the
cross-slice transformer is 6,560); ``StackMFFV3.narrow()`` (widths 8-128, 714,284) is the variant we
can train on a CPU. Input height and width must be multiples of 32 (the inference pads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (16, 32, 64, 128, 256)
NARROW_WIDTHS = (8, 16, 32, 64, 128)
FEATURES = 16  # per pixel per slice, the transformer's token width
HEADS, FFN, LAYERS = 4, 64, 2
DROP_PATH = 0.1
PPM_BINS = (1, 2, 3, 6)


class ConvX(nn.Sequential):
    """conv (no bias) + BatchNorm (+ GELU)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.GELU())
        super().__init__(*layers)


class LearnablePool(nn.Module):
    """A k x k pooling kernel learnt and shared by every channel (a tied depthwise conv), then BatchNorm."""

    def __init__(self, channels: int, k: int, stride: int) -> None:
        super().__init__()
        self.k, self.stride = k, stride
        self.weight = nn.Parameter(torch.full((1, 1, k, k), 1.0 / (k * k)))
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w = self.weight.expand(c, 1, self.k, self.k)
        return self.bn(F.conv2d(x, w, stride=self.stride, padding=self.k // 2, groups=c))


class PyramidFC(nn.Module):
    """Sum of pooled views at three scales and a global one, each mapped C -> C_out by a 1x1 ConvX; GELU.

    Why: a wide, cheap context for each pixel's focus decision (a blurred area is only "blurred"
    relative to its surroundings), without attention's cost at full resolution.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pools = nn.ModuleList([LearnablePool(cin, k, s) for k, s in ((3, 1), (5, 2), (7, 3))])
        self.maps = nn.ModuleList([ConvX(cin, cout, act=False) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = None
        for pool, proj in zip(self.pools, self.maps):
            y = proj(pool(x))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="nearest")
            out = y if out is None else out + y
        g = self.maps[3](F.adaptive_avg_pool2d(x, 1))
        return F.gelu(out + g)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch for some samples while training."""
    if p <= 0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= p
    return x * keep / (1 - p)


class Block(nn.Module):
    """Bottleneck block: spatial MLP (PyramidFC) residual, then channel MLP + skip (stride 2: downsample)."""

    def __init__(self, cin: int, cout: int, stride: int, drop: float) -> None:
        super().__init__()
        self.drop = drop
        self.smlp = nn.Sequential(PyramidFC(cin, 3 * cin), ConvX(3 * cin, cin, act=False))
        mid = 3 * cout
        down = LearnablePool(mid, 3, 1) if stride == 1 else ConvX(mid, mid, 3, 2, groups=mid, act=False)
        self.cmlp = nn.Sequential(ConvX(cin, mid), down, ConvX(mid, cout, act=False))
        if stride == 1 and cin == cout:
            self.skip: nn.Module = nn.Identity()
        else:
            skip: list[nn.Module] = [ConvX(cin, cin, 3, stride, groups=cin, act=False)] if stride > 1 else []
            if cin != cout:
                skip.append(ConvX(cin, cout, act=False))
            self.skip = nn.Sequential(*skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.smlp(x), self.drop, self.training)
        return drop_path(self.cmlp(x), self.drop, self.training) + self.skip(x)


class Encoder(nn.Module):
    """Stem (stride 2) and four stages of two blocks: features at 1/4, 1/8, 1/16 and 1/32."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = ConvX(1, widths[0], 3, 2)
        rates = torch.linspace(0, DROP_PATH, 8).tolist()  # rising linearly over the 8 blocks
        stages, k = [], 0
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages.append(nn.Sequential(Block(cin, cout, 2, rates[k]), Block(cout, cout, 1, rates[k + 1])))
            k += 2
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class Decoder(nn.Module):
    """UPerNet-style: pyramid pooling on 1/32, 1x1 laterals, top-down adds, 3x3 smoothing, fused at 1/4."""

    def __init__(self, widths: tuple[int, ...], out: int = FEATURES) -> None:
        super().__init__()
        top = widths[-1]
        self.ppm = nn.ModuleList([ConvX(top, top // 4) for _ in PPM_BINS])
        self.ppm_out = ConvX(top + len(PPM_BINS) * (top // 4), out)
        self.laterals = nn.ModuleList([ConvX(c, out) for c in widths[1:-1]])
        self.smooth = nn.ModuleList([ConvX(out, out, 3) for _ in widths[1:-1]])
        self.fuse = ConvX(out * len(widths[1:]), out)
        self.head = nn.Sequential(nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out))

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        top = feats[-1]
        pooled = [top] + [F.interpolate(conv(F.adaptive_avg_pool2d(top, b)), size=top.shape[-2:], mode="bilinear",
                                        align_corners=False) for b, conv in zip(PPM_BINS, self.ppm)]
        levels = [self.ppm_out(torch.cat(pooled, 1))]
        for lat, f in zip(reversed(self.laterals), reversed(feats[:-1])):
            up = F.interpolate(levels[0], size=f.shape[-2:], mode="bilinear", align_corners=False)
            levels.insert(0, lat(f) + up)
        levels = [s(lv) for s, lv in zip(self.smooth, levels[:-1])] + [levels[-1]]
        q = levels[0].shape[-2:]
        x = self.fuse(torch.cat([levels[0]] + [F.interpolate(lv, size=q, mode="bilinear", align_corners=False)
                                               for lv in levels[1:]], 1))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(x))


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position encoding of tokens (P, N, D) by their slice index (dim 1): feature pairs rotated
    by index-dependent angles, so attention can tell slices apart without a learnt order."""
    _, n, d = x.shape
    half = d // 2
    freq = 1.0 / (10000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    ang = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * freq[None]  # (N, half)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class SliceAttentionLayer(nn.Module):
    """One post-LN transformer layer over the N slice tokens of each pixel (pixels are the batch).

    Written out with ``scaled_dot_product_attention`` on (pixels, heads, N, d) tensors instead of
    nn.TransformerEncoderLayer: with a batch of ~10^5 pixels and 8 tokens of 16 features, the generic
    layer spent 6.5 s per training step on its reshapes and small matmuls (1 CPU thread, 4 x 8 x 128²).
    """

    def __init__(self, dim: int = FEATURES, heads: int = HEADS, ffn: int = FFN) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(P, N, D) -> (P, N, D)."""
        p, n, d = x.shape
        q, k, v = self.qkv(x).view(p, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(p, n, d)
        x = self.norm1(x + self.proj(a))
        return self.norm2(x + self.ffn(x))


class CrossSlice(nn.Module):
    """Pixel-wise cross-slice attention: per pixel, a post-LN transformer over its N slice tokens."""

    def __init__(self, dim: int = FEATURES, heads: int = HEADS, ffn: int = FFN, layers: int = LAYERS) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SliceAttentionLayer(dim, heads, ffn) for _ in range(layers)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, N, D) tokens of P pixels -> same shape."""
        x = rotary(tokens)  # the first residual adds the rotated tokens (MODELS.md)
        for layer in self.layers:
            x = layer(x)
        return x


class StackMFFV3(nn.Module):
    """(B, N, H, W) slices in [0, 1] -> (B, N, H, W) logits; H and W multiples of 32."""

    #: Pixels per chunk of the cross-slice attention (bounds its memory: N x chunk x dim tokens).
    ATTENTION_CHUNK = 65536

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.encoder = Encoder(self.widths)
        self.decoder = Decoder(self.widths)
        self.cross = CrossSlice()

    @classmethod
    def narrow(cls) -> "StackMFFV3":
        """The CPU-trainable variant: every width halved (714,284 parameters)."""
        return cls(NARROW_WIDTHS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h, w = x.shape
        f = self.decoder(self.encoder(x.reshape(b * n, 1, h, w)), (h, w))
        return f.reshape(b, n, FEATURES, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h, w = x.shape
        f = self.features(x)  # (B, N, D, H, W)
        tokens = f.permute(0, 3, 4, 1, 2).reshape(b * h * w, n, FEATURES)
        if self.training:  # one graph for backward
            out = self.cross(tokens).amax(-1)
        else:
            out = torch.cat([self.cross(tokens[s:s + self.ATTENTION_CHUNK]).amax(-1)
                             for s in range(0, tokens.shape[0], self.ATTENTION_CHUNK)])
        return out.reshape(b, h, w, n).permute(0, 3, 1, 2)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["StackMFFV3", "count_parameters", "WIDTHS", "NARROW_WIDTHS"]
