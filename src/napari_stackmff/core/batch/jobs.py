"""Many stacks in one go: resumable, atomic, and a failure in one stack never stops the others.

Each finished stack leaves a ``<name>_fusion.json`` holding a fingerprint of its input files
(names, sizes, modification times) and the settings; a re-run skips a stack whose fingerprint
and settings are unchanged and whose outputs are all there. The same file marks results as
ours, so results written next to the stacks (or an earlier result folder inside the root) are
never taken for stacks."""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import StackMFFError
from ..io.discover import StackJob
from ..io.records import result_paths


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
    from ..fusion.dispatch import fuse
    from ..io.write import save_result

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
