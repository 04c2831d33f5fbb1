"""FocalStack: the one container every door (CLI, widgets, scripts) hands to the fusion core.

A stack keeps the user's pixels untouched (any dtype, gray/RGB/multichannel, optional time axis)
plus what we know about the optics (z positions, pixel size). Models and focus measures only see
a float "focus image" per slice (luma or one chosen channel); the fused image is then gathered
from the original pixels, so values are never rescaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..errors import StackError

#: Rec. 601 luma weights, the convention StackMFF and most fusion tools use for RGB.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
SUPPORTED_KINDS = "uifb"


@dataclass
class FocalStack:
    """A focal stack with optional time and channel axes.

    Parameters
    ----------
    data
        Array-like with axes ``(T?, Z, Y, X, C?)`` as described by ``axes``. Any object with
        ``shape``, ``dtype`` and numpy-style slicing works (numpy, memmap, zarr, dask), so big
        stacks can stay on disk until a slice is needed.
    axes
        One of ``"ZYX"``, ``"ZYXC"``, ``"TZYX"``, ``"TZYXC"``.
    z_positions
        Physical focus position of each slice (length Z), or None when unknown.
    unit
        Unit of ``z_positions`` and ``pixel_size`` (e.g. ``"um"``).
    pixel_size
        (y, x) pixel size in ``unit``, or None.
    rgb
        True when the channel axis holds RGB(A) colour rather than separate fluorescence channels.
    events
        Optional signed event frames aligned with the slices, shape ``(T?, Z, Y, X)``.
    source
        Where the stack came from (for messages and output names).
    """

    data: Any
    axes: str = "ZYX"
    z_positions: np.ndarray | None = None
    unit: str | None = None
    pixel_size: tuple[float, float] | None = None
    rgb: bool = False
    events: Any = None
    source: str | None = None
    channel_names: Sequence[str] | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.axes not in ("ZYX", "ZYXC", "TZYX", "TZYXC"):
            raise StackError(f"{self._where}axes must be ZYX, ZYXC, TZYX or TZYXC, got {self.axes!r}.")
        shape = tuple(self.data.shape)
        if len(shape) != len(self.axes):
            raise StackError(
                f"{self._where}data has {len(shape)} dimensions {shape} but axes {self.axes!r} "
                f"need {len(self.axes)}."
            )
        if np.dtype(self.data.dtype).kind not in SUPPORTED_KINDS:
            raise StackError(f"{self._where}pixel type {self.data.dtype} is not supported; use integer or float images.")
        if self.n_slices < 2:
            raise StackError(
                f"{self._where}a focal stack needs at least 2 slices, got {self.n_slices}. "
                "Pass the whole z-stack (a folder of slices or a multi-page TIFF), not a single image."
            )
        if self.z_positions is not None:
            z = np.asarray(self.z_positions, dtype=np.float64).ravel()
            if z.size != self.n_slices:
                raise StackError(f"{self._where}{z.size} z positions given for {self.n_slices} slices.")
            self.z_positions = z
        if self.events is not None:
            expected = tuple(s for a, s in zip(self.axes, shape) if a != "C")
            if tuple(self.events.shape) != expected:
                raise StackError(
                    f"{self._where}event frames have shape {tuple(self.events.shape)}, expected {expected} "
                    "(one event frame per slice, same size as the images)."
                )

    # ------------------------------------------------------------------ shape facts
    @property
    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def has_time(self) -> bool:
        return self.axes.startswith("T")

    @property
    def has_channels(self) -> bool:
        return self.axes.endswith("C")

    @property
    def n_times(self) -> int:
        return self.shape[0] if self.has_time else 1

    @property
    def n_slices(self) -> int:
        return self.shape[self.axes.index("Z")]

    @property
    def n_channels(self) -> int:
        return self.shape[-1] if self.has_channels else 1

    @property
    def yx_shape(self) -> tuple[int, int]:
        i = self.axes.index("Y")
        return self.shape[i], self.shape[i + 1]

    @property
    def z_step(self) -> float | None:
        """Mean spacing between slices in ``unit`` (None when positions are unknown)."""
        if self.z_positions is None:
            return None
        return float(np.mean(np.diff(self.z_positions)))

    # ------------------------------------------------------------------ access
    def timepoint(self, t: int) -> "FocalStack":
        """The stack at one time point (axes without T); data stays lazy if it was."""
        if not self.has_time:
            if t != 0:
                raise IndexError(t)
            return self
        events = None if self.events is None else self.events[t]
        return replace(self, data=self.data[t], axes=self.axes[1:], events=events)

    def slice_pixels(self, z: int, t: int = 0) -> np.ndarray:
        """Original pixels of one slice, (Y, X) or (Y, X, C), read from disk if lazy."""
        data = self.data[t] if self.has_time else self.data
        return self._checked(np.asarray(data[z]), z, t, (slice(None), slice(None)))

    def focus_image(self, z: int, t: int = 0, channel: int | None = None) -> np.ndarray:
        """Float32 image that focus is judged on for slice ``z`` (luma, a channel, or channel mean).

        Values are scaled by the dtype's range (uint8 -> /255, uint16 -> /65535) so they are
        comparable across slices; models rescale further per stack.
        """
        return to_focus_image(self.slice_pixels(z, t), rgb=self.rgb, channel=channel, dtype=self.dtype)

    def read_window(self, z: int, t: int = 0, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """Original pixels of one slice inside a (y, x) window, reading only that window.

        Indexes T, Z, Y and X in one key, so zarr/TIFF-backed data read the window's chunks
        only (``data[t]`` first would load the whole time point of a zarr array).
        """
        ys, xs = window or (slice(None), slice(None))
        key = (t, z, ys, xs) if self.has_time else (z, ys, xs)
        return self._checked(np.asarray(self.data[key]), z, t, (ys, xs))

    def read_sample(self, z: int, t: int = 0, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """Like :meth:`read_window`, without refusing NaN/inf: for the statistics taken on a strided sample
        before fusing, so that bad pixels are reported (and counted) by the fusion's own reads."""
        ys, xs = window or (slice(None), slice(None))
        key = (t, z, ys, xs) if self.has_time else (z, ys, xs)
        return np.asarray(self.data[key])

    def _checked(self, pixels: np.ndarray, z: int, t: int, window: tuple[slice, slice]) -> np.ndarray:
        """Refuse NaN/inf in pixels just read from lazy float data (in-memory arrays are checked whole
        when they are wrapped; lazy ones are checked tile by tile, as they are read)."""
        if pixels.dtype.kind == "f" and type(self.data) is not np.ndarray:
            ys, xs = window
            at = f" in slice {z}" + (f", time {t}" if self.has_time else "")
            area = f" (rows {ys.start or 0}:{ys.stop}, columns {xs.start or 0}:{xs.stop})" if ys.stop or xs.stop else ""
            check_finite(pixels, self.source, at=at + area)
        return pixels

    def focus_window(self, z: int, t: int = 0, channel: int | None = None,
                     window: tuple[slice, slice] | None = None) -> np.ndarray:
        """Float32 focus image of slice ``z`` inside a (y, x) window (see :meth:`focus_image`)."""
        return to_focus_image(self.read_window(z, t, window), rgb=self.rgb, channel=channel, dtype=self.dtype)

    def focus_stack(self, t: int = 0, channel: int | None = None, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """(Z, Y, X) float32 focus images of one time point, optionally of one (y, x) window only.

        Reading a window slice by slice keeps memory at one window's worth even for lazy data.
        """
        data = self.data[t] if self.has_time else self.data
        ys, xs = window or (slice(None), slice(None))
        out = None
        for z in range(self.n_slices):
            img = to_focus_image(self._checked(np.asarray(data[z, ys, xs]), z, t, (ys, xs)), rgb=self.rgb,
                                 channel=channel, dtype=self.dtype)
            if out is None:
                out = np.empty((self.n_slices, *img.shape), dtype=np.float32)
            out[z] = img
        assert out is not None
        return out


def cast_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float pixel values (a resampled or blended image) back in ``dtype``: integers rounded and clipped
    to the dtype's range, so a mix of slices never wraps around."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype, copy=False)


def dtype_scale(dtype: np.dtype) -> float:
    """Divisor that maps the dtype's natural range to [0, 1] (1 for floats)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1.0
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return 1.0


def to_focus_image(
    pixels: np.ndarray, *, rgb: bool, channel: int | None = None, dtype: np.dtype | None = None
) -> np.ndarray:
    """Reduce one slice to the float32 (Y, X) image that focus is measured on."""
    dtype = np.dtype(dtype or pixels.dtype)
    img = np.asarray(pixels)
    if img.ndim == 3:
        if channel is not None:
            if not -img.shape[-1] <= channel < img.shape[-1]:
                raise StackError(f"channel {channel} does not exist: the stack has {img.shape[-1]} channels.")
            img = img[..., channel].astype(np.float32)
        elif rgb and img.shape[-1] in (3, 4):
            img = img[..., :3].astype(np.float32) @ LUMA_WEIGHTS
        else:
            img = img.astype(np.float32).mean(axis=-1)
    else:
        img = img.astype(np.float32)
    scale = dtype_scale(dtype)
    if scale != 1.0:
        img *= np.float32(1.0 / scale)
    return img


def as_focal_stack(
    data: Any,
    *,
    axes: str | None = None,
    z_positions: Sequence[float] | None = None,
    z_step: float | None = None,
    unit: str | None = None,
    rgb: bool | None = None,
    source: str | None = None,
) -> FocalStack:
    """Wrap an array as a FocalStack; the axes are read from its shape only when one reading fits.

    (Z, Y, X) is a gray stack. A 4-D or 5-D array may be a time series, channels first or channels
    last: each reading (:data:`ARRAY_READINGS`) fits when it gives images of at least
    :data:`MIN_SIDE_GUESS` px, at most :data:`MAX_CHANNELS_GUESS` channels and 2 slices. One fit is
    used; several raise one error listing them, and ``axes`` (any reading, e.g. ``"CZYX"``) says
    which. (Z, Y, X, 3) stays an RGB stack: no other reading fits it.
    """
    if isinstance(data, FocalStack):
        return data
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    shape = tuple(data.shape)
    ndim = len(shape)
    where = f"{source}: " if source else ""
    if axes is None:
        if ndim == 2:
            raise StackError(
                f"{where}got a single 2-D image {shape}; a focal stack is (Z, Y, X) or "
                "(Z, Y, X, C). Pass all the slices (a folder, a multi-page TIFF or a 3-D array)."
            )
        if ndim == 3:
            axes = "ZYX"
        elif ndim in ARRAY_READINGS:
            fits = [a for a in ARRAY_READINGS[ndim] if _reading_fits(a, shape)]
            if len(fits) != 1:
                said = {"ZYXC": "channels last", "TZYX": "a time series", "CZYX": "channels first",
                        "TZYXC": "a time series, channels last", "TCZYX": "a time series, channels first"}
                options = " or ".join(f"{a} ({said[a]})" for a in (fits or ARRAY_READINGS[ndim]))
                why = "reads as" if fits else "fits none of the readings"
                raise StackError(f"{where}a {shape} array {why} {options}; pass axes= (e.g. "
                                 f"axes={(fits or ARRAY_READINGS[ndim])[0]!r}) to say which.")
            axes = fits[0]
        else:
            raise StackError(f"{where}cannot interpret an array of shape {shape} as a focal stack.")
    axes = axes.upper()
    if "C" in axes and not axes.endswith("C") and len(axes) == ndim:  # channels first: a view with C last
        c = axes.index("C")
        data = moveaxis_last(data, c)
        axes = axes.replace("C", "") + "C"
    if rgb is None:
        rgb = axes.endswith("C") and data.shape[-1] in (3, 4) and np.dtype(data.dtype).kind in "uf"
    if z_positions is None and z_step is not None:
        n = data.shape[axes.index("Z")]
        z_positions = np.arange(n, dtype=np.float64) * float(z_step)
    if isinstance(data, np.ndarray) and data.dtype.kind == "f":
        check_finite(data, source)
    return FocalStack(data=data, axes=axes, z_positions=z_positions, unit=unit, rgb=bool(rgb), source=source)


#: How 4-D and 5-D arrays may be read (our axes letters), most common first.
ARRAY_READINGS = {4: ("ZYXC", "TZYX", "CZYX"), 5: ("TZYXC", "TCZYX")}
#: A reading must give images at least this wide and high: narrower "images" are a misread axis
#: (a (8, 64, 64, 2) array as a time series would fuse to (8, 64, 2)).
MIN_SIDE_GUESS = 8
#: ... and at most this many channels (beyond it, the axis is more likely Z, Y or X).
MAX_CHANNELS_GUESS = 8


def _reading_fits(axes: str, shape: tuple[int, ...]) -> bool:
    size = dict(zip(axes, shape))
    return (size["Y"] >= MIN_SIDE_GUESS and size["X"] >= MIN_SIDE_GUESS and size["Z"] >= 2
            and size.get("C", 1) <= MAX_CHANNELS_GUESS)


def moveaxis_last(data: Any, axis: int) -> Any:
    """``axis`` to the end without loading the data: a numpy view, or dask for dask/zarr-like data
    (numpy when dask, an optional dependency, is missing)."""
    if isinstance(data, np.ndarray):
        return np.moveaxis(data, axis, -1)
    try:
        import dask.array as da

        return da.moveaxis(da.asarray(data), axis, -1)
    except ImportError:  # pragma: no cover - dask is optional
        return np.moveaxis(np.asarray(data), axis, -1)


def check_finite(data: np.ndarray, source: str | None = None, at: str = "") -> None:
    """Refuse NaN/inf: they would silently win or lose every focus comparison. ``at`` says where
    in the source (e.g. " in slice 3"), for data checked a tile at a time."""
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        where = f"{source}: " if source else ""
        raise StackError(
            f"{where}{bad} pixel(s) are NaN or infinite{at}. Replace them (e.g. numpy.nan_to_num) before fusing."
        )
