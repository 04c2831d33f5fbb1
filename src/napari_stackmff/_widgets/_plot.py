"""A small live line plot painted with QPainter: napari ships no plotting widget and we add no
plotting dependency. Two series share the x axis (training step): the training loss (thin,
plus a running mean) and a validation metric per epoch (dots joined by a line).
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

TRAIN_COLOUR = QColor(90, 170, 255)
MEAN_COLOUR = QColor(230, 230, 230)
VAL_COLOUR = QColor(255, 160, 60)


class LossPlot(QWidget):
    """Training loss per batch and a validation value per epoch, on a shared log-scale y axis."""

    def __init__(self, parent: QWidget | None = None, *, val_label: str = "validation loss") -> None:
        super().__init__(parent)
        self.train: list[tuple[float, float]] = []
        self.val: list[tuple[float, float]] = []
        self.val_label = val_label
        self.setMinimumHeight(130)  # axes, a legend row and a readable curve, with a docked pair at 1280×800
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    # ------------------------------------------------------------------------- data
    def clear(self) -> None:
        self.train.clear()
        self.val.clear()
        self.update()

    def add_train(self, step: float, loss: float) -> None:
        if math.isfinite(loss):
            self.train.append((float(step), float(loss)))
            self.update()

    def add_val(self, step: float, value: float) -> None:
        if math.isfinite(value):
            self.val.append((float(step), float(value)))
            self.update()

    def running_mean(self, width: int = 20) -> list[tuple[float, float]]:
        out, acc = [], 0.0
        for i, (x, y) in enumerate(self.train):
            acc += y
            if i >= width:
                acc -= self.train[i - width][1]
            out.append((x, acc / min(i + 1, width)))
        return out

    # ------------------------------------------------------------------------- painting
    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fg = pal.color(pal.ColorRole.WindowText)
        p.fillRect(self.rect(), pal.color(pal.ColorRole.Base))
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        fm = p.fontMetrics()
        legend = self._legend_rows(fm, fm.horizontalAdvance("0.0001") + 10, self.width() - 10)
        left, right, bottom = fm.horizontalAdvance("0.0001") + 10, 10, fm.height() + 10
        top = len(legend) * (fm.height() + 2) + 6  # a narrow dock wraps the legend instead of cutting it
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        points = self.train + self.val
        if not points:
            p.setPen(fg)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Loss curves appear here during training")
            return
        xs = [x for x, _ in points]
        ys = [y for _, y in points if y > 0]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        log = bool(ys) and max(ys) / max(min(ys), 1e-12) > 20
        tr = (lambda v: math.log10(max(v, 1e-12))) if log else (lambda v: v)
        yv = [tr(y) for _, y in points if (y > 0 or not log)]
        y0, y1 = min(yv), max(yv)
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def to_px(x: float, y: float) -> QPointF:
            px = plot.left() + (x - x0) / (x1 - x0) * plot.width()
            py = plot.bottom() - (tr(y) - y0) / (y1 - y0) * plot.height()
            return QPointF(px, py)

        # axes, ticks and labels
        grid = QColor(fg)
        grid.setAlpha(50)
        p.setPen(QPen(grid, 1))
        for value in _ticks(y0, y1, log):
            py = plot.bottom() - (tr(value) - y0) / (y1 - y0) * plot.height()
            p.drawLine(QPointF(plot.left(), py), QPointF(plot.right(), py))
            p.save()
            p.setPen(fg)
            p.drawText(QRectF(0, py - fm.height() / 2, left - 4, fm.height()),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{value:.3g}")
            p.restore()
        p.setPen(fg)
        p.drawRect(plot)
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), fm.height()),
                   Qt.AlignmentFlag.AlignLeft, f"step {int(x0)}")
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), fm.height()),
                   Qt.AlignmentFlag.AlignRight, f"{int(x1)}")
        # series
        p.setClipRect(plot.adjusted(-3, -3, 3, 3))
        self._polyline(p, [to_px(x, y) for x, y in self.train if y > 0 or not log], QPen(TRAIN_COLOUR, 1))
        if len(self.train) > 20:
            self._polyline(p, [to_px(x, y) for x, y in self.running_mean() if y > 0 or not log], QPen(MEAN_COLOUR, 2))
        val_pts = [to_px(x, y) for x, y in self.val if y > 0 or not log]
        self._polyline(p, val_pts, QPen(VAL_COLOUR, 2))
        p.setPen(QPen(VAL_COLOUR, 1))
        p.setBrush(VAL_COLOUR)
        for pt in val_pts:
            p.drawEllipse(pt, 3.5, 3.5)
        p.setClipping(False)
        # legend, and the y scale in the free corner under the tick labels
        for row, entries in enumerate(legend):
            y = 4 + row * (fm.height() + 2)
            for x, colour, text in entries:
                p.fillRect(QRectF(x, y + fm.height() / 2 - 2, 12, 4), colour)
                p.setPen(fg)
                p.drawText(QPointF(x + 16, y + fm.ascent()), text)
        if log:
            p.drawText(QRectF(0, plot.bottom() + 2, left - 4, fm.height()), Qt.AlignmentFlag.AlignRight, "log")

    def _legend_rows(self, fm, x0: float, x1: float) -> list[list[tuple[float, QColor, str]]]:
        """Legend entries as rows of (x, colour, text), starting a new row where one would not fit."""
        rows: list[list[tuple[float, QColor, str]]] = [[]]
        x = x0
        for colour, text in ((TRAIN_COLOUR, "training loss"), (MEAN_COLOUR, "running mean"),
                             (VAL_COLOUR, self.val_label)):
            width = 16 + fm.horizontalAdvance(text)
            if rows[-1] and x + width > x1:
                rows.append([])
                x = x0
            rows[-1].append((x, colour, text))
            x += width + 12
        return rows

    @staticmethod
    def _polyline(p: QPainter, pts: list[QPointF], pen: QPen) -> None:
        if len(pts) < 2:
            return
        path = QPainterPath(pts[0])
        for pt in pts[1:]:
            path.lineTo(pt)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(path)


def _ticks(lo: float, hi: float, log: bool, target: int = 5) -> list[float]:
    """Round tick values inside [lo, hi] (given in log10 units when ``log``)."""
    if log:
        out = []
        for e in range(math.floor(lo), math.ceil(hi) + 1):
            for m in ((1, 2, 5) if hi - lo < 3 else (1,)):
                v = m * 10.0 ** e
                if lo <= math.log10(v) <= hi:
                    out.append(v)
        return out
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]
