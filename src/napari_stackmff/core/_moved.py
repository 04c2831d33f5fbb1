"""Old module paths (before the core was split into rooms, issue 25) keep working for one release.

``napari_stackmff.core.pipeline``, ``.core.train``, ``.core.lazy``... are no longer modules: importing
one gives a stand-in whose names forward to their new homes, with a DeprecationWarning saying where.
The rooms that kept an old name (``core.io``, ``core.events``, ``core.fusion``, ``core.batch``) forward
the names that left them the same way (:func:`moved_name`). The table is what each old module
defined, and where that name lives now.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

CORE = "napari_stackmff.core"

#: old module (under core) -> {new module (under core): "names"}
MOVED: dict[str, dict[str, str]] = {
    "align": {
        "errors": (
            "StackMFFError"
        ),
        "fusion.align": (
            "AUTO_MOVE_PX AlignedArray Alignment BAND CONSISTENCY_PX DIRECT_REFINE_PASSES "
            "ESTIMATE_SIDE MIN_VALID_SHARE MOTIONS PATCH_BATCH PROBE_MIN_EXPLAINED "
            "REFINE_PASSES UPSAMPLE WARP_MARGIN align_stack crop_box crop_offset estimate "
            "probe probe_slices probe_stack resolve_motion similarity_matrix summary "
            "valid_share warp_slice warp_window"
        ),
    },
    "batch": {
        "batch.jobs": (
            "BatchSummary beside_inputs fingerprint fuse_job is_done process_job record "
            "recorded_source run_batch"
        ),
        "errors": (
            "StackMFFError"
        ),
        "io.discover": (
            "PAIR_FOLDERS StackJob discover_stacks pair_jobs survey unique_names"
        ),
        "io.read": (
            "list_slice_files"
        ),
        "io.records": (
            "IMAGE_SUFFIXES TIFF_SUFFIXES recorded_outputs result_paths stack_name"
        ),
    },
    "blend": {
        "errors": (
            "StackMFFError"
        ),
        "io.stack": (
            "FocalStack dtype_scale to_focus_image"
        ),
        "tiles.blend": (
            "BLENDS SOFT_EPS SOFT_RADIUS SoftBlend resolve_blend soft_blend_for "
            "soft_blend_window"
        ),
        "tiles.classical": (
            "box_mean"
        ),
    },
    "checks": {
        "fusion.checks": (
            "COARSE_SIDE SAMPLE_PIXELS SliceSurvey survey_slices"
        ),
        "io.stack": (
            "FocalStack"
        ),
    },
    "classical": {
        "defaults": (
            "CLASSICAL_METHODS DEFAULT_WINDOW"
        ),
        "errors": (
            "StackMFFError"
        ),
        "tiles.classical": (
            "MEASURES bands_take_threads box_mean focus_measure laplacian tenengrad variance "
            "wavelet"
        ),
    },
    "classical_device": {
        "fusion.classical_engine": (
            "classical_support"
        ),
        "fusion.device_engine": (
            "CHUNK_SLICES DeviceClassicalEngine WORK_BYTES_PER_PIXEL device_dtype_supported"
        ),
        "io.stack": (
            "FocalStack LUMA_WEIGHTS dtype_scale"
        ),
        "tiles.pipeline": (
            "FocusMaps check_cancel peak_maps renumber"
        ),
    },
    "decision": {
        "tiles.decision": (
            "HALO_RADIUS "
            "decision_radius max_filter"
        ),
    },
    "distributed": {
        "batch.distributed": (
            "PARENT_CHECK_S ResultFn run_batch_parallel worker_info"
        ),
        "batch.jobs": (
            "BatchSummary process_job record"
        ),
        "errors": (
            "StackMFFError"
        ),
        "io.discover": (
            "StackJob"
        ),
    },
    "events": {
        "errors": (
            "StackError StackMFFError"
        ),
        "events.frames": (
            "bin_edges bin_events check_sensor_fits frame_to_signed load_events "
            "read_event_frames simulate_events"
        ),
        "events.read": (
            "BIN_BYTES_PER_EVENT CHUNK_EVENTS EVENT_DTYPE EVENT_SUFFIXES EXTRA EventError "
            "FAERY_SUFFIXES FRAMES_ADVICE MAX_COORD MAX_HEADER_BYTES MEMORY_FRACTION "
            "PROPHESEE_SUFFIXES READ_ADVICE READ_COPIES SMALL_EXTENT TABLE_BYTES_PER_EVENT "
            "available_memory check_sensor_size read_events read_slice_times sensor_size_of"
        ),
    },
    "fusion": {
        "devices": (
            "resolve_device"
        ),
        "errors": (
            "StackMFFError"
        ),
        "fusion.checks": (
            "SliceSurvey survey_slices"
        ),
        "fusion.classical_engine": (
            "CLASSICAL_BYTES_PER_PIXEL ClassicalEngine classical_maps classical_support"
        ),
        "fusion.dispatch": (
            "COMMON_SETTINGS DEVICE_RESIDENT FusionPlan RESULT_MEMORY_SHARE available_methods "
            "check_options check_result_fits exclusions fuse model_options prepare "
            "refuse_blank resolve_method result_bytes"
        ),
        "io.preview": (
            "stack_display_range"
        ),
        "io.result": (
            "FusionResult"
        ),
        "io.stack": (
            "FocalStack"
        ),
        "tiles.blend": (
            "SoftBlend resolve_blend soft_blend_for"
        ),
        "tiles.classical": (
            "gaussian_blur gaussian_radius"
        ),
        "tiles.pipeline": (
            "EstimateMessage FocusMaps FusionCancelled ProgressFn TileEngine TileFeather "
            "TileOutput check_cancel fill_low_confidence finish_maps gather gather_window "
            "height_from_focus iter_fused_tiles median3 native_cpu_conv plan_tile "
            "sub_progress"
        ),
        "tiles.tiling": (
            "count_tiles"
        ),
    },
    "heap": {
        "tiles.heap": (
            "TRIM_DELAY_S enabled heap_reuse"
        ),
    },
    "io": {
        "errors": (
            "OutputError StackError"
        ),
        "io.preview": (
            "colorize focus_map_picture to_uint8_preview"
        ),
        "io.read": (
            "Include input_files list_slice_files load_stack natural_key read_image "
            "read_slices select_slices slice_pattern"
        ),
        "io.records": (
            "IMAGE_SUFFIXES PathLike STACK_SUFFIXES TIFF_SUFFIXES check_output_safe "
            "listed_outputs recorded_outputs result_paths stack_name"
        ),
        "io.safe_files": (
            "atomic_write check_output_folder commit discard sweep_stale_temps temp_path"
        ),
        "io.stack": (
            "FocalStack as_focal_stack check_finite"
        ),
        "io.tiff": (
            "read_tiff_stack read_tiff_stack_lazy"
        ),
        "io.write": (
            "save_result sweep_stale_parts write_json write_png write_stack write_tiff "
            "result_bytes"
        ),
    },
    "lazy": {
        "io.tiff": (
            "AxesView LAZY_FRACTION LAZY_MEMMAP_BYTES can_memmap open_tiff_lazy "
            "should_be_lazy view_axes"
        ),
    },
    "metrics": {
        "fusion.metrics": (
            "DEEP_STACK_WEIGHT_POWER SHARPNESS_WINDOW focus_error gradient_energy psnr qabf "
            "qabf_map sharpness_scores ssim"
        ),
    },
    "pipeline": {
        "errors": (
            "StackMFFError"
        ),
        "fusion.classical_engine": (
            "CLASSICAL_BYTES_PER_PIXEL ClassicalEngine classical_maps classical_support"
        ),
        "io.stack": (
            "FocalStack"
        ),
        "tiles.blend": (
            "SoftBlend soft_blend_window"
        ),
        "tiles.classical": (
            "gaussian_blur gaussian_radius"
        ),
        "tiles.heap": (
            "heap_reuse"
        ),
        "tiles.pipeline": (
            "EstimateMessage FocusMaps FusionCancelled ProgressFn TileEngine TileFeather "
            "TileOutput check_cancel fill_low_confidence finish_maps gather gather_window "
            "height_from_focus iter_fused_tiles median3 native_cpu_conv peak_maps plan_tile "
            "prob_maps renumber sub_progress"
        ),
        "tiles.prefetch": (
            "prefetch"
        ),
        "tiles.tiling": (
            "Tile auto_tile_side balance_tile iter_tiles memory_budget round_overlap"
        ),
    },
    "prefetch": {
        "tiles.prefetch": (
            "T prefetch"
        ),
    },
    "preview": {
        "io.preview": (
            "PREVIEW_PERCENTILES RANGE_SAMPLES READ_BLOCK colorize focus_map_picture "
            "stack_display_range to_uint8_preview"
        ),
    },
    "realism": {
        "defaults": (
            "REALISM_EFFECTS"
        ),
        "errors": (
            "StackMFFError"
        ),
        "training.realism": (
            "EFFECTS PSF_KINDS Realism compress degrade draw_psf psf_kernel"
        ),
    },
    "result": {
        "io.result": (
            "FusionResult"
        ),
    },
    "safe_files": {
        "errors": (
            "OutputError"
        ),
        "io.records": (
            "PathLike"
        ),
        "io.safe_files": (
            "DIR_STAMP LOCK_NAME LOCK_WAIT_S MARKER SPACE_MARGIN_BYTES atomic_write "
            "check_output_folder commit discard folder_lock is_temp_name make_temp_dir "
            "stamp_temp_dir sweep_stale_temps temp_path write_error"
        ),
    },
    "stack": {
        "errors": (
            "StackError"
        ),
        "io.stack": (
            "ARRAY_READINGS FocalStack LUMA_WEIGHTS MAX_CHANNELS_GUESS MIN_SIDE_GUESS "
            "SUPPORTED_KINDS as_focal_stack check_finite dtype_scale moveaxis_last "
            "to_focus_image"
        ),
    },
    "synth": {
        "io.stack": (
            "FocalStack as_focal_stack"
        ),
        "training.realism": (
            "Realism compress degrade draw_psf psf_kernel"
        ),
        "training.synth": (
            "BUNDLED_IMAGES DEPTH_KINDS INVALID_KINDS SAMPLE_Z_STEP_UM SCENE_KINDS SynthStack "
            "disc_psf_fft disorder focus_positions invalid_slice make_sample random_depth "
            "random_scene random_stack render_stack simulate_events texture_mask "
            "write_dataset"
        ),
    },
    "tiling": {
        "errors": (
            "StackMFFError"
        ),
        "tiles.tiling": (
            "MAX_HOST_BUDGET Tile auto_tile_side balance_tile chunk_shape count_tiles "
            "iter_tiles memory_budget round_overlap tile_step"
        ),
    },
    "train": {
        "defaults": (
            "MAX_SIDE UNSUPERVISED_DEFAULTS"
        ),
        "devices": (
            "resolve_device"
        ),
        "errors": (
            "StackMFFError"
        ),
        "io.stack": (
            "FocalStack"
        ),
        "models.inference": (
            "pad_to_multiple"
        ),
        "models.registry": (
            "get_spec"
        ),
        "training.config": (
            "TrainConfig TrainEvent TrainResult"
        ),
        "training.data": (
            "Batch EventPool FolderData MIN_SIDE RenderPool Sample SyntheticPool "
            "UnlabelledData event_validation_set fill_pool render_event_item "
            "render_event_pool_item render_pool_item validation_set"
        ),
        "training.loop": (
            "evaluate train"
        ),
        "training.objectives": (
            "OBJECTIVES Objective classify_loss depth_regression_loss get_objective "
            "hybrid_loss unsupervised_criterion"
        ),
        "training.realism": (
            "Realism"
        ),
    },
    "writers": {
        "batch.writers": (
            "DiskResult MAPS TiffSink ZarrSink fuse_to_disk"
        ),
        "errors": (
            "OutputError StackMFFError"
        ),
        "fusion.dispatch": (
            "prepare"
        ),
        "io.read": (
            "input_files"
        ),
        "io.records": (
            "check_output_safe"
        ),
        "io.safe_files": (
            "DIR_STAMP check_output_folder commit discard make_temp_dir stamp_temp_dir "
            "sweep_stale_temps temp_path write_error"
        ),
        "io.stack": (
            "FocalStack"
        ),
        "tiles.pipeline": (
            "check_cancel iter_fused_tiles plan_tile sub_progress"
        ),
        "tiles.tiling": (
            "chunk_shape"
        ),
    },
}


def new_home(old: str, name: str) -> str | None:
    """The module (under core) where ``name`` of the old module ``core.<old>`` lives now."""
    for module, names in MOVED.get(old, {}).items():
        if name in names.split():
            return module
    return None


def moved_name(old: str, name: str) -> Any:
    """``core.<old>.<name>`` from its new home, with a DeprecationWarning naming the new path."""
    module = new_home(old, name)
    if module is None:
        raise AttributeError(f"module '{CORE}.{old}' has no attribute {name!r}")
    warnings.warn(f"{CORE}.{old}.{name} moved to {CORE}.{module}.{name}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(f"{CORE}.{module}"), name)


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``core.<old>`` for the old modules that are gone (after the real finders found nothing)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, leaf = fullname.rpartition(".")
        if prefix != CORE or leaf not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name, f"Moved: see {CORE}._moved (deprecated path).")
        old = spec.name.rpartition(".")[2]
        module.__getattr__ = lambda name: moved_name(old, name)  # type: ignore[method-assign]
        module.__dir__ = lambda: sorted(n for names in MOVED[old].values() for n in names.split())  # type: ignore
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(f"{module.__name__} is deprecated: its names moved into the core's rooms "
                      f"(see docs/ARCHITECTURE.md); the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
