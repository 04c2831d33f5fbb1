"""Read ahead in a background thread, so disk reads overlap with compute.

Reading a slice window from a TIFF or zarr store and turning it into a focus image is numpy and
file I/O, which release the GIL; doing it for the next item while torch works on the current
one hides most of the read time. The queue is bounded, so read-ahead costs ``depth`` items of
memory at most.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` of them ahead.

    Exceptions in the producer are re-raised in the consumer; when the consumer stops early
    (break, exception, cancel) the producer stops at its next item.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, never lost in the thread
            put(_Raised(exc))

    thread = threading.Thread(target=produce, name="stackmff-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            obj = q.get()
            if obj is _DONE:
                return
            if isinstance(obj, _Raised):
                raise obj.exc
            yield obj  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
