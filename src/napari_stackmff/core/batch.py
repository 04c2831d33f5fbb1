"""Many stacks in one go: resumable, atomic, and a failure in one stack never stops the others.

Each finished stack leaves a ``<name>_fusion.json`` holding a fingerprint of its input files
(names, sizes, modification times) and the settings; a re-run skips a stack whose fingerprint
and settings are unchanged and whose outputs are all there. The same file marks results as
ours, so results written next to the stacks (or an earlier result folder inside the root) are
never taken for stacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import StackMFFError
from .io import IMAGE_SUFFIXES, TIFF_SUFFIXES, list_slice_files, recorded_outputs, result_paths, stack_name


@dataclass(frozen=True)
class StackJob:
    """One stack to fuse: a name for its outputs, where its pixels are, and (for a folder) which
    files are slices when not the folder's naming pattern (``include``, see ``load_stack``)."""

    name: str
    source: Path
    include: str | None = None
    files: tuple[Path, ...] = ()  # the sources of one pair (or group) of a pair layout, in order

    def input_files(self) -> list[Path]:
        if self.files:
            return list(self.files)
        if self.source.is_dir():
            return list_slice_files(self.source, warn=False, include=self.include)
        return [self.source]

    def load(self) -> Any:
        from .io import load_stack

        if self.files:
            return load_stack(list(self.files))
        return load_stack(self.source, include=self.include if self.source.is_dir() else None)


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        lines = [f"{len(self.done)} fused, {len(self.skipped)} skipped (already done), {len(self.failed)} failed "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  FAILED {name}: {err}" for name, err in self.failed]
        return "\n".join(lines)


def survey(root: str | Path, *, exclude: Iterable[str | Path] = (),
           include: str | None = None) -> tuple[list[StackJob], list[Path]]:
    """(stacks under ``root``, our own earlier results there that look like stacks but are not).

    Stacks are each sub-folder of slices (root/scene/1.png...) and each TIFF file, or, in the pair
    layout of the published datasets (root/A/1.png, root/B/1.png...), each name in A and B. Results are
    the TIFFs a ``<name>_fusion.json`` in ``root`` lists, and sub-folders holding nothing but
    listed results (the output folder of an earlier batch). ``exclude``: further paths that are
    not stacks (e.g. this run's output folder). ``include`` is passed to every folder stack.
    """
    root = Path(root)
    if not root.is_dir():
        raise StackMFFError(f"{root}: not a folder; batch takes a folder of stacks (root/scene/1.png, or TIFFs).")
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise StackMFFError(f"{root}: cannot read this folder ({exc.strerror or exc}).") from None
    skip = {Path(e).resolve() for e in exclude}
    pairs = pair_jobs(root)
    if pairs:
        return pairs, []
    _refuse_output_in_a_stack(root, skip)
    ours = recorded_outputs(root)
    jobs: list[StackJob] = []
    results: list[Path] = []
    for p in entries:
        if p.name.startswith(".") or p.resolve() in skip:
            continue
        if p.is_dir() and not _readable(p):
            jobs.append(StackJob(p.name, p, include))  # fails alone, with its reason, when its turn comes
        elif p.is_dir() and _holds_images(p):
            if list_slice_files(p, warn=False):  # empty when every image is a listed result
                jobs.append(StackJob(p.name, p, include))
            else:
                results.append(p)
        elif p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
            if p.name in ours:
                results.append(p)
            else:
                jobs.append(StackJob(stack_name(p), p))
    if not jobs:
        raise StackMFFError(f"{root}: found no stacks (sub-folders of slices or TIFF files).")
    return unique_names(jobs), results


#: Folder names of the pair layout of the published multi-focus datasets: root/A/1.png + root/B/1.png
#: fuse into one result "1"; further sources as root/C/1.png... (multi-focus groups).
PAIR_FOLDERS = ("A", "B", "C", "D", "E", "F", "G", "H")


def pair_jobs(root: Path) -> list[StackJob]:
    """One job per image name found in every source folder of a pair layout (root/A, root/B[, root/C...]).

    Empty when ``root`` is not such a layout (no A and B folders). Names present in only some folders
    are left out with a warning naming them.
    """
    import warnings

    dirs = []
    for letter in PAIR_FOLDERS:
        d = next((q for q in (root / letter, root / letter.lower()) if q.is_dir()), None)
        if d is None:
            break
        dirs.append(d)
    if len(dirs) < 2:
        return []
    try:
        listings = [{q.stem: q for q in sorted(d.iterdir()) if q.suffix.lower() in IMAGE_SUFFIXES
                     and not q.name.startswith(".")} for d in dirs]
    except OSError as exc:
        raise StackMFFError(f"{exc.filename}: cannot read this folder of the pair layout ({exc.strerror}).") from None
    common = set(listings[0]).intersection(*listings[1:])
    lonely = sorted(set().union(*listings) - common)
    if lonely:
        warnings.warn(f"{root}: {len(lonely)} image name(s) are not in every one of "
                      f"{', '.join(d.name for d in dirs)} and are left out: {', '.join(lonely[:5])}"
                      f"{'...' if len(lonely) > 5 else ''}", stacklevel=2)
    if not common:
        raise StackMFFError(f"{root}: a pair layout ({', '.join(d.name + '/' for d in dirs)}) with no image name "
                            "in all of its folders; pairs are matched by name (A/1.png with B/1.png).")
    from .io import natural_key

    return [StackJob(stem, listings[0][stem], files=tuple(lst[stem] for lst in listings))
            for stem in sorted(common, key=lambda stem: natural_key(Path(stem)))]


def _refuse_output_in_a_stack(root: Path, outputs: set[Path]) -> None:
    """An output folder that is (or is inside) one of ROOT's slice folders would hide that stack and
    mix results into its slices: refuse it. ROOT itself, or a new or results-only folder in it, is fine."""
    top = root.resolve()
    for out in outputs:
        if out == top or top not in out.parents:
            continue
        child = top / out.relative_to(top).parts[0]
        if child.is_dir() and _holds_images(child) and list_slice_files(child, warn=False):
            where = "is the stack folder" if out == child else f"is inside the stack folder {child}"
            raise StackMFFError(f"{out}: {where} (it holds slices); write the results to another folder (a new "
                                "one in ROOT is fine).")


def unique_names(jobs: list[StackJob]) -> list[StackJob]:
    """Give stacks that would share a result name their own: a folder keeps its name, a file that
    collides takes its ending too (folder ``a`` and ``a.tif`` -> ``a`` and ``a_tif``). Names depend
    only on the stacks' own names, so re-runs find their earlier results."""
    count = Counter(j.name for j in jobs)
    out = []
    for j in jobs:
        if count[j.name] > 1 and j.source.is_file():
            ending = j.source.name[len(j.name):].lstrip(".").replace(".", "_").lower()
            j = dataclasses.replace(j, name=f"{j.name}_{ending}")
        out.append(j)
    names = Counter(j.name for j in out)
    clash = [n for n, c in names.items() if c > 1]
    if clash:  # e.g. files "a.tif" and "a.TIF"
        raise StackMFFError(f"{clash[0]!r}: several stacks would write results under this name; rename one.")
    return out


def _readable(folder: Path) -> bool:
    try:
        os.listdir(folder)
    except OSError:
        return False
    return True


def _holds_images(folder: Path) -> bool:
    return any(q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".") for q in folder.iterdir())


def discover_stacks(root: str | Path, *, exclude: Iterable[str | Path] = (),
                    include: str | None = None) -> list[StackJob]:
    """Stacks under ``root`` (see :func:`survey`); our own earlier results are left out silently."""
    return survey(root, exclude=exclude, include=include)[0]


def beside_inputs(outdir: str | Path, source: str | Path, files: Iterable[str | Path]) -> Path | None:
    """The folder when ``outdir`` is where the input lives (the folder holding an input file, or
    the parent of the slice folder given), else None: results there sit among the stacks a later
    batch on that folder reads (it recognises them by their ``_fusion.json``, but they clutter)."""
    out = Path(outdir).resolve()
    near = {Path(f).resolve().parent for f in files}
    src = Path(source).resolve()
    if src.is_dir():
        near.add(src.parent)
    return out if out in near else None


def fingerprint(files: Iterable[Path], settings: dict[str, Any]) -> str:
    """Changes when an input file is added, removed, rewritten, or the settings change."""
    h = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def recorded_source(job: StackJob, outdir: Path) -> str | None:
    """The stack whose results sit under ``job.name`` in ``outdir`` (None: no results, or not ours)."""
    try:
        source = json.loads(result_paths(outdir, job.name)["info"].read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) else None


def is_done(job: StackJob, outdir: Path, fp: str) -> bool:
    info = result_paths(outdir, job.name)["info"]
    if not info.exists():
        return False
    try:
        meta = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("fingerprint") != fp:
        return False
    return all((outdir / Path(str(name)).name).exists() for name in meta.get("outputs", {}).values())


def fuse_job(job: StackJob, outdir: Path, settings: dict[str, Any], fp: str) -> dict[str, Path]:
    """Fuse one stack and write its outputs (used by local and distributed runs alike)."""
    from .fusion import fuse
    from .io import save_result

    stack = job.load()
    result = fuse(stack, **settings)
    # A batch re-fuses its own stacks whose inputs or settings changed; results of another stack under
    # this name (an earlier batch over another folder) are the user's, not ours to replace.
    return save_result(result, outdir, job.name, inputs=job.input_files(), overwrite=True,
                       extra_info={"fingerprint": fp, "source": str(job.source), "settings": settings})


def process_job(job: StackJob, outdir: str | Path, settings: dict[str, Any], overwrite: bool = False) -> tuple[str, str]:
    """Skip, fuse or fail one stack -> (status, error message). Never raises for a bad stack.

    The one unit of work of every batch runner (sequential, process pool, Dask), so they all
    resume and report the same way.
    """
    outdir = Path(outdir)
    try:
        fp = fingerprint(job.input_files(), settings)
        if not overwrite and is_done(job, outdir, fp):
            return "skipped", ""
        other = recorded_source(job, outdir)
        if not overwrite and other is not None and Path(other).resolve() != job.source.resolve():
            return "failed", (f"{result_paths(outdir, job.name)['info']}: holds the results of {other}, another "
                              f"stack named {job.name!r}; pass --overwrite to replace them, or use another -o.")
        fuse_job(job, outdir, settings, fp)
        return "done", ""
    except StackMFFError as exc:
        return "failed", str(exc)
    except OSError as exc:  # unreadable file or folder, vanished input...: one line, the batch goes on
        return "failed", f"{exc.filename or job.source}: {exc.strerror or exc}"
    except Exception as exc:  # keep going; say what broke
        where = traceback.extract_tb(exc.__traceback__)[-1].name if exc.__traceback__ else "?"
        return "failed", f"unexpected {type(exc).__name__}: {exc} (at {where})"


def record(summary: BatchSummary, job: StackJob, status: str, error: str) -> None:
    if status == "done":
        summary.done.append(job.name)
    elif status == "skipped":
        summary.skipped.append(job.name)
    else:
        summary.failed.append((job.name, error))


def run_batch(
    jobs: list[StackJob],
    outdir: str | Path,
    *,
    overwrite: bool = False,
    on_progress: Callable[[StackJob, str], None] | None = None,
    **settings: Any,
) -> BatchSummary:
    """Fuse every job in turn; report per-stack errors in the summary instead of raising."""
    summary = BatchSummary()
    t0 = time.perf_counter()
    for job in jobs:
        status, error = process_job(job, outdir, settings, overwrite)
        record(summary, job, status, error)
        if on_progress is not None:
            on_progress(job, status)
    summary.seconds = time.perf_counter() - t0
    return summary
