"""The training widget: train a focus network on synthetic stacks or a folder dataset.

Thin over ``core.train.train``: the loop runs in a worker thread and reports each batch and
epoch through its callback; the events reach the UI thread as Qt signals and move two progress
bars and a live loss plot. Stop sets the loop's stop event: it finishes the batch, validates,
saves the checkpoint and returns. The best checkpoint is then registered so the fusion widget
lists it at once (and after a restart).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                            QProgressBar, QPushButton, QSpinBox, QToolButton, QVBoxLayout, QWidget)

from ..core.devices import available_devices
from ..core.errors import StackMFFError
from ..core.models import registry
from . import _settings
from ._layout import PathEdit, VerticalScroll
from ._plot import LossPlot
from ._worker import run_in_thread, user_message

GROUP = "training"
SYNTHETIC = "synthetic"


def _spin(lo: int, hi: int, value: int, step: int = 1, suffix: str = "") -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setValue(value)
    s.setSingleStep(step)
    s.setSuffix(suffix)
    return s


def _combo() -> QComboBox:
    """A combo box as wide as its (short, ours) entries, so none is cut off in a narrow dock."""
    c = QComboBox()
    c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
    return c


def _defaults() -> dict[str, Any]:
    """The core's TrainConfig defaults, so the form starts where the CLI does."""
    try:
        from ..core.train import TrainConfig
    except ImportError:  # pragma: no cover - training core missing
        return {}
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def run_training(config: Any, stop: threading.Event, emit: Any) -> Any:
    """The worker body: core.train with every TrainEvent relayed to the UI thread."""
    from ..core.train import train

    return train(config, callback=emit, stop=stop)


class TrainingWidget(QWidget):
    """Dock widget: train a focus model and make it available to the fusion widget."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.stop_event: threading.Event | None = None
        self.result: Any = None
        self.registered_label: str | None = None
        self._model = registry.model_names()[0]
        self._build()
        self._load_settings()
        self._on_source_changed()
        self.destroyed.connect(lambda *_: self.stop_event.set() if self.stop_event is not None else None)

    # ---------------------------------------------------------------------------- layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)
        # Settings scroll; the buttons, bars, status and loss plot stay in view below them.
        self.settings_panel = QWidget()
        panel = QVBoxLayout(self.settings_panel)
        panel.setContentsMargins(0, 0, 0, 0)
        root.addWidget(VerticalScroll(self.settings_panel))
        data = QGroupBox("Training data")
        form = QFormLayout(data)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.source_combo = _combo()
        self.source_combo.addItem("Synthetic stacks", SYNTHETIC)
        self.source_combo.addItem("Folder dataset", "folder")
        self.source_combo.setToolTip("Synthetic: focal stacks rendered from random scenes, true focus known.\n"
                                     "Folder: stacks/<scene>/1.png… with depth_maps/<scene>.png.")
        self.folder_edit = PathEdit()
        self.folder_edit.setPlaceholderText("stacks/ + depth_maps/")
        self.folder_button = QToolButton()
        self.folder_button.setText("…")
        f_row = QHBoxLayout()
        f_row.addWidget(self.folder_edit, 1)
        f_row.addWidget(self.folder_button)
        self.folder_label = QLabel("Folder")
        d = _defaults()
        n_lo, n_hi = d.get("n_range", (4, 16))
        self.n_min, self.n_max = _spin(2, 64, n_lo), _spin(2, 64, n_hi)
        # Two rows, not "[4] to [16]" in one: two spin boxes side by side were the widest row.
        self.n_label, self.n_max_label = QLabel("Min slices"), QLabel("Max slices")
        for w in (self.n_label, self.n_max_label, self.n_min, self.n_max):
            w.setToolTip("Slices per stack: each batch uses stacks with a random number of slices in this range.")
        self.pool_spin = _spin(1, 512, d.get("pool_size", 24))
        self.pool_spin.setToolTip("Synthetic scenes kept in memory; a few are re-rendered every step.")
        self.pool_label = QLabel("Scenes")
        self.pool_label.setToolTip(self.pool_spin.toolTip())
        self.val_spin = _spin(1, 256, d.get("val_stacks", 16))
        self.val_spin.setToolTip("Held-out synthetic stacks scored after every epoch.")
        form.addRow("Source", self.source_combo)
        form.addRow(self.folder_label, f_row)
        form.addRow(self.n_label, self.n_min)
        form.addRow(self.n_max_label, self.n_max)
        form.addRow(self.pool_label, self.pool_spin)
        form.addRow("Validation", self.val_spin)
        panel.addWidget(data)

        run = QGroupBox("Model and schedule")
        form = QFormLayout(run)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.model_combo = _combo()
        for name in registry.model_names():
            self.model_combo.addItem(name, name)
        self.epochs_spin = _spin(1, 10_000, d.get("epochs", 20))
        self.steps_spin = _spin(1, 100_000, d.get("steps_per_epoch", 100), 10)
        self.batch_spin = _spin(1, 256, d.get("batch_size", 4))
        self.crop_spin = _spin(32, 1024, d.get("crop", 128), 32, " px")
        self.crop_spin.setToolTip("Side of the square patches the network learns from.")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(d.get("lr", 1e-3))
        self.lr_spin.setToolTip("Learning rate of the optimiser.")
        self.steps_spin.setToolTip("Steps (batches) per epoch; validation runs after each epoch.")
        self.device_combo = _combo()
        self.device_combo.addItems(["auto", *available_devices()])
        self.objective_combo = _combo()
        self.objective_combo.addItem("hybrid", "hybrid")  # short: the closed box shows it whole; tooltip explains
        self.objective_combo.addItem("depth (published)", "depth")
        self.objective_combo.setToolTip(
            "hybrid: the published depth regression plus a cross-entropy on the in-focus slice and an image\n"
            "term against the all-in-focus truth (needs it: synthetic data, or an aif/ folder); the\n"
            "checkpoint is then read out by argmax. depth: the published objective only.")
        self.objective_combo.setCurrentIndex(max(0, self.objective_combo.findData(d.get("objective", "hybrid"))))
        form.addRow("Model", self.model_combo)
        form.addRow("Objective", self.objective_combo)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Steps/epoch", self.steps_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Crop size", self.crop_spin)
        form.addRow("Learn rate", self.lr_spin)
        form.addRow("Device", self.device_combo)
        panel.addWidget(run)

        out = QGroupBox("Save checkpoint as")
        row = QHBoxLayout(out)
        self.checkpoint_edit = PathEdit()
        self.checkpoint_button = QToolButton()
        self.checkpoint_button.setText("…")
        row.addWidget(self.checkpoint_edit, 1)
        row.addWidget(self.checkpoint_button)
        panel.addWidget(out)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start training")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Finish the current batch, validate, save the checkpoint and stop.")
        buttons.addWidget(self.start_button, 2)
        buttons.addWidget(self.stop_button, 1)
        root.addLayout(buttons)
        bars = QFormLayout()
        self.epoch_bar, self.batch_bar = QProgressBar(), QProgressBar()
        for bar in (self.epoch_bar, self.batch_bar):
            bar.setFormat("%v / %m")
        bars.addRow("Epoch", self.epoch_bar)
        bars.addRow("Batch", self.batch_bar)
        root.addLayout(bars)
        self.status = QLabel("Set up a run and press Start training.")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        self.plot = LossPlot(val_label="validation loss")
        root.addWidget(self.plot, 1)

        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.folder_button.clicked.connect(self._browse_folder)
        self.checkpoint_button.clicked.connect(self._browse_checkpoint)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.n_min.valueChanged.connect(lambda v: self.n_max.setValue(max(v, self.n_max.value())))
        self.n_max.valueChanged.connect(lambda v: self.n_min.setValue(min(v, self.n_min.value())))
        self.epochs_spin.valueChanged.connect(self._show_schedule)
        self.steps_spin.valueChanged.connect(self._show_schedule)

    # ---------------------------------------------------------------------------- settings
    _SPINS = ("n_min", "n_max", "pool_spin", "val_spin", "epochs_spin", "steps_spin", "batch_spin", "crop_spin")

    def _load_settings(self) -> None:
        for name in self._SPINS:
            spin = getattr(self, name)
            spin.setValue(_settings.load(GROUP, name, spin.value()))
        self.lr_spin.setValue(_settings.load(GROUP, "lr", self.lr_spin.value()))
        for combo, key in ((self.source_combo, "source"), (self.model_combo, "model"),
                           (self.objective_combo, "objective")):
            i = combo.findData(_settings.load(GROUP, key, combo.currentData()))
            combo.setCurrentIndex(max(i, 0))
        i = self.device_combo.findText(_settings.load(GROUP, "device", "auto"))
        self.device_combo.setCurrentIndex(max(i, 0))
        self.folder_edit.setText(_settings.load(GROUP, "folder", ""))
        folder = Path(_settings.load(GROUP, "checkpoint_dir", str(Path.home() / "stackmff-models")))
        self._model = self.model_combo.currentData()
        self.checkpoint_edit.setText(str(folder / self._default_name(self._model)))
        self._show_schedule()

    def _save_settings(self) -> None:
        values: dict[str, Any] = {name: getattr(self, name).value() for name in self._SPINS}
        values.update(lr=self.lr_spin.value(), source=self.source_combo.currentData(),
                      model=self.model_combo.currentData(), device=self.device_combo.currentText(),
                      objective=self.objective_combo.currentData(), folder=self.folder_edit.text(),
                      checkpoint_dir=str(Path(self.checkpoint_edit.text()).expanduser().parent))
        _settings.save(GROUP, values)

    @staticmethod
    def _default_name(model: str) -> str:
        return f"{model}-{time.strftime('%Y%m%d-%H%M')}.pt"

    def _on_model_changed(self, *_: Any) -> None:
        """Keep the file name in step with the model unless the user typed their own."""
        path = Path(self.checkpoint_edit.text())
        new = self.model_combo.currentData()
        if path.name.startswith(f"{self._model}-"):
            self.checkpoint_edit.setText(str(path.with_name(self._default_name(new))))
        self._model = new

    def _show_schedule(self, *_: Any) -> None:
        """Before a run the bars read 0 / Epochs and 0 / Steps per epoch, as the form says."""
        if self.running:
            return  # the form is locked during a run; the run's own events move the bars
        for bar, spin in ((self.epoch_bar, self.epochs_spin), (self.batch_bar, self.steps_spin)):
            bar.setRange(0, spin.value())
            bar.setValue(0)

    def _on_source_changed(self, *_: Any) -> None:
        synthetic = self.source_combo.currentData() == SYNTHETIC
        for w in (self.folder_label, self.folder_edit, self.folder_button):
            w.setVisible(not synthetic)
        for w in (self.n_label, self.n_max_label, self.n_min, self.n_max, self.pool_label, self.pool_spin):
            w.setEnabled(synthetic)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training dataset folder", self.folder_edit.text())
        if path:
            self.folder_edit.setText(path)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save checkpoint as", self.checkpoint_edit.text(),
                                              "Checkpoints (*.pt)")
        if path:
            self.checkpoint_edit.setText(path if path.endswith((".pt", ".pth")) else path + ".pt")

    # ---------------------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        return self.worker is not None

    def make_config(self, **overrides: Any) -> Any:
        """A core TrainConfig from the form (fields core does not know are left out)."""
        from ..core.train import TrainConfig

        synthetic = self.source_combo.currentData() == SYNTHETIC
        if not synthetic and not Path(self.folder_edit.text()).is_dir():
            raise StackMFFError("Choose the training dataset folder (it needs stacks/ and depth_maps/).")
        checkpoint = self.checkpoint_edit.text().strip()
        if not checkpoint:
            raise StackMFFError("Choose where to save the checkpoint.")
        values: dict[str, Any] = dict(
            model=self.model_combo.currentData(), data=SYNTHETIC if synthetic else self.folder_edit.text(),
            epochs=self.epochs_spin.value(), steps_per_epoch=self.steps_spin.value(),
            batch_size=self.batch_spin.value(), crop=self.crop_spin.value(), lr=self.lr_spin.value(),
            device=self.device_combo.currentText(), checkpoint=str(Path(checkpoint).expanduser()),
            n_range=(self.n_min.value(), self.n_max.value()), val_stacks=self.val_spin.value(),
            pool_size=self.pool_spin.value(), objective=self.objective_combo.currentData())
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in values.items() if k in known})

    def start(self, **overrides: Any) -> None:
        """Start training in a worker thread (``overrides`` set TrainConfig fields directly)."""
        if self.running:
            return
        try:
            config = self.make_config(**overrides)
        except (StackMFFError, ImportError) as exc:
            self._fail(user_message(exc))
            return
        self._save_settings()
        self.plot.clear()
        self.result, self.registered_label = None, None
        self.epoch_bar.setRange(0, config.epochs)
        self.epoch_bar.setValue(0)
        self.batch_bar.setRange(0, 0)  # busy until the first batch: rendering scenes has no progress
        self.batch_bar.setValue(0)
        self.status.setText("Preparing data (rendering synthetic scenes)…")
        self.settings_panel.setEnabled(False)  # the run uses the values as they were at Start
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.stop_event = threading.Event()
        self._config = config
        self.worker = run_in_thread(run_training, config, self.stop_event, on_message=self._on_event,
                                    on_returned=self._on_returned, on_errored=self._on_errored,
                                    on_finished=self._on_finished)

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
            self.stop_button.setEnabled(False)
            self.status.setText("Stopping after this batch: validating and saving the checkpoint…")

    def _on_event(self, ev: Any) -> None:
        if ev.kind == "batch":
            self.batch_bar.setRange(0, ev.n_steps)
            self.batch_bar.setValue(ev.step + 1)
            self.plot.add_train(ev.epoch * ev.n_steps + ev.step + 1, ev.loss)
            if not (self.stop_event and self.stop_event.is_set()):
                self.status.setText(f"Epoch {ev.epoch + 1}/{ev.n_epochs}, batch {ev.step + 1}/{ev.n_steps}: "
                                    f"loss {ev.loss:.4g}")
        elif ev.kind == "epoch":
            self.epoch_bar.setRange(0, ev.n_epochs)
            self.epoch_bar.setValue(ev.epoch + 1)
            val = ev.val or {}
            if "val_loss" in val:
                self.plot.add_val((ev.epoch + 1) * ev.n_steps, val["val_loss"])
            within = f", {100 * val['val_within1']:.0f}% of pixels within ±1 slice" if "val_within1" in val else ""
            self.status.setText(f"Epoch {ev.epoch + 1}/{ev.n_epochs}: loss {ev.loss:.4g}, "
                                f"validation loss {val.get('val_loss', float('nan')):.4g}{within}.")

    def _on_returned(self, result: Any) -> None:
        self.result = result
        path = next((p for p in (result.checkpoint, result.last_checkpoint) if p and Path(p).is_file()), None)
        if path is None:
            self.status.setText("Stopped before the first epoch ended: no checkpoint was saved.")
            return
        self.registered_label = _settings.register_user_weights(path, self._config.model)
        verb = "Stopped" if result.stopped else "Finished"
        self.status.setText(f"{verb} after {len(result.history)} epoch(s). Saved {path}; choose "
                            f"'{self.registered_label}' in the fusion widget.")
        show_info(f"Model saved and added to the fusion methods: {self.registered_label}")

    def _on_errored(self, exc: BaseException) -> None:
        self._fail(user_message(exc))

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self.stop_event = None
        self.settings_panel.setEnabled(True)
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
