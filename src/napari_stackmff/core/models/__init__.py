"""Focus networks. Each maps (B, N, H, W) focus images to (B, N, H, W) logits over the slices."""

from .registry import MODELS, ModelSpec, best_shipped_model, load_model, model_names

__all__ = ["MODELS", "ModelSpec", "best_shipped_model", "load_model", "model_names"]
