"""The fusion widget's Retouch step: paint which slice a region of the result comes from (issue 27).

A napari labels layer lies over the result; the brush's label is the slice (label k = slice k - 1,
0 erases back to the automatic choice). Every change of the labels (a brush dab, a fill, napari's
undo and redo) is diffed against the labels last seen, and only the changed box of the result is
rebuilt by :class:`napari_stackmff.core.retouch.Retoucher`, in place, in the arrays the result layers
show. Holding :data:`PEEK_KEY` shows the chosen slice around the cursor. Save writes the retouched set
like any result, with the edit mask (:func:`napari_stackmff.core.io.write.save_result`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Labels, Layer
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QMessageBox, QPushButton, QSpinBox, QVBoxLayout, QWidget

from .._layerdata import to_layer_order
from ..core.errors import StackMFFError
from ..core.io.records import stack_name
from ..core.io.result import FusionResult
from ..core.io.stack import FocalStack
from ..core.io.write import save_result
from ..core.retouch import EDITS_DTYPE, Retoucher
from ._outputs import OutputOptions, show_result
from ._worker import user_message

#: Held down over the canvas: the chosen slice shows in a square around the cursor (released: hidden).
PEEK_KEY = "v"
#: Side of that square, in brush sizes: big enough to judge the slice's focus beside the brush.
PEEK_BRUSHES = 6
#: Labels layer name suffix, so the user sees what the layer is for.
LABELS_SUFFIX = "retouch (label k = slice k-1)"


@dataclass
class RetouchSource:
    """What the last fusion left for retouching: its input and where its result is shown."""

    layer: Layer  # the input stack layer
    source_id: str
    axes: str
    stack: FocalStack
    result: FusionResult
    outputs: OutputOptions
    z_positions: np.ndarray | None


class RetouchPanel(QWidget):
    """Start, slice number, pick, save; the live update of the result layers while painting."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None,
                 status: QLabel | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.source: RetouchSource | None = None
        self.retoucher: Retoucher | None = None
        self.out: FusionResult | None = None
        self.labels: Labels | None = None
        self.layers: dict[str, Layer] = {}
        self._seen: np.ndarray | None = None
        self._peek: Layer | None = None
        self.last_update_s = 0.0  # the last stroke's update (read-out and benchmarks/bench_retouch.py)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.start_button = QPushButton("Retouch")
        self.start_button.setToolTip(
            "Paint over the result to take a region from the slice you choose (a labels layer: label k = slice "
            f"k-1, 0 erases back to the automatic choice). Hold '{PEEK_KEY}' to see that slice around the cursor; "
            "undo and redo as in napari.")
        self.slice_spin = QSpinBox()
        self.slice_spin.setPrefix("z ")
        self.slice_spin.setMinimumWidth(70)
        self.slice_spin.setToolTip("The slice the brush paints from (the labels layer's label minus one).")
        self.pick_button = QPushButton("Pick")
        self.pick_button.setToolTip("Pick from here: the brush takes the slice the input stack layer shows now "
                                    "(its z slider).")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Write the retouched result set (TIFFs, previews, _fusion.json) and its edit "
                                    "mask; `stackmff retouch` replays the mask on a re-fused result.")
        row.addWidget(self.start_button)
        row.addWidget(self.slice_spin)
        row.addStretch(1)
        row.addWidget(self.pick_button)
        row.addWidget(self.save_button)
        box.addLayout(row)
        # One row only (the dock shares 800 px of height with the training widget): what the retouch says
        # goes to the fusion widget's status line when there is one.
        self.status = status if status is not None else QLabel()
        if status is None:
            self.status.setWordWrap(True)
            box.addWidget(self.status)
        self.start_button.clicked.connect(self.start)
        self.pick_button.clicked.connect(self.pick_slice)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.slice_spin.valueChanged.connect(self._on_slice_changed)
        self._enable()

    # ------------------------------------------------------------------------------ state
    def _enable(self) -> None:
        has = self.source is not None
        self.start_button.setEnabled(has)
        active = self.labels is not None
        for w in (self.slice_spin, self.pick_button, self.save_button):
            w.setEnabled(active)

    def set_source(self, source: RetouchSource, layers: dict[str, Layer]) -> None:
        """A new automatic result: a retouch in progress is replayed on it when it still fits."""
        self.source, self.layers = source, layers
        self.slice_spin.setRange(0, max(source.result.n_slices - 1, 0))
        if self.labels is not None and self.labels in self.viewer.layers:
            if self.labels.data.shape == source.result.focus_map.shape:
                self._begin(source, keep_labels=True)
                self.status.setText("Re-fused: your painting was applied to the new result.")
            else:
                self._stop("Re-fused with another shape (alignment crop): start the retouch again.")
        self._enable()

    def _stop(self, message: str) -> None:
        self._disconnect_labels()
        self.labels = self.retoucher = self.out = None
        self._seen = None
        self.status.setText(message)
        self._enable()

    # ------------------------------------------------------------------------------ start
    def start(self) -> Labels | None:
        """Put a labels layer over the result (or reuse it) and edit a copy of the result through it."""
        if self.source is None:
            return None
        if self.labels is not None and self.labels in self.viewer.layers:
            self.viewer.layers.selection.active = self.labels
            return self.labels
        try:
            self._begin(self.source, keep_labels=False)
        except StackMFFError as exc:
            self._fail(str(exc))
            return None
        return self.labels

    def _begin(self, source: RetouchSource, keep_labels: bool) -> None:
        self._disconnect_labels()
        t0 = time.perf_counter()
        self.retoucher = Retoucher(source.stack, source.result)
        self.out = self.retoucher.start()
        # The result layers now show the copy being edited (updated in place, box by box).
        self.layers = show_result(self.viewer, source.layer, source.source_id, source.axes, self.out, source.outputs,
                                  source.z_positions)
        focus = self.layers["focus_map"]
        if not keep_labels or self.labels is None or self.labels not in self.viewer.layers:
            self.labels = self.viewer.add_labels(np.zeros(self.out.focus_map.shape, EDITS_DTYPE),
                                                 name=f"{source.layer.name} {LABELS_SUFFIX}",
                                                 scale=focus.scale, translate=focus.translate, opacity=0.35)
            self.labels.brush_size = 20
            self.labels.mode = "paint"
        self._seen = np.zeros_like(np.asarray(self.labels.data))
        self._connect_labels()
        self.labels.selected_label = self.slice_spin.value() + 1
        self.viewer.layers.selection.active = self.labels
        self._sync()
        self.status.setText(f"Paint with the brush: the region comes from the chosen slice ({source.result.n_slices} "
                            f"slices). Hold '{PEEK_KEY}' to see it; label 0 erases. Ready in "
                            f"{time.perf_counter() - t0:.1f} s.")
        self._enable()

    def _connect_labels(self) -> None:
        ev = self.labels.events
        for e in (ev.labels_update, ev.paint, ev.set_data, ev.data):
            e.connect(self._sync)
        ev.selected_label.connect(self._on_label_changed)
        self.labels.bind_key(PEEK_KEY, self._peek_key, overwrite=True)
        self.labels.mouse_move_callbacks.append(self._on_mouse_move)

    def _disconnect_labels(self) -> None:
        if self.labels is None:
            return
        ev = self.labels.events
        for e in (ev.labels_update, ev.paint, ev.set_data, ev.data):
            e.disconnect(self._sync)
        ev.selected_label.disconnect(self._on_label_changed)
        if self._on_mouse_move in self.labels.mouse_move_callbacks:
            self.labels.mouse_move_callbacks.remove(self._on_mouse_move)

    # ------------------------------------------------------------------------------ painting
    def _sync(self, *_: Any) -> None:
        """Rebuild the boxes whose labels changed since last seen, and show them."""
        if self.labels is None or self.retoucher is None or self.out is None or self._seen is None:
            return
        t0 = time.perf_counter()
        lab = np.asarray(self.labels.data)
        if lab.shape != self._seen.shape:
            self._stop("The retouch layer changed shape: start the retouch again.")
            return
        timed = lab.ndim == 3
        n = self.out.n_slices
        changed = False
        for t in range(lab.shape[0] if timed else 1):
            now, seen = (lab[t], self._seen[t]) if timed else (lab, self._seen)
            diff = now != seen
            rows = np.flatnonzero(diff.any(1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(diff.any(0))
            ys, xs = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
            if np.any(now[ys, xs] > n):  # a label past the last slice names no slice: ignored there
                self.status.setText(f"Label {int(now[ys, xs].max())} is past the last slice (label {n} = slice "
                                    f"{n - 1}); ignored.")
                now = np.where(now > n, 0, now)
            self.retoucher.update(self.out, now, t, ys, xs)
            seen[ys, xs] = (lab[t] if timed else lab)[ys, xs]
            changed = True
        if changed:
            for kind in ("all_in_focus", "focus_map", "confidence"):
                layer = self.layers.get(kind)
                if layer is not None and layer in self.viewer.layers:
                    layer.refresh()
        self.last_update_s = time.perf_counter() - t0

    def _on_slice_changed(self, value: int) -> None:
        if self.labels is not None and self.labels.selected_label != value + 1:
            self.labels.selected_label = value + 1

    def _on_label_changed(self, *_: Any) -> None:
        k = int(self.labels.selected_label) if self.labels is not None else 0
        if k >= 1 and k - 1 != self.slice_spin.value():
            self.slice_spin.setValue(min(k - 1, self.slice_spin.maximum()))

    def pick_slice(self) -> int | None:
        """The brush takes the slice the input stack layer shows now (its z slider)."""
        if self.source is None:
            return None
        layer, axes = self.source.layer, self.source.axes
        dims = axes[:-1] if layer.rgb else axes  # the layer's own axes, as show_result reads them
        if "Z" not in dims:
            return None
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim:])
        z = int(np.clip(np.rint(point[dims.index("Z")]), 0, self.source.result.n_slices - 1))
        self.slice_spin.setValue(z)
        return z

    # ------------------------------------------------------------------------------ peek
    def _peek_key(self, layer: Labels) -> Any:
        self._show_peek(True)
        yield
        self._show_peek(False)

    def _on_mouse_move(self, layer: Labels, event: Any) -> None:
        if self._peek is not None and self._peek.visible:
            self._place_peek(event.position)

    def _show_peek(self, on: bool) -> None:
        if not on:
            if self._peek is not None and self._peek in self.viewer.layers:
                self._peek.visible = False
            return
        self._place_peek(self.viewer.cursor.position)

    def peek_window(self, position: Any) -> tuple[np.ndarray, tuple[int, int], int] | None:
        """(pixels of the chosen slice around ``position`` (world), their (y, x) corner, t) for the peek."""
        if self.labels is None or self.retoucher is None:
            return None
        yx = self.labels.world_to_data(position)[-2:]
        h, w = self.out.focus_map.shape[-2:]
        half = max(8, int(self.labels.brush_size * PEEK_BRUSHES / 2))
        cy, cx = int(np.clip(yx[0], 0, h - 1)), int(np.clip(yx[1], 0, w - 1))
        ys = slice(max(0, cy - half), min(h, cy + half))
        xs = slice(max(0, cx - half), min(w, cx + half))
        t = int(self.viewer.dims.current_step[0]) if self.out.focus_map.ndim == 3 else 0
        t = min(t, self.out.n_times - 1)
        pixels = self.retoucher.stack.read_window(self.slice_spin.value(), t, (ys, xs))
        return pixels, (ys.start, xs.start), t

    def _place_peek(self, position: Any) -> None:
        got = self.peek_window(position)
        if got is None or self.source is None:
            return
        pixels, (y0, x0), _ = got
        src = self.source.layer
        rgb = bool(src.rgb)
        data = to_layer_order(pixels, self.source.axes.replace("T", ""), rgb)
        focus = self.layers["focus_map"]
        scale = tuple(focus.scale[-2:])
        translate = (focus.translate[-2] + y0 * scale[0], focus.translate[-1] + x0 * scale[1])
        if "C" in self.source.axes and not rgb:
            data = data.max(0)  # channels: the brightest, enough to judge focus
        if self._peek is None or self._peek not in self.viewer.layers or self._peek.rgb != rgb:
            kwargs = {} if rgb else {"contrast_limits": tuple(src.contrast_limits), "colormap": src.colormap}
            self._peek = self.viewer.add_image(data, name="retouch peek", rgb=rgb, scale=scale, translate=translate,
                                               blending="opaque", **kwargs)
            self.viewer.layers.move(self.viewer.layers.index(self._peek), self.viewer.layers.index(self.labels))
            self.viewer.layers.selection.active = self.labels
        else:
            self._peek.data = data
            self._peek.translate = translate
        self._peek.visible = True

    # ------------------------------------------------------------------------------ save
    def default_name(self) -> str:
        layer = self.source.layer if self.source else None
        path = getattr(getattr(layer, "source", None), "path", None)
        return f"{stack_name(path) if path else (layer.name if layer else 'stack')}_retouched"

    def save(self, folder: str | Path, name: str | None = None, overwrite: bool = False) -> dict[str, Path]:
        """Write the retouched set (and its edit mask) to ``folder``; refuses to replace a set unless asked."""
        if self.out is None or self.source is None:
            raise StackMFFError("Nothing is being retouched yet: press Retouch and paint first.")
        self._sync()
        inputs = [p for p in self.source.stack.metadata.get("files", []) if Path(p).exists()]
        return save_result(self.out, folder, name or self.default_name(), inputs=inputs, overwrite=overwrite)

    def _on_save_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the retouched result into")
        if not folder:
            return
        try:
            try:
                written = self.save(folder)
            except StackMFFError as exc:
                if "already exist" not in str(exc):
                    raise
                ask = QMessageBox.question(self, "Replace?", f"{exc}\n\nReplace that result set?")
                if ask != QMessageBox.StandardButton.Yes:
                    return
                written = self.save(folder, overwrite=True)
        except (StackMFFError, OSError) as exc:
            self._fail(user_message(exc))
            return
        show_info(f"Saved the retouched result: {written['all_in_focus']}")
        self.status.setText(f"Saved to {folder} ({written['info'].name}).")

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def teardown(self) -> None:
        self._disconnect_labels()
