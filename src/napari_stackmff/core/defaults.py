"""Method names and defaults that help texts and widgets show without importing torch.

`stackmff --help` must answer at once: importing torch alone costs ~1 s on a laptop CPU, so
everything a parser or a form needs before any work starts lives here, free of heavy imports.
"""

from __future__ import annotations

CLASSICAL_METHODS = ("variance", "laplacian", "tenengrad", "wavelet")
#: Focus-measure window (pixels) of the classical methods.
DEFAULT_WINDOW = 9
