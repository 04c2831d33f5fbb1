"""napari dock widgets: all-in-focus fusion and model training (thin layers over ``core``)."""

from .fuse import FusionWidget
from .train import TrainingWidget

__all__ = ["FusionWidget", "TrainingWidget"]
