"""The speed paths compute what the plain ones do (issue 15): fast pooling, heap reuse, the GPU-style
classical engine (run here on the CPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_stackmff.core.tiles import heap
from napari_stackmff.core.models.v2 import StackMFFV2, _pool2, published_kernels


def test_fast_pool_is_bit_identical_and_training_keeps_max_pool():
    x = torch.randn(3, 8, 64, 96)
    x[0, 0, :2, :2] = 1.0  # a tie inside one window
    with torch.inference_mode():
        assert torch.equal(_pool2(x), F.max_pool2d(x, 2))
    xg = x.clone().requires_grad_(True)
    _pool2(xg).sum().backward()
    # max_pool2d routes each window's gradient to one input: exactly one 1 per 2x2 window
    assert xg.grad.sum().item() == pytest.approx(x.numel() / 4)
    assert set(xg.grad.unique().tolist()) <= {0.0, 1.0}


def test_published_kernels_give_the_same_logits():
    """The inference kernels (strided pooling: bit-identical; the in-place GRU step: float rounding only)
    against the published layer sequence, and training (autograd on) always takes the published one."""
    torch.manual_seed(0)
    model = StackMFFV2().eval()
    x = torch.rand(1, 5, 64, 96)
    with torch.inference_mode():
        fast = model(x)
        with published_kernels():
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    assert (fast.argmax(1) == ref.argmax(1)).float().mean() >= 0.999
    with published_kernels():
        trained = model(x)  # grad enabled: the published step, whatever the switch says
    assert torch.equal(trained.detach(), model(x).detach())


def test_v2_gru_runs_every_step_in_the_features_layout():
    """In channels_last every GRU convolution gets a channels_last input: the zero state once was NCHW, so each
    direction's first step ran (and its cat copied) in the other layout. The inference step's [x | h] buffers
    give the published step's logits, in either layout."""
    torch.manual_seed(1)
    x = torch.rand(1, 5, 64, 96)
    for channels_last in (True, False):
        model = StackMFFV2().eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        gru = model.layer_interaction.layer_interaction_depth
        seen: list[bool] = []
        for cell in (gru.forward_cell_list[0], gru.backward_cell_list[0]):
            for conv in (cell.conv_gates, cell.conv_can):
                conv.register_forward_pre_hook(
                    lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)
                                             and not a[0].is_contiguous()))
        with torch.inference_mode():
            fast = model(x)
            assert len(seen) == 4 * 5 and all(s == channels_last for s in seen), seen
            with published_kernels():
                ref = model(x)
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


@pytest.mark.skipif(not heap.enabled(), reason="heap reuse needs Linux with glibc")
def test_heap_reuse_serves_big_blocks_from_the_heap_and_gives_them_back():
    """Inside a run a 64 MB block comes from the reusable heap, not a fresh mmap; after the (delayed) trim the
    free pages are returned and glibc mmaps big blocks again, as before the run. (glibc's own counters:
    mallinfo2's hblkhd is the bytes in mmapped blocks.)"""
    code = textwrap.dedent("""
        import ctypes, time, torch
        from napari_stackmff.core import heap

        class Info(ctypes.Structure):
            _fields_ = [(k, ctypes.c_size_t) for k in
                        ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                         "fordblks", "keepcost")]
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info

        def mmapped_mb():
            return libc.mallinfo2().hblkhd / 2**20

        def block_mmapped_mb():  # how much of a new 64 MB block glibc mmapped
            m0 = mmapped_mb()
            t = torch.empty(16 << 20)
            t.fill_(1.0)
            return mmapped_mb() - m0

        def rss_mb():
            with open("/proc/self/status") as fh:
                return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024

        heap.TRIM_DELAY_S = 0.5
        before = block_mmapped_mb()
        with heap.heap_reuse():
            with heap.heap_reuse():  # nesting is fine
                inside = block_mmapped_mb()
        held = rss_mb()
        time.sleep(3.0)  # the delayed trim
        returned = held - rss_mb()
        after = block_mmapped_mb()
        print(before, inside, returned, after)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, inside, returned, after = map(float, out)
    assert before >= 64 and after >= 64  # outside a run: mmapped, as glibc does by default
    assert inside < 1  # inside: from the heap
    assert returned > 48  # the freed block's pages went back to the system


def test_heap_reuse_can_be_turned_off():
    code = "import os; os.environ['STACKMFF_HEAP_REUSE'] = '0'\nfrom napari_stackmff.core import heap\n" \
           "print(heap.enabled())\nwith heap.heap_reuse(): pass"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow  # issue 24: two V2 runs in subprocesses; heap reuse itself: the two tests above
def test_fused_result_does_not_depend_on_heap_reuse(tmp_path):
    """Same focus map with and without heap reuse (it moves memory, not arithmetic)."""
    from napari_stackmff.core.training import synth

    s = synth.random_stack(np.random.default_rng(3), size=64, n=5, dtype="uint8", rgb=False)
    np.save(tmp_path / "s.npy", s.slices)
    code = textwrap.dedent(f"""
        import numpy as np
        from napari_stackmff.core import fuse
        r = fuse(np.load({str(tmp_path / 's.npy')!r}), "stackmff-v2", "cpu")
        np.save({str(tmp_path)!r} + "/f_" + __import__("os").environ.get("STACKMFF_HEAP_REUSE", "1") + ".npy",
                r.focus_map)
    """)
    for flag in ("0", "1"):
        subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ,
                                                                       "STACKMFF_HEAP_REUSE": flag})
    assert np.array_equal(np.load(tmp_path / "f_0.npy"), np.load(tmp_path / "f_1.npy"))


# ----------------------------------------------------------------------------- device-resident classical
def _run(engine, stack, tile: int):
    from napari_stackmff.core.tiles.pipeline import iter_fused_tiles

    h, w = stack.yx_shape
    aif = np.zeros((h, w) + ((stack.n_channels,) if stack.has_channels else ()), stack.dtype)
    focus = np.zeros((h, w), np.float32)
    for out in iter_fused_tiles(stack, engine, 0, tile, engine.overlap):
        aif[out.write] = out.all_in_focus
        focus[out.write] = out.focus
    return aif, focus


_KINDS = ["uint16 gray", "uint8 rgb", "float32 gray, slices 1 and 4 left out", "uint16 two channels, channel 1"]
_METHODS = ["variance", "wavelet", "tenengrad"]
#: Every kind and every measure once in the default run (issue 24's rgb variance among them); the rest slow.
_FAST = {("uint16 gray", "variance"), ("uint8 rgb", "variance"), ("float32 gray, slices 1 and 4 left out", "wavelet"),
         ("uint16 two channels, channel 1", "tenengrad")}


@pytest.mark.parametrize("kind, method", [
    pytest.param(k, m, id=f"{k}-{m}", marks=() if (k, m) in _FAST else pytest.mark.slow)
    for k in _KINDS for m in _METHODS])
def test_device_engine_equals_streaming_engine(method, kind):
    """Chunks of 3 over 7 slices, 5 tiles: merging across chunk borders, the neighbours of a winner on a
    chunk's last slice, exclusion and the on-device gather all give what the streaming engine gives: the same
    slice wherever the decision is not a float near-tie (luma by torch vs numpy and batched measures round
    differently; issue 24 saw one pixel of 38,400 at focus 4.499993 vs 4.500024), and the gathered pixels of
    the slice it chose, exactly."""
    from conftest import assert_same_decisions, focus_scores

    from napari_stackmff.core.training import synth
    from napari_stackmff.core.fusion.device_engine import DeviceClassicalEngine
    from napari_stackmff.core.fusion.classical_engine import ClassicalEngine
    from napari_stackmff.core.io.stack import as_focal_stack

    rng = np.random.default_rng(7)
    rgb = "rgb" in kind
    s = synth.random_stack(rng, size=(128, 300), n=7, dtype="uint8" if rgb else "uint16", rgb=rgb).slices
    channel, exclude = None, ()
    if kind.startswith("float32"):
        s, exclude = s.astype(np.float32) / 65535, (1, 4)
    if "two channels" in kind:
        s, channel = np.stack([s[..., ::-1, :], s], axis=-1), 1
    stack = as_focal_stack(s, axes="ZYXC" if s.ndim == 4 else None)
    kw = dict(channel=channel, window=9, denoise=True, exclude=exclude)
    cpu = torch.device("cpu")
    ref_aif, ref_focus = _run(ClassicalEngine(stack, 0, method, cpu, **kw), stack, 190)
    dev_aif, dev_focus = _run(DeviceClassicalEngine(stack, 0, method, cpu, chunk=3, **kw), stack, 190)
    scores = focus_scores(s, method, window=9, axes="ZYXC" if s.ndim == 4 else None, channel=channel,
                          exclude=exclude)
    same = assert_same_decisions(ref_focus, dev_focus, scores)
    assert np.array_equal(dev_aif[same], ref_aif[same])
    idx = np.rint(dev_focus).astype(np.intp)  # each pixel from the slice this engine chose, bit for bit
    picked = np.take_along_axis(s, idx[None, ..., None] if s.ndim == 4 else idx[None], 0)[0]
    assert np.array_equal(dev_aif, picked)
    assert dev_aif.dtype == stack.dtype



def test_same_decisions_excuses_ties_only():
    """The comparison above can fail: a pixel that takes another slice where its decision is clear, or a
    focus map that drifts, is caught; a flip on a rounding tie or a far argmax tie (and its median
    neighbours) is not."""
    from conftest import assert_same_decisions

    rng = np.random.default_rng(0)
    scores = rng.random((5, 60, 80)).astype(np.float32) + 1.0
    scores[0] += 2.0  # slice 0 wins everywhere by a wide margin...
    ref = np.full((60, 80), 0.2, np.float32)
    ref[10, 10] = 2.4999996  # ...but one pixel's focus sits on a rounding tie
    scores[:, 30, 30] = [1.0, 0.5, 0.5, 0.5, 1.0 - 1e-6]  # and one on an argmax tie between slices 0 and 4
    got = ref.copy()
    got[10, 10] = 2.5000004
    got[30, 30], got[31, 30] = 4.0, 1.1  # the tie and a median neighbour follow the other slice
    same = assert_same_decisions(ref, got, scores)
    assert (~same).sum() == 3
    for y, x, v in ((20, 20, 1.0), (5, 5, 0.2 + 2e-3)):  # a clear decision flipped; a drifting focus value
        bad = got.copy()
        bad[y, x] = v
        with pytest.raises(AssertionError):
            assert_same_decisions(ref, bad, scores)
    with pytest.raises(AssertionError):  # ties where nothing marks one
        assert_same_decisions(ref, got)

def test_cudnn_autotune_only_for_runs_of_many_tiles():
    """Kernel search per new shape costs more than it saves on a one-tile stack (issue 15): the engine turns
    it on from AUTOTUNE_MIN_TILES scheduled tiles; an explicit autotune= wins."""
    from napari_stackmff.core.models.inference import AUTOTUNE_MIN_TILES, ModelRunner
    from napari_stackmff.core.io.stack import as_focal_stack

    stack = as_focal_stack((np.random.default_rng(0).random((4, 96, 96)) * 255).astype(np.uint8))
    runner = ModelRunner("stackmff-v2", torch.device("cpu"))
    engine = runner.engine(stack)
    win = (slice(0, 96), slice(0, 96))
    engine.schedule([win])
    assert runner._tune is False
    engine.schedule([win] * AUTOTUNE_MIN_TILES)
    assert runner._tune is True
    engine.close()
    forced = ModelRunner("stackmff-v2", torch.device("cpu"), autotune=False)
    assert forced.autotune is False


@pytest.mark.parametrize("case", ["rgb time series", "lazy uint16 tiles"])
def test_fuse_through_the_device_engine_equals_the_streaming_one(monkeypatch, tmp_path, case):
    """The whole fuse() door with the device-resident engine (as on CUDA, here on the CPU): same result, but
    for float near-ties (see test_device_engine_equals_streaming_engine)."""
    import tifffile
    from conftest import assert_same_decisions, focus_scores

    from napari_stackmff.core import fuse
    from napari_stackmff.core.fusion import dispatch as fusion
    from napari_stackmff.core.training import synth

    rng = np.random.default_rng(11)
    if case == "rgb time series":
        data = np.stack([synth.random_stack(rng, size=96, n=5, dtype="uint8", rgb=True).slices for _ in range(2)])
        kw = {"axes": "TZYXC"}
    else:
        data = tifffile.memmap(tmp_path / "s.tif", shape=(6, 200, 260), dtype=np.uint16)
        data[:] = synth.random_stack(rng, size=(200, 260), n=6, dtype="uint16", rgb=False).slices
        data.flush()
        data = str(tmp_path / "s.tif")
        kw = {"tile": 160, "lazy": True}
    ref = fuse(data, "variance", "cpu", **kw)
    monkeypatch.setattr(fusion, "DEVICE_RESIDENT", ("cuda", "cpu"))
    dev = fuse(data, "variance", "cpu", **kw)
    slices = tifffile.imread(data) if isinstance(data, str) else data
    scores = focus_scores(slices, "variance", window=9, axes=kw.get("axes"))
    same = assert_same_decisions(ref.focus_map, dev.focus_map, scores)
    assert np.array_equal(dev.all_in_focus[same], ref.all_in_focus[same])
    if case == "rgb time series":  # (T, Z, Y, X, C): each pixel from the slice this engine chose, bit for bit
        picked = np.take_along_axis(slices, dev.index[:, None, ..., None], 1)[:, 0]
    else:
        picked = np.take_along_axis(slices, dev.index[None], 0)[0]
    assert np.array_equal(dev.all_in_focus, picked)


@pytest.mark.slow  # issue 24: ~2 min loaded; benchmark code, not the package
def test_gpu_benchmark_code_runs_end_to_end_as_a_dry_run_on_the_cpu() -> None:
    """bench_gpu.py's GPU-only code (floors, forward table, small stacks, fp16 agreement, end to end) runs on
    the CPU at toy sizes: a device call, minutes of scarce GPU time, must not die on a bug no CPU run reaches."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_gpu.py"), "--dry-run",
                          "--official", str(root / "no-such-checkpoint.pth")],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    for table in ("floors: pinned host->device copy", "forward only", "eventstackmff fp16", "published (compat) fp32",
                  "fp16 vs fp32 focus maps", "ours (shipped)", "read-ahead on"):
        assert table in out.stdout, table


def test_cpu_channels_last_default_follows_the_measured_cpus_and_keeps_the_decisions(monkeypatch) -> None:
    """NHWC by default only on the CPUs where it was measured faster (AVX-512, AVX2); either layout gives the
    same focus decisions on a synthetic stack with known focus."""
    from napari_stackmff.core import fuse
    from napari_stackmff.core.training import synth
    from napari_stackmff.core.models import inference, registry

    for cap, expect in (("AVX512", True), ("AVX2", True), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda cap=cap: cap)
        registry._cache.clear()
        assert inference.ModelRunner("stackmff-v2", torch.device("cpu")).channels_last is expect
    s = synth.random_stack(np.random.default_rng(5), size=96, n=6, dtype="uint16")
    maps = {}
    for cl in (False, True):
        registry._cache.clear()
        maps[cl] = fuse(s.slices, method="stackmff-v2", device="cpu", channels_last=cl)
    registry._cache.clear()
    assert (maps[False].index == maps[True].index).mean() >= 0.999
    # One runner's layout never leaks into another's through the model cache (a conv's output follows
    # its weights' layout): an NCHW run after an NHWC one gets NCHW weights.
    cpu = torch.device("cpu")
    nhwc = inference.ModelRunner("stackmff-v2", cpu, channels_last=True).model
    nchw = inference.ModelRunner("stackmff-v2", cpu, channels_last=False).model
    w = lambda m: m.layer_interaction.layer_interaction_depth.forward_cell_list[0].conv_gates.weight  # noqa: E731
    assert w(nhwc).is_contiguous(memory_format=torch.channels_last) and not w(nhwc).is_contiguous()
    assert w(nchw).is_contiguous()
    registry._cache.clear()


@pytest.mark.parametrize("threads", [1, 2])
def test_box_mean_column_sums_match_scipy_and_do_not_depend_on_the_window(threads, monkeypatch):
    """The box filter's column pass on big images (whole-row sums, not scipy's strided walk): scipy's means
    to float32 rounding, banded on 2 threads alike; and each pixel's column sum is the same wherever the
    rows it is computed in start (what makes tiles agree with the whole image)."""
    from scipy.ndimage import uniform_filter1d

    from napari_stackmff.core.tiles import classical

    monkeypatch.setattr(classical, "WINDOW_SUM_MIN_PIXELS", 1 << 14)  # big-image path on small test maps
    monkeypatch.setattr(classical, "_threads", lambda: threads)
    rng = np.random.default_rng(3)
    a = rng.random((2, 203, 517), dtype=np.float32) * 1e-3
    for k in (3, 9, 19, 33):
        ref = uniform_filter1d(uniform_filter1d(a, k, axis=-1, mode="mirror"), k, axis=-2, mode="mirror")
        got = classical.box_mean(torch.from_numpy(a), k).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-12)
        r = k // 2
        rows = uniform_filter1d(a, k, axis=-1, mode="mirror")
        whole = classical._window_mean_cols(classical._pad_rows(rows, r), k, np.empty_like(rows))
        part = classical._window_mean_cols(classical._pad_rows(rows[:, 37:160], r), k, np.empty_like(rows[:, 37:160]))
        assert np.array_equal(part[:, r:-r], whole[:, 37 + r:160 - r])  # interior rows: bit-identical
