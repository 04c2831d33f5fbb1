"""What a training run is told (:class:`TrainConfig`) and what it reports back (events, result).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..defaults import MAX_SIDE
from ..models import fusion2void as f2v


@dataclass
class TrainConfig:
    """Settings of a training run (all plain values, saved inside the checkpoint)."""

    model: str = "stackmff-v2"
    data: str | list[str] = "synthetic"  # or a labelled folder; unsupervised: folders of stacks / TIFF paths
    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 4
    crop: int = 128
    lr: float = 1e-3
    lr_gamma: float = 0.9
    weight_decay: float = 1e-4
    device: str = "auto"
    seed: int = 0
    checkpoint: str = "runs/stackmff_v2.pt"
    resume: bool = False
    n_range: tuple[int, int] = (4, 16)
    val_stacks: int = 16
    patience: int = 6
    init_weights: str | None = None
    pool_size: int = 24
    pool_refresh_every: int = 2
    noise: bool = True
    clean_fraction: float = 0.0  # share of synthetic stacks rendered without sensor noise (when noise is on)
    realism: list[str] = field(default_factory=list)  # real-optics effects (core.realism.EFFECTS) in the renders
    realism_p: float = 0.5  # chance of each named effect per rendered stack
    render_workers: int = 0  # processes rendering synthetic stacks (0: in the training loop, reproducible)
    objective: str = "hybrid"  # "hybrid" (ours, measured better), "depth" (published), "classify", "unsupervised"
    variant: str | None = None  # a model size other than the default (e.g. StackMFF-V3 "narrow")
    train_only: str | None = None  # train only this part (e.g. the event model's "prior"); the rest stays frozen
    shuffle: float = 0.0  # chance that a training stack's slices are shuffled (the label follows)
    invalid: float = 0.0  # chance that a batch gets 1-3 invalid slices (blank, saturated, duplicate...)
    # Unsupervised (Fusion2Void) settings; defaults measured, see models/fusion2void.py.
    max_side: int = MAX_SIDE  # unlabelled stacks are downscaled to this longer side when loaded
    patch: int = f2v.PATCH
    drop_ratio: float = f2v.DROP_RATIO
    grad_weight: float = f2v.GRAD_WEIGHT
    entropy_weight: float = f2v.ENTROPY_WEIGHT
    warmup_steps: int = f2v.WARMUP_STEPS


@dataclass
class TrainEvent:
    """What the callback receives: after every batch, and after every epoch with validation."""

    kind: Literal["prepare", "batch", "epoch", "done", "stopped"]  # prepare: rendering data, step of n_steps
    epoch: int
    n_epochs: int
    step: int
    n_steps: int
    loss: float
    val: dict[str, float] | None = None
    checkpoint: Path | None = None


@dataclass
class TrainResult:
    checkpoint: Path  # best weights (by validation)
    last_checkpoint: Path
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
