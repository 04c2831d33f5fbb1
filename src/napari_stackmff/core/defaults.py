"""Method names and defaults that help texts and widgets show without importing torch.

`stackmff --help` must answer at once: importing torch alone costs ~1 s on a laptop CPU, so
everything a parser or a form needs before any work starts lives here, free of heavy imports.
"""

from __future__ import annotations

CLASSICAL_METHODS = ("variance", "laplacian", "tenengrad", "wavelet")
#: Focus-measure window (pixels) of the classical methods.
DEFAULT_WINDOW = 9

#: Training objectives (``core.train.OBJECTIVES`` holds their losses; a test keeps the two equal).
TRAIN_OBJECTIVES = ("depth", "hybrid", "classify", "unsupervised")
#: Run settings of ``stackmff train --objective unsupervised`` where the user gives none: a short
#: fine-tuning of the shipped weights on the user's own stacks, with a learning rate 10x below training
#: from scratch. Measured: twice this budget (8 epochs) on 4 real stacks took 5 min 39 s on a shared
#: 2-core CPU with OMP_NUM_THREADS=1 (~1.2 s a step, 0.97 GB peak), so the default is ~3 min.
UNSUPERVISED_DEFAULTS: dict[str, object] = {"epochs": 4, "steps_per_epoch": 40, "batch_size": 4, "crop": 64,
                                            "lr": 1e-4, "n_range": (3, 8), "val_stacks": 8}
#: Unlabelled stacks are downscaled on loading so their longer side is at most this many pixels.
MAX_SIDE = 1024
#: Real-optics effects the synthetic renderer can add (``core.realism``; ``stackmff train --realism``).
REALISM_EFFECTS = ("psf", "breathing", "shift", "jpeg", "vignetting", "sensor")
