"""One training loop for every focus model: the CLI, the training widget and scripts drive it.

It takes a config, reports progress through a callback (per batch and per epoch) and stops
cleanly when a ``threading.Event`` is set, keeping the last checkpoint. Checkpoints are written
atomically each epoch and hold everything needed to resume (optimizer, scheduler, RNG-free
data state: the data are regenerated from the seed and epoch).

Data: synthetic focal stacks (default) or a folder dataset in the seed layout
(``stacks/<scene>/1.png ...`` + ``depth_maps/<scene>.png``). The ``unsupervised`` objective
(Fusion2Void-style inpainting, :mod:`.models.fusion2void`) needs no labels: it also takes folders of
unlabelled stacks and TIFF files (:class:`UnlabelledData`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch

from .defaults import MAX_SIDE, UNSUPERVISED_DEFAULTS  # noqa: F401  (re-exported: the CLI's and widget's defaults)
from .devices import resolve_device
from .errors import StackMFFError
from .models import fusion2void as f2v
from .models.inference import pad_to_multiple
from .models.registry import get_spec
from .realism import Realism
from .stack import FocalStack


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


# ------------------------------------------------------------------------------------ data
@dataclass
class Sample:
    """A training stack: (N, H, W) float images in [0, 1] and the true focus in slice units."""

    images: np.ndarray
    focus: np.ndarray
    aif: np.ndarray | None = None
    events: np.ndarray | None = None  # (N, H, W) scaled event frames, for event models


def _to_unit(stack: np.ndarray, aif: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Slices -> float gray in [0, 1], scaled by the stack's robust range (as at inference).

    With ``aif`` (the all-in-focus truth) it is scaled the same way and returned too, so the
    image term of the hybrid objective compares like with like.
    """
    from .stack import to_focus_image

    rgb = stack.ndim == 4 and stack.shape[-1] in (3, 4)
    g = np.stack([to_focus_image(s, rgb=rgb) for s in stack])
    lo, hi = np.percentile(g, [0.05, 99.95])
    unit = lambda a: np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    if aif is None:
        return unit(g)
    return unit(g), unit(to_focus_image(aif, rgb=rgb))


class Batch(NamedTuple):
    """One training batch: (B, N, H, W) slices, (B, H, W) true focus (None when unlabelled),
    (B, H, W) all-in-focus or None."""

    images: torch.Tensor
    focus: torch.Tensor | None
    aif: torch.Tensor | None = None
    events: torch.Tensor | None = None  # (B, N, H, W) scaled event frames, for event models


def render_pool_item(seed: int | Sequence[int], size: int, n_range: tuple[int, int], noise: bool,
                     clean_fraction: float, realism: Realism | None) -> tuple[np.ndarray, ...]:
    """One dense training stack (images, depth, focus positions, all-in-focus), from its own seed, so
    worker processes render exactly what the training process would."""
    from . import synth

    rng = np.random.default_rng(seed)
    # Gray only: the network sees luma, and blur is linear, so an RGB render adds cost, not signal.
    dense = max(n_range[1], min(24, max(n_range[1] + 8, 2 * n_range[1])))
    s = synth.random_stack(rng, size=size, n=dense, rgb=False, noise=noise and rng.random() >= clean_fraction,
                           max_radius=(6.0, 24.0), realism=realism)
    images, aif = _to_unit(s.slices, s.aif)
    return images, s.depth, s.focus_positions, aif


def fill_pool(render: Callable[[], tuple[np.ndarray, ...]], pool: int,
              on_render: Callable[[int, int], None] | None, stop: threading.Event | None) -> list[tuple[np.ndarray, ...]]:
    """``pool`` renders in the training process, reporting each, until ``stop`` is set."""
    items = []
    for i in range(pool):
        if stop is not None and stop.is_set():
            break
        items.append(render())
        if on_render is not None:
            on_render(i + 1, pool)
    return items


class RenderPool:
    """Rendered dense training stacks, each from its own seed; one entry is replaced every few batches.

    ``workers`` > 0 renders in that many worker processes instead, so a GPU is not left waiting on the
    renderer: replacements are queued ahead and swapped in when ready (a batch never waits for one).
    Each render has its own seed, but which batch first sees it depends on timing, so only
    ``workers=0`` replays a run exactly.
    """

    def __init__(self, rng: np.random.Generator, pool: int, refresh_every: int,
                 render: Callable[..., tuple[np.ndarray, ...]], args: tuple, *,
                 on_render: Callable[[int, int], None] | None = None, stop: threading.Event | None = None,
                 workers: int = 0) -> None:
        self.rng, self.refresh_every = rng, max(1, refresh_every)
        self.render_item, self.args = render, args  # a module-level function of (seed, *args): workers pickle it
        self.calls = self.renders = self.swapped = 0
        self.seed = int(rng.integers(2**31))
        self.items: list[tuple[np.ndarray, ...]] = []
        self.executor = None
        self.pending: list = []
        if workers > 0:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # forkserver/spawn: forking a process that holds torch's thread pools can deadlock.
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            # A render worker is one core (torch threads 1): many of them feed one trainer.
            self.executor = ProcessPoolExecutor(workers, mp_context=mp.get_context(method),
                                                initializer=torch.set_num_threads, initargs=(1,))
            futures = [self._submit() for _ in range(pool)]
            for i, fut in enumerate(futures):
                if stop is not None and stop.is_set():
                    break
                self.items.append(fut.result())
                if on_render is not None:
                    on_render(i + 1, pool)
            self.pending = [self._submit() for _ in range(2 * workers)]
            return
        self.items = fill_pool(self._render, pool, on_render, stop)

    def _next_seed(self) -> list[int]:
        self.renders += 1
        return [self.seed, self.renders]

    def _render(self) -> tuple[np.ndarray, ...]:
        return self.render_item(self._next_seed(), *self.args)

    def _submit(self):
        return self.executor.submit(self.render_item, self._next_seed(), *self.args)

    def _refresh(self) -> None:
        if self.executor is None:
            self.items[int(self.rng.integers(len(self.items)))] = self._render()
            return
        ready = [f for f in self.pending if f.done()]
        for fut in ready:  # every finished render replaces one entry; the queue is topped up
            self.pending.remove(fut)
            self.items[int(self.rng.integers(len(self.items)))] = fut.result()
            self.swapped += 1
            self.pending.append(self._submit())

    def _tick(self) -> None:
        """Count a batch; replace pool entries when due (every batch that finds a worker's render ready)."""
        self.calls += 1
        if self.executor is not None or self.calls % self.refresh_every == 0:
            self._refresh()

    def close(self) -> None:
        """Stop the render workers (queued renders are dropped)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


class SyntheticPool(RenderPool):
    """A pool of rendered dense stacks; batches are random ordered slice subsets, crops and flips.

    Rendering is the slow part, so each dense stack (up to N=24) serves many batches: picking k of its
    slices in order gives a new stack with k slices and uneven steps, and its true focus index
    follows by interpolation.
    """

    def __init__(self, rng: np.random.Generator, size: int, n_range: tuple[int, int], pool: int, refresh_every: int,
                 *, noise: bool = True, clean_fraction: float = 0.0, on_render: Callable[[int, int], None] | None = None,
                 stop: threading.Event | None = None, realism: Realism | None = None, workers: int = 0,
                 shuffle: float = 0.0, invalid: float = 0.0):
        self.size, self.n_range = size, n_range
        self.shuffle, self.invalid = float(shuffle), float(invalid)
        super().__init__(rng, pool, refresh_every, render_pool_item, (size, n_range, noise, clean_fraction, realism),
                         on_render=on_render, stop=stop, workers=workers)

    def batch(self, batch_size: int, crop: int) -> Batch:
        self._tick()
        n = int(self.rng.integers(self.n_range[0], self.n_range[1] + 1))
        # Invalid slices: the same count for the whole batch (one N per batch), at most N_max in all.
        n_bad = int(self.rng.integers(1, 4)) if self.rng.random() < self.invalid else 0
        n = max(2, min(n, self.n_range[1] - n_bad)) if n_bad else n
        xs, ys, aifs = [], [], []
        for _ in range(batch_size):
            img, depth, f, aif = self.items[int(self.rng.integers(len(self.items)))]
            keep = np.sort(self.rng.choice(len(f), size=n, replace=False))
            fk = f[keep]
            focus = np.interp(depth, fk, np.arange(n, dtype=np.float32))
            y0 = int(self.rng.integers(0, img.shape[1] - crop + 1))
            x0 = int(self.rng.integers(0, img.shape[2] - crop + 1))
            xi = img[keep, y0:y0 + crop, x0:x0 + crop]
            fi = focus[y0:y0 + crop, x0:x0 + crop]
            ai = aif[y0:y0 + crop, x0:x0 + crop]
            if self.rng.random() < 0.5:
                xi, fi, ai = xi[:, :, ::-1], fi[:, ::-1], ai[:, ::-1]
            if self.rng.random() < 0.5:
                xi, fi, ai = xi[:, ::-1], fi[::-1], ai[::-1]
            shuffle = self.rng.random() < self.shuffle
            if shuffle or n_bad:
                from .synth import disorder

                other = self.items[int(self.rng.integers(len(self.items)))][0][:, :crop, :crop]
                label = np.rint(fi).astype(np.int64).clip(0, n - 1)  # a shuffled stack has no "between"
                xi, label, _ = disorder(np.ascontiguousarray(xi), label, self.rng, shuffle=shuffle, n_invalid=n_bad,
                                        other=other, top=1.0)
                fi = label.astype(np.float32)
            xs.append(np.ascontiguousarray(xi))
            ys.append(np.ascontiguousarray(fi, dtype=np.float32))
            aifs.append(np.ascontiguousarray(ai))
        return Batch(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(aifs)))


def _scaled_events(events: np.ndarray) -> np.ndarray:
    """Signed counts -> the network's input range (as at inference, models/event.py:event_scale)."""
    return np.tanh(events / 2.0).astype(np.float32)


def render_event_item(seed: int | Sequence[int], size: int, n_dense: int, noise: bool,
                      *, with_clean: bool = False) -> tuple[np.ndarray, ...]:
    """One dense image + event stack for event models: (images, events, depth, focus positions, aif).

    A third of the scenes have weak texture (contrast 5-30%) and blur radii reach 24 px: where image
    focus cues fade, which is where the events are meant to help. ``with_clean`` appends the noise-free
    slices and truth (on their own [0, 1] scale): benchmarks use them to pick the truly sharpest slice per pixel.
    """
    from . import synth

    rng = np.random.default_rng(seed)
    shape = (size, size)
    aif = synth.random_scene(rng, shape)
    if rng.random() < 1 / 3:
        aif = (0.5 + (aif - 0.5) * rng.uniform(0.05, 0.3)).astype(np.float32)
    depth = synth.random_depth(rng, shape)
    pos = synth.focus_positions(rng, n_dense)
    radius = float(rng.uniform(6.0, 24.0))
    photons = float(rng.choice([30.0, 200.0, 2000.0])) if noise else None
    s = synth.render_stack(aif, depth, pos, max_radius=radius, layers=24, dtype=np.uint16, peak_photons=photons,
                           read_noise=float(rng.uniform(0.002, 0.01)) if noise else 0.0, rng=rng)
    events = synth.simulate_events(aif, depth, pos, max_radius=radius, substeps=4, rng=rng)
    images, aif_unit = _to_unit(s.slices, s.aif)
    if not with_clean:
        return images, events, s.depth, s.focus_positions, aif_unit
    clean = synth.render_stack(aif, depth, pos, max_radius=radius, layers=24, dtype=np.uint16)
    return (images, events, s.depth, s.focus_positions, aif_unit, *_to_unit(clean.slices, clean.aif))


def _noisy(seed: Sequence[int], noise: bool, clean_fraction: float) -> bool:
    """Whether this event stack gets sensor noise: its own draw, so the pool's batch draws stay as they were."""
    return noise and (clean_fraction <= 0 or np.random.default_rng([*seed, 7]).random() >= clean_fraction)


def render_event_pool_item(seed: Sequence[int], size: int, n_dense: int, noise: bool,
                           clean_fraction: float) -> tuple[np.ndarray, ...]:
    """One pool entry for event models (module level, so render workers can run it)."""
    return render_event_item(seed, size, n_dense, _noisy(seed, noise, clean_fraction))


class EventPool(RenderPool):
    """Dense image + event stacks; a batch takes an ordered subset of slices, and each dropped slice's
    events go to the nearest kept slice (events accumulate over the sweep: that is re-binning, exact)."""

    def __init__(self, rng: np.random.Generator, size: int, n_range: tuple[int, int], pool: int, refresh_every: int,
                 *, noise: bool = True, clean_fraction: float = 0.0,
                 on_render: Callable[[int, int], None] | None = None, stop: threading.Event | None = None,
                 workers: int = 0) -> None:
        self.size, self.n_range = size, n_range
        self.dense = max(n_range[1], 12)
        super().__init__(rng, pool, refresh_every, render_event_pool_item,
                         (size, self.dense, noise, clean_fraction), on_render=on_render, stop=stop, workers=workers)

    def batch(self, batch_size: int, crop: int) -> Batch:
        self._tick()
        n = int(self.rng.integers(self.n_range[0], self.n_range[1] + 1))
        xs, es, ys, aifs = [], [], [], []
        for _ in range(batch_size):
            img, ev, depth, f, aif = self.items[int(self.rng.integers(len(self.items)))]
            keep = np.sort(self.rng.choice(len(f), size=n, replace=False))
            owner = np.abs(f[:, None] - f[keep][None, :]).argmin(1)  # dense slice -> nearest kept slice
            ek = np.zeros((n, *ev.shape[1:]), np.float32)
            np.add.at(ek, owner, ev)
            focus = np.interp(depth, f[keep], np.arange(n, dtype=np.float32))
            y0 = int(self.rng.integers(0, img.shape[1] - crop + 1))
            x0 = int(self.rng.integers(0, img.shape[2] - crop + 1))
            win = (slice(y0, y0 + crop), slice(x0, x0 + crop))
            parts = [img[(slice(None), *win)][keep], _scaled_events(ek[(slice(None), *win)]), focus[win], aif[win]]
            if self.rng.random() < 0.5:
                parts = [a[..., ::-1] for a in parts]
            if self.rng.random() < 0.5:
                parts = [a[..., ::-1, :] for a in parts]
            for lst, a in zip((xs, es, ys, aifs), parts):
                lst.append(np.ascontiguousarray(a, dtype=np.float32))
        t = lambda lst: torch.from_numpy(np.stack(lst))  # noqa: E731
        return Batch(t(xs), t(ys), t(aifs), t(es))


def event_validation_set(seed: int, count: int, size: int, n_range: tuple[int, int], noise: bool = True,
                         clean_fraction: float = 0.0) -> list[tuple[Sample, object]]:
    """Held-out image + event stacks (another seed than any training data)."""
    from types import SimpleNamespace

    from .stack import as_focal_stack

    rng = np.random.default_rng(20_000 + seed)
    out = []
    for i in range(count):
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        img, ev, depth, f, aif = render_event_item([20_000 + seed, i], size, n,
                                                   noise=_noisy([20_000 + seed, i], noise, clean_fraction))
        focus = np.interp(depth, f, np.arange(n, dtype=np.float32)).astype(np.float32)
        truth = SimpleNamespace(to_stack=lambda img=img: as_focal_stack(img), aif=aif)  # PSNR on the unit scale
        out.append((Sample(img, focus, None, _scaled_events(ev)), truth))
    return out


class FolderData:
    """A dataset in the seed layout: stacks/<scene>/1.png... with depth_maps/<scene>.png in [0, max]."""

    def __init__(self, root: str | Path, rng: np.random.Generator):
        from .io import list_slice_files, read_image

        root = Path(root)
        sdir, ddir = root / "stacks", root / "depth_maps"
        if not sdir.is_dir() or not ddir.is_dir():
            raise StackMFFError(f"{root}: a training folder needs stacks/<scene>/1.png... and depth_maps/<scene>.png.")
        self.rng = rng
        self.items: list[Sample] = []
        def image_named(folder: Path, stem: str) -> Path | None:
            return next((folder / f"{stem}{ext}" for ext in (".png", ".tif", ".tiff", ".jpg")
                         if (folder / f"{stem}{ext}").exists()), None)

        for scene in sorted(p for p in sdir.iterdir() if p.is_dir()):
            dpath = image_named(ddir, scene.name)
            if dpath is None:
                continue
            stack = np.stack([read_image(p) for p in list_slice_files(scene, warn=False)])
            apath = image_named(root / "aif", scene.name)
            raw = read_image(dpath)
            d = raw.astype(np.float32)
            d = d.mean(-1) if d.ndim == 3 else d
            d /= float(np.iinfo(raw.dtype).max) if raw.dtype.kind == "u" else max(float(d.max()), 1e-12)
            n = stack.shape[0]
            focus = (np.clip(d, 0, 1) * (n - 1)).astype(np.float32)
            if apath is None:
                self.items.append(Sample(_to_unit(stack), focus))
            else:
                images, aif = _to_unit(stack, read_image(apath))
                self.items.append(Sample(images, focus, aif))
        if not self.items:
            raise StackMFFError(f"{root}: no scene in stacks/ has a matching depth map in depth_maps/.")

    def batch(self, batch_size: int, crop: int) -> Batch:
        # Equal N within a batch: pick one stack, then others with the same N.
        first = self.items[int(self.rng.integers(len(self.items)))]
        same = [s for s in self.items if s.images.shape == first.images.shape]
        xs, ys, aifs = [], [], []
        for _ in range(batch_size):
            s = same[int(self.rng.integers(len(same)))]
            h, w = s.focus.shape
            c = min(crop, h, w)
            y0, x0 = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
            xs.append(s.images[:, y0:y0 + c, x0:x0 + c])
            ys.append(s.focus[y0:y0 + c, x0:x0 + c])
            if s.aif is not None:
                aifs.append(s.aif[y0:y0 + c, x0:x0 + c])
        aif = torch.from_numpy(np.stack(aifs)) if len(aifs) == len(xs) else None
        return Batch(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), aif)


#: Smallest side a training stack may have: the focus network works on multiples of 32 px.
MIN_SIDE = 32


def _unlabelled_stacks(path: Path) -> Iterator[tuple[Path, FocalStack]]:
    """(source, stack) for each stack a --data entry names: a TIFF, a folder of slices, or a folder
    of stacks (sub-folders of slices and/or multi-page TIFFs; a seed-layout dataset's ``stacks/``).
    Loaded one at a time, so only the downscaled copies are ever held together."""
    from .batch import discover_stacks
    from .io import TIFF_SUFFIXES, load_stack

    if not path.exists():
        raise StackMFFError(f"{path}: no such file or folder (--data takes 'synthetic', folders of stacks or "
                            "TIFF stacks).")
    if path.is_file():
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise StackMFFError(f"{path}: not a stack; --data takes a folder of slices, a folder of stacks or "
                                "multi-page TIFF files.")
        yield path, load_stack(path, lazy=False)
        return
    if (path / "stacks").is_dir():
        path = path / "stacks"
    try:
        jobs = discover_stacks(path)
    except StackMFFError:  # no sub-folders or TIFFs: the folder may itself be one stack of slices
        yield path, load_stack(path, lazy=False)
        return
    singles = []
    for job in jobs:
        stack = load_stack(list(job.files), lazy=False) if job.files else load_stack(job.source, lazy=False)
        if stack.n_slices >= 2:
            yield job.source, stack
        else:
            singles.append(job.source)
    if len(singles) == len(jobs) and all(p.is_file() for p in singles):  # single-image TIFFs: one stack's slices
        yield path, load_stack(path, lazy=False)
    elif singles:
        raise StackMFFError(f"{singles[0]}: holds one image, not a stack; training needs stacks of at least "
                            "2 slices.")


def _unit_stack(stack: FocalStack, max_side: int) -> np.ndarray:
    """(N, H, W) focus images in [0, 1], downscaled (area) so the longer side is at most ``max_side``.

    Scaled by the stack's robust range, as inference does; downscaling keeps large stacks in memory
    and brings their defocus blur nearer the scale of the training crops. A time series gives its
    first time point.
    """
    import torch.nn.functional as F

    h, w = stack.yx_shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = np.empty((stack.n_slices, *size), np.float32)
    for z in range(stack.n_slices):
        g = stack.focus_image(z, 0)
        if scale < 1.0:
            g = F.interpolate(torch.from_numpy(g)[None, None], size=size, mode="area")[0, 0].numpy()
        out[z] = g
    lo, hi = np.percentile(out, [0.05, 99.95])
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


class UnlabelledData:
    """Real stacks without labels, for the unsupervised objective.

    ``sources``: folders of stacks (sub-folders of slices and/or multi-page TIFFs), folders of slices,
    or TIFF files. Batches are random ordered slice subsets (N within ``n_range``, at most the stack's;
    pairs give N = 2), random crops, flips, transposes and slice-order reversals; one N per batch.
    """

    def __init__(self, sources: str | Path | FocalStack | Sequence[str | Path | FocalStack], rng: np.random.Generator,
                 n_range: tuple[int, int], max_side: int = MAX_SIDE,
                 on_load: Callable[[int, int], None] | None = None):
        items = [sources] if isinstance(sources, (str, Path, FocalStack)) else list(sources)
        if not items:
            raise StackMFFError("--data: no stacks given.")
        self.rng, self.n_range = rng, n_range
        self.items: list[np.ndarray] = []
        self.names: list[str] = []
        for item in items:
            # In-memory stacks (the training widget's open layers) are used as they are.
            pairs = [(item.source or f"stack {len(self.items) + 1}", item)] if isinstance(item, FocalStack) \
                else _unlabelled_stacks(Path(item))
            for src, stack in pairs:
                if stack.n_slices < 2:
                    raise StackMFFError(f"{src}: holds one image, not a stack; training needs stacks of at least "
                                        "2 slices.")
                images = _unit_stack(stack, max_side)
                if min(images.shape[1:]) < MIN_SIDE:
                    raise StackMFFError(f"{src}: {images.shape[2]}x{images.shape[1]} pixels is too small to train "
                                        f"on (at least {MIN_SIDE} on each side).")
                self.items.append(images)
                self.names.append(str(src))
                if on_load is not None:
                    on_load(len(self.items), 0)

    def batch(self, batch_size: int, crop: int) -> Batch:
        rng = self.rng
        hi = min(self.n_range[1], max(len(x) for x in self.items))
        n = int(rng.integers(min(self.n_range[0], hi), hi + 1))
        pool = [x for x in self.items if len(x) >= n]
        first = pool[int(rng.integers(len(pool)))]
        c = min(crop, *first.shape[1:]) // MIN_SIDE * MIN_SIDE
        pool = [x for x in pool if min(x.shape[1:]) >= c]
        xs = []
        for _ in range(batch_size):
            s = pool[int(rng.integers(len(pool)))]
            keep = np.sort(rng.choice(len(s), size=n, replace=False))
            y0 = int(rng.integers(0, s.shape[1] - c + 1))
            x0 = int(rng.integers(0, s.shape[2] - c + 1))
            xi = s[keep, y0:y0 + c, x0:x0 + c]
            if rng.random() < 0.5:
                xi = xi[:, :, ::-1]
            if rng.random() < 0.5:
                xi = xi[:, ::-1]
            if rng.random() < 0.5:
                xi = xi.transpose(0, 2, 1)
            if rng.random() < 0.5:  # focus order does not matter to the fusion
                xi = xi[::-1]
            xs.append(np.ascontiguousarray(xi))
        return Batch(torch.from_numpy(np.stack(xs)), None, None)


def validation_set(seed: int, count: int, size: int, n_range: tuple[int, int],
                   noise: bool = True, clean_fraction: float = 0.0) -> list[tuple[Sample, object]]:
    """Held-out stacks rendered from a different seed than any training data."""
    from . import synth

    rng = np.random.default_rng(10_000 + seed)
    out = []
    for _ in range(count):
        s = synth.random_stack(rng, size=size, n_range=n_range, noise=noise and rng.random() >= clean_fraction)
        out.append((Sample(_to_unit(s.slices), s.focus_index), s))
    return out


# ------------------------------------------------------------------------------- objective
def depth_regression_loss(logits: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """StackMFF-V2 objective: MSE between soft-argmax depth and the true focus, both in [0, 1]."""
    n = logits.shape[1]
    prob = torch.softmax(logits.float(), dim=1)
    steps = torch.arange(n, device=logits.device, dtype=prob.dtype).view(1, n, 1, 1)
    depth = (prob * steps).sum(1) / (n - 1)
    return torch.mean((depth - focus / (n - 1)) ** 2)


def hybrid_loss(logits: torch.Tensor, focus: torch.Tensor, images: torch.Tensor,
                aif: torch.Tensor | None) -> torch.Tensor:
    """Our objective: the published depth regression plus two terms aimed at the fused image.

    * cross-entropy against a two-hot target (the two slices around the true focus, weighted by
      distance), so the winning slice, which the argmax readout gathers, is the right one;
    * L1 between the probability-weighted slices and the all-in-focus truth, which weights each
      pixel by how much a wrong choice actually costs in the image (nothing in flat areas, a lot
      at edges and under the halos of defocused neighbours) — what PSNR measures.
    """
    n = logits.shape[1]
    logp = torch.log_softmax(logits.float(), dim=1)
    f = focus.clamp(0, n - 1)
    lo = f.floor().long().clamp(max=n - 2).unsqueeze(1)  # the network needs N >= 2
    w_hi = f.unsqueeze(1) - lo.float()
    ce = -(logp.gather(1, lo) * (1 - w_hi) + logp.gather(1, lo + 1) * w_hi)
    loss = depth_regression_loss(logits, focus) + 0.02 * ce.mean()
    if aif is not None:
        fused = (logp.exp() * images.float()).sum(1)
        loss = loss + 0.5 * (fused - aif.float()).abs().mean()
    return loss


def classify_loss(logits: torch.Tensor, focus: torch.Tensor, images: torch.Tensor,
                  aif: torch.Tensor | None) -> torch.Tensor:
    """StackMFF-V3's objective, N-way classification of the in-focus slice, plus our image term.

    Cross-entropy against the two slices around the true focus (weighted by distance; a shuffled or
    disordered stack has integer labels, so one slice), and the L1 of the probability-weighted slices
    against the all-in-focus truth, as in :func:`hybrid_loss` (which took V2 from 24.61 to 25.48 dB).
    """
    n = logits.shape[1]
    logp = torch.log_softmax(logits.float(), dim=1)
    f = focus.clamp(0, n - 1)
    lo = f.floor().long().clamp(max=n - 2).unsqueeze(1)
    w_hi = f.unsqueeze(1) - lo.float()
    ce = -(logp.gather(1, lo) * (1 - w_hi) + logp.gather(1, lo + 1) * w_hi)
    loss = ce.mean()
    if aif is not None:
        fused = (logp.exp() * images.float()).sum(1)
        loss = loss + 0.5 * (fused - aif.float()).abs().mean()
    return loss


class Objective(NamedTuple):
    """A training objective: its loss, the readout that matches it at inference (saved in the
    checkpoint), and the validation score (lower is better) that picks the best epoch.

    ``criterion``: for an objective with its own trainable parts (the unsupervised one's inpainter),
    a factory ``cfg -> nn.Module`` whose ``forward(logits, images)`` is the loss; its parameters join
    the optimiser and its state is saved in the resume checkpoint. ``loss`` is then unused.
    ``needs_labels``: whether the data must carry the true focus (synthetic or a labelled folder).
    """

    loss: Callable[[torch.Tensor, Batch], torch.Tensor] | None
    readout: str
    score: Callable[[dict[str, float]], float]
    criterion: Callable[[TrainConfig], torch.nn.Module] | None = None
    needs_labels: bool = True


def unsupervised_criterion(cfg: TrainConfig) -> f2v.Fusion2VoidLoss:
    """The Fusion2Void inpainting objective with the run's patch, drop ratio and weights."""
    return f2v.Fusion2VoidLoss(patch=cfg.patch, ratio=cfg.drop_ratio, grad_weight=cfg.grad_weight,
                               entropy_weight=cfg.entropy_weight, warmup=cfg.warmup_steps)


OBJECTIVES: dict[str, Objective] = {
    # As published: depth regression, soft-argmax readout, best by validation loss.
    "depth": Objective(lambda logits, b: depth_regression_loss(logits, b.focus), "softargmax",
                       lambda m: m["val_loss"]),
    # Ours: aimed at the fused image, so read out by argmax and picked by the validation PSNR.
    "hybrid": Objective(lambda logits, b: hybrid_loss(logits, b.focus, b.images, b.aif), "argmax",
                        lambda m: -m["val_psnr"]),
    # StackMFF-V3's: which slice is in focus, as an N-way classification (order-free with --shuffle).
    "classify": Objective(lambda logits, b: classify_loss(logits, b.focus, b.images, b.aif), "argmax",
                          lambda m: -m["val_psnr"]),
    # Fusion2Void-style: no labels; the fused image (softmax-weighted slices) must let an inpainter
    # restore dropped patches of the sources. Hard selection at inference, so argmax; the best epoch
    # is picked on the synthetic validation PSNR (a guard: the user's data carry no truth).
    "unsupervised": Objective(None, "argmax", lambda m: -m["val_psnr"], criterion=unsupervised_criterion,
                              needs_labels=False),
}



def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise StackMFFError(f"unknown training objective {name!r}; choose one of {', '.join(OBJECTIVES)}.") from None


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: list[tuple[Sample, object]], device: torch.device,
             readout_mode: str = "softargmax") -> dict[str, float]:
    """Validation: loss, fraction within ±1 slice, and PSNR of the gathered all-in-focus image.

    The loss is always the published depth regression, so runs with different objectives compare.
    """
    from .fusion import gather
    from .metrics import psnr
    from .models.inference import readout

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
    from .io import atomic_write

    atomic_write(path, lambda tmp: torch.save(payload, tmp))


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
    from .models.checkpoint import load_state_dict

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
    if cfg.variant is not None and cfg.variant not in spec.variants:
        raise StackMFFError(f"{cfg.model} has no variant {cfg.variant!r}; "
                            f"choose one of: {', '.join(spec.variants) or 'none (leave it out)'}.")
    model = spec.build(cfg.variant).to(device)
    if cfg.init_weights and spec.uses_events:
        from .models.checkpoint import read_state_dict
        from .models.event import EventStackMFF

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
        load_state_dict(cfg.init_weights, model, model_name=cfg.model)
    if cfg.train_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(cfg.train_only + "."))
        if not any(p.requires_grad for p in model.parameters()):
            raise StackMFFError(f"{cfg.model} has no part {cfg.train_only!r} to train alone.")
    crit = objective.criterion(cfg).to(device) if objective.criterion is not None else None
    # A model made of trained and new parts (the event model) says how fast each should learn.
    groups = ([{"params": [p for p in model.parameters() if p.requires_grad]}] if cfg.train_only else
              model.param_groups(cfg.lr) if hasattr(model, "param_groups") else [{"params": list(model.parameters())}])
    if crit is not None:
        groups.append({"params": list(crit.parameters()), "lr": f2v.INPAINTER_LR})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_gamma)
    start_epoch, best, history, bad_epochs = 0, math.inf, [], 0
    if cfg.resume and ckpt.exists():
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
        start_epoch, best, history = state["epoch"] + 1, state["best_val"], list(state["history"])
        bad_epochs = state.get("bad_epochs", 0)
        rng = np.random.default_rng([cfg.seed, start_epoch])
        torch.manual_seed(cfg.seed + 1000 * start_epoch)  # new masks and slice picks, not a replay
    emit = callback or (lambda ev: None)
    n_prep = (cfg.pool_size if cfg.data == "synthetic" and stacks is None else 0) + cfg.val_stacks
    prepared = [0]

    def on_render(_i: int, _n: int) -> None:
        prepared[0] += 1
        emit(TrainEvent("prepare", start_epoch, cfg.epochs, prepared[0], n_prep, float("nan")))

    if stacks is not None:
        if objective.needs_labels:
            raise StackMFFError(f"open stacks carry no labels: train on them with the 'unsupervised' objective, "
                                f"not {cfg.objective!r}.")
        data = UnlabelledData(list(stacks), rng, cfg.n_range, cfg.max_side, on_load=on_render)
    elif cfg.data == "synthetic" and spec.uses_events:
        data = EventPool(rng, cfg.crop + max(16, cfg.crop // 4), cfg.n_range, cfg.pool_size, cfg.pool_refresh_every,
                         noise=cfg.noise, clean_fraction=cfg.clean_fraction, on_render=on_render, stop=stop,
                         workers=cfg.render_workers)
    elif cfg.data == "synthetic":
        realism = Realism.mix(cfg.realism, cfg.realism_p) if cfg.realism else None
        data = SyntheticPool(rng, cfg.crop + max(16, cfg.crop // 4), cfg.n_range, cfg.pool_size, cfg.pool_refresh_every,
                             noise=cfg.noise, clean_fraction=cfg.clean_fraction, on_render=on_render, stop=stop,
                             realism=realism, workers=cfg.render_workers, shuffle=cfg.shuffle, invalid=cfg.invalid)
    elif not objective.needs_labels:
        data = UnlabelledData(cfg.data, rng, cfg.n_range, cfg.max_side, on_load=on_render)
    elif not isinstance(cfg.data, (str, Path)):
        raise StackMFFError(f"{cfg.objective!r} training needs labels: one dataset folder (stacks/ + depth_maps/) "
                            "or 'synthetic'; unlabelled stacks train with the 'unsupervised' objective.")
    else:
        data = FolderData(cfg.data, rng)
    loss_of = (lambda lg, b: crit(lg, b.images)) if crit is not None else objective.loss
    val = (event_validation_set(cfg.seed, cfg.val_stacks, max(cfg.crop, 96), cfg.n_range, cfg.noise,
                                cfg.clean_fraction) if spec.uses_events else
           validation_set(cfg.seed, cfg.val_stacks, max(cfg.crop, 96), cfg.n_range, cfg.noise, cfg.clean_fraction))
    for _ in val:
        on_render(0, 0)
    use_amp = device.type == "cuda"
    stopped = stop is not None and stop.is_set()
    model.train()
    if crit is not None:
        crit.train()
    try:
        for epoch in range(start_epoch, 0 if stopped else cfg.epochs):
            losses, terms = [], []
            t_epoch, data_s = time.perf_counter(), 0.0
            for step in range(cfg.steps_per_epoch):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                t_data = time.perf_counter()
                batch = Batch(*(t.to(device, non_blocking=True) if t is not None else None
                                for t in data.batch(cfg.batch_size, cfg.crop)))
                data_s += time.perf_counter() - t_data
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(batch.images) if batch.events is None else model(batch.images, batch.events)
                loss = loss_of(logits, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                if crit is not None:  # clipped apart, so the inpainter's gradients never shrink the model's
                    torch.nn.utils.clip_grad_norm_(crit.parameters(), 1.0)
                opt.step()
                losses.append(loss.detach().item())  # .item() waits for the device: step times are real
                if crit is not None:
                    terms.append(getattr(crit, "last", {}))
                emit(TrainEvent("batch", epoch, cfg.epochs, step, cfg.steps_per_epoch, losses[-1]))
            if not losses:
                break
            sched.step()
            step_s = time.perf_counter() - t_epoch
            metrics = evaluate(model, val, device, objective.readout)
            # data_wait: the share of training time spent waiting for batches (rendering, cropping) with
            # the model idle; near 0 means the data keep the device busy.
            record = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
                      "seconds": time.perf_counter() - t0, "steps_per_s": len(losses) / max(step_s, 1e-9),
                      "data_wait": data_s / max(step_s, 1e-9), **metrics}
            for key in sorted({k for t in terms for k in t}):  # e.g. the unsupervised loss's L1 and entropy
                record[f"train_{key}"] = float(np.mean([t[key] for t in terms if key in t]))
            history.append(record)
            score = objective.score(metrics)
            improved = score < best
            if improved:
                best, bad_epochs = score, 0
            else:
                bad_epochs += 1
            payload = {"model": cfg.model, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                       "scheduler": sched.state_dict(), "epoch": epoch, "best_val": best, "bad_epochs": bad_epochs,
                       "history": history, "readout": objective.readout,
                       "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}}
            if crit is not None:
                payload["objective_state"] = crit.state_dict()
            _save(ckpt, payload)
            if improved or not best_path.exists():
                _save(best_path, {"model": cfg.model, "state_dict": model.state_dict(), "meta": record,
                                  "readout": objective.readout})
            emit(TrainEvent("epoch", epoch, cfg.epochs, cfg.steps_per_epoch, cfg.steps_per_epoch, record["loss"],
                            val=metrics, checkpoint=ckpt))
            if stopped or bad_epochs >= cfg.patience:
                break
    finally:
        if isinstance(data, SyntheticPool):
            data.close()
    if device.type == "cuda":
        del model, opt, crit
        torch.cuda.empty_cache()
    final = TrainEvent("stopped" if stopped else "done", len(history), cfg.epochs, 0, 0,
                       history[-1]["loss"] if history else float("nan"), checkpoint=best_path)
    emit(final)
    return TrainResult(checkpoint=best_path, last_checkpoint=ckpt, history=history, stopped=stopped,
                       seconds=time.perf_counter() - t0)
