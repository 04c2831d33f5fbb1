"""A lean EventStackMFF: image and event focal stacks fused (clean-room, from ../shared/MODELS.md).

Facts kept: two streams with their own first convolution and the StackMFF-V2 encoder shared by both;
cross-modal attention (pre-LN self-attention per modality, then image queries attending to event keys
and values, MLP ratio 4) on non-overlapping patch tokens, gated by a small edge gate computed from the
events; a light event depth head adding 4 channels to the 8 image features; a module across slices.

Lean choices (documented, measured in benchmarks/bench_events_model.py): cross-modal attention at the
deepest level only (1/32: one token per 32x32 patch), where the published model has it at three; and the
module across slices is V2's bidirectional ConvGRU fed 8 + 4 channels instead of a new 1-layer
transformer. With the attention's output projection, the gate and the extra GRU inputs initialised to
zero, the network starts as exactly our trained StackMFF-V2 (:meth:`EventStackMFF.from_v2`), so a short
CPU training run can only add what the events tell, instead of re-learning focus from scratch. The
published model is 74.1 M parameters (42 M unused); this one is 159,957, and 160,262 with the
focus prior.

Ours, not in the published model: a **focus prior** (:class:`FocusPrior`). A classical measure (wavelet
detail energy, as ``method="wavelet"``) votes on every slice, added to the network's logits with a weight
per pixel that a small learned gate sets from how peaked the measure and the network's own vote are, how
active the events are there, and how far the measure stands above the frames' noise. Why: on noise-free
synthetic stacks the network's off-by-one picks on smooth depth cost it 1.4 dB against the bare wavelet
measure, and on real optics the classical measures beat the network everywhere (benchmarks/RESULTS.md, issue
14); the measure is exact where the texture is clear, the network where noise and weak texture fool the
measure. The noise cue (2026-12-07) is what lets the gate turn the vote down on noisy frames, where without it
the event model fell behind V2 (RESULTS.md, issue 28). Checkpoints without the prior load as the
``"no-prior"`` variant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tiles import classical
from .v2 import GRU_HIDDEN, WIDTHS, BiConvGRU, StackMFFV2, _gelu, _pool2, _up2

EVENT_HEAD = 4  # event depth-head channels added to V2's 8 image features
HEADS = 4
#: The prior's focus-measure window, the classical default. Wider windows cost V2 + prior 0.66 dB (15 px) and
#: 1.39 dB (25 px) on noise-free stacks for at most +0.29 dB on noisy weak texture (RESULTS.md, issue 14).
PRIOR_WINDOW = 9
#: Floor of the wavelet energy before the log, on slices scaled to [0, 1] by the stack's range: 1e-4 of
#: the median synthetic stack's mean energy (7e-3; 10-90 %: 2e-3-2e-2). A fixed number, not one per
#: tile, so tiled and whole-image results agree.
PRIOR_EPS = 1e-6
#: The gate's start, softplus^-1(1): weight 1 on the measure's log energy, where the untrained sum of
#: the stage-1 event logits (weights/eventstackmff.md) and the measure scores 27.30 dB noise-free on the
#: held-out stacks (bare network 26.29; weight 4: 27.64).
PRIOR_GATE_INIT = 0.5413


def _attend(mha: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """What ``mha(q, k, v)[0]`` computes (batch first, no mask), written with scaled_dot_product_attention
    on the module's own weights: the same numbers (to 1e-6), and shapes the ONNX exporter keeps free (the
    module's own path fixed the token count at export: core/models/onnx_runtime.py)."""
    m, lq, c = q.shape
    heads = mha.num_heads
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)

    def split(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.linear(x, w, b).view(x.shape[0], x.shape[1], heads, c // heads).transpose(1, 2)

    a = F.scaled_dot_product_attention(split(q, wq, bq), split(k, wk, bk), split(v, wv, bv),
                                       dropout_p=mha.dropout if mha.training else 0.0)
    return mha.out_proj(a.transpose(1, 2).reshape(m, lq, c))


class CrossModal(nn.Module):
    """Pre-LN self-attention per modality, then image tokens attend to event tokens; gated residual."""

    def __init__(self, dim: int = WIDTHS[-1], heads: int = HEADS, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm_i, self.norm_e = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_i = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_e = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        for proj in (self.cross.out_proj, self.mlp[2]):  # start as the identity: the image path is untouched
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, img: Tensor, evt: Tensor, gate: Tensor) -> Tensor:
        """(M, C, h, w) image and event maps and (M, 1, h, w) gate -> the image map with event context."""
        m, c, h, w = img.shape
        ti, te = img.flatten(2).transpose(1, 2), evt.flatten(2).transpose(1, 2)  # (M, h*w, C)
        ni, ne = self.norm_i(ti), self.norm_e(te)
        ti = ti + _attend(self.self_i, ni, ni, ni)
        te = te + _attend(self.self_e, ne, ne, ne)
        q, kv = self.norm_q(ti), self.norm_kv(te)
        fused = _attend(self.cross, q, kv, kv)
        fused = fused + self.mlp(self.norm_m(ti + fused))
        g = gate.flatten(2).transpose(1, 2)  # (M, h*w, 1)
        out = img.flatten(2).transpose(1, 2) + g * fused
        return out.transpose(1, 2).reshape(m, c, h, w)


class FocusPrior(nn.Module):
    """The wavelet measure's log energy per slice, added to the logits with a learned per-pixel weight.

    The gate sees four maps: how peaked the measure is across slices (low where noise or flat texture
    leave every slice alike), how peaked the network's own vote is, the local event activity (the events
    see the sweep's real changes, not the frames' noise), and how far the best slice's energy stands above
    the stack's noise floor there (:meth:`signal_to_noise`). Its output is softplus'd: a weight >= 0.
    """

    #: Cues the gate sees. Gates trained with the first three (before 2026-12-07) load with a zero weight on
    #: the fourth, so they vote exactly as they did.
    CUES = 4

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(self.CUES, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 1, 1))
        nn.init.zeros_(self.gate[2].weight)
        nn.init.constant_(self.gate[2].bias, PRIOR_GATE_INIT)
        with torch.no_grad():
            self.gate[0].weight[:, 3:].zero_()  # the noise cue starts unheard: training adds it

    @classmethod
    def upgrade(cls, state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
        """A state with a three-cue gate, as a four-cue one that votes the same (weight 0 on the new cue)."""
        key = prefix + "gate.0.weight"
        w = state.get(key)
        if w is not None and w.ndim == 4 and w.shape[1] < cls.CUES:
            state = dict(state)
            state[key] = torch.cat([w, w.new_zeros(w.shape[0], cls.CUES - w.shape[1], *w.shape[2:])], 1)
        return state

    @staticmethod
    def raw_log_energy(slices: Tensor) -> Tensor:
        """(B, N, H, W) slices in [0, 1] -> (B, N, H, W) log wavelet energy (the measure's own scale)."""
        b, n, h, w = slices.shape
        with torch.autocast(slices.device.type, enabled=False):  # energies of 1e-6 underflow in fp16
            x = slices.detach().float().reshape(b * n, 1, h, w)
            return torch.log(classical.wavelet(x, PRIOR_WINDOW) + PRIOR_EPS).view(b, n, h, w)

    @staticmethod
    def log_energy(slices: Tensor) -> Tensor:
        """(B, N, H, W) slices in [0, 1] -> (B, N, H, W) log wavelet energy, 0 at each pixel's best slice."""
        lf = FocusPrior.raw_log_energy(slices)
        return lf - lf.amax(1, keepdim=True)

    @staticmethod
    def signal_to_noise(slices: Tensor, raw: Tensor) -> Tensor:
        """(B, H, W) log of the best slice's wavelet energy over the noise floor: the finest-scale energy
        of the flattest slice there (a defocused slice's 1-px detail is its noise). Measured: 0.5 (median) on
        Poisson noise alone, 3.1 on textured pixels of a mildly noisy synthetic stack; the peakedness cue
        cannot tell these apart, since noise alone also makes one slice peak.
        """
        b, n, h, w = slices.shape
        with torch.autocast(slices.device.type, enabled=False):
            x = slices.detach().float().reshape(b * n, 1, h, w)
            fine = x - classical._b3_smooth(x, 1)
            floor = classical.box_mean(fine * fine, PRIOR_WINDOW).view(b, n, h, w).amin(1)
            return raw.amax(1) - torch.log(floor + PRIOR_EPS)

    def weight(self, logits: Tensor, lf: Tensor, events: Tensor, snr: Tensor | None = None) -> Tensor:
        """(B, 1, H, W) weight of the measure's vote."""
        activity = classical.box_mean(events.detach().float().abs().mean(1, keepdim=True), PRIOR_WINDOW)[:, 0]
        snr = torch.zeros_like(activity) if snr is None else snr / 5.0
        cues = torch.stack([-lf.mean(1) / 5.0, torch.log_softmax(logits.float(), 1).amax(1), activity, snr], 1)
        return F.softplus(self.gate(cues))

    def forward(self, logits: Tensor, slices: Tensor, events: Tensor) -> Tensor:
        raw = self.raw_log_energy(slices)
        lf = raw - raw.amax(1, keepdim=True)
        return logits + self.weight(logits, lf, events, self.signal_to_noise(slices, raw)) * lf


class EventStackMFF(nn.Module):
    """(B, N, H, W) slices and (B, N, H, W) signed event frames -> (B, N, H, W) focus logits."""

    uses_events = True

    def __init__(self, prior: bool = True) -> None:
        super().__init__()
        self.v2 = StackMFFV2()  # image stream, shared encoder/decoder, across-slice GRU (its 8 inputs)
        self.event_conv1 = nn.Conv2d(1, WIDTHS[0], 3, padding=1)  # the event stream's own first conv
        self.gate = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 1, 1))
        self.cross = CrossModal()
        self.event_head = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, EVENT_HEAD, 3, padding=1),
                                        nn.Sigmoid())
        self.across = BiConvGRU(WIDTHS[0] + EVENT_HEAD, GRU_HIDDEN)
        self.prior = FocusPrior() if prior else None
        self._init_new_parts()

    def _init_new_parts(self) -> None:
        nn.init.zeros_(self.gate[2].weight)
        nn.init.constant_(self.gate[2].bias, -4.0)  # gate ~0.02 at first
        for cell in (*self.across.forward_cell_list, *self.across.backward_cell_list):
            for conv in (cell.conv_gates, cell.conv_can):
                nn.init.orthogonal_(conv.weight)
                nn.init.zeros_(conv.bias)

    @classmethod
    def from_v2(cls, state: dict[str, Tensor], prior: bool = False) -> "EventStackMFF":
        """Start from StackMFF-V2 weights: the image path is V2's, every event part contributes nothing yet
        (with ``prior``, the focus prior votes from the start)."""
        model = cls(prior=prior)
        model.v2.load_state_dict(state)
        with torch.no_grad():
            model.event_conv1.load_state_dict(model.v2.feature_extraction.encoder1[0].state_dict())
            src = model.v2.layer_interaction.layer_interaction_depth
            for new, old in zip((*model.across.forward_cell_list, *model.across.backward_cell_list),
                                (*src.forward_cell_list, *src.backward_cell_list)):
                for name in ("conv_gates", "conv_can"):
                    a, b = getattr(new, name), getattr(old, name)
                    a.weight.zero_()
                    c_in = WIDTHS[0]
                    # input channels: [x (8 image + 4 event), h (16)]; the event channels start at zero
                    a.weight[:, :c_in] = b.weight[:, :c_in]
                    a.weight[:, c_in + EVENT_HEAD:] = b.weight[:, c_in:]
                    a.bias.copy_(b.bias)
        return model

    @staticmethod
    def has_prior(state: dict[str, Tensor]) -> bool:
        """Whether a state holds the focus prior, or predates it (the ``"no-prior"`` variant)."""
        return any(k.startswith("prior.") for k in state)

    @staticmethod
    def upgrade_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Older layouts of this model's state as today's (the shared loader calls it before its checks)."""
        return FocusPrior.upgrade(state, "prior.")

    def adopt(self, state: dict[str, Tensor]) -> None:
        """Load an event checkpoint trained without the focus prior: every part but the prior's gate,
        which keeps its start (how the prior is added to trained weights, core/train.py)."""
        missing, unexpected = self.load_state_dict(self.upgrade_state(state), strict=False)
        if unexpected or any(not k.startswith("prior.") for k in missing):
            raise ValueError(f"not an EventStackMFF state (missing {missing[:2]}, unexpected {unexpected[:2]})")

    #: Learning-rate factor of the V2 parts when training: they start trained, the event parts from nothing.
    #: At one rate for all (5e-4), 4 epochs of a CPU run left the validation PSNR where V2 had it.
    V2_LR_FACTOR = 0.1

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups: the event parts at ``lr``, the V2 parts they start from at a tenth of it."""
        v2 = {id(p) for p in self.v2.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in v2], "lr": lr},
                {"params": list(self.v2.parameters()), "lr": lr * self.V2_LR_FACTOR}]

    def _encode(self, x: Tensor, first: nn.Module) -> tuple[Tensor, list[Tensor]]:
        fe = self.v2.feature_extraction
        skips: list[Tensor] = []
        for k in range(1, 6):
            x = first(x) if k == 1 else getattr(fe, f"encoder{k}")(x)
            x = _gelu(_pool2(getattr(fe, f"ebn{k}")(x)))
            skips.append(x)
        return _gelu(fe.encoder6(x)), skips

    def frame_features(self, x: Tensor, e: Tensor) -> Tensor:
        """(M, 1, H, W) slices and their event frames -> (M, 12, H, W) per-frame features: every frame
        alone, so the ONNX runtime exports this part with the frame count free (core/models/onnx_runtime.py)."""
        fe = self.v2.feature_extraction
        xi, skips = self._encode(x, fe.encoder1)
        xe, _ = self._encode(e, self.event_conv1)
        # One gate value per 32x32 patch: the deepest level is exactly 1/32 (H, W multiples of 32), so this
        # is adaptive_avg_pool2d to that grid, written as a plain pool that exports with dynamic sizes.
        gate = torch.sigmoid(self.gate(F.avg_pool2d(e.abs(), 32)))
        xi = self.cross(xi, xe, gate)
        skips = fe.scab(skips)
        y = _gelu(fe.dbn1(fe.decoder1(xi))) + skips.pop()
        for k in range(2, 6):
            y = _gelu(_up2(getattr(fe, f"dbn{k}")(getattr(fe, f"decoder{k}")(y)))) + skips.pop()
        feats = torch.sigmoid(_up2(fe.final(y)))  # (M, 8, H, W)
        return torch.cat([feats, self.event_head(e)], 1)

    def forward(self, slices: Tensor, events: Tensor) -> Tensor:
        b, n, h, w = slices.shape
        if events.shape != slices.shape:
            raise ValueError(f"events {tuple(events.shape)} must match slices {tuple(slices.shape)}")
        if h % 32 or w % 32:
            raise ValueError(f"H and W must be multiples of 32 (pad first), got {h}x{w}")
        feats = self.frame_features(slices.reshape(b * n, 1, h, w), events.reshape(b * n, 1, h, w))
        logits = self.across(feats.view(b, n, -1, h, w))
        return logits if self.prior is None else self.prior(logits, slices, events)


def event_scale(events: Tensor) -> Tensor:
    """Signed counts -> [-1, 1] with a soft saturation, so 1 and 20 events per pixel both register."""
    return torch.tanh(events / 2.0)
