"""One training loop for every focus model: the CLI, the training widget and scripts drive it.

It takes a config, reports progress through a callback (per batch and per epoch) and stops
cleanly when a ``threading.Event`` is set, keeping the last checkpoint. Checkpoints are written
atomically each epoch and hold everything needed to resume (optimizer, scheduler, RNG-free
data state: the data are regenerated from the seed and epoch).

Data: synthetic focal stacks (default) or a folder dataset in the seed layout
(``stacks/<scene>/1.png ...`` + ``depth_maps/<scene>.png``). The ``unsupervised`` objective
(Fusion2Void-style inpainting, :mod:`.models.fusion2void`) needs no labels: it also takes folders of
unlabelled stacks and TIFF files (:class:`UnlabelledData`)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import StackMFFError, WeightsError
from ..io.stack import FocalStack
from ..models import fusion2void as f2v
from ..models.inference import pad_to_multiple
from ..models.registry import get_spec
from .config import TrainConfig, TrainEvent, TrainResult
from .data import (
    Batch,
    EventPool,
    FolderData,
    Sample,
    SyntheticPool,
    UnlabelledData,
    event_validation_set,
    validation_set,
)
from .objectives import Objective, depth_regression_loss, get_objective
from .realism import Realism


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: list[tuple[Sample, object]], device: torch.device,
             readout_mode: str = "softargmax") -> dict[str, float]:
    """Validation: loss, fraction within ±1 slice, and PSNR of the gathered all-in-focus image.

    The loss is always the published depth regression, so runs with different objectives compare.
    """
    from ..fusion.metrics import psnr
    from ..models.inference import readout
    from ..tiles.pipeline import gather

    model.eval()
    losses, within, psnrs = [], [], []
    for sample, synth_stack in val:
        x = torch.from_numpy(sample.images)[None].to(device)
        xp, h, w = pad_to_multiple(x)
        if sample.events is None:
            logits = model(xp)[:, :, :h, :w]
        else:
            ep, _, _ = pad_to_multiple(torch.from_numpy(sample.events)[None].to(device))
            logits = model(xp, ep)[:, :, :h, :w]
        y = torch.from_numpy(sample.focus)[None].to(device)
        losses.append(float(depth_regression_loss(logits, y)))
        focus, _ = readout(logits[0], readout_mode)
        err = (focus - y[0]).abs()
        within.append(float((err <= 1).float().mean()))
        idx = focus.round().long().clamp(0, sample.images.shape[0] - 1).cpu().numpy()
        psnrs.append(psnr(gather(synth_stack.to_stack(), idx), synth_stack.aif))
    model.train()
    return {"val_loss": float(np.mean(losses)), "val_within1": float(np.mean(within)),
            "val_psnr": float(np.mean(psnrs))}


# ---------------------------------------------------------------------------------- loop
def _is_v2_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a weights file's state holds a bare StackMFF-V2 (to start an event model from it)."""
    return "feature_extraction.encoder1.0.weight" in state and "v2.feature_extraction.encoder1.0.weight" not in state


def _save(path: Path, payload: dict) -> None:
    from ..io.safe_files import atomic_write

    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _build_model(cfg: TrainConfig, spec: Any, device: torch.device) -> torch.nn.Module:
    """The network to train: fresh, or started from ``cfg.init_weights`` (an event model may start from
    V2 weights or from event weights trained before its focus prior), with only ``cfg.train_only`` free."""
    from ..models.checkpoint import load_state_dict

    if cfg.variant is not None and cfg.variant not in spec.variants:
        raise StackMFFError(f"{cfg.model} has no variant {cfg.variant!r}; "
                            f"choose one of: {', '.join(spec.variants) or 'none (leave it out)'}.")
    model = spec.build(cfg.variant).to(device)
    if cfg.init_weights and spec.uses_events:
        from ..models.checkpoint import read_state_dict
        from ..models.event import EventStackMFF

        state = read_state_dict(cfg.init_weights)
        if _is_v2_state(state):  # starts as that V2
            model = EventStackMFF.from_v2(state, prior=cfg.variant != "no-prior").to(device)
        elif model.prior is not None and not EventStackMFF.has_prior(state):
            try:  # event weights trained before the focus prior: the prior starts at its default weight
                model.adopt(state)
            except ValueError as exc:
                raise StackMFFError(f"{cfg.init_weights}: cannot start {cfg.model} from it ({exc}).") from None
        else:
            load_state_dict(cfg.init_weights, model, model_name=cfg.model)
    elif cfg.init_weights:
        try:
            load_state_dict(cfg.init_weights, model, model_name=cfg.model)
        except WeightsError as exc:  # a model may start from a near relative's weights (V3: another stride)
            if not hasattr(model, "adopt"):
                raise
            from ..models.checkpoint import read_state_dict

            try:
                model.adopt(read_state_dict(cfg.init_weights))
            except RuntimeError:
                raise exc from None  # not a relative either: the loader's one line says why
    if cfg.train_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(cfg.train_only + "."))
        if not any(p.requires_grad for p in model.parameters()):
            raise StackMFFError(f"{cfg.model} has no part {cfg.train_only!r} to train alone.")
    return model


def _optimiser(cfg: TrainConfig, model: torch.nn.Module, crit: torch.nn.Module | None
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over what trains (a model of trained and new parts says how fast each learns; the
    unsupervised objective's inpainter at its own rate) with an exponential decay per epoch."""
    groups = ([{"params": [p for p in model.parameters() if p.requires_grad]}] if cfg.train_only else
              model.param_groups(cfg.lr) if hasattr(model, "param_groups") else [{"params": list(model.parameters())}])
    if crit is not None:
        groups.append({"params": list(crit.parameters()), "lr": f2v.INPAINTER_LR})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_gamma)


@dataclass
class _Progress:
    """Where a run stands: what a checkpoint saves and a resume restores."""

    start_epoch: int = 0
    best: float = math.inf
    history: list[dict] = field(default_factory=list)
    bad_epochs: int = 0


def _resume(cfg: TrainConfig, ckpt: Path, model: torch.nn.Module, crit: torch.nn.Module | None,
            opt: torch.optim.Optimizer, sched: Any) -> _Progress:
    """Restore model, objective, optimiser and schedule from our own checkpoint ``ckpt``; one clear line
    for anything else (weights only, another model or objective, a broken file)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a checkpoint, or holding code (refused by weights_only)
        why = ("not a torch file, or it holds more than tensors" if "weights only" in str(exc).lower()
               else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120])
        raise StackMFFError(f"{ckpt}: cannot resume from it ({why}); start a new checkpoint or drop "
                            "--resume.") from None
    if not isinstance(state, dict) or not {"state_dict", "optimizer", "epoch"} <= set(state):
        raise StackMFFError(f"{ckpt}: is not a training checkpoint of ours (weights only?); pass it as "
                            "--init-weights to fine-tune from it, without --resume.")
    if state.get("model") != cfg.model:
        raise StackMFFError(f"{ckpt}: holds a {state.get('model')!r} checkpoint, not {cfg.model!r}.")
    model.load_state_dict(state["state_dict"])
    if crit is not None:
        if "objective_state" not in state:
            raise StackMFFError(f"{ckpt}: was not trained with the {cfg.objective!r} objective; resume it "
                                "with its own objective or start a new checkpoint.")
        crit.load_state_dict(state["objective_state"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return _Progress(state["epoch"] + 1, state["best_val"], list(state["history"]), state.get("bad_epochs", 0))


def _training_data(cfg: TrainConfig, spec: Any, objective: Objective, rng: np.random.Generator,
                   stacks: Sequence[FocalStack] | None, on_render: Callable[[int, int], None],
                   stop: threading.Event | None) -> Any:
    """The batches' source: open stacks, synthetic (image or image + event) stacks rendered in a pool,
    unlabelled stacks from disk, or a labelled folder dataset."""
    margin = cfg.crop + max(16, cfg.crop // 4)
    if stacks is not None:
        if objective.needs_labels:
            raise StackMFFError(f"open stacks carry no labels: train on them with the 'unsupervised' objective, "
                                f"not {cfg.objective!r}.")
        return UnlabelledData(list(stacks), rng, cfg.n_range, cfg.max_side, on_load=on_render)
    if cfg.data == "synthetic" and spec.uses_events:
        return EventPool(rng, margin, cfg.n_range, cfg.pool_size, cfg.pool_refresh_every, noise=cfg.noise,
                         clean_fraction=cfg.clean_fraction, on_render=on_render, stop=stop, workers=cfg.render_workers)
    if cfg.data == "synthetic":
        realism = Realism.mix(cfg.realism, cfg.realism_p) if cfg.realism else None
        return SyntheticPool(rng, margin, cfg.n_range, cfg.pool_size, cfg.pool_refresh_every, noise=cfg.noise,
                             clean_fraction=cfg.clean_fraction, on_render=on_render, stop=stop, realism=realism,
                             workers=cfg.render_workers, shuffle=cfg.shuffle, invalid=cfg.invalid)
    if not objective.needs_labels:
        return UnlabelledData(cfg.data, rng, cfg.n_range, cfg.max_side, on_load=on_render)
    if not isinstance(cfg.data, (str, Path)):
        raise StackMFFError(f"{cfg.objective!r} training needs labels: one dataset folder (stacks/ + depth_maps/) "
                            "or 'synthetic'; unlabelled stacks train with the 'unsupervised' objective.")
    return FolderData(cfg.data, rng)


@dataclass
class _Epoch:
    """One epoch's training steps: losses, the objective's terms, time waiting for data, stopped early."""

    losses: list[float] = field(default_factory=list)
    terms: list[dict] = field(default_factory=list)
    data_s: float = 0.0
    seconds: float = 0.0
    stopped: bool = False


def _train_epoch(cfg: TrainConfig, epoch: int, model: torch.nn.Module, crit: torch.nn.Module | None,
                 loss_of: Callable[[torch.Tensor, Batch], torch.Tensor], opt: torch.optim.Optimizer, data: Any,
                 device: torch.device, emit: Callable[[TrainEvent], None], stop: threading.Event | None) -> _Epoch:
    """``cfg.steps_per_epoch`` optimiser steps (bf16 autocast on CUDA), each reported; stops between steps."""
    out, t0 = _Epoch(), time.perf_counter()
    use_amp = device.type == "cuda"
    for step in range(cfg.steps_per_epoch):
        if stop is not None and stop.is_set():
            out.stopped = True
            break
        t_data = time.perf_counter()
        batch = Batch(*(t.to(device, non_blocking=True) if t is not None else None
                        for t in data.batch(cfg.batch_size, cfg.crop)))
        out.data_s += time.perf_counter() - t_data
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(batch.images) if batch.events is None else model(batch.images, batch.events)
        loss = loss_of(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if crit is not None:  # clipped apart, so the inpainter's gradients never shrink the model's
            torch.nn.utils.clip_grad_norm_(crit.parameters(), 1.0)
        opt.step()
        out.losses.append(loss.detach().item())  # .item() waits for the device: step times are real
        if crit is not None:
            out.terms.append(getattr(crit, "last", {}))
        emit(TrainEvent("batch", epoch, cfg.epochs, step, cfg.steps_per_epoch, out.losses[-1]))
    out.seconds = time.perf_counter() - t0
    return out


def _epoch_record(epoch: int, done: _Epoch, lr: float, t0: float, metrics: dict) -> dict:
    """The history line of an epoch. data_wait: the share of training time spent waiting for batches
    (rendering, cropping) with the model idle; near 0 means the data keep the device busy."""
    record = {"epoch": epoch, "loss": float(np.mean(done.losses)), "lr": lr, "seconds": time.perf_counter() - t0,
              "steps_per_s": len(done.losses) / max(done.seconds, 1e-9),
              "data_wait": done.data_s / max(done.seconds, 1e-9), **metrics}
    for key in sorted({k for t in done.terms for k in t}):  # e.g. the unsupervised loss's L1 and entropy
        record[f"train_{key}"] = float(np.mean([t[key] for t in done.terms if key in t]))
    return record


def _save_checkpoints(cfg: TrainConfig, ckpt: Path, best_path: Path, model: torch.nn.Module,
                      crit: torch.nn.Module | None, opt: torch.optim.Optimizer, sched: Any, epoch: int,
                      progress: _Progress, improved: bool, readout: str, record: dict) -> None:
    """The resumable checkpoint every epoch; the best weights (with their epoch's record) when improved."""
    payload = {"model": cfg.model, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
               "scheduler": sched.state_dict(), "epoch": epoch, "best_val": progress.best,
               "bad_epochs": progress.bad_epochs, "history": progress.history, "readout": readout,
               "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}}
    if crit is not None:
        payload["objective_state"] = crit.state_dict()
    _save(ckpt, payload)
    if improved or not best_path.exists():
        _save(best_path, {"model": cfg.model, "state_dict": model.state_dict(), "meta": record, "readout": readout})


def train(
    cfg: TrainConfig,
    callback: Callable[[TrainEvent], None] | None = None,
    stop: threading.Event | None = None,
    stacks: Sequence[FocalStack] | None = None,
) -> TrainResult:
    """Train ``cfg.model``; returns the best and last checkpoints and the per-epoch history.

    ``stacks``: in-memory stacks (e.g. open napari layers) to train on instead of ``cfg.data``, which
    then only names them for the record; unsupervised objective only (they carry no labels).
    """
    t0 = time.perf_counter()
    spec = get_spec(cfg.model)
    objective = get_objective(cfg.objective)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    ckpt = Path(cfg.checkpoint)
    best_path = ckpt.with_name(ckpt.stem + ".best" + ckpt.suffix)
    if spec.uses_events and cfg.data != "synthetic":
        raise StackMFFError(f"{cfg.model} trains on synthetic image + event stacks only (data='synthetic').")
    model = _build_model(cfg, spec, device)
    crit = objective.criterion(cfg).to(device) if objective.criterion is not None else None
    opt, sched = _optimiser(cfg, model, crit)
    progress = _Progress()
    if cfg.resume and ckpt.exists():
        progress = _resume(cfg, ckpt, model, crit, opt, sched)
        rng = np.random.default_rng([cfg.seed, progress.start_epoch])
        torch.manual_seed(cfg.seed + 1000 * progress.start_epoch)  # new masks and slice picks, not a replay
    emit = callback or (lambda ev: None)
    n_prep = (cfg.pool_size if cfg.data == "synthetic" and stacks is None else 0) + cfg.val_stacks
    prepared = [0]

    def on_render(_i: int, _n: int) -> None:
        prepared[0] += 1
        emit(TrainEvent("prepare", progress.start_epoch, cfg.epochs, prepared[0], n_prep, float("nan")))

    data = _training_data(cfg, spec, objective, rng, stacks, on_render, stop)
    loss_of = (lambda lg, b: crit(lg, b.images)) if crit is not None else objective.loss
    val = (event_validation_set(cfg.seed, cfg.val_stacks, max(cfg.crop, 96), cfg.n_range, cfg.noise,
                                cfg.clean_fraction) if spec.uses_events else
           validation_set(cfg.seed, cfg.val_stacks, max(cfg.crop, 96), cfg.n_range, cfg.noise, cfg.clean_fraction,
                          shuffle=cfg.shuffle, invalid=cfg.invalid))
    for _ in val:
        on_render(0, 0)
    stopped = stop is not None and stop.is_set()
    model.train()
    if crit is not None:
        crit.train()
    try:
        for epoch in range(progress.start_epoch, 0 if stopped else cfg.epochs):
            done = _train_epoch(cfg, epoch, model, crit, loss_of, opt, data, device, emit, stop)
            stopped = done.stopped
            if not done.losses:
                break
            sched.step()
            metrics = evaluate(model, val, device, objective.readout)
            record = _epoch_record(epoch, done, opt.param_groups[0]["lr"], t0, metrics)
            progress.history.append(record)
            score = objective.score(metrics)
            improved = score < progress.best
            progress.best, progress.bad_epochs = (score, 0) if improved else (progress.best, progress.bad_epochs + 1)
            _save_checkpoints(cfg, ckpt, best_path, model, crit, opt, sched, epoch, progress, improved,
                              objective.readout, record)
            emit(TrainEvent("epoch", epoch, cfg.epochs, cfg.steps_per_epoch, cfg.steps_per_epoch, record["loss"],
                            val=metrics, checkpoint=ckpt))
            if stopped or progress.bad_epochs >= cfg.patience:
                break
    finally:
        if isinstance(data, SyntheticPool):
            data.close()
    if device.type == "cuda":
        del model, opt, crit
        torch.cuda.empty_cache()
    history = progress.history
    final = TrainEvent("stopped" if stopped else "done", len(history), cfg.epochs, 0, 0,
                       history[-1]["loss"] if history else float("nan"), checkpoint=best_path)
    emit(final)
    return TrainResult(checkpoint=best_path, last_checkpoint=ckpt, history=history, stopped=stopped,
                       seconds=time.perf_counter() - t0)
