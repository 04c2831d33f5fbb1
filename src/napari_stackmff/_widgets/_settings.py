"""Settings that survive napari restarts (QSettings) and the list of weights trained in the GUI.

``core.models.registry`` keeps user checkpoints in memory only; we remember them in QSettings
so a model trained yesterday is still in the fusion widget's list today, and we announce new
ones on a process-wide signal so every open fusion widget refreshes its list at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, QSettings, Signal

from ..core.errors import StackMFFError
from ..core.models import registry

ORG, APP = "napari-stackmff", "napari-stackmff"


def settings() -> QSettings:
    """The plugin's settings store (per user; tests point QSettings at a temporary folder)."""
    return QSettings(ORG, APP)


def load(group: str, key: str, default: Any) -> Any:
    """A stored value converted to the type of ``default`` (QSettings returns strings on Linux)."""
    raw = settings().value(f"{group}/{key}", None)
    if raw is None:
        return default
    try:
        if isinstance(default, bool):
            return raw in (True, "true", "True", "1", 1)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        return default


def save(group: str, values: dict[str, Any]) -> None:
    s = settings()
    for key, value in values.items():
        s.setValue(f"{group}/{key}", value)
    s.sync()


class _Hub(QObject):
    """Process-wide notifications between the plugin's widgets."""

    weights_changed = Signal(str)  # label of a newly registered checkpoint


_hub: _Hub | None = None


def hub() -> _Hub:
    global _hub
    if _hub is None:
        _hub = _Hub()
    return _hub


def register_user_weights(path: str | Path, model: str) -> str:
    """Register a checkpoint everywhere (registry, settings, open widgets); returns its label."""
    path = Path(path).resolve()
    label = registry.register_weights(path, model)
    known = _stored_weights()
    known[label] = [model, str(path)]
    save("weights", {"user": json.dumps(known)})
    hub().weights_changed.emit(label)
    return label


def restore_user_weights() -> None:
    """Re-register the checkpoints remembered from earlier sessions that still exist."""
    current = registry.user_weights()
    for label, (model, path) in _stored_weights().items():
        if label not in current and Path(path).is_file():
            try:
                registry.register_weights(path, model, label=label)
            except StackMFFError:  # the model was removed from the registry since
                continue


def _stored_weights() -> dict[str, list[str]]:
    try:
        data = json.loads(load("weights", "user", "{}"))
        return {str(k): [str(v[0]), str(v[1])] for k, v in data.items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        return {}
