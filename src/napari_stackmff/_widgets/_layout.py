"""Layout parts that keep the dock widgets narrow and short enough for a 1280×800 screen.

Two of our docks side by side next to napari's own (layer list, canvas) must not push the
window past the screen: the settings scroll vertically instead of demanding their full height,
and paths are shown elided in the middle (``/home/me/…/model.pt``) with the full path in the
tooltip, instead of widening the dock or showing only their tail.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtGui import QFontMetrics
from qtpy.QtWidgets import QFrame, QLineEdit, QScrollArea, QStyle, QStyleOptionFrame, QWidget
from superqt import QCollapsible

#: Shortest the settings area may get: an opened section's header and a row stay visible, enough to
#: see it scrolls (and two docked widgets with their sections open still fit a 1280×800 screen).
MIN_SCROLL_HEIGHT = 64
#: QLineEdit's fixed inner horizontal margin (qlineedit_p.h: horizontalMargin = 2, each side).
LINE_EDIT_MARGIN = 2


class VerticalScroll(QScrollArea):
    """Scrolls its content up and down only: as narrow as the content allows, as short as needed."""

    def __init__(self, content: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        """Pass the content's new size needs on (the napari style sheet, a longer entry): Qt caches
        our hints and a scroll area does not notice its content's layout changing by itself."""
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        """The content's minimum width (never cut off sideways), but only a little height: no more than
        the content needs (a few collapsed sections), at most :data:`MIN_SCROLL_HEIGHT`."""
        needed = self.widget().sizeHint().height() + 2 * self.frameWidth()
        return QSize(self.widget().minimumSizeHint().width() + self._extra_width(), min(needed, MIN_SCROLL_HEIGHT))

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        """The content's full size: shown without scrolling wherever the dock has the room."""
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self._extra_width(), hint.height() + 2 * self.frameWidth())


def section(title: str, content: QWidget, *, expanded: bool = False) -> QCollapsible:
    """A collapsible section (superqt's QCollapsible) holding ``content``: the less used settings stay
    one click away without taking the room of the most used ones. Expands and collapses at once
    (no animation: a dock that resizes itself for 300 ms is restless to look at)."""
    box = QCollapsible(title, expandedIcon="▾", collapsedIcon="▸")
    box.setDuration(0)
    box.layout().setContentsMargins(0, 0, 0, 0)
    box.layout().setSpacing(0)
    box.content().layout().setContentsMargins(12, 0, 0, 0)
    box.addWidget(content)
    if expanded:
        box.expand(animate=False)
    return box


def is_collapsed_away(widget: QWidget) -> bool:
    """True when ``widget`` sits in a collapsed section (QCollapsible squeezes its content to zero
    height instead of hiding it, so ``isVisible()`` alone does not tell)."""
    w = widget.parentWidget()
    while w is not None:
        if isinstance(w, QCollapsible) and not w.isExpanded():
            return True
        w = w.parentWidget()
    return False


class PathEdit(QLineEdit):
    """A path field showing ``/home/me/…/model.pt`` while not being edited; the tooltip holds it all.

    ``text()`` and ``setText()`` always mean the full path (only the display is elided), so the
    rest of the widget reads and writes paths as with a plain QLineEdit. While the field has the
    focus it shows the full path for editing.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._path = ""

    def text(self) -> str:
        """The full path (what the user is typing, while editing)."""
        return super().text() if self.hasFocus() else self._path

    def setText(self, text: str | None) -> None:  # noqa: N802 (Qt name)
        self._path = text or ""
        self.setToolTip(self._path)
        self._show(self._path if self.hasFocus() else self.elided())

    def elided(self) -> str:
        """The path elided to the room the field has now."""
        return elide_path(self._path, self.fontMetrics(), max(self.text_room(), 0))

    def text_room(self) -> int:
        """Pixels available for text: the style's contents rectangle less Qt's inner margins."""
        opt = QStyleOptionFrame()
        self.initStyleOption(opt)
        rect = self.style().subElementRect(QStyle.SubElement.SE_LineEditContents, opt, self)
        margins = self.textMargins()
        return rect.width() - margins.left() - margins.right() - 2 * LINE_EDIT_MARGIN

    def _show(self, shown: str) -> None:
        if super().text() != shown:
            super().setText(shown)

    def focusInEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.blockSignals(True)
        self._show(self._path)
        self.blockSignals(False)
        super().focusInEvent(event)

    def focusOutEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self._path = super().text()
        self.setToolTip(self._path)
        super().focusOutEvent(event)
        self.blockSignals(True)
        self._show(self.elided())
        self.blockSignals(False)

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        if not self.hasFocus():
            self.blockSignals(True)
            self._show(self.elided())
            self.blockSignals(False)


def elide_path(path: str, metrics: QFontMetrics, width: int) -> str:
    """``/home/me/a/b/models/x.pt`` -> ``/home/…/models/x.pt``: the start of the path and as many whole
    trailing parts as fit (the file name first); cut inside a part only when not even ``…/x.pt`` fits."""
    if metrics.horizontalAdvance(path) <= width:
        return path
    sep = "\\" if "\\" in path and "/" not in path else "/"
    parts = path.split(sep)
    head = sep.join(parts[:2]) if parts[0] == "" else parts[0]  # "/home" or "C:" or "~"
    first_tail = 2 if parts[0] == "" else 1
    for start in range(first_tail + 1, len(parts)):  # more trailing parts first
        candidate = sep.join([head, "…", *parts[start:]])
        if metrics.horizontalAdvance(candidate) <= width:
            return candidate
    name_only = f"…{sep}{parts[-1]}"
    if metrics.horizontalAdvance(name_only) <= width:
        return name_only
    return metrics.elidedText(path, Qt.TextElideMode.ElideMiddle, width)
