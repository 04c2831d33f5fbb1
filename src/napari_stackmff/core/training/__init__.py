"""Training the networks: the loop (:func:`train`), its config, the data (synthetic stacks rendered
with real-optics effects, folders, unlabelled stacks, events) and the objectives.

May import: fusion, models, tiles, events, io and the base.
"""

from __future__ import annotations

from .._exports import lazy_exports

#: public name -> the module of this room that defines it (".x": the core's base module x)
_EXPORTS = {
    "BUNDLED_IMAGES": "synth",
    "Batch": "data",
    "DEPTH_KINDS": "synth",
    "EFFECTS": "realism",
    "EventPool": "data",
    "FocalStack": "stack",
    "FolderData": "data",
    "INVALID_KINDS": "synth",
    "MAX_SIDE": ".defaults",
    "MIN_SIDE": "data",
    "OBJECTIVES": "objectives",
    "Objective": "objectives",
    "PSF_KINDS": "realism",
    "Realism": "realism",
    "RenderPool": "data",
    "SAMPLE_Z_STEP_UM": "synth",
    "SCENE_KINDS": "synth",
    "Sample": "data",
    "StackMFFError": ".errors",
    "SynthStack": "synth",
    "SyntheticPool": "data",
    "TrainConfig": "config",
    "TrainEvent": "config",
    "TrainResult": "config",
    "UNSUPERVISED_DEFAULTS": ".defaults",
    "UnlabelledData": "data",
    "classify_loss": "objectives",
    "compress": "realism",
    "degrade": "realism",
    "depth_regression_loss": "objectives",
    "disc_psf_fft": "synth",
    "disorder": "synth",
    "draw_psf": "realism",
    "evaluate": "loop",
    "event_validation_set": "data",
    "f2v": ".models",
    "fill_pool": "data",
    "focus_positions": "synth",
    "get_objective": "objectives",
    "get_spec": "registry",
    "hybrid_loss": "objectives",
    "invalid_slice": "synth",
    "make_sample": "synth",
    "pad_to_multiple": "inference",
    "psf_kernel": "realism",
    "random_depth": "synth",
    "random_scene": "synth",
    "random_stack": "synth",
    "render_event_item": "data",
    "render_event_pool_item": "data",
    "render_pool_item": "data",
    "render_stack": "synth",
    "resolve_device": ".devices",
    "simulate_events": "synth",
    "texture_mask": "synth",
    "train": "loop",
    "unsupervised_criterion": "objectives",
    "validation_set": "data",
    "write_dataset": "synth",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, old='train')
