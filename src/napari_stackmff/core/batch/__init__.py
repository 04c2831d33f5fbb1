"""Many stacks and big outputs: resumable batch runs, parallel and Dask runs, streaming a result to
disk tile by tile (OME-Zarr or TIFF).

May import: training, fusion, models, tiles, events, io and the base.
"""

from __future__ import annotations

from .._exports import lazy_exports

#: public name -> the module of this room that defines it (".x": the core's base module x)
_EXPORTS = {
    "BatchSummary": "jobs",
    "DiskResult": "writers",
    "MAPS": "writers",
    "PARENT_CHECK_S": "distributed",
    "ResultFn": "distributed",
    "TiffSink": "writers",
    "ZarrSink": "writers",
    "beside_inputs": "jobs",
    "fingerprint": "jobs",
    "fuse_job": "jobs",
    "fuse_to_disk": "writers",
    "is_done": "jobs",
    "process_job": "jobs",
    "record": "jobs",
    "recorded_source": "jobs",
    "run_batch": "jobs",
    "run_batch_parallel": "distributed",
    "worker_info": "distributed",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, old='batch')
