"""The training widget: train a focus network on synthetic stacks, a folder dataset, or the image
layers open in napari (unlabelled: the unsupervised objective adapts a model to your own microscope).

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
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QListWidget, QListWidgetItem, QProgressBar, QPushButton, QSpinBox, QToolButton, QVBoxLayout,
                            QWidget)

from ..core.defaults import UNSUPERVISED_DEFAULTS
from ..core.devices import available_devices
from ..core.errors import StackMFFError
from ..core.models import registry
from . import _settings
from ._inputs import axes_choices, is_stack_layer, z_info
from ._inputs import layer_stack as stack_of_layer
from ._layers import connect_layer_list
from ._layout import PathEdit, VerticalScroll, section
from ._plot import LossPlot
from ._worker import run_in_thread, user_message

GROUP = "training"
SYNTHETIC = "synthetic"
LAYERS = "layers"
#: "Start from" entries that are not a registered checkpoint.
SCRATCH, SHIPPED = "scratch", "shipped"


def _trainable(layer: Any) -> bool:
    """Stacks the fusion widget would take, whose axes it can name."""
    return is_stack_layer(layer) and bool(axes_choices(layer))


def layer_stack(layer: Any) -> Any:
    """The FocalStack of an image layer, with its likeliest axes (training needs no z spacing)."""
    axes = axes_choices(layer)[0]
    return stack_of_layer(layer, axes, z_info(layer, axes, 0.0, ""))


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
        from ..core.training.config import TrainConfig
    except ImportError:  # pragma: no cover - training core missing
        return {}
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def _quietly(call: Any) -> None:
    try:
        call()
    except Exception:  # the viewer may be gone already
        pass


def run_training(config: Any, stop: threading.Event, emit: Any, stacks: list | None = None) -> Any:
    """The worker body: core.train with every TrainEvent relayed to the UI thread."""
    from ..core.training.loop import train

    return train(config, callback=emit, stop=stop, stacks=stacks)


#: Order-free models learn from shuffled stacks with some invalid slices (rates as in the shipped V3 run).
ORDER_FREE_SHUFFLE, ORDER_FREE_INVALID = 0.8, 0.3


def _model_settings(model: str, init_path: Path | str | None, device: str) -> dict[str, Any]:
    """The model's own training settings: its size (that of the weights it starts from; else the narrow
    (fast) variant on a CPU, where the full size trains too slowly), and shuffled/invalid slices when order-free."""
    from ..core.devices import resolve_device
    from ..core.models.checkpoint import read_state_dict

    spec = registry.get_spec(model)
    out: dict[str, Any] = {}
    if spec.variants:
        if init_path is not None and spec.variant_of is not None:
            out["variant"] = spec.variant_of(read_state_dict(init_path))
        elif resolve_device(device).type == "cpu":  # the narrow size, attending at half resolution if it can
            out["variant"] = next((v for v in ("narrow-fast", "narrow") if v in spec.variants), None)
    if spec.order_free:
        out.update(shuffle=ORDER_FREE_SHUFFLE, invalid=ORDER_FREE_INVALID)
    return out


def best_epoch(result: Any, objective: str) -> dict | None:
    """The history record of the epoch whose weights the ``.best`` checkpoint holds (by the objective's
    own validation score, as core.train picks it)."""
    from ..core.training.objectives import get_objective

    score = get_objective(objective).score
    scored = [r for r in result.history if _scores(score, r)]
    return min(scored, key=score) if scored else None


def _scores(score: Any, record: dict) -> bool:
    try:
        return score(record) == score(record)  # not NaN
    except (KeyError, TypeError):
        return False


def kept_message(result: Any, config: Any, name: str) -> str:
    """One line saying what a run kept: ``Stopped at epoch 3 of 20: kept the best weights so far (epoch 2,
    validation 21.3 dB) as 'v2 1 Jan 12:00' in the fusion methods.``"""
    best = best_epoch(result, config.objective)
    if best is None:
        how = ""
    elif "val_psnr" in best and best["val_psnr"] == best["val_psnr"]:
        how = f" (epoch {best['epoch'] + 1}, validation {best['val_psnr']:.1f} dB)"
    else:
        how = f" (epoch {best['epoch'] + 1}, validation loss {best.get('val_loss', float('nan')):.3g})"
    last = result.history[-1]["epoch"] + 1 if result.history else 0
    if result.stopped:
        return (f"Stopped at epoch {last} of {config.epochs}: kept the best weights so far{how} as '{name}' in "
                "the fusion methods.")
    return f"Finished {last} epochs: the best weights{how} are in the fusion methods as '{name}'."


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
        # The most used settings first, always in view (source, model, epochs); the rest in a collapsed
        # section that scrolls; the buttons, bars, status and loss plot stay in view below them. At
        # 1280×800 with the fusion widget docked too, this is what fits (tests/test_napari_screenshots.py).
        self.settings_panel = QWidget()  # disabled as a whole during a run
        panel = QVBoxLayout(self.settings_panel)
        panel.setContentsMargins(0, 0, 0, 0)
        root.addWidget(self.settings_panel)
        self._main_form = main = QFormLayout()
        main.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        panel.addLayout(main)
        more = QWidget()
        form = QFormLayout(more)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.source_combo = _combo()
        self.source_combo.addItem("Synthetic stacks", SYNTHETIC)
        self.source_combo.addItem("Folder dataset", "folder")
        self.source_combo.addItem("Open image layers", LAYERS)
        self.source_combo.setToolTip("Synthetic: focal stacks rendered from random scenes, true focus known.\n"
                                     "Folder: stacks/<scene>/1.png… with depth_maps/<scene>.png (unsupervised: any "
                                     "folder of stacks).\nOpen image layers: your own stacks, no labels needed: "
                                     "a short unsupervised\nfine-tuning of the shipped weights (a few minutes on a "
                                     "CPU for one stack).")
        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.layer_list.setMaximumHeight(72)  # three layers; it scrolls for more
        self.layer_list.setToolTip("Ticked image stacks are used for training (the first time point of a series).")
        self.layer_label = QLabel("Layers")
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
        self.objective_combo.addItem("classify", "classify")
        self.objective_combo.addItem("unsupervised", "unsupervised")
        self.objective_combo.setToolTip(
            "hybrid: the published depth regression plus a cross-entropy on the in-focus slice and an image\n"
            "term against the all-in-focus truth (needs it: synthetic data, or an aif/ folder); the\n"
            "checkpoint is then read out by argmax. depth: the published objective only.\n"
            "classify: StackMFF-V3's, which slice is in focus as an N-way choice (order-free models are\n"
            "trained on shuffled slices with some invalid ones: blank, saturated, duplicated...).\n"
            "unsupervised: no labels (Fusion2Void-style: an inpainter restores dropped patches of the slices\n"
            "from the fused image); trains on your own stacks.")
        self.init_combo = _combo()
        self.init_combo.setToolTip("Weights the run starts from: random (from scratch), our shipped weights, or a\n"
                                   "checkpoint trained earlier (fine-tuning).")
        self._fill_init_combo()
        self.objective_combo.setCurrentIndex(max(0, self.objective_combo.findData(d.get("objective", "hybrid"))))
        self.checkpoint_edit = PathEdit()
        self.checkpoint_edit.setPlaceholderText("where the weights are saved")
        self.checkpoint_button = QToolButton()
        self.checkpoint_button.setText("…")
        ckpt_row = QHBoxLayout()
        ckpt_row.addWidget(self.checkpoint_edit, 1)
        ckpt_row.addWidget(self.checkpoint_button)
        main.addRow("Source", self.source_combo)
        main.addRow(self.folder_label, f_row)
        main.addRow(self.layer_label, self.layer_list)
        main.addRow("Model", self.model_combo)
        main.addRow("Epochs", self.epochs_spin)
        form.addRow("Objective", self.objective_combo)
        form.addRow("Start from", self.init_combo)
        form.addRow("Steps/epoch", self.steps_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Crop size", self.crop_spin)
        form.addRow("Learn rate", self.lr_spin)
        form.addRow("Device", self.device_combo)
        form.addRow(self.n_label, self.n_min)
        form.addRow(self.n_max_label, self.n_max)
        form.addRow(self.pool_label, self.pool_spin)
        form.addRow("Validation", self.val_spin)
        form.addRow(QLabel("Save the weights as"))
        form.addRow(ckpt_row)  # the whole width: a path shows both its ends (/home/…/model.pt)
        self.more_section = section("More: objective, schedule, file", more,
                                    expanded=_settings.load(GROUP, "more_open", False))
        self.more_section.toggled.connect(lambda open_: _settings.save(GROUP, {"more_open": open_}))
        panel.addWidget(VerticalScroll(self.more_section))

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start training")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Finish the current batch, validate, and stop. The best weights so far are kept\n"
                                    "and added to the fusion methods (you can remove them there after).")
        buttons.addWidget(self.start_button, 2)
        buttons.addWidget(self.stop_button, 1)
        root.addLayout(buttons)
        bars = QHBoxLayout()  # one row: height is what a docked pair lacks, width it has
        self.epoch_bar, self.batch_bar = QProgressBar(), QProgressBar()
        for label, bar in (("Epoch", self.epoch_bar), ("Batch", self.batch_bar)):
            bar.setFormat("%v / %m")
            bars.addWidget(QLabel(label))
            bars.addWidget(bar, 1)
        root.addLayout(bars)
        self.status = QLabel("Set up a run and press Start training.")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        # After a run: what was kept, and a way to not keep it (Stop keeps the best weights so far).
        self.remove_button = QPushButton("Remove from methods")
        self.remove_button.setToolTip("Take these weights off the fusion methods (the file stays on disk).")
        self.remove_button.setVisible(False)
        kept_row = QHBoxLayout()
        kept_row.addStretch(1)
        kept_row.addWidget(self.remove_button)
        root.addLayout(kept_row)
        self.plot = LossPlot(val_label="validation loss")
        root.addWidget(self.plot, 1)

        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.objective_combo.currentIndexChanged.connect(self._on_objective_changed)
        self._disconnect_layers = connect_layer_list(self.viewer, self._refresh_layers)
        self.destroyed.connect(lambda *_: _quietly(self._disconnect_layers))
        _settings.hub().weights_changed.connect(self._fill_init_combo)
        self._refresh_layers()
        self.folder_button.clicked.connect(self._browse_folder)
        self.checkpoint_button.clicked.connect(self._browse_checkpoint)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.remove_button.clicked.connect(self.remove_registered)
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
                           (self.objective_combo, "objective"), (self.init_combo, "init")):
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
                      objective=self.objective_combo.currentData(), init=self.init_combo.currentData(),
                      folder=self.folder_edit.text(),
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
        self._fill_init_combo()
        order_free = registry.get_spec(new).order_free if new else False
        if order_free and self.objective_combo.currentData() in ("depth", "hybrid"):
            self.objective_combo.setCurrentIndex(self.objective_combo.findData("classify"))
        elif not order_free and self.objective_combo.currentData() == "classify":
            self.objective_combo.setCurrentIndex(self.objective_combo.findData("hybrid"))

    def _show_schedule(self, *_: Any) -> None:
        """Before a run the bars read 0 / Epochs and 0 / Steps per epoch, as the form says."""
        if self.running:
            return  # the form is locked during a run; the run's own events move the bars
        for bar, spin in ((self.epoch_bar, self.epochs_spin), (self.batch_bar, self.steps_spin)):
            bar.setRange(0, spin.value())
            bar.setValue(0)

    def _on_source_changed(self, *_: Any) -> None:
        source = self.source_combo.currentData()
        synthetic, layers = source == SYNTHETIC, source == LAYERS
        for w in (self.folder_label, self.folder_edit, self.folder_button):
            w.setVisible(source == "folder")
        for w in (self.layer_label, self.layer_list):
            w.setVisible(layers)
        if hasattr(self._main_form, "setRowVisible"):  # Qt >= 6.4: no spacing left for the hidden rows
            self._main_form.setRowVisible(self.folder_label, source == "folder")
            self._main_form.setRowVisible(self.layer_label, layers)
        for w in (self.pool_label, self.pool_spin):
            w.setEnabled(synthetic)
        unsupervised = self.objective_combo.currentData() == "unsupervised"
        for w in (self.n_label, self.n_max_label, self.n_min, self.n_max):  # slice subsets: synthetic or own stacks
            w.setEnabled(synthetic or unsupervised)
        self.objective_combo.setEnabled(not layers)
        if layers and not unsupervised:  # open layers carry no labels
            self.objective_combo.setCurrentIndex(self.objective_combo.findData("unsupervised"))

    def _on_objective_changed(self, *_: Any) -> None:
        """The unsupervised objective is a short fine-tuning: its own budget, from the shipped weights."""
        if self.objective_combo.currentData() == "unsupervised":
            d = UNSUPERVISED_DEFAULTS
            for spin, key in ((self.epochs_spin, "epochs"), (self.steps_spin, "steps_per_epoch"),
                              (self.batch_spin, "batch_size"), (self.crop_spin, "crop"), (self.val_spin, "val_stacks")):
                spin.setValue(int(d[key]))
            self.lr_spin.setValue(float(d["lr"]))
            self.n_max.setValue(int(d["n_range"][1]))
            self.n_min.setValue(int(d["n_range"][0]))
            if self.init_combo.currentData() == SCRATCH and self.init_combo.findData(SHIPPED) >= 0:
                self.init_combo.setCurrentIndex(self.init_combo.findData(SHIPPED))
        self._on_source_changed()

    def _fill_init_combo(self, *_: Any) -> None:
        """Scratch, the shipped weights (when there are any) and every registered checkpoint."""
        current = self.init_combo.currentData()
        self.init_combo.blockSignals(True)
        self.init_combo.clear()
        self.init_combo.addItem("random (scratch)", SCRATCH)
        if registry.shipped_weights(self.model_combo.currentData() or registry.model_names()[0]) is not None:
            self.init_combo.addItem("shipped weights", SHIPPED)
        for label, (model, path) in registry.user_weights().items():
            self.init_combo.addItem(_settings.display_name(label), f"user:{label}")
            self.init_combo.setItemData(self.init_combo.count() - 1, str(path), Qt.ItemDataRole.ToolTipRole)
        self.init_combo.setCurrentIndex(max(0, self.init_combo.findData(current)))
        self.init_combo.blockSignals(False)

    def _refresh_layers(self, *_: Any) -> None:
        """List the open image stacks; ticks are kept by name, new stacks come ticked."""
        try:
            ticked = {self.layer_list.item(i).text(): self.layer_list.item(i).checkState()
                      for i in range(self.layer_list.count())}
        except RuntimeError:  # the widget is being deleted
            return
        self.layer_list.clear()
        for layer in self.viewer.layers:
            if _trainable(layer):
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(ticked.get(layer.name, Qt.CheckState.Checked))
                self.layer_list.addItem(item)
        if not self.layer_list.count():
            item = QListWidgetItem("(open a focal stack)")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.layer_list.addItem(item)

    def checked_layers(self) -> list[Any]:
        names = {self.layer_list.item(i).text() for i in range(self.layer_list.count())
                 if self.layer_list.item(i).checkState() == Qt.CheckState.Checked}
        return [layer for layer in self.viewer.layers if layer.name in names and _trainable(layer)]

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
        from ..core.training.config import TrainConfig

        source = self.source_combo.currentData()
        synthetic = source == SYNTHETIC
        if source == "folder" and not Path(self.folder_edit.text()).is_dir():
            raise StackMFFError("Choose the training dataset folder (it needs stacks/ and depth_maps/, or, "
                                "unsupervised, stacks).")
        if source == LAYERS and not self.checked_layers():
            raise StackMFFError("Tick at least one open image stack (2 or more slices) to train on.")
        init = self.init_combo.currentData()
        if init == SHIPPED:
            init_path = registry.shipped_weights(self.model_combo.currentData())
        elif isinstance(init, str) and init.startswith("user:"):
            model, init_path = registry.user_weights()[init[5:]]
            if model != self.model_combo.currentData():
                raise StackMFFError(f"'{init[5:]}' holds {model} weights; choose {model} as the model or start "
                                    "from other weights.")
        else:
            init_path = None
        checkpoint = self.checkpoint_edit.text().strip()
        if not checkpoint:
            raise StackMFFError("Choose where to save the checkpoint.")
        values: dict[str, Any] = dict(
            model=self.model_combo.currentData(),
            data=(SYNTHETIC if synthetic else [f"layer:{layer.name}" for layer in self.checked_layers()]
                  if source == LAYERS else self.folder_edit.text()),
            init_weights=None if init_path is None else str(init_path),
            epochs=self.epochs_spin.value(), steps_per_epoch=self.steps_spin.value(),
            batch_size=self.batch_spin.value(), crop=self.crop_spin.value(), lr=self.lr_spin.value(),
            device=self.device_combo.currentText(), checkpoint=str(Path(checkpoint).expanduser()),
            n_range=(self.n_min.value(), self.n_max.value()), val_stacks=self.val_spin.value(),
            pool_size=self.pool_spin.value(), objective=self.objective_combo.currentData())
        values.update(_model_settings(values["model"], init_path, values["device"]))
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
        self.remove_button.setVisible(False)
        self.status.setToolTip("")
        self.epoch_bar.setRange(0, config.epochs)
        self.epoch_bar.setValue(0)
        self.batch_bar.setRange(0, 0)  # busy until the first batch: rendering scenes has no progress
        self.batch_bar.setValue(0)
        stacks = [layer_stack(layer) for layer in self.checked_layers()] \
            if self.source_combo.currentData() == LAYERS else None
        self.status.setText("Preparing data (rendering synthetic scenes)…" if stacks is None else
                            f"Preparing {len(stacks)} stack(s) and the synthetic validation set…")
        self.settings_panel.setEnabled(False)  # the run uses the values as they were at Start
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.stop_event = threading.Event()
        self._config = config
        self.worker = run_in_thread(run_training, config, self.stop_event, stacks=stacks, on_message=self._on_event,
                                    on_returned=self._on_returned, on_errored=self._on_errored,
                                    on_finished=self._on_finished)

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
            self.stop_button.setEnabled(False)
            self.status.setText("Stopping after this batch: validating, then keeping the best weights so far…")

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
        name = _settings.display_name(self.registered_label)
        self.status.setText(kept_message(result, self._config, name))
        self.status.setToolTip(f"Saved as {path}")
        self.remove_button.setVisible(True)
        show_info(f"Added to the fusion methods: {name} ({path})")

    def remove_registered(self) -> None:
        """Take the weights of the last run off the method lists (the files stay on disk)."""
        label = self.registered_label
        if label is None:
            return
        name, path = _settings.display_name(label), registry.user_weights().get(label, (None, ""))[1]
        _settings.unregister_user_weights(label)
        self.registered_label = None
        self.remove_button.setVisible(False)
        self.status.setText(f"Removed '{name}' from the fusion methods; the file stays: {path}")

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
