"""Batch beyond one process: a local process pool, or a Dask distributed cluster.

One task per stack, each running :func:`core.batch.process_job` (resume check, fuse, atomic
writes). Models are cached per worker process by the registry, so each worker loads a model
once however many stacks it fuses (every task reports which model objects its worker holds, so
this can be checked). A failed stack comes back as a status, never as an exception that would
cancel the others.

Worker processes are started by a fork server that has imported torch but run nothing: forking
the caller itself (default on Linux) copies its OpenMP and Dask threads' state into the child,
which can hang; a fresh ``spawn`` would import torch again in every worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

from ..errors import StackMFFError
from ..io.discover import StackJob
from .jobs import BatchSummary, process_job, record

#: on_result(job, status, error, worker) for each finished task; worker = {"pid", "models": [...]}.
ResultFn = Callable[[StackJob, str, str, dict], None]


def worker_info() -> dict[str, Any]:
    """Which process ran a task and which model objects its registry cache holds (ids)."""
    from ..models import registry

    with registry._cache_lock:
        models = [f"{key[0]}@{id(model):x}" for key, model in registry._cache.items()]
    return {"pid": os.getpid(), "models": models}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


#: Seconds between a local worker's checks that the batch process that started it still runs. A
#: killed batch (SIGKILL, SIGTERM: no chance to clean up) leaves its workers orphaned; they exit
#: within this long instead of fusing on and writing results nobody waits for.
PARENT_CHECK_S = 0.5
_watching: int | None = None


def _watch_parent(pid: int) -> None:
    """Exit this worker process as soon as process ``pid`` is gone (once per process)."""
    global _watching
    if _watching == pid:
        return
    _watching = pid

    def loop() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)  # temporary files are swept by the next run (core.safe_files.sweep_stale_temps)
            except PermissionError:  # pid taken by another user's process: ours is gone
                os._exit(1)

    threading.Thread(target=loop, name="stackmff-parent-watch", daemon=True).start()


def _task(job: StackJob, outdir: str, settings: dict[str, Any], overwrite: bool, threads: int,
          parent_pid: int, local: bool = True) -> tuple[str, str, dict]:
    """One stack on a worker; threads are set only in a worker process of its own (never the caller's).
    ``local``: the worker runs on this machine, so it can watch the batch process and die with it."""
    if os.getpid() != parent_pid:
        _init_worker(threads)
        if local:
            _watch_parent(parent_pid)
    status, error = process_job(job, outdir, settings, overwrite)
    return status, error, worker_info()


def _pool_context(start_method: str | None = None) -> Any:
    if start_method is not None:
        return mp.get_context(start_method)
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["napari_stackmff.core.fusion", "napari_stackmff.core.models.inference"])
    return ctx


def run_batch_parallel(
    jobs: list[StackJob],
    outdir: str | Path,
    *,
    overwrite: bool = False,
    workers: int = 2,
    address: str | None = None,
    quiet: bool = False,
    on_result: ResultFn | None = None,
    start_method: str | None = None,
    threads: int | None = None,
    **settings: Any,
) -> BatchSummary:
    """Fuse ``jobs`` with ``workers`` processes, or on the Dask cluster at ``address`` ("local" starts one).

    ``address`` may also be a ``dask.distributed.Client`` or ``LocalCluster`` already running.
    ``start_method``: how pool workers start ("forkserver" by default; "spawn", "fork"). Scripts
    that call this need the usual ``if __name__ == "__main__":`` guard, as with any process pool.
    ``threads``: torch threads per worker (default: this machine's CPUs / workers).
    """
    from tqdm import tqdm

    outdir = str(Path(outdir).resolve())
    summary = BatchSummary()
    t0 = time.perf_counter()
    workers = max(1, workers)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    me = os.getpid()
    bar = tqdm(total=len(jobs), desc="stacks", unit="stack", disable=quiet)

    def finished(job: StackJob, get: Callable[[], tuple[str, str, dict]]) -> None:
        try:
            status, error, info = get()
        except Exception as exc:  # a worker died: report, keep the others
            status, error, info = "failed", f"worker error {type(exc).__name__}: {exc}", {}
        record(summary, job, status, error)
        if on_result is not None:
            on_result(job, status, error, info)
        bar.set_postfix_str(f"{job.name}: {status}", refresh=False)
        bar.update(1)

    if address is not None:
        _run_dask(jobs, outdir, overwrite, workers, threads, me, address, settings, finished)
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(start_method))
        try:
            futures = {pool.submit(_task, job, outdir, settings, overwrite, threads, me): job for job in jobs}
            for fut in as_completed(futures):
                finished(futures[fut], fut.result)
        except BaseException:  # Ctrl-C (or any error here): drop the queue, stop the stacks in flight now
            _stop_pool(pool)
            bar.close()
            raise
        pool.shutdown(wait=True)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel every queued stack and end the workers at once. A stack in flight is discarded: its
    files are written to temporary names and renamed only when whole, so nothing half-written
    remains under a result name, and the next run redoes it."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor has no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def _run_dask(jobs: list[StackJob], outdir: str, overwrite: bool, workers: int, threads: int, me: int,
              address: Any, settings: dict[str, Any], finished: Callable) -> None:
    try:
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_completed
    except ImportError:
        raise StackMFFError("--dask needs dask.distributed: pip install 'napari-stackmff[dask]'.") from None
    cluster = None
    if isinstance(address, str) and address == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    own_client = not isinstance(address, Client)
    try:
        client = address if not own_client else Client(cluster if cluster is not None else address)
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise StackMFFError(f"cannot reach the Dask scheduler at {address!r} ({exc}).") from None
    futures: dict = {}
    try:
        # Workers of a cluster we started live on this machine and watch this process; a remote
        # cluster's workers do not (this pid means nothing there).
        futures = {client.submit(_task, job, outdir, settings, overwrite, threads, me, cluster is not None,
                                 pure=False): job for job in jobs}
        for fut in dask_completed(futures):
            finished(futures[fut], fut.result)
    except BaseException:  # Ctrl-C: nothing queued may start after we return
        client.cancel(list(futures))
        raise
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
