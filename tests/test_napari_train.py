"""The training widget: a short run moves the bars and the plot, writes a checkpoint, registers it,
and the fusion widget can use it straight away; Stop ends a run cleanly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("napari_stackmff.core.train", reason="core/train.py is not there yet")

from napari_fixtures import isolated_settings, stackmff_plugin, wait_idle  # noqa: E402,F401

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QLineEdit  # noqa: E402

from napari_stackmff._widgets import FusionWidget, TrainingWidget  # noqa: E402
from napari_stackmff._widgets._settings import readable_label  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402
from napari_stackmff.core.models import registry  # noqa: E402

pytestmark = pytest.mark.usefixtures("stackmff_plugin")

#: As small as a run can be: seconds on two CPU cores (synthetic scenes take ~10 s each to render,
#: so the runs read a tiny folder dataset; only validation renders one small stack).
TINY = dict(epochs=1, steps_per_epoch=3, batch_size=2, crop=32, n_range=(3, 4), val_stacks=1, device="cpu")


@pytest.fixture
def dataset(tmp_path):
    """Two 4-slice scenes in the folder layout core.train reads (stacks/ + depth_maps/)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for scene in ("a", "b"):
        folder = tmp_path / "data" / "stacks" / scene
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / f"{i + 1}.png")
        (tmp_path / "data" / "depth_maps").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "data" / "depth_maps" / f"{scene}.png")
    return tmp_path / "data"


def _use_folder(trainer, folder):
    trainer.source_combo.setCurrentIndex(trainer.source_combo.findData("folder"))
    trainer.folder_edit.setText(str(folder))


def test_config_from_form(make_napari_viewer, qtbot, isolated_settings):
    viewer = make_napari_viewer()
    trainer = TrainingWidget(viewer)
    qtbot.addWidget(trainer)
    trainer.n_min.setValue(5)
    trainer.n_max.setValue(9)
    trainer.crop_spin.setValue(64)
    trainer.lr_spin.setValue(0.0005)
    cfg = trainer.make_config()
    assert cfg.data == "synthetic" and tuple(cfg.n_range) == (5, 9) and cfg.crop == 64
    assert cfg.lr == pytest.approx(5e-4) and cfg.model == trainer.model_combo.currentData()
    trainer.objective_combo.setCurrentIndex(trainer.objective_combo.findData("depth"))
    assert trainer.make_config().objective == "depth"
    trainer.objective_combo.setCurrentIndex(trainer.objective_combo.findData("hybrid"))
    assert trainer.make_config().objective == "hybrid"
    assert trainer.folder_edit.isHidden()
    trainer.source_combo.setCurrentIndex(1)
    assert not trainer.folder_edit.isHidden() and not trainer.n_min.isEnabled()


def test_order_free_model_trains_on_untidy_stacks(make_napari_viewer, qtbot, isolated_settings):
    """Choosing StackMFF-V3 switches to its classification objective with shuffled and invalid slices, and
    to the narrow fast variant (the shipped weights' kind) on a CPU; back to V2, the hybrid objective and tidy stacks."""
    viewer = make_napari_viewer()
    trainer = TrainingWidget(viewer)
    qtbot.addWidget(trainer)
    trainer.device_combo.setCurrentText("cpu")
    trainer.model_combo.setCurrentIndex(trainer.model_combo.findData("stackmff-v3"))
    cfg = trainer.make_config()
    assert cfg.model == "stackmff-v3" and cfg.objective == "classify" and cfg.variant == "narrow-fast"
    assert cfg.shuffle > 0 and cfg.invalid > 0
    trainer.model_combo.setCurrentIndex(trainer.model_combo.findData("stackmff-v2"))
    cfg = trainer.make_config()
    assert cfg.objective == "hybrid" and cfg.shuffle == 0 and cfg.variant is None


def test_bars_follow_the_form(make_napari_viewer, qtbot, isolated_settings):
    viewer = make_napari_viewer()
    trainer = TrainingWidget(viewer)
    qtbot.addWidget(trainer)
    assert trainer.epoch_bar.text() == f"0 / {trainer.epochs_spin.value()}"
    assert trainer.batch_bar.text() == f"0 / {trainer.steps_spin.value()}"
    trainer.epochs_spin.setValue(7)
    trainer.steps_spin.setValue(30)
    assert trainer.epoch_bar.text() == "0 / 7" and trainer.batch_bar.text() == "0 / 30"


def test_long_paths_elided_with_tooltip(make_napari_viewer, qtbot, isolated_settings, tmp_path):
    viewer = make_napari_viewer()
    trainer = TrainingWidget(viewer)
    qtbot.addWidget(trainer)
    trainer.resize(300, 700)
    trainer.show()
    trainer.activateWindow()
    qtbot.waitActive(trainer)
    path = tmp_path / "a-rather-long-folder-name" / "and-another-one-below-it" / "my-focus-model-v2.pt"
    edit = trainer.checkpoint_edit
    edit.setText(str(path))
    shown = QLineEdit.text(edit)  # what is painted
    assert "…" in shown and shown.endswith("my-focus-model-v2.pt") and shown.startswith(str(path)[:4]), shown
    assert edit.fontMetrics().horizontalAdvance(shown) < edit.width()
    assert edit.toolTip() == str(path) and edit.text() == str(path)
    assert trainer.make_config().checkpoint == str(path)  # the full path is used, not the display
    edit.setFocus()  # editing shows (and edits) the whole path
    qtbot.waitUntil(edit.hasFocus)
    assert QLineEdit.text(edit) == str(path)
    edit.end(False)
    qtbot.keyClicks(edit, "x")
    edit.clearFocus()
    qtbot.waitUntil(lambda: not edit.hasFocus())
    assert edit.text() == str(path) + "x" and edit.toolTip() == str(path) + "x" and "…" in QLineEdit.text(edit)


def test_short_training_run_feeds_fusion(make_napari_viewer, qtbot, isolated_settings, tmp_path, dataset):
    viewer = make_napari_viewer()
    fusion = FusionWidget(viewer)
    trainer = TrainingWidget(viewer)
    viewer.window.add_dock_widget(fusion, name="fusion")
    viewer.window.add_dock_widget(trainer, name="training")
    ckpt = tmp_path / "models" / "mine.pt"
    trainer.checkpoint_edit.setText(str(ckpt))
    _use_folder(trainer, dataset)
    trainer.epochs_spin.setValue(TINY["epochs"])  # set in the form: the bar follows it
    assert trainer.epoch_bar.text() == f"0 / {TINY['epochs']}"
    trainer.start(**{k: v for k, v in TINY.items() if k != "epochs"})
    assert trainer.running and not trainer.start_button.isEnabled()
    assert trainer.epoch_bar.maximum() == TINY["epochs"] and not trainer.settings_panel.isEnabled()
    wait_idle(qtbot, trainer, timeout=60_000)

    assert len(trainer.plot.train) == 3 and len(trainer.plot.val) == 1
    assert trainer.batch_bar.value() == 3 and trainer.epoch_bar.text() == f"{TINY['epochs']} / {TINY['epochs']}"
    assert trainer.settings_panel.isEnabled()
    assert ckpt.is_file()
    label = trainer.registered_label
    assert label in registry.user_weights()
    model, path = registry.user_weights()[label]
    assert model == "stackmff-v2" and Path(path).is_file()

    # The open fusion widget lists the new checkpoint and can fuse with it.
    assert fusion.method_combo.findData(f"user:{label}") >= 0
    s = synth.make_sample("cells", n=6, size=64, seed=3)
    viewer.add_image(s.slices, name="small")
    fusion.layer_combo.set_current_layer(viewer.layers["small"])
    fusion.select_method(f"user:{label}")
    fusion.device_combo.setCurrentText("cpu")
    fusion.run()
    wait_idle(qtbot, fusion)
    assert fusion.last_result is not None and fusion.last_result.method == "stackmff-v2"
    assert viewer.layers["small all-in-focus"].data.dtype == np.uint16

    # A new session (fresh registry) still offers it: remembered in the settings.
    registry._user_weights.clear()
    again = FusionWidget(viewer)
    qtbot.addWidget(again)
    assert again.method_combo.findData(f"user:{label}") >= 0


def test_stop_keeps_a_checkpoint(make_napari_viewer, qtbot, isolated_settings, tmp_path, dataset):
    """Stop keeps the best weights so far and says so (epoch, score, the name they are listed under); the
    name is short and whole in the fusion list (the path in the tooltip); one click takes it off again."""
    viewer = make_napari_viewer()
    fusion = FusionWidget(viewer)
    qtbot.addWidget(fusion)
    trainer = TrainingWidget(viewer)
    qtbot.addWidget(trainer)
    ckpt = tmp_path / "stackmff-v2-20260101-1200.pt"  # the widget's own naming: model, date, time
    trainer.checkpoint_edit.setText(str(ckpt))
    _use_folder(trainer, dataset)
    trainer.start(**{**TINY, "epochs": 50, "steps_per_epoch": 1000})
    qtbot.waitUntil(lambda: len(trainer.plot.train) >= 2, timeout=60_000)
    trainer.stop()
    assert "keeping the best weights" in trainer.status.text()
    wait_idle(qtbot, trainer, timeout=30_000)
    assert trainer.result is not None and trainer.result.stopped
    assert ckpt.is_file() and trainer.registered_label is not None
    assert trainer.start_button.isEnabled() and not trainer.stop_button.isEnabled()

    label = trainer.registered_label
    best = ckpt.with_name("stackmff-v2-20260101-1200.best.pt")
    assert label == readable_label(best, "stackmff-v2") and label.startswith("v2 1 ") and label.endswith(" 12:00")
    assert re.fullmatch(rf"Stopped at epoch 1 of 50: kept the best weights so far \(epoch 1, validation "
                        rf"[-\d.]+ (dB|loss [-\d.e+]+)\) as '{re.escape(label)}' in the fusion methods\.",
                        trainer.status.text()), trainer.status.text()
    assert str(best) in trainer.status.toolTip()
    i = fusion.method_combo.findData(f"user:{label}")
    assert fusion.method_combo.itemText(i) == f"{label} (yours)" and "…" not in fusion.method_combo.itemText(i)
    assert str(best) in fusion.method_combo.itemData(i, Qt.ItemDataRole.ToolTipRole)

    assert trainer.remove_button.isVisibleTo(trainer)
    trainer.remove_button.click()
    assert label not in registry.user_weights() and fusion.method_combo.findData(f"user:{label}") < 0
    assert best.is_file() and "Removed" in trainer.status.text()
    registry._user_weights.clear()
    again = FusionWidget(viewer)  # not back in a later session either
    qtbot.addWidget(again)
    assert again.method_combo.findData(f"user:{label}") < 0


def test_readable_model_names(isolated_settings, tmp_path):
    """Short names for checkpoints: the widget's default file name becomes model + date, a name the user
    chose stays theirs, two files never share a name, and labels of older sessions read the same way."""
    from napari_stackmff._widgets import _settings

    assert readable_label("/m/stackmff-v2-20260101-1200.best.pt", "stackmff-v2").startswith("v2 1 ")
    assert readable_label("/m/stackmff-v3-beetle.best.pt", "stackmff-v3") == "v3 beetle"
    assert readable_label("/m/my microscope.best.pt", "stackmff-v2") == "my microscope"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.best.pt").write_bytes(b"")
    first = _settings.register_user_weights(tmp_path / "a" / "mine.best.pt", "stackmff-v2")
    second = _settings.register_user_weights(tmp_path / "b" / "mine.best.pt", "stackmff-v2")
    assert (first, second) == ("mine", "mine (2)")
    assert _settings.register_user_weights(tmp_path / "a" / "mine.best.pt", "stackmff-v2") == "mine"  # same file
    old = registry.register_weights(tmp_path / "a" / "stackmff-v2-20250505-0930.best.pt", "stackmff-v2")
    assert old == "stackmff-v2 (stackmff-v2-20250505-0930.best.pt)"  # a label from before readable names
    assert _settings.display_name(old) == readable_label(tmp_path / "a" / "stackmff-v2-20250505-0930.best.pt",
                                                         "stackmff-v2")


def test_unsupervised_run_on_open_layers(make_napari_viewer, qtbot, isolated_settings, tmp_path):
    """A lab's own stack, no labels: pick the open layers, the form switches to the unsupervised
    fine-tuning of the shipped weights, the run learns, and the result joins the fusion methods."""
    import torch

    viewer = make_napari_viewer()
    s = synth.make_sample("cells", n=6, size=64, seed=5)
    viewer.add_image(s.slices, name="my stack")
    viewer.add_image(s.aif, name="one image")  # 2-D: not a stack, not listed
    trainer = TrainingWidget(viewer)
    qtbot.addWidget(trainer)
    names = [trainer.layer_list.item(i).text() for i in range(trainer.layer_list.count())]
    assert names == ["my stack"]
    trainer.source_combo.setCurrentIndex(trainer.source_combo.findData("layers"))
    assert trainer.objective_combo.currentData() == "unsupervised" and not trainer.objective_combo.isEnabled()
    assert trainer.init_combo.currentData() == "shipped"
    assert trainer.epochs_spin.value() == 4 and trainer.crop_spin.value() == 64  # the short CPU budget
    assert trainer.layer_list.isVisibleTo(trainer) and trainer.folder_edit.isHidden()

    ckpt = tmp_path / "mine.pt"
    trainer.checkpoint_edit.setText(str(ckpt))
    trainer.start(**{**TINY, "n_range": (3, 6)})
    assert trainer.running
    wait_idle(qtbot, trainer, timeout=120_000)
    assert trainer.result is not None and not trainer.result.stopped, trainer.status.text()
    assert len(trainer.plot.train) == TINY["steps_per_epoch"] and np.isfinite(trainer.plot.train[-1][1])
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["config"]["data"] == ["layer:my stack"] and state["config"]["objective"] == "unsupervised"
    assert state["config"]["init_weights"] == str(registry.shipped_weights("stackmff-v2"))
    shipped = torch.load(registry.shipped_weights("stackmff-v2"), map_location="cpu", weights_only=True)["state_dict"]
    moved = max(float((state["state_dict"][k].float() - v.float()).abs().max()) for k, v in shipped.items())
    assert 0 < moved < 0.05  # fine-tuned: changed, but not re-learnt from scratch
    assert trainer.registered_label in registry.user_weights()
    # The new checkpoint can seed the next run.
    assert trainer.init_combo.findData(f"user:{trainer.registered_label}") >= 0

    trainer.layer_list.item(0).setCheckState(Qt.CheckState.Unchecked)  # nothing ticked: one clear line, no run
    trainer.start()
    assert not trainer.running and "Tick at least one" in trainer.status.text()
