"""Event cameras: recordings read within a memory budget, binned into one signed frame per slice,
simulated from a rendered sweep, and matched to a stack.

May import: io and the base.
"""

from __future__ import annotations

from .._exports import lazy_exports

#: public name -> the module of this room that defines it (".x": the core's base module x)
_EXPORTS = {
    "BIN_BYTES_PER_EVENT": "read",
    "CHUNK_EVENTS": "read",
    "EVENT_DTYPE": "read",
    "EVENT_SUFFIXES": "read",
    "EXTRA": "read",
    "EventError": "read",
    "FAERY_SUFFIXES": "read",
    "FRAMES_ADVICE": "read",
    "MAX_COORD": "read",
    "MAX_HEADER_BYTES": "read",
    "MEMORY_FRACTION": "read",
    "PROPHESEE_SUFFIXES": "read",
    "READ_ADVICE": "read",
    "READ_COPIES": "read",
    "SMALL_EXTENT": "read",
    "TABLE_BYTES_PER_EVENT": "read",
    "available_memory": "read",
    "bin_edges": "frames",
    "bin_events": "frames",
    "check_sensor_fits": "frames",
    "check_sensor_size": "read",
    "frame_to_signed": "frames",
    "load_events": "frames",
    "read_event_frames": "frames",
    "read_events": "read",
    "read_slice_times": "read",
    "sensor_size_of": "read",
    "simulate_events": "frames",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, old='events')
