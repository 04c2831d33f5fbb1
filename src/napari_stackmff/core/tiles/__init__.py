"""What every engine shares: focus measures, the decision rule, focus maps, the tile loop that turns an
engine's maps into a fused image (tiling, cross-fade, gather, soft blend), and its memory helpers.

May import: io and the base. Engines (fusion's classical ones, the models' ModelEngine) plug into
:class:`~.pipeline.TileEngine`; nothing here knows which engine it drives.
"""

from __future__ import annotations

from .._exports import lazy_exports

#: public name -> the module of this room that defines it (".x": the core's base module x)
_EXPORTS = {
    "BLENDS": "blend",
    "DECISIONS": "decision",
    "DEFAULT_DECISION": "decision",
    "EstimateMessage": "pipeline",
    "FocusMaps": "pipeline",
    "FusionCancelled": "pipeline",
    "HALO_RADIUS": "decision",
    "MAX_HOST_BUDGET": "tiling",
    "MEASURES": "classical",
    "ProgressFn": "pipeline",
    "SOFT_EPS": "blend",
    "SOFT_RADIUS": "blend",
    "SoftBlend": "blend",
    "T": "prefetch",
    "TRIM_DELAY_S": "heap",
    "Tile": "tiling",
    "TileEngine": "pipeline",
    "TileFeather": "pipeline",
    "TileOutput": "pipeline",
    "auto_tile_side": "tiling",
    "balance_tile": "tiling",
    "bands_take_threads": "classical",
    "box_mean": "classical",
    "check_cancel": "pipeline",
    "chunk_shape": "tiling",
    "count_tiles": "tiling",
    "decision_radius": "decision",
    "resolve_decision": "decision",
    "enabled": "heap",
    "fill_low_confidence": "pipeline",
    "finish_maps": "pipeline",
    "focus_measure": "classical",
    "gather": "pipeline",
    "gaussian_blur": "classical",
    "gaussian_radius": "classical",
    "gather_window": "pipeline",
    "heap_reuse": "heap",
    "height_from_focus": "pipeline",
    "iter_fused_tiles": "pipeline",
    "iter_tiles": "tiling",
    "laplacian": "classical",
    "halo_vote": "decision",
    "max_filter": "decision",
    "median3": "pipeline",
    "memory_budget": "tiling",
    "native_cpu_conv": "pipeline",
    "peak_maps": "pipeline",
    "plan_tile": "pipeline",
    "prob_maps": "pipeline",
    "renumber": "pipeline",
    "resolve_blend": "blend",
    "round_overlap": "tiling",
    "soft_blend_for": "blend",
    "soft_blend_window": "blend",
    "sub_progress": "pipeline",
    "tenengrad": "classical",
    "tile_step": "tiling",
    "variance": "classical",
    "wavelet": "classical",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
