"""Layer helpers shared by the widgets: layer pickers that follow the viewer, and result layers
that are updated in place instead of piling up.

A result layer remembers the ``unique_id`` of the layer it was computed from and what it shows
(``metadata["stackmff_result"] = {"source": ..., "kind": ...}``). Re-running on the same input
replaces the data of those layers; running on another input makes its own set.
"""

from __future__ import annotations

from typing import Any, Callable

import napari
from napari.layers import Image, Layer
from qtpy.QtWidgets import QComboBox, QSizePolicy

RESULT_KEY = "stackmff_result"


def source_key(layer: Layer) -> str:
    return str(layer.unique_id)


def is_result(layer: Layer) -> bool:
    return RESULT_KEY in (layer.metadata or {})


def find_result(viewer: napari.Viewer, source: str, kind: str) -> Layer | None:
    """The result layer of ``kind`` made from the layer with unique id ``source``, if still there."""
    for layer in viewer.layers:
        tag = (layer.metadata or {}).get(RESULT_KEY) or {}
        if tag.get("source") == source and tag.get("kind") == kind:
            return layer
    return None


def remove_result(viewer: napari.Viewer, source: str, kind: str) -> None:
    layer = find_result(viewer, source, kind)
    if layer is not None:
        viewer.layers.remove(layer)


def upsert_result(viewer: napari.Viewer, source: str, kind: str, layer_type: str, data: Any,
                  **kwargs: Any) -> Layer:
    """Update the result layer (data and display settings) or add it when there is none.

    A layer whose type, RGB-ness or dimensionality no longer fits is replaced at the same
    position, so the layer list keeps its order.
    """
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[RESULT_KEY] = {"source": source, "kind": kind}
    old = find_result(viewer, source, kind)
    if old is not None and _fits(old, layer_type, data, kwargs):
        old.data = data
        for key, value in kwargs.items():
            if key not in ("rgb",) and value is not None:
                setattr(old, key, value)
        old.metadata = metadata
        old.refresh()
        return old
    add = getattr(viewer, f"add_{layer_type}")
    layer = add(data, metadata=metadata, **kwargs)
    if old is not None:
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


def _fits(layer: Layer, layer_type: str, data: Any, kwargs: dict) -> bool:
    if layer._type_string != layer_type:
        return False
    if isinstance(layer, Image):
        return bool(layer.rgb) == bool(kwargs.get("rgb", False)) and layer.data.ndim == data.ndim
    return False  # surfaces: cheap to rebuild, and their vertex count changes with the image


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that pass ``accept``, kept in sync with the viewer.

    The current layer is kept by identity across inserts, removals and renames.
    """

    def __init__(self, viewer: napari.Viewer, accept: Callable[[Layer], bool], *, none_text: str | None = None,
                 prefer: Callable[[Layer], bool] | None = None, parent: Any = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._accept = accept
        self._prefer = prefer
        self._none_text = none_text
        self._layers: list[Layer | None] = []
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.refresh()

    def current_layer(self) -> Layer | None:
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def set_current_layer(self, layer: Layer | None) -> None:
        for i, candidate in enumerate(self._layers):
            if candidate is layer:
                self.setCurrentIndex(i)
                return

    def refresh(self, *_: Any) -> None:
        """Rebuild the list from the viewer; emits currentIndexChanged only if the layer changed."""
        try:
            previous = current = self.current_layer()
        except RuntimeError:  # the widget is being deleted
            return
        layers = [layer for layer in self._viewer.layers if self._accept(layer)]
        if self._prefer is not None:
            layers.sort(key=lambda layer: not self._prefer(layer))
        entries: list[Layer | None] = ([None] if self._none_text is not None else []) + layers
        if current is None and entries and self._none_text is None:
            selected = self._viewer.layers.selection.active
            current = selected if selected in layers else layers[-1]
        self.blockSignals(True)
        self.clear()
        self._layers = entries
        for entry in entries:
            self.addItem(self._none_text if entry is None else entry.name)
        index = next((i for i, e in enumerate(entries) if e is current), 0)
        self.setCurrentIndex(index if entries else -1)
        self.blockSignals(False)
        if self.current_layer() is not previous:
            self.currentIndexChanged.emit(self.currentIndex())


def connect_layer_list(viewer: napari.Viewer, callback: Callable[..., None]) -> Callable[[], None]:
    """Call ``callback`` when layers are added, removed, moved or renamed; returns a disconnector."""
    events = viewer.layers.events
    names = ("inserted", "removed", "reordered")
    for name in names:
        getattr(events, name).connect(callback)
    renamed = getattr(events, "renamed", None)

    if renamed is not None:
        renamed.connect(callback)

    def disconnect() -> None:
        for name in names:
            getattr(events, name).disconnect(callback)
        if renamed is not None:
            renamed.disconnect(callback)

    return disconnect
