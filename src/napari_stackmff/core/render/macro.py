"""Lens focal stacks rendered by a path tracer's thin-lens camera (Mitsuba 3), with exact truth (issue 28).

Why: our synthetic stacks blur flat layers with discs and composite them; a real lens also has partial
occlusion at depth edges (a near edge's blur is seen *through*, the background behind it shows), perspective,
shading and glossy highlights. Mitsuba's ``thinlens`` sensor samples the aperture, so all of that is right by
construction. Each scene (a textured height field, overlapping textured objects, thin dark hairs in front,
glossy surfaces, sometimes a bright backdrop behind dark silhouettes) is rendered once per focus distance
(spaced evenly in dioptres, as a focus ring sweeps defocus evenly), once through a pinhole (the all-in-focus
truth, with more samples) and once as a depth pass (the focus truth: z along the optical axis).

Optional extra ``[render]`` (``mitsuba``); the CPU variant ``scalar_rgb`` is used: Mitsuba's LLVM variant needs
an LLVM that matches its own build, which the machines here do not have. The time per stack is printed by
``benchmarks/bench_physical.py`` (about 1 s per slice at 160 px and 64 samples on one core here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import StackMFFError

#: Samples per pixel of the slices (their Monte-Carlo noise plays the sensor's part) and of the pinhole
#: truth (4x: a cleaner reference).
SPP, TRUTH_SPP = 64, 256
FOV_DEG = 35.0


@dataclass
class MacroStack:
    slices: np.ndarray  # (N, H, W, 3) uint8, sRGB
    aif: np.ndarray  # (H, W, 3) uint8: the pinhole render
    depth: np.ndarray  # (H, W) float32: z along the optical axis (scene units)
    focus_distances: np.ndarray  # (N,) focus distance of each slice (scene units)
    focus_index: np.ndarray  # (H, W) float32: the in-focus slice per pixel (sub-slice, in dioptres)
    valid: np.ndarray  # (H, W) bool: textured pixels (the focus is only judged there)
    aperture_radius: float = 0.0
    seconds: float = 0.0


def have_mitsuba() -> bool:
    try:
        import mitsuba  # noqa: F401

        return True
    except ImportError:
        return False


def _mi():
    try:
        import mitsuba as mi
    except ImportError:
        raise StackMFFError("rendering lens stacks needs Mitsuba 3: pip install 'napari-stackmff[render]'.") from None
    if mi.variant() is None:
        mi.set_variant("scalar_rgb")
    return mi


def coc_radius_px(depth: float | np.ndarray, focus: float, aperture: float, res: int, fov_deg: float = FOV_DEG):
    """Thin-lens circle of confusion (radius, px) of a point at ``depth`` with the lens focused at ``focus``:
    a rays' spread a |d - f| / d on the focal plane, whose image width is 2 f tan(fov / 2)."""
    return aperture * np.abs(1.0 / focus - 1.0 / np.asarray(depth)) * res / (2 * math.tan(math.radians(fov_deg) / 2))


#: Window (px) of the valid mask: texture measured over it, and the depth must be one depth across it.
VALID_WINDOW = 7


def textured_at_one_depth(aif: np.ndarray, focus_index: np.ndarray, window: int = VALID_WINDOW) -> np.ndarray:
    """Pixels where focus can be judged: textured (local variance above the 40th percentile) *and* at one depth
    across the window (focus truth spread < 0.5 slice). Beside a thin dark hair on a flat bright backdrop the
    variance is high but comes from the hair; the backdrop pixel itself has no focus to find, and every method
    (the best single slice too) was scored wrong there (macro focus errors of 1.2 slices for all of them)."""
    from scipy import ndimage as ndi

    g = aif.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    local = ndi.uniform_filter(g * g, window) - ndi.uniform_filter(g, window) ** 2
    spread = ndi.maximum_filter(focus_index, window) - ndi.minimum_filter(focus_index, window)
    return (local > np.percentile(local, 40)) & (spread < 0.5)


def _texture(rng: np.random.Generator, side: int = 256) -> np.ndarray:
    """A colour texture with detail at every scale (what focus measures need to see)."""
    from scipy import ndimage as ndi

    out = np.zeros((side, side, 3), np.float32)
    for sigma, weight in ((0.7, 0.5), (2.0, 0.3), (8.0, 0.2)):
        out += weight * ndi.gaussian_filter(rng.standard_normal((side, side, 3)), (sigma, sigma, 0), mode="wrap")
    kind = rng.integers(3)
    if kind == 1:  # stripes / print
        yy, xx = np.mgrid[0:side, 0:side]
        out += 0.8 * (np.sin(xx * rng.uniform(0.2, 0.8) + yy * rng.uniform(0, 0.3)) > 0)[..., None]
    elif kind == 2:  # checker of random colours
        k = int(rng.integers(4, 16))
        cells = rng.random((k, k, 3))
        out += 0.8 * np.kron(cells, np.ones((side // k + 1, side // k + 1, 1)))[:side, :side]
    out = (out - out.min()) / (np.ptp(out) + 1e-9)
    tint = rng.uniform(0.3, 1.0, 3)
    return np.clip(0.05 + 0.9 * out * tint, 0, 1).astype(np.float32)


def _bsdf(mi, rng: np.random.Generator, tex: np.ndarray, glossy: bool) -> dict:
    refl = {"type": "bitmap", "bitmap": mi.Bitmap(tex), "filter_type": "bilinear"}
    if glossy:
        return {"type": "roughplastic", "diffuse_reflectance": refl, "alpha": float(rng.uniform(0.05, 0.3))}
    return {"type": "diffuse", "reflectance": refl}


def _height_field(mi, rng: np.random.Generator, depth: float, size: float, n: int = 48):
    """A textured grid of vertices with smooth random heights, facing the camera at ``depth``."""
    from scipy import ndimage as ndi

    h = ndi.gaussian_filter(rng.standard_normal((n, n)), 4.0)
    h = h / (np.abs(h).max() + 1e-9) * size * rng.uniform(0.1, 0.4)
    ys, xs = np.mgrid[0:n, 0:n] / (n - 1)
    verts = np.stack([(xs - 0.5) * size, (ys - 0.5) * size, depth + h], -1).reshape(-1, 3).astype(np.float32)
    uv = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    mesh = mi.Mesh("heightfield", vertex_count=len(verts), face_count=len(faces), has_vertex_normals=False,
                   has_vertex_texcoords=True)
    params = mi.traverse(mesh)
    for key, arr in (("vertex_positions", verts), ("faces", faces.astype(np.uint32)), ("vertex_texcoords", uv)):
        params[key] = type(params[key])(arr.ravel())  # the variant's own buffer type (scalar or JIT)
    params.update()
    return mesh


def _scene_objects(mi, rng: np.random.Generator, near: float, far: float) -> dict:
    """The scene's shapes and lights (camera at the origin looking down +z)."""
    objs: dict = {}  # rectangles face +z unless turned: rotate([1, 0, 0], 180) makes them face the camera
    span = 2 * math.tan(math.radians(FOV_DEG) / 2)
    silhouette = rng.random() < 0.35  # dark objects before a bright backdrop (the halo case)
    if silhouette:
        objs["backdrop"] = {"type": "rectangle", "to_world": mi.ScalarTransform4f.translate([0, 0, far * 1.3])
                            .rotate([1, 0, 0], 180).scale(far * span), "emitter": {"type": "area", "radiance": {"type": "rgb", "value": 1.6}}}
    else:
        objs["backdrop"] = {"type": "rectangle", "to_world": mi.ScalarTransform4f.translate([0, 0, far])
                            .rotate([1, 0, 0], 180).scale(far * span * 0.75), "bsdf": _bsdf(mi, rng, _texture(rng), False)}
        mesh = _height_field(mi, rng, float(rng.uniform(1.5 * near, far * 0.9)), far * span * 0.6)
        mesh.set_bsdf(mi.load_dict(_bsdf(mi, rng, _texture(rng), rng.random() < 0.3)))
        objs["heightfield"] = mesh
    for i in range(int(rng.integers(3, 9))):  # spread over the depth range: textured pixels at many depths
        z = float(np.exp(rng.uniform(np.log(near), np.log(far * 0.85))))
        x, y = (rng.uniform(-0.35, 0.35, 2) * z * span)
        s = float(rng.uniform(0.1, 0.3) * z * span)
        tex = _texture(rng) * (0.15 if silhouette else 1.0)
        bsdf = _bsdf(mi, rng, tex, rng.random() < 0.35)
        if rng.random() < 0.5:
            objs[f"obj{i}"] = {"type": "sphere", "center": [x, y, z], "radius": s * 0.6, "bsdf": bsdf}
        else:
            rot = mi.ScalarTransform4f.translate([x, y, z]).rotate([0, 1, 0], float(rng.uniform(-50, 50))) \
                .rotate([1, 0, 0], float(rng.uniform(-40, 40)) + 180).scale(s)
            objs[f"obj{i}"] = {"type": "rectangle", "to_world": rot, "bsdf": bsdf}
    for i in range(int(rng.integers(3, 15))):  # thin dark hairs in front
        z0 = float(rng.uniform(near, near + 0.4 * (far - near)))
        p0 = np.array([*(rng.uniform(-0.45, 0.45, 2) * z0 * span), z0])
        d = rng.standard_normal(3)
        d[2] *= 0.3
        p1 = p0 + d / np.linalg.norm(d) * rng.uniform(0.2, 0.5) * z0 * span
        objs[f"hair{i}"] = {"type": "cylinder", "p0": p0.tolist(), "p1": p1.tolist(),
                            "radius": float(rng.uniform(0.002, 0.005) * z0),
                            "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": float(rng.uniform(0.02, 0.1))}}}
    objs["sky"] = {"type": "constant", "radiance": {"type": "rgb", "value": float(rng.uniform(0.3, 0.7))}}
    objs["sun"] = {"type": "directional", "direction": [float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.8, -0.2)), 1.0],
                   "irradiance": {"type": "rgb", "value": float(rng.uniform(1.0, 3.0))}}
    return objs


def _sensor(mi, res: int, spp: int, focus: float | None, aperture: float) -> dict:
    cam = {"type": "perspective" if focus is None else "thinlens", "fov": FOV_DEG,
           "to_world": mi.ScalarTransform4f.look_at(origin=[0, 0, 0], target=[0, 0, 1], up=[0, -1, 0]),
           "film": {"type": "hdrfilm", "width": res, "height": res, "rfilter": {"type": "box"}, "pixel_format": "rgb"},
           "sampler": {"type": "independent", "sample_count": spp}}
    if focus is not None:
        cam.update({"aperture_radius": aperture, "focus_distance": focus})
    return cam


def _srgb8(linear: np.ndarray) -> np.ndarray:
    x = np.clip(linear, 0, 1)
    s = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.rint(s * 255), 0, 255).astype(np.uint8)


def render_macro(seed: int = 0, *, size: int = 160, n_slices: int = 8, spp: int = SPP, truth_spp: int = TRUTH_SPP,
                 max_coc_share: float | None = None, near: float | None = None, far: float | None = None) -> MacroStack:
    """One deterministic lens stack (``seed`` in, stack and truth out; Mitsuba's sampler is seeded too).

    The aperture is chosen so that the nearest object, seen with the lens focused at the far end, blurs
    over a circle of ``max_coc_share`` of the width (random 6-12% by default: real macro stacks
    span several times their depth of field).
    """
    import time

    mi = _mi()
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    near = near or float(rng.uniform(0.6, 1.2))
    far = far or float(near * rng.uniform(3.0, 6.0))
    objs = _scene_objects(mi, rng, near, far)
    share = max_coc_share or float(rng.uniform(0.06, 0.12))
    aperture = share * size / float(coc_radius_px(near, far, 1.0, size) * 2)  # diameter = share of the width
    focus = 1.0 / np.linspace(1.0 / near, 1.0 / far, n_slices)  # even in dioptres

    def scene(sensor: dict, integrator: dict) -> object:
        return mi.load_dict({"type": "scene", "integrator": integrator, "sensor": sensor, **objs})

    light = {"type": "direct"}
    slices = []
    for i, f in enumerate(focus):
        img = mi.render(scene(_sensor(mi, size, spp, float(f), aperture), light), seed=int(seed) * 1000 + i)
        slices.append(_srgb8(np.array(img)))
    truth = np.array(mi.render(scene(_sensor(mi, size, truth_spp, None, 0.0), light), seed=int(seed) * 1000 + 999))
    aov = np.array(mi.render(scene(_sensor(mi, size, 16, None, 0.0), {"type": "aov", "aovs": "dd.y:depth"}),
                             seed=int(seed) * 1000 + 998))
    dist = aov[..., 0] if aov.ndim == 3 else aov
    # The AOV is the distance along each ray; the focal plane is a z-plane: z = t cos(angle to the axis).
    half = math.tan(math.radians(FOV_DEG) / 2)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    cos = 1.0 / np.sqrt(1 + (c[None, :] * half) ** 2 + (c[:, None] * half) ** 2)
    depth = np.where(dist > 0, dist * cos, far * 1.3).astype(np.float32)
    index = np.interp(1.0 / depth, 1.0 / focus[::-1], np.arange(n_slices)[::-1]).astype(np.float32)
    aif = _srgb8(truth)
    from scipy import ndimage as ndi

    valid = textured_at_one_depth(aif, index)
    return MacroStack(slices=np.stack(slices), aif=aif, depth=depth, focus_distances=focus.astype(np.float32),
                      focus_index=index, valid=valid, aperture_radius=float(aperture),
                      seconds=time.perf_counter() - t0)


def render_plane(distance: float, focus: np.ndarray, aperture: float, *, size: int = 96, spp: int = 64,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured plane facing the camera at ``distance``, through the thin lens focused at each of ``focus``
    (N, H, W float32 linear luma), and through a pinhole (H, W): the check of the optics against the
    thin-lens formula (:func:`coc_radius_px`)."""
    mi = _mi()
    rng = np.random.default_rng(seed)
    span = 2 * math.tan(math.radians(FOV_DEG) / 2)
    tex = _texture(rng, 512)
    objs = {"plane": {"type": "rectangle", "to_world": mi.ScalarTransform4f.translate([0, 0, distance])
                      .rotate([1, 0, 0], 180).scale(distance * span),
                      "bsdf": {"type": "diffuse", "reflectance": {"type": "bitmap", "bitmap": mi.Bitmap(tex),
                                                                  "filter_type": "bilinear"}}},
            "sky": {"type": "constant", "radiance": {"type": "rgb", "value": 1.0}}}

    def luma(sensor: dict, k: int) -> np.ndarray:
        sc = mi.load_dict({"type": "scene", "integrator": {"type": "direct"}, "sensor": sensor, **objs})
        return np.array(mi.render(sc, seed=seed * 1000 + k)) @ np.array([0.299, 0.587, 0.114], np.float32)

    slices = np.stack([luma(_sensor(mi, size, spp, float(f), aperture), i) for i, f in enumerate(focus)])
    return slices, luma(_sensor(mi, size, spp * 4, None, 0.0), 999)
