"""Headless core of napari-stackmff: no napari, no Qt. Scripts, the CLI and the widgets share it."""

from .fusion import FusionCancelled, FusionResult, available_methods, fuse
from .io import load_stack, save_result
from .stack import FocalStack

__all__ = ["FocalStack", "FusionCancelled", "FusionResult", "available_methods", "fuse", "load_stack", "save_result"]
