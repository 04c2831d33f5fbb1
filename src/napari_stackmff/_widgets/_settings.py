"""Settings that survive napari restarts (QSettings) and the list of weights trained in the GUI.

``core.models.registry`` keeps user checkpoints in memory only; we remember them in QSettings
so a model trained yesterday is still in the fusion widget's list today, and we announce new
ones on a process-wide signal so every open fusion widget refreshes its list at once.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
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


def clear(group: str) -> None:
    """Forget every stored setting of ``group`` (the widgets then start from their defaults)."""
    s = settings()
    s.remove(group)
    s.sync()


def short_model_name(model: str) -> str:
    """``stackmff-v2`` -> ``v2``, ``eventstackmff`` -> ``event``: the family name is the same for all."""
    return model.replace("stackmff-", "").replace("stackmff", "") or model


def readable_label(path: str | Path, model: str) -> str:
    """A short name for a checkpoint: ``v2 1 Jan 12:00`` for the training widget's default file name
    (``stackmff-v2-20260101-1200.best.pt``), ``v2 beetle`` for ``stackmff-v2-beetle.pt``, else the file's
    own name without ``.best.pt`` (the user chose it). The full path goes in tooltips."""
    stem = Path(path).name
    for suffix in (Path(path).suffix, ".best"):
        if suffix and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    if not stem.startswith(f"{model}-"):
        return stem or Path(path).name
    rest = stem[len(model) + 1:]
    stamp = re.fullmatch(r"(\d{8})-(\d{4})", rest)
    if stamp:
        try:
            when = datetime.strptime("".join(stamp.groups()), "%Y%m%d%H%M")
            rest = f"{when.day} {when:%b %H:%M}"
        except ValueError:
            pass
    return f"{short_model_name(model)} {rest}"


def display_name(label: str) -> str:
    """What the lists show for a registered checkpoint: its label, or for a label made before readable
    names (``stackmff-v2 (stackmff-v2-20260101-1200.best.pt)``) the readable name of its file."""
    entry = registry.user_weights().get(label)
    if entry is not None and label == f"{entry[0]} ({Path(entry[1]).name})":
        return readable_label(entry[1], entry[0])
    return label


def register_user_weights(path: str | Path, model: str) -> str:
    """Register a checkpoint everywhere (registry, settings, open widgets) under a short readable
    label (``v2 1 Jan 12:00``; ``(2)`` added if another file has it); returns the label."""
    path = Path(path).resolve()
    base = label = readable_label(path, model)
    taken = registry.user_weights()
    n = 1
    while label in taken and Path(taken[label][1]).resolve() != path:
        n += 1
        label = f"{base} ({n})"
    label = registry.register_weights(path, model, label=label)
    known = _stored_weights()
    known[label] = [model, str(path)]
    save("weights", {"user": json.dumps(known)})
    hub().weights_changed.emit(label)
    return label


def unregister_user_weights(label: str) -> None:
    """Take a checkpoint off the method lists, now and in later sessions; its file stays."""
    registry.unregister_weights(label)
    known = _stored_weights()
    known.pop(label, None)
    save("weights", {"user": json.dumps(known)})
    hub().weights_changed.emit(label)


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
