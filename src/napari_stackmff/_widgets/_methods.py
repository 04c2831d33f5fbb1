"""The method picker of the fusion widget: classical measures, registry models, your checkpoints.

Lists ``auto``, every classical focus measure, every model in ``core.models.registry`` (marked
when it ships no weights) and every checkpoint registered by the user (e.g. trained in the
training widget). A weights file can be chosen for a registry model; a registered checkpoint
brings its own.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QToolButton, QWidget

from ..core.defaults import CLASSICAL_METHODS
from ..core.models import registry
from ._layout import PathEdit
from ._settings import display_name

USER_PREFIX = "user:"
#: A trained model's label is cut to this many characters in the list (the tooltip has it all),
#: so a long file name cannot widen the dock: 20 characters fit next to " (yours)" in ~180 px.
MAX_LABEL_CHARS = 20
CLASSICAL_TIPS = {
    "variance": "local grey-level variance: robust, a little soft at edges",
    "laplacian": "energy of the Laplacian: sharp edges, more sensitive to noise",
    "tenengrad": "gradient energy (Sobel): a good all-rounder for brightfield",
    "wavelet": "high-frequency wavelet energy: the most accurate classical measure",
}


class MethodPicker(QObject):
    """Owns the method combo box and the weights-file row; emits ``changed`` on any change."""

    changed = Signal()

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self._parent = parent
        self.custom_weights = ""  # file chosen for a registry model (not a registered checkpoint)
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)  # entries are short
        self.weights_edit = PathEdit()
        self.weights_button = QToolButton()
        self.weights_button.setText("…")
        self.weights_button.setToolTip("Choose a weights file (.pt / .pth checkpoint)")
        self.weights_row = QWidget()
        row = QHBoxLayout(self.weights_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.weights_edit, 1)
        row.addWidget(self.weights_button)
        self.refresh()
        self.combo.currentIndexChanged.connect(self._on_changed)
        self.weights_edit.textEdited.connect(self._on_edited)
        self.weights_button.clicked.connect(self._browse)

    def key(self) -> str:
        """The current entry: a method name or ``"user:<label>"``."""
        return self.combo.currentData() or "auto"

    def select(self, key: str) -> None:
        i = self.combo.findData(key)
        if i >= 0:
            self.combo.setCurrentIndex(i)

    def selection(self) -> tuple[str, str | None]:
        """(core method name, weights file or None) for the current entry."""
        key = self.key()
        if key.startswith(USER_PREFIX):
            model, path = registry.user_weights()[key[len(USER_PREFIX):]]
            return model, str(path)
        if key in registry.model_names():
            return key, (self.custom_weights.strip() or None)
        return key, None

    def is_model(self) -> bool:
        return self.selection()[0] in registry.model_names()

    def uses_events(self) -> bool:
        return self.is_model() and registry.get_spec(self.selection()[0]).uses_events

    def refresh(self, *_: Any) -> None:
        """(Re)list the methods, keeping the current choice when it still exists."""
        current = self.combo.currentData()
        self.combo.blockSignals(True)
        self.combo.clear()
        # Short entries (the closed combo box must show them whole in a narrow dock); the tooltips say more.
        best = registry.best_shipped_model() or "wavelet"
        self._add(f"auto ({best})", "auto", f"The best method available here: {best}.")
        for name in CLASSICAL_METHODS:
            self._add(f"{name} (classical)", name, CLASSICAL_TIPS.get(name, ""))
        for name in registry.model_names():
            shipped = registry.shipped_weights(name) is not None
            self._add(f"{name} ({'network' if shipped else 'no weights'})", name,
                      registry.get_spec(name).description + ("" if shipped else " Choose a weights file."))
        for label, (model, path) in registry.user_weights().items():
            self._add(f"{_shorten(display_name(label))} (yours)", f"{USER_PREFIX}{label}",
                      f"{display_name(label)}: {model} weights you trained\n{path}")
        self.combo.blockSignals(False)
        if current is not None:
            self.select(current)
        self._on_changed()

    def _add(self, text: str, key: str, tip: str) -> None:
        self.combo.addItem(text, key)
        self.combo.setItemData(self.combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)

    def _on_changed(self, *_: Any) -> None:
        self.combo.setToolTip(self.combo.currentData(Qt.ItemDataRole.ToolTipRole) or "")
        method, weights = self.selection()
        user = self.key().startswith(USER_PREFIX)
        model = method in registry.model_names()
        self.weights_edit.setEnabled(model and not user)
        self.weights_button.setEnabled(model and not user)
        if user:
            self.weights_edit.setText(weights or "")
        elif model:
            shipped = registry.shipped_weights(method) is not None
            self.weights_edit.setText(self.custom_weights)
            self.weights_edit.setPlaceholderText("shipped weights" if shipped else "required: choose…")
        else:
            self.weights_edit.setText("")
            self.weights_edit.setPlaceholderText("not used")
        self.changed.emit()

    def _on_edited(self, text: str) -> None:
        self.custom_weights = text
        self.changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self._parent, "Choose model weights", self.weights_edit.text(),
                                              "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
        if path:
            self.weights_edit.setText(path)
            self._on_edited(path)


def _shorten(label: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``stackmff-v2-20260101-1200-long`` -> ``stackmff-v…1200-long``: both ends stay readable."""
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return f"{label[:head]}…{label[len(label) - (limit - 1 - head):]}"
