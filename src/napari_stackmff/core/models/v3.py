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

``cross_stride=2`` (ours, not published) runs the head and the cross-slice transformer on a grid of half
the resolution and upsamples the logits: the features there are a bilinear upsampling of the decoder's
1/4-resolution map anyway, and the transformer over every full-resolution pixel was ~80% of V3's time
(FAST_CROSS_STRIDE). A stride-2 model carries a ``stride_marker`` buffer, so its weights file says so.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (16, 32, 64, 128, 256)
NARROW_WIDTHS = (8, 16, 32, 64, 128)
FEATURES = 16  # per pixel per slice, the transformer's token width
HEADS, FFN, LAYERS = 4, 64, 2
DROP_PATH = 0.1
PPM_BINS = (1, 2, 3, 6)
#: The cross-slice grid of our fast variants (benchmarks/bench_v3_stride.py, RESULTS.md issue 29 item 2): on
#: 512 x 640 crops, 1 thread, the stride-1 narrow weights spent 22.5 of 26.7 s (pseudoscorpion, 14 slices)
#: and 54.3 of 64.0 s (keyboard, 41) in the full-resolution head and transformer; at half resolution 4.3 and
#: 13.2 s, with the same argmax on 99.3% / 97.4% of pixels before any fine-tuning. Stride 4 (1.0 / 4.3 s)
#: kept 98.2% / 92.9%.
FAST_CROSS_STRIDE = 2


class ImageContext:
    """The image-wide means that V3's global average pools see, gathered over the tiles of a big image.

    Why: every block's PyramidFC and the decoder's 1-bin pyramid pool average over the whole input. On a
    tile that is the tile, so each tile gets its own context and its focus decisions shift as a whole:
    a seam at every tile border (beetle crop, 14 x 256 x 384, left half alone vs the whole: same argmax on
    96.5% of pixels far from the cut; with the whole image's pooled vectors put in, 99.6%).

    :meth:`collect` runs the encoder on one window (some slices of it) and adds up, per pool and per
    slice, the pool's input over the part of the window that is its share of the image (the windows'
    shares partition the image); :meth:`freeze` turns the sums into means, and a forward inside
    :func:`image_context` then uses them instead of the tile's own. Every slice is encoded alone, so a
    window can be the whole image taken a slice at a time: then one pass gives exactly the untiled
    means. When even one slice is too big for the memory, the windows are tiles, and since the pools are
    nested (a deeper pool's input depends on the shallower means) the first pass, whose pools are each
    window's own, is only close; a further pass pools with the last pass's means and moves toward the
    whole image's (:attr:`StackMFFV3.context_passes`).
    """

    def __init__(self) -> None:
        self._sums: dict[int, torch.Tensor] = {}  # per pool: (slices, C, 1, 1) sums over the shares
        self._count: dict[int, int] = {}  # per pool: pixels summed (per slice)
        self.means: dict[int, torch.Tensor] | None = None
        self._region: tuple[int, int, int, int] | None = None  # y0, y1, x0, x1 of the input being collected
        self._size = (1, 1)  # that input's (H, W)
        self._slices = 0  # slices in the stack
        self._first = 0  # the stack's slice that the input's first is
        self.group = slice(None)  # the input's slices the encoder is running on now (StackMFFV3.encode)

    def pool(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(g, C, h, w) -> (g, C, 1, 1): the image-wide means (the last pass's, while collecting), else this
        input's own; collects ``x`` over the share while a pass runs."""
        key = id(module)
        g = self.group if self.group.start is None else slice(self._first + self.group.start,
                                                               self._first + self.group.stop)
        if self._region is not None:
            y0, y1, x0, x1 = self._region
            sy, sx = self._size[0] / x.shape[-2], self._size[1] / x.shape[-1]
            r = x[..., round(y0 / sy):round(y1 / sy), round(x0 / sx):round(x1 / sx)]
            if key not in self._sums:
                self._sums[key] = torch.zeros((self._slices, x.shape[1], 1, 1), dtype=torch.float32, device=x.device)
            self._sums[key][g] += r.float().sum((-2, -1), keepdim=True)
            if g.start in (None, 0):
                self._count[key] = self._count.get(key, 0) + r.shape[-2] * r.shape[-1]
        if self.means is not None:
            return self.means[key][g].to(x.dtype)
        return F.adaptive_avg_pool2d(x, 1)

    def collect(self, model: "StackMFFV3", x: torch.Tensor, region: tuple[int, int, int, int], *, first: int = 0,
                total: int | None = None) -> None:
        """Add one (1, n, H, W) window holding slices ``first``.. of ``total`` (default: all n): ``region``
        (y0, y1, x0, x1 in its pixels) is its share of the image. Runs the encoder only (~15% of a forward)."""
        b, n, h, w = x.shape
        self._region, self._size, self._slices, self._first = region, (h, w), total or b * n, first
        with image_context(self):
            for feats in model.encode(x):
                self.pool(model.decoder, feats[-1])
        self._region, self._first, self.group = None, 0, slice(None)

    def freeze(self) -> "ImageContext":
        """The collected sums become the means (used by every forward, and by a further pass's pools)."""
        self.means = {k: s / max(self._count[k], 1) for k, s in self._sums.items()}
        self._sums, self._count = {}, {}
        return self


_CONTEXT: contextvars.ContextVar[ImageContext | None] = contextvars.ContextVar("stackmff_v3_context", default=None)


@contextmanager
def image_context(ctx: ImageContext | None) -> Iterator[None]:
    """Forward passes inside use ``ctx``'s frozen image-wide pools (None: each input's own)."""
    token = _CONTEXT.set(ctx)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def global_pool(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    ctx = _CONTEXT.get()
    return F.adaptive_avg_pool2d(x, 1) if ctx is None else ctx.pool(module, x)


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
        self.channels, self.k, self.stride = channels, k, stride
        self.weight = nn.Parameter(torch.full((1, 1, k, k), 1.0 / (k * k)))
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel's shape from the module, not from x: the ONNX exporter needs it fixed.
        w = self.weight.expand(self.channels, 1, self.k, self.k)
        return self.bn(F.conv2d(x, w, stride=self.stride, padding=self.k // 2, groups=self.channels))


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
        g = self.maps[3](global_pool(self, x))
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
        x = F.interpolate(self.quarter(feats), size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(x))

    def rows(self, q: torch.Tensor, size: tuple[int, int], r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) of ``forward``'s output of ``size`` (an integer multiple ``k`` of the 1/4-resolution
        map ``q`` of :meth:`quarter`: 4 at full resolution), computed on those rows alone: the bilinear
        upsampling reads q rows r0/k - 2 .. r1/k + 2, the 3x3 head one output row either side (zeros beyond
        the image, as its padding)."""
        h, w = size
        qh = q.shape[-2]
        k = h // qh
        a, b = max(0, r0 // k - 2), min(qh, r1 // k + 2)
        up = F.interpolate(q[..., a:b, :], size=(k * (b - a), w), mode="bilinear", align_corners=False)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
        band = up[..., lo - k * a:hi - k * a, :]
        band = F.pad(band, (0, 0, lo - (r0 - 1), (r1 + 1) - hi))  # the conv's zero padding at the image edge
        conv, bn = self.head[0], self.head[1]
        return torch.sigmoid(bn(F.conv2d(band, conv.weight, None, padding=(0, 1))))

    def quarter(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Fused features at 1/4 resolution, before the upsampling and the head."""
        top = feats[-1]
        pooled = [top] + [F.interpolate(conv(global_pool(self, top) if b == 1 else F.adaptive_avg_pool2d(top, b)),
                                        size=top.shape[-2:], mode="bilinear", align_corners=False)
                          for b, conv in zip(PPM_BINS, self.ppm)]
        levels = [self.ppm_out(torch.cat(pooled, 1))]
        for lat, f in zip(reversed(self.laterals), reversed(feats[:-1])):
            up = F.interpolate(levels[0], size=f.shape[-2:], mode="bilinear", align_corners=False)
            levels.insert(0, lat(f) + up)
        levels = [s(lv) for s, lv in zip(self.smooth, levels[:-1])] + [levels[-1]]
        q = levels[0].shape[-2:]
        return self.fuse(torch.cat([levels[0]] + [F.interpolate(lv, size=q, mode="bilinear", align_corners=False)
                                                  for lv in levels[1:]], 1))


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

    #: Tokens (pixels x slices) per chunk of the cross-slice attention: ~1.25 kB of temporaries each
    #: (qkv, scores, FFN), so a chunk is ~40 MB whatever the tile (2^14-2^17 tokens: same speed). A fixed
    #: 65,536 pixels per chunk was 1.1 GB at N = 14, more than the rest of a 256-px tile.
    ATTENTION_TOKENS = 1 << 15
    #: Tokens per band of rows in which inference computes the full-resolution features (see forward).
    BAND_TOKENS = 1 << 18
    #: Slice pixels per encoder batch at inference: the encoder's first stage holds ~200 B per input pixel
    #: (48 channels at half resolution), so it runs on a few slices at a time (each slice is encoded alone
    #: anyway), not on all N: 14 x 448 x 448 peaked at 570 MB in the encoder, now ~100 MB per group.
    ENCODER_PIXELS = 1 << 19
    #: Peak bytes of the encoder per input pixel of one slice (measured 130-220; the context pass's memory).
    CONTEXT_BYTES_PER_PIXEL = 224
    #: Tile margin for tiled inference (inference.ModelEngine), in pixels. With the image context, 32 and
    #: 64 px agree with the untiled map alike (rpi crop, 11 x 640 x 896, 512-px tiles: same index 94.2% vs
    #: 94.3%, for 1.6x the compute), so the cheaper margin stays.
    tile_overlap = 32
    #: Encoder passes over tiles that gather the image context when a slice is too big to encode whole
    #: (each ~15% of a forward). rpi crop, 11 x 640 x 896, 512-px tiles as context windows, same index as
    #: untiled: old tiles (own pools, cut hard) 51%, 1 pass 76%, 2 passes 93.3%, 3 passes 94.2%, exact
    #: means 94.3% (what is left are near-ties along region edges).
    context_passes = 3
    #: Peak working bytes per voxel of a tile (inference.ModelEngine sizes tiles with it): measured ~50
    #: (forward, read-out, cross-fade) plus ~250 MB that does not grow with the tile; was ~250 plus a
    #: fixed 1.1 GB before the bands and groups (issue 24). Budgeted with margin.
    bytes_per_voxel = 96

    @staticmethod
    def new_image_context() -> ImageContext:
        """An empty image context: gather it tile by tile, freeze it, run tiles inside :meth:`use_context`."""
        return ImageContext()

    use_context = staticmethod(image_context)

    def context_pixels(self, tile_bytes: float) -> int:
        """Pixels of one slice the context pass may encode at once: what the tile's own forward may use
        (``tile_bytes``), never below one encoder batch."""
        return max(self.ENCODER_PIXELS, int(tile_bytes / self.CONTEXT_BYTES_PER_PIXEL))

    def __init__(self, widths: tuple[int, ...] = WIDTHS, cross_stride: int = 1) -> None:
        super().__init__()
        if cross_stride not in (1, 2, 4):
            raise ValueError(f"cross_stride must be 1, 2 or 4, not {cross_stride}")
        self.widths = tuple(widths)
        self.encoder = Encoder(self.widths)
        self.decoder = Decoder(self.widths)
        self.cross = CrossSlice()
        self.cross_stride = cross_stride
        if cross_stride != 1:  # in the state dict: the weights file tells the registry which model it is
            self.register_buffer("stride_marker", torch.tensor(cross_stride))

    @classmethod
    def narrow(cls, cross_stride: int = 1) -> "StackMFFV3":
        """The CPU-trainable variant: every width halved (714,284 parameters)."""
        return cls(NARROW_WIDTHS, cross_stride)

    @staticmethod
    def stride_of(state: dict[str, torch.Tensor]) -> int:
        """The cross-slice stride a state dict was trained with (1: no marker, the published layout)."""
        marker = state.get("stride_marker")
        return 1 if marker is None else int(marker)

    def adopt(self, state: dict[str, torch.Tensor]) -> None:
        """Start from weights of the same size trained at another cross-slice stride (fine-tuning): every
        parameter is the same, only the marker differs."""
        state = {k: v for k, v in state.items() if k != "stride_marker"}
        if self.cross_stride != 1:
            state["stride_marker"] = self.stride_marker
        self.load_state_dict(state, strict=True)

    def _coarse(self, h: int, w: int) -> tuple[int, int]:
        return h // self.cross_stride, w // self.cross_stride

    def _to_full(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.cross_stride == 1:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D, h, w) features on the cross-slice grid (h, w: the input's over ``cross_stride``)."""
        b, n, h, w = x.shape
        hs, ws = self._coarse(h, w)
        f = self.decoder(self.encoder(x.reshape(b * n, 1, h, w)), (hs, ws))
        return f.reshape(b, n, FEATURES, hs, ws)

    def encode(self, x: torch.Tensor) -> Iterator[list[torch.Tensor]]:
        """Encoder features of (B, N, H, W) slices, a group of slices at a time (inference; every slice is
        encoded on its own, so grouping changes nothing but the peak memory). An image context is told
        which slices each group holds."""
        b, n, h, w = x.shape
        flat = x.reshape(b * n, 1, h, w)
        step = b * n if self.training else max(1, self.ENCODER_PIXELS // (h * w))
        ctx = _CONTEXT.get()
        for i in range(0, b * n, step):
            if ctx is not None:
                ctx.group = slice(i, min(i + step, b * n))
            yield self.encoder(flat[i:i + step])

    def cross_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, N, D) tokens -> (P, N) logits: the transformer, then the max over features."""
        return self.cross(tokens).amax(-1)

    def _cross_logits(self, f: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """(B, N, D, h, w) features -> (B, N, h, w) logits: attention over each pixel's N tokens."""
        b, n, _, h, w = f.shape
        tokens = f.permute(0, 3, 4, 1, 2).reshape(b * h * w, n, FEATURES)
        if self.training:  # one graph for backward
            out = self.cross_head(tokens)
        else:
            head = head or self.cross_head
            chunk = max(1, self.ATTENTION_TOKENS // n)
            out = torch.cat([head(tokens[s:s + chunk]) for s in range(0, tokens.shape[0], chunk)])
        return out.reshape(b, h, w, n).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``head``: another runtime's :meth:`cross_head` (inference; core/models/onnx_runtime.py)."""
        b, n, h, w = x.shape
        if self.training:
            return self._to_full(self._cross_logits(self.features(x)), (h, w))
        # Inference: the part on the cross-slice grid (upsampling, head, tokens, attention: ~5 copies of
        # N x 16 floats per pixel) runs in bands of rows, so the peak is the encoder's, not 16 features per voxel.
        q = torch.cat([self.decoder.quarter(feats) for feats in self.encode(x)])
        hs, ws = self._coarse(h, w)
        out = torch.empty((b, n, hs, ws), dtype=q.dtype, device=q.device)
        rows = max(1, self.BAND_TOKENS // (n * ws))
        for r0 in range(0, hs, rows):
            r1 = min(hs, r0 + rows)
            f = self.decoder.rows(q, (hs, ws), r0, r1)
            out[:, :, r0:r1] = self._cross_logits(f.reshape(b, n, FEATURES, r1 - r0, ws), head)
        return self._to_full(out, (h, w))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["StackMFFV3", "count_parameters", "WIDTHS", "NARROW_WIDTHS"]
