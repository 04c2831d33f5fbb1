"""Fusion2Void-style unsupervised training: learn fusion by inpainting the sources.

Clean-room, from the published description (``shared/MODELS.md``, "Fusion2Void"). Random square
patches of the **source** slices are dropped (the same patches in every slice of a stack); an
inpainting network restores each dropped patch from the fused image, the masked slice and the mask.
Blurring a sharp fused image to match a defocused slice is easy, sharpening a blurred one is not, so
restoring the in-focus slice's detail is only possible when the fused image carries it: the fused
image is pushed to keep all in-focus content, and no ground truth is needed.

For us the "fusion net" is any focus model of the registry (``(B, N, H, W)`` slices -> logits):
during training the fused image is the softmax-weighted sum of the slices (differentiable); at
inference the usual argmax readout selects one slice per pixel. The inpainter runs once per source
slice with shared weights (input: the fused image, the masked slice, the mask), so stacks of any N,
pairs included, use one network.

What we changed, measured: a plain learned inpainter, untrained at first, rewards the blurriest,
most "average" fused image (it restores the many defocused slices best), and V2 trained from scratch
with it collapsed onto defocused slices (within +-1 slice of the truth 55 % -> 3 %). Our inpainter
therefore starts from a parameter-free *context blur fit* (for each slice, which Gaussian blur of the
fused image matches the kept pixels around a dropped square) and learns corrections to it; with
that (and the defaults below), V2 from scratch, labels never used, went from 55 % within +-1 slice
to 85 % after 50 steps and 91 % after 200 (8 synthetic validation stacks, N 6-8; the shipped,
supervised weights: 97 %). See :class:`Inpainter`.

Sizes follow the published inpainting net (conv 3x3 -> 8 residual blocks of 32 channels -> conv;
with its 9-channel RGB-pair input that is 152,326 parameters, which ``Inpainter(in_ch=9, out_ch=6,
sigmas=())`` reproduces; ours is grey and per slice, 12 -> 6 channels, 153,190 parameters).
:class:`PairFusionNet` is the published pair fusion net (two unshared encoders, 261,571 parameters),
kept for N = 2 pair fusion; our focus models do not need it, and nothing trains it yet.

Patch size, drop ratio and loss weights are not published; the defaults below come from the
experiments described at :data:`PATCH` and :data:`FIT_TEMPERATURE`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Fusion2VoidLoss", "Inpainter", "PairFusionNet", "context_blur_logits", "drop_mask", "gaussian_bank",
           "soft_fuse"]

#: Side of a dropped square (pixels of the downscaled training crop; also the radius of context the
#: blur fit reads around it), the share of squares dropped, and the loss weights. Measured by
#: optimising free per-pixel logits with the objective alone (inpainter untrained, so the context blur
#: fit) on 4 synthetic validation stacks (``validation_set(0, 4, 96, (6, 8))``; 150 Adam steps, lr 0.05), scoring
#: within +-1 slice of the truth on textured pixels (0.14 at the start; +-0.02 between repeats):
#:   patch 4 / 8 / 12 / 16 (ratio 0.3, grad 1, entropy 0):       0.763 / 0.758 / 0.747 / 0.724
#:   patch 8 / 16 / 24 (ratio 0.3, grad 1, entropy 0.01):        0.724 / 0.693 / 0.621
#:   ratio 0.15 / 0.3 / 0.5 (patch 16, grad 1, entropy 0.01):    0.678 / 0.693 / 0.694
#:   grad weight 0 / 1 (patch 8, entropy 0):                     0.750 / 0.758
#:   entropy weight 0 / 0.01 / 0.1 (patch 16, grad 1):           0.724 / 0.693 / 0.515
#: Smaller squares help down to ~8 px, the ratio hardly matters, the gradient term helps a little, and
#: the entropy term *hurts*: it makes each pixel commit early, often to the wrong slice (mean |soft -
#: hard fused| 0.022 / 0.015 / 0.002 for the three entropy weights). So no entropy term by default: the
#: argmax readout at inference does not need it (the option stays for experiments).
PATCH = 8
DROP_RATIO = 0.3
#: Weight of the L1 between the image gradients of the restored and the true squares.
GRAD_WEIGHT = 1.0
#: Weight of the mean normalised entropy of the per-pixel slice probabilities (pushes toward one-hot).
ENTROPY_WEIGHT = 0.0
#: Gaussian blurs of the fused image the inpainter chooses from (see :class:`Inpainter`): 0 (sharp) up to
#: sigma 8 px, about the widest defocus (disc radius ~16 px) left after training crops are downscaled.
BLUR_SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)
#: Temperature of the context blur fit (:func:`context_blur_logits`). Measured as above, with the plain
#: L1 over all slices (patch 16): within +-1 slice 0.668 / 0.705 / 0.744 / 0.722 / 0.678 for
#: T = 0.03 / 0.1 / 0.3 / 1 / 3.
FIT_TEMPERATURE = 0.3
#: Source slices inpainted per stack and step (a random subset; all of them when N is smaller): the
#: loss over the subset is an unbiased estimate of the full one. Measured, one CPU thread, 4 stacks of
#: 8 slices at 64 px, V2 + inpainter forward and backward: 1.2 s a step with 3, 2.1 s with all 8.
SLICES_PER_STACK = 3
#: Steps at the start during which only the inpainter learns (the fused image is detached). 0: the
#: untrained inpainter is already the context blur fit, whose gradients point the right way.
WARMUP_STEPS = 0
#: Learning rate of the inpainter (the focus model uses the run's --lr): it has to keep ahead of
#: the focus model it judges.
INPAINTER_LR = 1e-3


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus the input (the published block shape)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def gaussian_bank(image: Tensor, sigmas: tuple[float, ...]) -> Tensor:
    """(B, 1, H, W) -> (B, K, H, W): the image blurred by each Gaussian sigma (0 = itself), separably,
    with replicated edges (a crop is often narrower than the widest kernel's reflection)."""
    out = []
    for s in sigmas:
        if s <= 0:
            out.append(image)
            continue
        r = int(math.ceil(3 * s))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=image.device, dtype=image.dtype) / s) ** 2)
        k = k / k.sum()
        x = F.conv2d(F.pad(image, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        out.append(F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1)))
    return torch.cat(out, dim=1)


def context_blur_logits(bank: Tensor, masked: Tensor, mask: Tensor, radius: int,
                        temperature: float = FIT_TEMPERATURE) -> Tensor:
    """(B, K, H, W) blurred fused images, (B, S, H, W) masked sources, (B, 1, H, W) mask ->
    (B, S, K, H, W) logits of which blur explains each source around each pixel.

    For every pixel, the mean |source - blurred fused| over the *kept* pixels within ``radius``
    (a normalised box filter), per blur; logit = -log(error) / temperature, so what counts is how
    many times better one blur fits than another, whatever the contrast. Inside a dropped square
    this reads the ring of context around it: the defocus the source shows there.
    """
    b, s, h, w = masked.shape
    k = bank.shape[1]
    keep = 1 - mask
    err = (masked[:, :, None] - bank[:, None]).abs() * keep[:, None]  # (B, S, K, H, W)
    size = 2 * radius + 1
    num = F.avg_pool2d(err.reshape(b * s * k, 1, h, w), size, 1, radius, count_include_pad=False)
    den = F.avg_pool2d(keep, size, 1, radius, count_include_pad=False)  # (B, 1, H, W)
    e = num.view(b, s, k, h, w) / den[:, None].clamp_min(1e-3)
    return -torch.log(e + 1e-4) / temperature


class Inpainter(nn.Module):
    """Restores dropped squares of each source slice from the fused image: (fused, masked source,
    mask) per slice -> the source slice. Shared over slices, so N is free.

    Blur-fit mode (default, ``sigmas`` = :data:`BLUR_SIGMAS`): the prediction is a per-pixel
    softmax-weighted mix of the fused image blurred by each sigma, plus a small correction. The
    weights start from :func:`context_blur_logits` (which blur matches the source around the
    square) and a residual conv net learns corrections to them and the residual; its last conv
    starts at zero, so an untrained inpainter is the parameter-free blur fit. Why: a defocused
    slice is (nearly) the in-focus image blurred, so a sharp fused image lets every slice be
    restored by choosing a blur, while no blur restores a sharp slice from a blurred fused image.
    Measured: with a plain net (or blur weights learned from scratch) the untrained inpainter
    rewards the blurriest, most "average" fused image, and V2 trained from scratch collapsed onto
    defocused slices (within +-1 slice 55 % -> 3-6 % in 300 steps).

    ``sigmas=()``: the plain published shape (conv ``in_ch`` -> ``blocks`` residual blocks -> conv
    ``out_ch``, predicting a correction to the fused image).
    """

    def __init__(self, width: int = 32, blocks: int = 8, in_ch: int = 3, out_ch: int = 1,
                 sigmas: tuple[float, ...] | None = None, radius: int = PATCH) -> None:
        super().__init__()
        self.sigmas = tuple(BLUR_SIGMAS if sigmas is None else sigmas)
        self.radius = int(radius)
        if self.sigmas:  # inputs: blurred fused images, their context fit, masked source, mask
            in_ch, out_ch = 2 * len(self.sigmas) + 2, len(self.sigmas) + 1
        self.head = nn.Conv2d(in_ch, width, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(width) for _ in range(blocks)))
        self.tail = nn.Conv2d(width, out_ch, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, fused: Tensor, masked: Tensor, mask: Tensor) -> Tensor:
        """fused (B, 1, H, W), masked sources (B, S, H, W), mask (B, 1, H, W; 1 = dropped) -> (B, S, H, W)."""
        b, s, h, w = masked.shape
        if not self.sigmas:
            x = torch.stack([fused.expand(b, s, h, w), masked, mask.expand(b, s, h, w)], dim=2)
            return fused + self.tail(self.body(F.relu(self.head(x.reshape(b * s, 3, h, w))))).view(b, s, h, w)
        bank = gaussian_bank(fused, self.sigmas)
        k = bank.shape[1]
        prior = context_blur_logits(bank, masked, mask, self.radius)  # (B, S, K, H, W)
        x = torch.cat([bank[:, None].expand(b, s, k, h, w), prior * FIT_TEMPERATURE / 10, masked[:, :, None],
                       mask[:, None].expand(b, s, 1, h, w)], dim=2).reshape(b * s, 2 * k + 2, h, w)
        y = self.tail(self.body(F.relu(self.head(x)))).view(b, s, k + 1, h, w)
        weights = torch.softmax(prior + y[:, :, :k], dim=2)
        return (weights * bank[:, None]).sum(2) + y[:, :, k]


class PairFusionNet(nn.Module):
    """The published Fusion2Void pair fusion net: F(A, B) -> fused image in [0, 1].

    Two unshared encoders (conv3x3 + 5 residual blocks, 32 channels); their features concatenated
    -> conv3x3 to 32 -> 3 residual blocks -> conv3x3 -> sigmoid. With RGB (3 channels) that is
    261,571 parameters, the published count. Symmetrised at test time by :meth:`fuse`.
    """

    def __init__(self, channels: int = 3, width: int = 32) -> None:
        super().__init__()

        def encoder() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                 *(ResBlock(width) for _ in range(5)))

        self.enc_a, self.enc_b = encoder(), encoder()
        self.decoder = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(),
                                     *(ResBlock(width) for _ in range(3)),
                                     nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.decoder(torch.cat([self.enc_a(a), self.enc_b(b)], dim=1))

    @torch.no_grad()
    def fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """(F(A, B) + F(B, A)) / 2: the result does not depend on which image is called A."""
        return 0.5 * (self(a, b) + self(b, a))


def soft_fuse(logits: Tensor, images: Tensor) -> Tensor:
    """Softmax-weighted sum of the slices: (B, N, H, W) logits and slices -> (B, 1, H, W)."""
    prob = torch.softmax(logits.float(), dim=1)
    return (prob * images.float()).sum(1, keepdim=True)


def drop_mask(b: int, h: int, w: int, patch: int, ratio: float, *, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> Tensor:
    """(B, 1, H, W) float mask, 1 on dropped squares: a randomly shifted grid of ``patch``-px cells,
    each dropped with probability ``ratio``; at least one cell per stack, so every item has a loss."""
    gh, gw = h // patch + 2, w // patch + 2
    cells = torch.rand(b, 1, gh, gw, device=device, generator=generator) < ratio
    none = ~cells.flatten(1).any(1)
    if none.any():  # force one cell inside the crop
        cells[none, 0, 1, 1] = True
    full = cells.float().repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    oy, ox = (int(v) for v in torch.randint(0, patch, (2,), generator=generator))
    return full[:, :, oy:oy + h, ox:ox + w].contiguous()  # the grid is >= patch larger than the crop


def _grad_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 between horizontal and vertical differences, inside the dropped squares."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    mx, my = mask[..., :, 1:] * mask[..., :, :-1], mask[..., 1:, :] * mask[..., :-1, :]
    ex = ((dx(pred) - dx(target)).abs() * mx).sum() / (mx.sum() * pred.shape[1]).clamp_min(1)
    ey = ((dy(pred) - dy(target)).abs() * my).sum() / (my.sum() * pred.shape[1]).clamp_min(1)
    return 0.5 * (ex + ey)


class Fusion2VoidLoss(nn.Module):
    """The unsupervised objective, holding the inpainter it trains jointly with the focus model.

    ``forward(logits, images)`` -> scalar loss = L1(restored, source) on the dropped squares
    + ``grad_weight`` x the same on image gradients + ``entropy_weight`` x the mean normalised
    entropy of the slice probabilities. During the first ``warmup`` training calls the fused image
    is detached, so only the inpainter learns. ``last`` holds the terms of the latest call.
    """

    def __init__(self, *, patch: int = PATCH, ratio: float = DROP_RATIO, grad_weight: float = GRAD_WEIGHT,
                 entropy_weight: float = ENTROPY_WEIGHT, slices_per_stack: int = SLICES_PER_STACK,
                 warmup: int = WARMUP_STEPS, width: int = 32, blocks: int = 8,
                 sigmas: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.inpainter = Inpainter(width, blocks, sigmas=sigmas, radius=patch)
        self.patch, self.ratio = int(patch), float(ratio)
        self.grad_weight, self.entropy_weight = float(grad_weight), float(entropy_weight)
        self.slices_per_stack, self.warmup = int(slices_per_stack), int(warmup)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # saved, so resume keeps the warm-up
        self.last: dict[str, float] = {}

    def forward(self, logits: Tensor, images: Tensor) -> Tensor:
        b, n, h, w = images.shape
        images = images.float()
        logp = torch.log_softmax(logits.float(), dim=1)
        prob = logp.exp()
        fused = (prob * images).sum(1, keepdim=True)
        warming = self.training and int(self.calls) < self.warmup
        if self.training:
            self.calls += 1
        if warming:
            fused = fused.detach()
        mask = drop_mask(b, h, w, self.patch, self.ratio, device=images.device)
        k = min(self.slices_per_stack, n)
        pick = torch.rand(b, n, device=images.device).argsort(1)[:, :k]
        src = images.gather(1, pick[:, :, None, None].expand(b, k, h, w))
        restored = self.inpainter(fused, src * (1 - mask), mask)
        l1 = ((restored - src).abs() * mask).sum() / (mask.sum() * k).clamp_min(1)
        grad = _grad_l1(restored, src, mask) if self.grad_weight else torch.zeros((), device=images.device)
        loss = l1 + self.grad_weight * grad
        ent = -(prob * logp).sum(1).mean() / math.log(n) if n > 1 else torch.zeros((), device=images.device)
        if self.entropy_weight and not warming:
            loss = loss + self.entropy_weight * ent
        self.last = {"l1": l1.item(), "grad": grad.item(), "entropy": ent.item()}
        return loss
