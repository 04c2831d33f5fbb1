"""Running core functions off the UI thread, with progress relayed back to it.

The core reports progress through plain callbacks called from the computing thread. A Qt
signal emitted there is delivered (queued) on the UI thread, so the widgets can update bars
and plots safely without polling. Errors a user can fix (``StackMFFError``) become one line.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from napari.qt.threading import FunctionWorker, create_worker
from qtpy.QtCore import QObject, Signal

from ..core.errors import StackMFFError

logger = logging.getLogger(__name__)


class _Relay(QObject):
    """Carries messages from the worker thread to the UI thread (queued connection)."""

    message = Signal(object)


def run_in_thread(
    fn: Callable[..., Any],
    *args: Any,
    on_message: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_errored: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    **kwargs: Any,
) -> FunctionWorker:
    """Start ``fn(*args, emit=..., **kwargs)`` in napari's thread pool and return the worker.

    ``emit(obj)`` may be called from the worker thread any number of times; each ``obj`` reaches
    ``on_message`` on the UI thread, in order.
    """
    relay = _Relay()
    if on_message is not None:
        relay.message.connect(on_message)
    worker = create_worker(fn, *args, emit=relay.message.emit, _start_thread=False, _ignore_errors=True, **kwargs)
    worker._stackmff_relay = relay  # keep the relay alive as long as the worker
    if on_returned is not None:
        worker.returned.connect(on_returned)
    if on_errored is not None:
        worker.errored.connect(on_errored)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


def user_message(exc: BaseException) -> str:
    """One line for the user: our own messages as they are, anything else with its type name."""
    if isinstance(exc, StackMFFError):
        return str(exc)
    logger.error("napari-stackmff: unexpected error", exc_info=exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
