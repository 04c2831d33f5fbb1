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

from napari_stackmff.core import heap
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
    torch.manual_seed(0)
    model = StackMFFV2().eval()
    x = torch.rand(1, 5, 64, 96)
    with torch.inference_mode():
        fast = model(x)
        with published_kernels():
            ref = model(x)
    assert torch.equal(fast, ref)


@pytest.mark.skipif(not heap.enabled(), reason="heap reuse needs Linux with glibc")
def test_heap_reuse_stops_page_faults_on_big_activations():
    """Inside heap_reuse a freed 64 MB block is handed out again; outside, every one is fresh pages."""
    code = textwrap.dedent("""
        import resource, torch
        from napari_stackmff.core.heap import heap_reuse

        def faults(n=12):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(n):
                t = torch.empty(16 << 20)  # 64 MB
                t.fill_(1.0)
                del t
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

        plain = faults()
        with heap_reuse():
            with heap_reuse():  # nesting is fine
                faults()  # the heap settles in a few rounds
                reused = faults()
        print(plain, reused)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    plain, reused = int(out[0]), int(out[1])
    pages = 12 * (64 << 20) // 4096
    assert plain > 0.9 * pages  # every block faulted in anew
    assert reused < 0.05 * pages  # measured: 0


def test_heap_reuse_can_be_turned_off():
    code = "import os; os.environ['STACKMFF_HEAP_REUSE'] = '0'\nfrom napari_stackmff.core import heap\n" \
           "print(heap.enabled())\nwith heap.heap_reuse(): pass"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_fused_result_does_not_depend_on_heap_reuse(tmp_path):
    """Same focus map with and without heap reuse (it moves memory, not arithmetic)."""
    from napari_stackmff.core import synth

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
