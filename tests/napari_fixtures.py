"""Fixtures shared by the napari tests (imported by name: no conftest, other suites own theirs)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SCREENSHOTS = ROOT / "screenshots"


@pytest.fixture
def isolated_settings(tmp_path, monkeypatch):
    """QSettings and user-registered weights live in tmp_path: tests never touch the user's."""
    from qtpy.QtCore import QSettings

    from napari_stackmff.core.models import registry

    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(tmp_path / "qsettings"))
    monkeypatch.setattr(registry, "_user_weights", {})
    return tmp_path / "qsettings"


@pytest.fixture(scope="session")
def stackmff_plugin():
    """Make npe2 know our manifest, from the installed package or (plain checkout) the repo file.

    Session-scoped and requested by every napari test module, so it runs before the first viewer
    exists: registering a plugin later trips napari's per-viewer action registration.
    """
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    pm.discover()
    if "napari-stackmff" not in pm:
        pm.register(PluginManifest.from_file(ROOT / "napari.yaml"))
    return pm


def wait_idle(qtbot, widget, timeout: int = 30_000) -> None:
    """Wait until a widget's worker has finished and its signals were delivered."""
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)
