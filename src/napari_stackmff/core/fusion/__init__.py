"""Fusing one stack: :func:`fuse` picks the engine (classical streaming or device-resident, or a network)
and drives the tile loop; alignment of stacks that move, the slice survey, the quality metrics.

May import: models, tiles, events, io and the base.
"""

from __future__ import annotations

from .._exports import lazy_exports

#: public name -> the module of this room that defines it (".x": the core's base module x)
_EXPORTS = {
    "AUTO_MOVE_PX": "align",
    "AlignedArray": "align",
    "Alignment": "align",
    "BAND": "align",
    "CHUNK_SLICES": "device_engine",
    "CLASSICAL_BYTES_PER_PIXEL": "classical_engine",
    "COARSE_SIDE": "checks",
    "COMMON_SETTINGS": "dispatch",
    "CONSISTENCY_PX": "align",
    "ClassicalEngine": "classical_engine",
    "DEEP_STACK_WEIGHT_POWER": "metrics",
    "DEVICE_RESIDENT": "dispatch",
    "DIRECT_REFINE_PASSES": "align",
    "DeviceClassicalEngine": "device_engine",
    "ESTIMATE_SIDE": "align",
    "FusionCancelled": "dispatch",
    "FusionPlan": "dispatch",
    "FusionResult": "dispatch",
    "MIN_VALID_SHARE": "align",
    "MOTIONS": "align",
    "PATCH_BATCH": "align",
    "PROBE_MIN_EXPLAINED": "align",
    "REFINE_PASSES": "align",
    "RESULT_MEMORY_SHARE": "dispatch",
    "SAMPLE_PIXELS": "checks",
    "SHARPNESS_WINDOW": "metrics",
    "SliceSurvey": "checks",
    "UPSAMPLE": "align",
    "WARP_MARGIN": "align",
    "WORK_BYTES_PER_PIXEL": "device_engine",
    "align_stack": "align",
    "available_methods": "dispatch",
    "check_options": "dispatch",
    "check_result_fits": "dispatch",
    "classical_maps": "classical_engine",
    "classical_support": "classical_engine",
    "crop_box": "align",
    "crop_offset": "align",
    "device_dtype_supported": "device_engine",
    "estimate": "align",
    "exclusions": "dispatch",
    "focus_error": "metrics",
    "fuse": "dispatch",
    "gradient_energy": "metrics",
    "model_options": "dispatch",
    "prepare": "dispatch",
    "probe": "align",
    "probe_slices": "align",
    "probe_stack": "align",
    "psnr": "metrics",
    "qabf": "metrics",
    "qabf_map": "metrics",
    "refuse_blank": "dispatch",
    "resolve_method": "dispatch",
    "resolve_motion": "align",
    "result_bytes": "dispatch",
    "sharpness_scores": "metrics",
    "similarity_matrix": "align",
    "ssim": "metrics",
    "summary": "align",
    "survey_slices": "checks",
    "valid_share": "align",
    "warp_slice": "align",
    "warp_window": "align",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, old='fusion')
