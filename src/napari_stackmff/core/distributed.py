"""Batch beyond one process: a local process pool, or a Dask distributed cluster.

One task per stack, each running :func:`core.batch.process_job` (resume check, fuse, atomic
writes). Models are cached per worker process by the registry, so each worker loads a model
once however many stacks it fuses. A failed stack comes back as a status, never as an
exception that would cancel the others.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .batch import BatchSummary, StackJob, process_job, record
from .errors import StackMFFError


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _task(job: StackJob, outdir: str, settings: dict[str, Any], overwrite: bool, threads: int) -> tuple[str, str]:
    _init_worker(threads)
    return process_job(job, outdir, settings, overwrite)


def run_batch_parallel(
    jobs: list[StackJob],
    outdir: str | Path,
    *,
    overwrite: bool = False,
    workers: int = 2,
    address: str | None = None,
    quiet: bool = False,
    **settings: Any,
) -> BatchSummary:
    """Fuse ``jobs`` with ``workers`` processes, or on the Dask cluster at ``address`` ("local" starts one)."""
    from tqdm import tqdm

    outdir = str(Path(outdir).resolve())
    summary = BatchSummary()
    t0 = time.perf_counter()
    workers = max(1, workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar = tqdm(total=len(jobs), desc="stacks", unit="stack", disable=quiet)
    if address:
        try:
            from dask.distributed import Client, LocalCluster, as_completed as dask_completed
        except ImportError:
            raise StackMFFError("--dask needs dask.distributed: pip install 'napari-stackmff[dask]'.") from None
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None) if address == "local" else None
        try:
            with Client(cluster if cluster is not None else address) as client:
                futures = {client.submit(_task, job, outdir, settings, overwrite, threads, pure=False): job
                           for job in jobs}
                for fut in dask_completed(futures):
                    job = futures[fut]
                    try:
                        status, error = fut.result()
                    except Exception as exc:  # a worker died: report, keep the others
                        status, error = "failed", f"worker error {type(exc).__name__}: {exc}"
                    record(summary, job, status, error)
                    bar.set_postfix_str(f"{job.name}: {status}", refresh=False)
                    bar.update(1)
        except OSError as exc:
            raise StackMFFError(f"cannot reach the Dask scheduler at {address!r} ({exc}).") from None
        finally:
            if cluster is not None:
                cluster.close()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(process_job, job, outdir, settings, overwrite): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    status, error = fut.result()
                except Exception as exc:
                    status, error = "failed", f"worker error {type(exc).__name__}: {exc}"
                record(summary, job, status, error)
                bar.set_postfix_str(f"{job.name}: {status}", refresh=False)
                bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
