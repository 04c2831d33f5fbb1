"""The `stackmff` command: fuse, align, events, batch, demo, synth, train, retouch, methods — all thin over the core.

Problems with the user's input print one line naming the file and the problem (exit code 2);
a batch with failed stacks finishes the others and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence


def _add_fuse_options(p: argparse.ArgumentParser) -> None:
    from .core.defaults import DEFAULT_WINDOW

    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the results")
    p.add_argument("--method", default="auto", help="auto (default), variance, laplacian, tenengrad, wavelet, "
                                                    "or a model such as stackmff-v2 (see `stackmff methods`)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, mps")
    p.add_argument("--channel", type=int, default=None,
                   help="decide focus on this channel only (default: luma of RGB / mean of channels)")
    p.add_argument("--window", type=int, default=None, help=f"focus-measure window in pixels (default {DEFAULT_WINDOW})")
    p.add_argument("--decision", choices=("auto", "legacy", "halo", "glow"), default=None,
                   help="classical methods: how a slice wins beside sharp edges. halo: no defocus rings round a dark "
                        "specimen on a bright field; glow: no rings in the glow of bright marks or cells on a dark "
                        "ground, dim objects kept; legacy: the plain argmax clean-up (fastest); auto (default): halo "
                        "when the stack's background is a bright field, else glow")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint for a model method (ours or the official one)")
    p.add_argument("--z-step", type=float, default=None, help="slice spacing, when the files do not carry it")
    p.add_argument("--align", nargs="?", const="similarity", default="auto",
                   choices=("auto", "similarity", "translation", "homography", "off", "none"),
                   help="register the slices onto the middle one before fusing (drift, shake, focus breathing). "
                        "auto (default): a quick probe measures how far the slices move and aligns (similarity) "
                        "only when they do; a bare --align: similarity; off: never. What was found and done is "
                        "printed, and the transforms go into the _fusion.json")
    p.add_argument("--blend", choices=("hard", "exact", "soft", "two-scale"), default=None,
                   help="hard (default): each pixel copied from one slice, except a few px of open field where a "
                        "bright field's slice changes (cross-faded: no seams); exact: every pixel copied from one "
                        "slice (for measurements); soft: slices mixed with edge-following weights, fewer seams and "
                        "halos at depth edges, but not pixel-faithful; two-scale: soft detail over widely mixed base "
                        "layers (as guided-filter fusion does): the cleanest picture, no rings, noise and JPEG grain "
                        "averaged, least faithful to any one slice")
    p.add_argument("--events", type=Path, default=None, metavar="PATH",
                   help="event frames for an event model: a folder of red/blue frames, a TIFF of frames, or a raw "
                        "recording (.raw, .dat, .aedat4, .es, .h5, .npy, .csv) binned per slice")
    p.add_argument("--slice-times", type=Path, default=None, metavar="CSV",
                   help="when each slice was taken (microseconds), to bin a raw --events recording")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in pixels (default: the largest that fits in memory)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default=None,
                   help="model methods on the CPU: torch (default) or onnxruntime (pip install "
                        "'napari-stackmff[onnx]'; the same slice choices; 0.9-1.0x torch's speed on the CPU measured)")
    p.add_argument("--include", default=None, metavar="GLOB",
                   help="which files of a slice folder are the slices, e.g. '*.jpg' (default: the images "
                        "sharing the folder's naming pattern, such as pcb_001.jpg, pcb_002.jpg...)")


def _settings(args: argparse.Namespace) -> dict:
    s = {"method": args.method, "device": args.device, "channel": args.channel, "window": args.window,
         "weights": str(args.weights) if args.weights else None, "z_step": args.z_step,
         "tile": getattr(args, "tile", None), "decision": getattr(args, "decision", None),
         "align": None if getattr(args, "align", None) in (None, "off", "none") else args.align,
         "blend": getattr(args, "blend", None), "runtime": getattr(args, "runtime", None),
         "events": str(args.events) if getattr(args, "events", None) else None,
         "slice_times": str(args.slice_times) if getattr(args, "slice_times", None) else None}
    return {k: v for k, v in s.items() if v is not None}


#: A model run's time estimate is printed on its own line when longer than this (shorter runs just run).
ESTIMATE_NOTICE_S = 10.0


def cmd_fuse(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.batch.jobs import beside_inputs
    from .core.fusion.dispatch import fuse
    from .core.io.read import input_files, load_stack
    from .core.io.records import stack_name
    from .core.io.safe_files import check_output_folder
    from .core.io.write import result_bytes, save_result
    from .core.tiles.pipeline import EstimateMessage

    lazy = {"auto": None, "on": True, "off": False}[args.lazy]
    stack = load_stack(args.input, lazy=lazy, include=args.include)
    near = beside_inputs(args.output, args.input, input_files(stack))
    name = stack_name(args.input)
    bar = tqdm(total=stack.n_slices * stack.n_times, desc=f"fusing {name}", unit="step", disable=args.quiet)

    def progress(done: int, total: int, message: str) -> None:
        if isinstance(message, EstimateMessage) and message.seconds > ESTIMATE_NOTICE_S:
            tqdm.write(message)  # its own line, before the long wait
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    if args.stream:
        from .core.batch.writers import fuse_to_disk

        out = Path(args.output) / (f"{name}.ome.zarr" if args.stream == "zarr" else f"{name}_fused.tif")
        res = fuse_to_disk(stack, out, progress=progress, overwrite=args.overwrite, **_settings(args))
        bar.close()
        print(f"fused {stack.n_slices} slices of {args.input} with {res.method} in {res.timings['total_s']:.2f} s "
              f"({res.tile}-px tiles, streamed)")
        _print_alignment(args, res.alignment)
        for key, path in res.outputs.items():
            print(f"  {key:18s} {path}")
        if near is not None:
            warnings.warn(f"{near}: the streamed results sit next to the input stack, and a later `stackmff batch` "
                          f"on that folder would take {out.name} for a stack; use another -o.")
        return 0
    check_output_folder(args.output, result_bytes(stack.yx_shape, stack.n_times,
                                                  stack.n_channels if stack.has_channels else 1,
                                                  stack.dtype.itemsize, stack.z_positions is not None))
    result = fuse(stack, progress=progress, **_settings(args))  # only once the results can be written
    bar.close()
    written = save_result(result, args.output, name, inputs=input_files(stack), overwrite=args.overwrite)
    print(f"fused {stack.n_slices} slices of {args.input} with {result.method} in {result.timings['total_s']:.2f} s")
    _print_alignment(args, result.alignment)
    for key, path in written.items():
        print(f"  {key:18s} {path}")
    if near is not None:
        warnings.warn(f"{near}: the results sit next to the input stack (a later `stackmff batch` there skips them, "
                      f"as {written['info'].name} lists them); another -o keeps data and results apart.")
    return 0


def _print_alignment(args: argparse.Namespace, records: list[dict] | None) -> None:
    from .core.fusion.align import summary

    for line in summary(records).splitlines():
        print(f"  align {line}" if line.startswith("auto:") else f"  aligned: {line}")


def cmd_align(args: argparse.Namespace) -> int:
    """Register the slices of one stack and write the aligned stack (cropped to what every slice
    covers) as an OME-TIFF, with the transforms in a JSON beside it."""
    from .core.errors import OutputError
    from .core.fusion.align import align_stack, summary
    from .core.io.read import input_files, load_stack
    from .core.io.records import check_output_safe, stack_name
    from .core.io.write import write_json, write_stack

    lazy = {"auto": None, "on": True, "off": False}[args.lazy]
    stack = load_stack(args.input, lazy=lazy, include=args.include)
    name = stack_name(args.input)
    out = Path(args.output)
    tif, info = out / f"{name}_aligned.ome.tif", out / f"{name}_alignment.json"
    check_output_safe([tif, info], input_files(stack))
    for p in (tif, info):
        if p.exists() and not args.overwrite:
            raise OutputError(f"{p}: already exists; choose another -o or pass --overwrite.")
    aligned, records = align_stack(stack, args.motion, source=str(args.input))
    out.mkdir(parents=True, exist_ok=True)
    write_stack(tif, aligned)
    write_json(info, {"source": str(Path(args.input).resolve()), "inputs": [str(p) for p in input_files(stack)],
                      "shape": list(aligned.shape), "alignment": records})
    for line in summary(records).splitlines():
        print(f"{args.input}: {line}")
    print(f"  aligned stack      {tif}\n  transforms         {info}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """events info | bin | simulate: look at a recording, bin it per slice, or simulate frames for a stack."""
    import numpy as np

    from .core import events as ev_io
    from .core.errors import OutputError
    from .core.io.records import check_output_safe
    from .core.io.write import write_tiff

    if args.events_command == "info":
        ev = ev_io.read_events(args.input)
        w, h = ev_io.sensor_size_of(args.input, ev)
        span = (int(ev["t"][-1]) - int(ev["t"][0])) / 1e6 if len(ev) else 0.0
        rate = len(ev) / span / 1e6 if span > 0 else float("nan")
        pos = float(ev["p"].mean()) if len(ev) else float("nan")
        print(f"{args.input}: {len(ev):,} events, {span:.3f} s ({rate:.2f} Mev/s), sensor {w}x{h}, "
              f"{pos:.0%} positive, t {int(ev['t'][0]) if len(ev) else 0}-{int(ev['t'][-1]) if len(ev) else 0} us")
        return 0
    out = Path(args.output)
    check_output_safe([out], [args.input, *([args.slice_times] if getattr(args, "slice_times", None) else [])])
    if out.suffix.lower() not in (".tif", ".tiff"):  # the frames are written as a TIFF, whatever the name says
        raise OutputError(f"{out}: event frames are written as a TIFF; name the output *.tif.")
    if out.exists() and not args.overwrite:
        raise OutputError(f"{out}: already exists; choose another -o or pass --overwrite.")
    if args.events_command == "bin":
        offset = (0, 0)
        if args.offset:
            try:
                ox, oy = (int(v) for v in args.offset.split(","))
            except ValueError:
                raise OutputError(f"--offset {args.offset!r}: give X,Y in pixels, e.g. 600,450.") from None
            offset = (ox, oy)
        if args.size:
            try:
                w, h = (int(v) for v in args.size.lower().split("x"))
            except ValueError:
                raise OutputError(f"--size {args.size!r}: give WIDTHxHEIGHT, e.g. 1280x720.") from None
            w, h = ev_io.check_sensor_size((w, h), f"--size {args.size}")
        ev = ev_io.read_events(args.input)
        if not args.size:
            w, h = ev_io.sensor_size_of(args.input, ev)
        times = ev_io.read_slice_times(args.slice_times) if args.slice_times else None
        frames = ev_io.bin_events(ev, args.slices, (h, w), times, source=str(args.input), offset=offset)
        edges = ev_io.bin_edges(ev, args.slices, times, source=str(args.input))
        binned = int(np.count_nonzero((ev["t"] >= edges[0]) & (ev["t"] < edges[-1])))
        counts = (f"{len(ev):,} events read, {binned:,} of them in the sweep window binned; net count "
                  f"{int(np.abs(frames).sum()):,} (ON and OFF events at one pixel and slice cancel)")
    else:
        from .core.io.read import input_files, load_stack

        stack = load_stack(args.input, lazy=False)
        check_output_safe([out], input_files(stack))
        frames = ev_io.simulate_events(np.asarray(stack.data), threshold=args.threshold, substeps=args.substeps,
                                       refractory=args.refractory, noise_rate=args.noise_rate,
                                       rng=np.random.default_rng(args.seed))
        counts = f"net event count {int(np.abs(frames).sum()):,}"
    write_tiff(out, np.asarray(frames, np.float32), description={"units": "signed event count per slice"})
    print(f"{frames.shape[0]} event frames of {frames.shape[2]}x{frames.shape[1]} written to {out}: {counts}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.batch.jobs import run_batch
    from .core.io.discover import survey
    from .core.io.safe_files import check_output_folder

    jobs, results = survey(args.root, exclude=[args.output], include=args.include)
    check_output_folder(args.output)  # a read-only or misnamed -o fails now, not once per stack
    if results:
        print(f"skipping {len(results)} result{'s' if len(results) > 1 else ''} of earlier runs (listed in "
              f"*_fusion.json): {', '.join(p.name for p in results)}")
    settings = _settings(args)
    if args.dask or args.workers > 1:
        from .core.batch.distributed import run_batch_parallel

        summary = run_batch_parallel(jobs, args.output, overwrite=args.overwrite, workers=args.workers,
                                     address=args.dask, quiet=args.quiet, **settings)
    else:
        with tqdm(total=len(jobs), desc="stacks", unit="stack", disable=args.quiet) as bar:
            def on_progress(job, status):
                bar.set_postfix_str(f"{job.name}: {status}", refresh=False)
                bar.update(1)

            summary = run_batch(jobs, args.output, overwrite=args.overwrite, on_progress=on_progress, **settings)
    print(summary.text())
    print(f"results in {Path(args.output).resolve()}")
    return 0 if summary.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Write the bundled sample stack, fuse it, and say where everything went."""
    from .core.fusion.dispatch import fuse
    from .core.fusion.metrics import focus_error
    from .core.io.write import save_result, write_stack
    from .core.training.synth import SAMPLE_Z_STEP_UM, make_sample, texture_mask

    sample = make_sample("cells")
    out = Path(args.output)
    stack_path = write_stack(out / "sample_stack.ome.tif", sample.to_stack(z_scale=SAMPLE_Z_STEP_UM * (
        len(sample.focus_positions) - 1), unit="um"))
    result = fuse(stack_path, method=args.method, device=args.device)
    written = save_result(result, out / "results", "sample_stack", inputs=[stack_path], overwrite=True)  # the demo's own
    err = focus_error(result.focus_map, sample.focus_index, texture_mask(sample.aif, quantile=0.5))
    print(f"sample stack ({sample.slices.shape[0]} slices of {sample.slices.shape[1]}x{sample.slices.shape[2]}, "
          f"16-bit, z-step {result.z_step:g} {result.unit}) written to {stack_path.resolve()}")
    print(f"fused with {result.method} in {result.timings['total_s']:.2f} s; focus within ±1 slice of the truth on "
          f"{100 * err['within1']:.1f}% of textured pixels")
    for key, path in written.items():
        print(f"  {key:18s} {path.resolve()}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .core.training.synth import write_dataset

    if args.physical:
        import time

        from .core.render.dataset import write_physical_dataset

        t0 = time.perf_counter()
        out = write_physical_dataset(args.output, args.physical, args.count, seed=args.seed, size=args.size,
                                     n_slices=args.n_max, workers=args.workers)
        took = time.perf_counter() - t0
        print(f"wrote {args.count} {args.physical} stacks ({args.n_max} slices, {args.size} px) to {out.resolve()} "
              f"(stacks/, depth_maps/, aif/, valid/) in {took:.1f} s ({took / max(args.count, 1):.1f} s per stack)")
        return 0

    out = write_dataset(args.output, args.count, seed=args.seed, size=args.size, n_range=(args.n_min, args.n_max))
    print(f"wrote {args.count} synthetic stacks to {out.resolve()} (stacks/, depth_maps/, aif/)")
    return 0


def _train_settings(args: argparse.Namespace) -> dict:
    """TrainConfig fields from the options; those left out take the objective's defaults (the
    unsupervised objective fine-tunes, so it has its own budget and starts from our shipped weights)."""
    from .core.defaults import UNSUPERVISED_DEFAULTS
    from .core.errors import StackMFFError
    from .core.models.registry import shipped_weights
    from .core.training.config import TrainConfig

    unsupervised = args.objective == "unsupervised"
    defaults = {**TrainConfig().__dict__, **(UNSUPERVISED_DEFAULTS if unsupervised else {})}
    given = {"epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": args.batch_size, "crop": args.crop,
             "lr": args.lr, "val_stacks": args.val_stacks, "patience": args.patience}
    cfg = {k: defaults[k] if v is None else v for k, v in given.items()}
    n_min, n_max = defaults["n_range"]
    cfg["n_range"] = (n_min if args.n_min is None else args.n_min, n_max if args.n_max is None else args.n_max)
    init = args.init_weights
    from .core.models.registry import get_spec

    if init is None and get_spec(args.model).uses_events:
        init = shipped_weights("stackmff-v2")  # the event model starts as our V2 (models/event.py)
    if init is None and unsupervised:
        init = shipped_weights(args.model)
        if init is None:
            raise StackMFFError(f"no shipped weights for {args.model!r} to fine-tune; pass --init-weights PATH, "
                                "or --init-weights none to train from scratch.")
    cfg["init_weights"] = None if init is None or str(init).lower() == "none" else str(init)
    data = list(args.data)
    cfg["data"] = data[0] if len(data) == 1 else data
    if len(data) > 1 and "synthetic" in data:
        raise StackMFFError("--data: 'synthetic' cannot be mixed with folders or files.")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.training.config import TrainConfig
    from .core.training.loop import train

    s = _train_settings(args)
    cfg = TrainConfig(model=args.model, device=args.device, seed=args.seed, checkpoint=str(args.checkpoint),
                      resume=args.resume, lr_gamma=args.lr_gamma, pool_size=args.pool_size,
                      pool_refresh_every=args.refresh_every, noise=not args.no_noise,
                      clean_fraction=args.clean_fraction, objective=args.objective, max_side=args.max_side,
                      realism=[e for e in args.realism.split(",") if e], realism_p=args.realism_p,
                      render_workers=args.render_workers, variant=args.variant, shuffle=args.shuffle,
                      train_only=args.train_only,
                      invalid=args.invalid, **s)
    bar = tqdm(total=cfg.epochs * cfg.steps_per_epoch, desc=f"training {args.model}", unit="batch",
               disable=args.quiet)

    def callback(ev) -> None:
        if ev.kind == "prepare":
            bar.set_description_str(f"rendering training data {ev.step}/{ev.n_steps}")
        elif ev.kind == "batch":
            bar.set_description_str(f"training {args.model}")
            bar.update(1)
            bar.set_postfix(loss=f"{ev.loss:.4f}", epoch=ev.epoch + 1, refresh=False)
        elif ev.kind == "epoch" and ev.val:
            tqdm.write(f"epoch {ev.epoch + 1}/{ev.n_epochs}: loss {ev.loss:.4f} " +
                       " ".join(f"{k} {v:.4f}" for k, v in ev.val.items()))

    result = train(cfg, callback=callback)
    bar.close()
    print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_retouch(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile

    from .core.errors import StackMFFError
    from .core.io.read import input_files, load_stack
    from .core.io.saved import find_result_set, read_result, recorded_inputs
    from .core.io.write import save_result
    from .core.retouch import check_labels, retouch

    info_path = find_result_set(args.result, args.name, retouched=False)
    base, info = read_result(info_path)
    try:
        labels = tifffile.imread(args.labels)  # read whole before anything is written (it may be in the set)
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        raise StackMFFError(f"{args.labels}: cannot read the edit mask ({type(exc).__name__}: {exc}).") from None
    labels = check_labels(labels, base, str(args.labels))
    inputs = [str(args.stack)] if args.stack else recorded_inputs(info, info_path)
    stack = load_stack(inputs[0] if len(inputs) == 1 else inputs)
    out = retouch(stack, base, labels)
    stem = info_path.name[: -len("_fusion.json")]
    name = args.out_name or f"{stem}_retouched"
    outdir = args.output or info_path.parent
    written = save_result(out, outdir, name, inputs=input_files(stack), overwrite=args.overwrite,
                          extra_info={"retouched_from": info_path.name})
    n = int((labels > 0).sum())
    print(f"retouched {stem}: {n:,} painted pixels ({n / labels.size:.1%}) from "
          f"{len(np.unique(labels[labels > 0]))} slice(s); the automatic result is kept as it was")
    for key, path in written.items():
        print(f"  {key:18s} {path}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .core.devices import available_devices
    from .core.fusion.dispatch import available_methods, resolve_method
    from .core.models.registry import MODELS, shipped_weights

    print(f"auto -> {resolve_method('auto')}")
    for m in available_methods()[1:]:
        extra = ""
        if m in MODELS:
            w = shipped_weights(m)
            extra = f"  weights: {w if w else 'none shipped (use --weights)'}"
        print(f"  {m}{extra}")
    print(f"devices: {', '.join(available_devices())}")
    return 0


def _fuse_command(sub: Any) -> None:
    """``stackmff fuse``: one stack."""
    p = sub.add_parser("fuse", help="fuse one stack (folder of slices or TIFF)")
    p.add_argument("input", type=Path,
                   help="the stack: a folder of numbered slices (png, jpg, tif...) or a multi-page, ImageJ or "
                        "OME TIFF")
    _add_fuse_options(p)
    p.add_argument("--lazy", choices=("auto", "on", "off"), default="auto",
                   help="read a TIFF from disk tile by tile instead of loading it (auto: when it is bigger "
                        "than a quarter of free RAM)")
    p.add_argument("--stream", choices=("zarr", "tiff"), default=None,
                   help="write the results tile by tile to one OME-Zarr or BigTIFFs, never holding them "
                        "in memory (for images larger than RAM)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results of this stack in the output folder (the whole set)")
    p.set_defaults(func=cmd_fuse)


def _align_command(sub: Any) -> None:
    """``stackmff align``: register a stack's slices."""
    p = sub.add_parser("align", help="register the slices of one stack (drift, shake, focus breathing) and write "
                                     "the aligned stack")
    p.add_argument("input", type=Path, help="the stack: a folder of numbered slices or a multi-page TIFF")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for <name>_aligned.ome.tif and "
                                                                     "<name>_alignment.json")
    p.add_argument("--motion", choices=("translation", "similarity", "homography"), default="similarity",
                   help="motion model (default similarity: shift, rotation and scale, for focus breathing)")
    p.add_argument("--include", default=None, metavar="GLOB", help="which files of a slice folder are the slices")
    p.add_argument("--lazy", choices=("auto", "on", "off"), default="auto",
                   help="read a TIFF from disk slice by slice instead of loading it")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier aligned stack of the same name")
    p.set_defaults(func=cmd_align)


def _batch_command(sub: Any) -> None:
    """``stackmff batch``: every stack under a folder."""
    p = sub.add_parser("batch", help="fuse every stack under a folder (root/scene/1.png..., TIFFs, or pairs "
                                     "root/A/1.png + root/B/1.png)")
    p.add_argument("root", type=Path,
                   help="folder holding the stacks: one sub-folder of slices per stack (root/scene/1.png...), "
                        "pairs in A/ and B/ matched by name (root/A/1.png + root/B/1.png), "
                        "and/or multi-page TIFF files")
    _add_fuse_options(p)
    p.add_argument("--overwrite", action="store_true", help="redo stacks that are already finished")
    p.add_argument("--workers", type=int, default=1, help="parallel local worker processes")
    p.add_argument("--dask", default=None, metavar="ADDRESS",
                   help="run on a Dask cluster (scheduler address, or 'local' for a LocalCluster)")
    p.set_defaults(func=cmd_batch)


def _events_command(sub: Any) -> None:
    """``stackmff events``: event recordings: info, bin, simulate."""
    p = sub.add_parser("events", help="event recordings: info, bin into per-slice frames, simulate for a stack")
    ev_sub = p.add_subparsers(dest="events_command", required=True)
    q = ev_sub.add_parser("info", help="what a recording holds (.raw EVT2/EVT3, .dat, .aedat4, .es, .h5, .npy, "
                                       ".npz, .csv)")
    recording = ("the event recording: .raw (Prophesee EVT2/EVT3), .dat, .aedat4, .es, .h5/.hdf5, .npy, .npz, "
                 ".csv/.txt (columns t [us], x, y, p)")
    q.add_argument("input", type=Path, help=recording)
    q = ev_sub.add_parser("bin", help="bin a recording into one signed event frame per focal slice (TIFF)")
    q.add_argument("input", type=Path, help=recording)
    q.add_argument("--slices", type=int, required=True, help="number of focal slices of the sweep")
    q.add_argument("--slice-times", type=Path, default=None, metavar="CSV",
                   help="when each slice was taken (microseconds, one per line), or the N+1 bin edges; "
                        "default: the recording cut into equal parts")
    q.add_argument("--size", default=None, metavar="WxH",
                   help="size of the frames (default: the sensor's, from the file); the image stack's size to "
                        "place a smaller sensor in it with --offset")
    q.add_argument("--offset", default=None, metavar="X,Y",
                   help="where the sensor's pixel (0, 0) lies in the frames (default 0,0)")
    q.add_argument("-o", "--output", required=True, type=Path, help="TIFF to write")
    q.add_argument("--overwrite", action="store_true")
    q = ev_sub.add_parser("simulate", help="simulate event frames for an image stack (ESIM-style, approximate)")
    q.add_argument("input", type=Path, help="the image stack (folder of slices or TIFF)")
    q.add_argument("-o", "--output", required=True, type=Path, help="TIFF to write")
    q.add_argument("--threshold", type=float, default=0.2, help="contrast threshold on log intensity")
    q.add_argument("--substeps", type=int, default=8, help="interpolated sweep positions between slices")
    q.add_argument("--refractory", type=int, default=1, help="silent sub-steps after an event")
    q.add_argument("--noise-rate", type=float, default=0.002, help="random events per pixel and slice")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_events)


def _demo_command(sub: Any) -> None:
    """``stackmff demo``: the bundled sample."""
    p = sub.add_parser("demo", help="fuse the bundled sample stack and show where the results went")
    p.add_argument("-o", "--output", type=Path, default=Path("stackmff-demo"))
    p.add_argument("--method", default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def _synth_command(sub: Any) -> None:
    """``stackmff synth``: a synthetic dataset."""
    p = sub.add_parser("synth", help="write a synthetic dataset (stacks + depth maps) in the seed layout")
    p.add_argument("output", type=Path, help="folder to write the dataset to (created if missing)")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n-min", type=int, default=4)
    p.add_argument("--n-max", type=int, default=24, help="most slices (--physical: the number of slices)")
    p.add_argument("--physical", choices=("macro", "fluorescence", "brightfield", "brightfield-ca"), default=None,
                   help="render with real optics instead: a path tracer's thin lens (macro, needs the [render] "
                        "extra) or a microscope's wave-optics PSF (fluorescence, brightfield; brightfield-ca: an objective "
                        "with axial chromatic aberration)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: one per core)")
    p.set_defaults(func=cmd_synth)


def _train_command(sub: Any) -> None:
    """``stackmff train``: train a focus model."""
    from .core.defaults import MAX_SIDE, REALISM_EFFECTS, TRAIN_OBJECTIVES
    from .core.defaults import UNSUPERVISED_DEFAULTS as U

    p = sub.add_parser("train", help="train a focus model (synthetic data by default)",
                       description="Train a focus model. Defaults are given as 'A; unsupervised: B' where the "
                                   "unsupervised objective (a short fine-tuning of the shipped weights on your own "
                                   "stacks, a few minutes on a CPU for one stack) has its own.")
    p.add_argument("--model", default="stackmff-v2")
    p.add_argument("--data", nargs="+", default=["synthetic"], metavar="DATA",
                   help="'synthetic' (default) or a dataset folder (stacks/ + depth_maps/); unsupervised: also "
                        "folders of unlabelled stacks (sub-folders of slices and/or multi-page TIFFs), folders "
                        "of slices, or TIFF files, several allowed")
    p.add_argument("--epochs", type=int, default=None, help=f"default 20; unsupervised: {U['epochs']}")
    p.add_argument("--steps", type=int, default=None,
                   help=f"batches per epoch (default 100; unsupervised: {U['steps_per_epoch']})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default 4; unsupervised: {U['batch_size']}")
    p.add_argument("--crop", type=int, default=None, help=f"training crop in pixels (default 128; "
                                                         f"unsupervised: {U['crop']})")
    p.add_argument("--lr", type=float, default=None, help=f"default 0.001; unsupervised: {U['lr']:g}")
    p.add_argument("--lr-gamma", type=float, default=0.9, help="learning-rate decay per epoch")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation score (default 6)")
    p.add_argument("--pool-size", type=int, default=24, help="rendered synthetic stacks kept in memory")
    p.add_argument("--refresh-every", type=int, default=2, help="render one new pool stack every this many batches")
    p.add_argument("--no-noise", action="store_true", help="synthetic data without sensor noise")
    p.add_argument("--clean-fraction", type=float, default=0.0,
                   help="share of synthetic stacks (training and validation) rendered without sensor noise")
    p.add_argument("--realism", default="", metavar="EFFECTS",
                   help="real-optics effects in the synthetic renders, comma-separated: "
                        f"{','.join(REALISM_EFFECTS)} (default none)")
    p.add_argument("--realism-p", type=float, default=0.5, help="chance of each --realism effect per stack")
    p.add_argument("--render-workers", type=int, default=0,
                   help="processes rendering synthetic stacks, so a GPU never waits for data (default 0: in "
                        "the training loop, exactly reproducible)")
    p.add_argument("--variant", default=None, help="a model size other than the default, e.g. narrow "
                                                   "(StackMFF-V3 with every width halved, trainable on a CPU) or "
                                                   "narrow-fast (also attending across slices at half resolution)")
    p.add_argument("--train-only", default=None, metavar="PART",
                   help="train this part of the model alone, the rest frozen: 'prior' (eventstackmff's focus "
                        "prior gate, e.g. added to weights trained without it)")
    p.add_argument("--shuffle", type=float, default=0.0,
                   help="chance that a synthetic training stack's slices are shuffled (the label follows; "
                        "for order-free models such as stackmff-v3)")
    p.add_argument("--invalid", type=float, default=0.0,
                   help="chance that a batch gets 1-3 invalid slices (blank, saturated, duplicated, another "
                        "scene, noise, shifted)")
    p.add_argument("--init-weights", default=None, metavar="PATH",
                   help="start from these weights (fine-tuning); 'none' = from scratch (default: from scratch; "
                        "unsupervised: our shipped weights)")
    p.add_argument("--objective", choices=TRAIN_OBJECTIVES, default="hybrid",
                   help="hybrid (default): depth regression + two-hot cross-entropy + an image term against "
                        "the all-in-focus truth, read out by argmax; depth: the published objective alone; "
                        "unsupervised: no labels needed (Fusion2Void-style: an inpainter must restore dropped "
                        "patches of the slices from the fused image), read out by argmax; classify: "
                        "StackMFF-V3's N-way classification of the in-focus slice (+ the image term)")
    p.add_argument("--max-side", type=int, default=MAX_SIDE,
                   help=f"unsupervised: downscale stacks to this longer side when loading (default {MAX_SIDE})")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-min", type=int, default=None,
                   help=f"fewest slices per training stack (default 4; unsupervised: {U['n_range'][0]})")
    p.add_argument("--n-max", type=int, default=None,
                   help=f"most slices per training stack (default 16; unsupervised: {U['n_range'][1]})")
    p.add_argument("--val-stacks", type=int, default=None,
                   help=f"synthetic validation stacks (default 16; unsupervised: {U['val_stacks']})")
    p.add_argument("--checkpoint", type=Path, default=Path("runs/stackmff_v2.pt"))
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    p.set_defaults(func=cmd_train)


def _retouch_command(sub: Any) -> None:
    """``stackmff retouch``: replay a painted edit mask on a saved result."""
    p = sub.add_parser("retouch", help="take painted regions from the slices a label mask names (replays a "
                                       "retouch from napari on a re-fused result)")
    p.add_argument("result", type=Path, help="a result folder (or its <name>_fusion.json) written by stackmff fuse")
    p.add_argument("--labels", type=Path, required=True,
                   help="edit mask TIFF of the result's shape: 0 keeps the automatic choice, k takes slice k-1 "
                        "(the <name>_edits.tif a retouch saved)")
    p.add_argument("--name", default=None, help="which result set in the folder, when it holds several")
    p.add_argument("--stack", type=Path, default=None,
                   help="the input stack (default: the files the result's record names)")
    p.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: the result's)")
    p.add_argument("--out-name", default=None, help="name of the retouched set (default: <name>_retouched)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing retouched set of that name")
    p.set_defaults(func=cmd_retouch)


def _methods_command(sub: Any) -> None:
    """``stackmff methods``: what can fuse here."""
    p = sub.add_parser("methods", help="list methods, shipped weights and devices")
    p.set_defaults(func=cmd_methods)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stackmff", description="All-in-focus fusion of focal stacks (z-stacks).")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    _fuse_command(sub)
    _align_command(sub)
    _batch_command(sub)
    _events_command(sub)
    _demo_command(sub)
    _synth_command(sub)
    _train_command(sub)
    _retouch_command(sub)
    _methods_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .core.errors import StackMFFError

    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return args.func(args)
    except StackMFFError as exc:
        print(f"stackmff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stackmff: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # unreadable input, full disk...: the file and the system's reason, no traceback
        print(f"stackmff: error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
