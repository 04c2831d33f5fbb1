"""napari sample data: small synthetic focal stacks rendered in code (no download, < 1 s).

The stacks come from ``core.synth.make_sample`` so the sample a user tries is the same one the
tests and the README use. They carry a (made-up but plausible) z step and pixel size, so the
focus map comes out in micrometres and the 3-D view has the right proportions.
"""

from __future__ import annotations

from ._layerdata import LayerDataTuple, event_layer_data, stack_layer_data
from .core.io.stack import as_focal_stack

#: Physical sampling given to the synthetic samples (micrometres).
SAMPLE_Z_STEP_UM = 1.0
SAMPLE_PIXEL_UM = 0.2


def _stack_layer(slices, name: str) -> LayerDataTuple:
    stack = as_focal_stack(slices, z_step=SAMPLE_Z_STEP_UM, unit="um", source="synthetic")
    stack.pixel_size = (SAMPLE_PIXEL_UM, SAMPLE_PIXEL_UM)
    return stack_layer_data(stack, name=name)


def sample_cells() -> list[LayerDataTuple]:
    """12 slices of textured nuclei at different heights (uint16, 256×256)."""
    from .core.training.synth import make_sample

    s = make_sample("cells", n=12, size=256, seed=7, dtype="uint16")
    return [_stack_layer(s.slices, "cells focal stack")]


def sample_events() -> list[LayerDataTuple]:
    """A focal stack and its focal-plane event frames (red = positive, blue = negative)."""
    from .core.training.synth import make_sample

    s = make_sample("cells", n=12, size=256, seed=11, dtype="uint16", events=True)
    image = _stack_layer(s.slices, "event-sample focal stack")
    layers = [image]
    if s.events is not None:
        layers.append(event_layer_data(s.events, "event-sample events", scale=image[1]["scale"],
                                       units=image[1].get("units"), source="synthetic"))
    return layers
